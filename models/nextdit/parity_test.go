package nextdit

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// diffusersName is the forward rename of diffusers' convert_lumina2_to_diffusers
// (ordered string replacements), written here from the diffusers source so
// the test checks the loader's reverse map rather than reusing it. It
// returns "" for norm_final.weight, which diffusers drops.
func diffusersName(k string) string {
	if k == "norm_final.weight" {
		return ""
	}
	for _, r := range [][2]string{
		{"context_refiner.0.attention_norm1", "context_refiner.0.norm1"},
		{"context_refiner.0.attention_norm2", "context_refiner.0.norm2"},
		{"context_refiner.1.attention_norm1", "context_refiner.1.norm1"},
		{"context_refiner.1.attention_norm2", "context_refiner.1.norm2"},
		{"final_layer.adaLN_modulation.1", "norm_out.linear_1"},
		{"final_layer.linear", "norm_out.linear_2"},
		{"attention_norm1", "norm1.norm"},
		{"attention_norm2", "norm2"},
		{"cap_embedder", "time_caption_embed.caption_embedder"},
		{"t_embedder.mlp.0", "time_caption_embed.timestep_embedder.linear_1"},
		{"t_embedder.mlp.2", "time_caption_embed.timestep_embedder.linear_2"},
		{"attention", "attn"},
		{".out.", ".to_out.0."},
		{"k_norm", "norm_k"},
		{"q_norm", "norm_q"},
		{"w1", "linear_1"},
		{"w2", "linear_2"},
		{"w3", "linear_3"},
		{"adaLN_modulation.1", "norm1.linear"},
	} {
		k = strings.ReplaceAll(k, r[0], r[1])
	}
	return k
}

// writeLayout rewrites the golden upstream weights into another layout in
// a temporary folder and returns the path to load: "comfyui" is one file
// with model.diffusion_model. keys beside a stray VAE tensor; "diffusers"
// is a pipeline folder whose transformer/ holds two shards and an index,
// q/k/v split by rows. Neither carries config metadata (real ones do not).
func writeLayout(t *testing.T, weights, layout string, extra ...safetensors.Tensor) string {
	t.Helper()
	src, err := safetensors.Open(weights)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cfg, err := ConfigFromFile(src)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	var ts []safetensors.Tensor
	for _, info := range src.Tensors() {
		b, err := src.Bytes(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		switch layout {
		case "comfyui":
			ts = append(ts, safetensors.Tensor{Name: "model.diffusion_model." + info.Name, DType: info.DType, Shape: info.Shape, Data: b})
		case "diffusers":
			d := diffusersName(info.Name)
			if d == "" {
				continue
			}
			if !strings.Contains(d, "attn.qkv.") {
				ts = append(ts, safetensors.Tensor{Name: d, DType: info.DType, Shape: info.Shape, Data: b})
				continue
			}
			hd, in, off := cfg.HeadDim(), info.Shape[1], 0
			for i, rows := range []int{cfg.NHeads * hd, cfg.NKVHeads * hd, cfg.NKVHeads * hd} {
				n := rows * in * info.DType.Size()
				name := strings.Replace(d, "attn.qkv.", "attn.to_"+string("qkv"[i])+".", 1)
				ts = append(ts, safetensors.Tensor{Name: name, DType: info.DType, Shape: []int{rows, in}, Data: b[off : off+n]})
				off += n
			}
		}
	}
	ts = append(ts, extra...)
	if layout == "comfyui" {
		p := filepath.Join(root, "newbie.safetensors")
		ts = append(ts, safetensors.Tensor{Name: "vae.decoder.conv_in.bias", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)})
		if err := safetensors.Write(p, ts, nil); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dir := filepath.Join(root, "transformer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shards := [2][]safetensors.Tensor{}
	wm := map[string]string{}
	for i, x := range ts {
		shards[i%2] = append(shards[i%2], x)
		wm[x.Name] = []string{"model-1.safetensors", "model-2.safetensors"}[i%2]
	}
	for i, name := range []string{"model-1.safetensors", "model-2.safetensors"} {
		if err := safetensors.Write(filepath.Join(dir, name), shards[i], map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"weight_map": wm})
	if err := os.WriteFile(filepath.Join(dir, "diffusion_pytorch_model.safetensors.index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// forwardValues loads path (with cfg as the fallback architecture) in F32
// and returns the output on the golden inputs.
func forwardValues(t *testing.T, g goldenRun, path string, cfg *Config) []float64 {
	t.Helper()
	e := ag.New(cpu.New())
	m, err := LoadWithConfig(e, path, cfg, Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	in, _ := goldenInputs(t, e, g, kernels.F32)
	y, err := m.Forward(in)
	if err != nil {
		t.Fatal(err)
	}
	v, err := y.Values()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLoadLayouts: the golden weights rewritten as a ComfyUI file and as a
// sharded diffusers folder load (with a preset, since they carry no config)
// into a model whose output equals the upstream file's bit for bit.
func TestLoadLayouts(t *testing.T) {
	g := openGolden(t)
	tiny, err := g.gold.Config()
	if err != nil {
		t.Fatal(err)
	}
	ref := forwardValues(t, g, g.weights, nil)
	for _, layout := range []string{"comfyui", "diffusers"} {
		t.Run(layout, func(t *testing.T) {
			path := writeLayout(t, g.weights, layout)
			paths := []string{path}
			if layout == "diffusers" {
				paths = append(paths, filepath.Join(path, "transformer"), filepath.Join(path, "transformer", "diffusion_pytorch_model.safetensors.index.json"))
			}
			for _, p := range paths {
				got := forwardValues(t, g, p, &tiny)
				for i := range ref {
					if math.Float64bits(got[i]) != math.Float64bits(ref[i]) {
						t.Fatalf("%s: output[%d] = %v, upstream file gives %v", p, i, got[i], ref[i])
					}
				}
			}
			// Without a config and without metadata the loader says so.
			_, err := Load(ag.New(cpu.New()), path, Options{DType: kernels.F32})
			if err == nil || !strings.Contains(err.Error(), "no __metadata__") || !strings.Contains(err.Error(), "preset") {
				t.Errorf("loading without any config: %v", err)
			}
		})
	}
}

// TestLoadLayoutKeyErrors: in every layout, missing, unexpected (including
// diffusion-model keys with no upstream name) and mis-shaped keys are
// reported together by upstream name.
func TestLoadLayoutKeyErrors(t *testing.T) {
	g := openGolden(t)
	tiny, err := g.gold.Config()
	if err != nil {
		t.Fatal(err)
	}
	wrong := tiny
	wrong.NLayers = 3 // layers.2.* missing
	wrong.CapFeatDim = 32
	for _, layout := range []string{"comfyui", "diffusers"} {
		t.Run(layout, func(t *testing.T) {
			// A ComfyUI key is reported under its upstream name; a diffusers
			// key with no upstream counterpart under its own.
			key, stray := "model.diffusion_model.layers.0.bogus.weight", "layers.0.bogus.weight"
			if layout == "diffusers" {
				key, stray = "layers.0.attn.bogus.weight", "layers.0.attn.bogus.weight"
			}
			path := writeLayout(t, g.weights, layout, safetensors.Tensor{Name: key, DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)})
			_, err := LoadWithConfig(ag.New(cpu.New()), path, &wrong, Options{DType: kernels.F32})
			ke, ok := IsKeyError(err)
			if !ok {
				t.Fatalf("error %v is not a *KeyError", err)
			}
			msg := err.Error()
			for _, want := range []string{"missing    layers.2.attention.qkv.weight (expected shape [192 96])", "unexpected " + stray, "mis-shaped cap_embedder.1.weight: file has [96 64], expected [96 32]", path} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q:\n%s", want, msg)
				}
			}
			if strings.Contains(msg, "vae.") {
				t.Errorf("a ComfyUI file's VAE tensors are reported, but they are skipped on purpose:\n%s", msg)
			}
			if len(ke.Unexpected) != 1 {
				t.Errorf("unexpected %v, want only %s", ke.Unexpected, stray)
			}
		})
	}
}

// TestResolveConfig: metadata wins, a fallback fills in, a conflicting
// fallback and no config at all are errors.
func TestResolveConfig(t *testing.T) {
	g := openGolden(t)
	src, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	tiny, _ := g.gold.Config()
	lumina, _ := Preset("lumina2")
	bare := filepath.Join(t.TempDir(), "bare.safetensors")
	if err := safetensors.Write(bare, []safetensors.Tensor{{Name: "x_embedder.bias", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)}}, nil); err != nil {
		t.Fatal(err)
	}
	bf, err := safetensors.Open(bare)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	cases := []struct {
		name     string
		src      Source
		fallback *Config
		want     string // error substring, "" for success
	}{
		{"metadata", src, nil, ""},
		{"metadata and same fallback", src, &tiny, ""},
		{"conflicting fallback", src, &lumina, "differs"},
		{"fallback only", bf, &tiny, ""},
		{"neither", bf, nil, "no config was given"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ResolveConfig(c.src, c.fallback)
			if c.want == "" {
				if err != nil || got.JSON() != tiny.JSON() {
					t.Errorf("got %s, %v; want the tiny config", got.JSON(), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

// TestGoldenReportPass: the tolerance check per group, NaN included.
func TestGoldenReportPass(t *testing.T) {
	p, _ := ParsePrecision("bf16")
	cases := []struct {
		name string
		rep  GoldenReport
		ok   bool
		want string
	}{
		{"within", GoldenReport{Output: 1e-2, Params: map[string]float64{"a": 4e-2}}, true, ""},
		{"output", GoldenReport{Output: 3e-2}, false, "output"},
		{"param", GoldenReport{Output: 1e-3, Params: map[string]float64{"a": 1e-3, "b": 6e-2}}, false, "(b)"},
		{"nan lora", GoldenReport{Output: 1e-3, LoRA: map[string]float64{"a": 1e-3, "z": math.NaN()}}, false, "LoRA gradients NaN"},
		{"nan output", GoldenReport{Output: math.NaN()}, false, "output NaN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ok, fails := c.rep.Pass(p)
			if ok != c.ok || !strings.Contains(strings.Join(fails, ";"), c.want) {
				t.Errorf("Pass = %v, %q; want %v mentioning %q", ok, fails, c.ok, c.want)
			}
		})
	}
	if _, err := ParsePrecision("fp8"); err == nil {
		t.Errorf("fp8 accepted")
	}
}

// TestRunGoldenLayouts: RunGolden reads the diffusers rewrite too (the
// golden file's config fills in for the missing metadata) and gives the
// upstream file's errors.
func TestRunGoldenLayouts(t *testing.T) {
	g := openGolden(t)
	p, _ := ParsePrecision("fp64")
	want, err := RunGolden(cpu.New(), g.weights, g.path, GoldenOptions{Precision: p})
	if err != nil {
		t.Fatal(err)
	}
	got, err := RunGolden(cpu.New(), writeLayout(t, g.weights, "diffusers"), g.path, GoldenOptions{Precision: p})
	if err != nil {
		t.Fatal(err)
	}
	if got.Output != want.Output || len(got.Params) != len(want.Params) {
		t.Errorf("diffusers: output error %g over %d params, upstream %g over %d", got.Output, len(got.Params), want.Output, len(want.Params))
	}
	if ok, fails := got.Pass(p); !ok {
		t.Errorf("diffusers rewrite fails parity: %v", fails)
	}
}

// TestMatchPreset: the golden weights are the tiny preset by their shapes
// and by their metadata; another architecture is custom.
func TestMatchPreset(t *testing.T) {
	g := openGolden(t)
	src, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	tiny, _ := g.gold.Config()
	other := tiny
	other.NormEps = 1e-6
	for _, c := range []struct {
		name string
		cfg  *Config
		want string
	}{{"by shapes", nil, "tiny"}, {"by metadata", &tiny, "tiny"}, {"other metadata", &other, "custom"}} {
		if got := MatchPreset(src, c.cfg); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	bare := filepath.Join(t.TempDir(), "bare.safetensors")
	if err := safetensors.Write(bare, []safetensors.Tensor{{Name: "x_embedder.bias", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)}}, nil); err != nil {
		t.Fatal(err)
	}
	bf, err := safetensors.Open(bare)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	if got := MatchPreset(bf, nil); got != "custom" {
		t.Errorf("a one-tensor file matches preset %s", got)
	}
}
