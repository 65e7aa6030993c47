package checkpoints

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// testLoRA builds an adapter with awkward sizes and random (never zero)
// values; one layer has its own rank and alpha so the per-layer paths of
// every format are exercised.
func testLoRA(t *testing.T) *LoRA {
	t.Helper()
	r := kerneltest.Rng(t)
	layer := func(in, out, rank int, alpha float64) LoRALayer {
		ly := LoRALayer{In: in, Out: out, Rank: rank, Alpha: alpha, A: make([]float32, rank*in), B: make([]float32, out*rank)}
		for i := range ly.A {
			ly.A[i] = float32(r.NormFloat64())
		}
		for i := range ly.B {
			ly.B[i] = float32(r.NormFloat64() * 0.1)
		}
		return ly
	}
	return &LoRA{
		Rank: 3, Alpha: 7,
		Targets: []string{"attention.qkv", "feed_forward.w2", "adaLN_modulation.1", "attention.out"},
		Layers: map[string]LoRALayer{
			"layers.0.attention.qkv":             layer(13, 37, 3, 7),
			"layers.11.attention.out":            layer(13, 13, 3, 7),
			"context_refiner.1.feed_forward.w2":  layer(37, 13, 3, 7),
			"noise_refiner.0.adaLN_modulation.1": layer(7, 52, 5, 2.5),
			"final_layer.adaLN_modulation.1":     layer(7, 13, 3, 7),
		},
		Meta: map[string]string{
			MetaBaseModelHash: "0123abcd",
			MetaSteps:         "1200",
			MetaConfig:        "lora:\n  rank: 3\n  alpha: 7\n",
			MetaBaseModel:     "NewBie-AI/NewBie-image-Exp0.1",
		},
	}
}

func writePath(dir string, f Format) string {
	if f == FormatPEFT {
		return filepath.Join(dir, "adapter")
	}
	return filepath.Join(dir, string(f)+".safetensors")
}

// TestLoRARoundTripF32: export→import gives back exactly the same adapter
// in every format.
func TestLoRARoundTripF32(t *testing.T) {
	for _, f := range []Format{FormatPEFT, FormatComfyUI, FormatKohya} {
		t.Run(string(f), func(t *testing.T) {
			want := testLoRA(t)
			p := writePath(t.TempDir(), f)
			if err := WriteLoRA(p, want, f, ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			got, gotF, err := ReadLoRA(p)
			if err != nil {
				t.Fatal(err)
			}
			if gotF != f {
				t.Errorf("format detected as %s, want %s", gotF, f)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip differs:\n got  rank %d alpha %v targets %v meta %v\n want rank %d alpha %v targets %v meta %v",
					got.Rank, got.Alpha, got.Targets, got.Meta, want.Rank, want.Alpha, want.Targets, want.Meta)
				for name, w := range want.Layers {
					g := got.Layers[name]
					if !reflect.DeepEqual(g, w) {
						t.Errorf("layer %s: got in %d out %d rank %d alpha %v, want %d %d %d %v", name, g.In, g.Out, g.Rank, g.Alpha, w.In, w.Out, w.Rank, w.Alpha)
					}
				}
			}
		})
	}
}

// TestLoRAKeys checks the exact key names each format writes, which is what
// other programs load by.
func TestLoRAKeys(t *testing.T) {
	cases := []struct {
		f    Format
		file string
		want []string
	}{
		{FormatPEFT, PEFTWeightsFile, []string{
			"base_model.model.layers.0.attention.qkv.lora_A.weight",
			"base_model.model.layers.0.attention.qkv.lora_B.weight"}},
		{FormatComfyUI, "", []string{
			"diffusion_model.layers.0.attention.qkv.lora_A.weight",
			"diffusion_model.layers.0.attention.qkv.lora_B.weight",
			"diffusion_model.layers.0.attention.qkv.alpha"}},
		{FormatKohya, "", []string{
			"lora_unet_layers_0_attention_qkv.lora_down.weight",
			"lora_unet_layers_0_attention_qkv.lora_up.weight",
			"lora_unet_layers_0_attention_qkv.alpha",
			"lora_unet_noise_refiner_0_adaLN_modulation_1.alpha"}},
	}
	for _, c := range cases {
		t.Run(string(c.f), func(t *testing.T) {
			l := testLoRA(t)
			p := writePath(t.TempDir(), c.f)
			if err := WriteLoRA(p, l, c.f, ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			if c.file != "" {
				p = filepath.Join(p, c.file)
			}
			f, err := safetensors.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for _, k := range c.want {
				info, ok := f.Info(k)
				if !ok {
					t.Errorf("missing key %q (have %v)", k, f.Names()[:3])
					continue
				}
				if strings.HasSuffix(k, ".alpha") && (info.DType != safetensors.F32 || len(info.Shape) != 0) {
					t.Errorf("%s is %s%v, want a 0-d F32 scalar", k, info.DType, info.Shape)
				}
			}
			if n, want := len(f.Names()), len(l.Layers)*map[Format]int{FormatPEFT: 2, FormatComfyUI: 3, FormatKohya: 3}[c.f]; n != want {
				t.Errorf("%d tensors, want %d", n, want)
			}
			md := f.Metadata()
			for k, v := range map[string]string{MetaRank: "3", MetaAlpha: "7", MetaSteps: "1200", MetaBaseModelHash: "0123abcd"} {
				if md[k] != v {
					t.Errorf("metadata %s = %q, want %q", k, md[k], v)
				}
			}
			if c.f == FormatKohya && (md["ss_network_dim"] != "3" || md["ss_network_alpha"] != "7") {
				t.Errorf("kohya metadata ss_network_dim/alpha = %q/%q", md["ss_network_dim"], md["ss_network_alpha"])
			}
			if c.f == FormatKohya {
				// sshs_model_hash is the SHA-256 of everything after the
				// header, as kohya's addnet_hash_safetensors reads it.
				raw, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				n := binary.LittleEndian.Uint64(raw[:8])
				sum := sha256.Sum256(raw[8+n:])
				if got := md[MetaKohyaHash]; got != hex.EncodeToString(sum[:]) {
					t.Errorf("sshs_model_hash %q, the data section hashes to %x", got, sum)
				}
			}
			a, _ := f.Float64(c.want[0])
			want := l.Layers["layers.0.attention.qkv"].A
			ref := make([]float64, len(want))
			for i, x := range want {
				ref[i] = float64(x)
			}
			if e := kernels.RelErr(a, ref); e != 0 {
				t.Errorf("stored A differs from the layer's A: rel err %g", e)
			}
		})
	}
}

// TestLoRAHalfPrecision: BF16 and F16 exports hold each value rounded to
// nearest in that type, and read back within the type's precision of the
// float64 reference.
func TestLoRAHalfPrecision(t *testing.T) {
	cases := []struct {
		dt    safetensors.DType
		round func(float32) float32
		tol   float64
	}{
		{safetensors.BF16, kernels.RoundBF16, 4e-3},
		{safetensors.F16, kernels.RoundF16, 5e-4},
	}
	for _, c := range cases {
		for _, f := range []Format{FormatPEFT, FormatComfyUI, FormatKohya} {
			t.Run(string(c.dt)+"/"+string(f), func(t *testing.T) {
				want := testLoRA(t)
				p := writePath(t.TempDir(), f)
				if err := WriteLoRA(p, want, f, ExportOptions{DType: c.dt}); err != nil {
					t.Fatal(err)
				}
				got, _, err := ReadLoRA(p)
				if err != nil {
					t.Fatal(err)
				}
				for name, w := range want.Layers {
					g := got.Layers[name]
					if g.Alpha != w.Alpha {
						t.Errorf("%s: alpha %v, want %v (alpha must stay exact)", name, g.Alpha, w.Alpha)
					}
					for _, pair := range [][2][]float32{{g.A, w.A}, {g.B, w.B}} {
						gv, wv := make([]float64, len(pair[0])), make([]float64, len(pair[1]))
						for i := range pair[1] {
							gv[i], wv[i] = float64(pair[0][i]), float64(pair[1][i])
							if pair[0][i] != c.round(pair[1][i]) {
								t.Fatalf("%s[%d] = %v, want %v rounded to %s = %v", name, i, pair[0][i], pair[1][i], c.dt, c.round(pair[1][i]))
							}
						}
						kerneltest.Check(t, name, gv, wv, c.tol)
					}
				}
			})
		}
	}
}

// TestGoldenPEFT loads the reference PEFT adapter: rank 4, alpha 8, the six
// target kinds, every layer's values as the file holds them (F64 there,
// rounded once to float32 here).
func TestGoldenPEFT(t *testing.T) {
	dir := goldentest.Path(t, "nextdit", "tiny.peft_lora")
	l, f, err := ReadLoRA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if f != FormatPEFT || l.Rank != 4 || l.Alpha != 8 {
		t.Fatalf("format %s rank %d alpha %v, want peft 4 8", f, l.Rank, l.Alpha)
	}
	tg := append([]string(nil), l.Targets...)
	sort.Strings(tg)
	wantT := []string{"adaLN_modulation.1", "attention.out", "attention.qkv", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"}
	if !reflect.DeepEqual(tg, wantT) {
		t.Errorf("targets %v, want %v", tg, wantT)
	}
	// 2 layers + 2 noise refiners × 6 kinds, 2 context refiners × 5 (no
	// modulation), and the final layer's adaLN.
	if len(l.Layers) != 35 {
		t.Errorf("%d layers, want 35", len(l.Layers))
	}
	sf, err := safetensors.Open(filepath.Join(dir, PEFTWeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	for name, ly := range l.Layers {
		if ly.Rank != 4 || ly.Alpha != 8 {
			t.Errorf("%s: rank %d alpha %v", name, ly.Rank, ly.Alpha)
		}
		for which, got := range map[string][]float32{"A": ly.A, "B": ly.B} {
			ref, err := sf.Float64("base_model.model." + name + ".lora_" + which + ".weight")
			if err != nil {
				t.Fatal(err)
			}
			g := make([]float64, len(got))
			for i, x := range got {
				g[i] = float64(x)
			}
			kerneltest.Check(t, name+"."+which, g, ref, 1e-7)
		}
	}
	qkv := l.Layers["layers.1.attention.qkv"]
	if qkv.In != 96 || qkv.Out != 192 {
		t.Errorf("layers.1.attention.qkv is %d→%d, want 96→192", qkv.In, qkv.Out)
	}
}

// TestGoldenPEFTConfigFields: the adapter_config.json we write has the
// fields and values the reference PEFT wrote for the same adapter, so PEFT
// loads it the same way.
func TestGoldenPEFTConfigFields(t *testing.T) {
	dir := goldentest.Path(t, "nextdit", "tiny.peft_lora")
	raw, err := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	var golden map[string]any
	if err := json.Unmarshal(raw, &golden); err != nil {
		t.Fatal(err)
	}
	l, _, err := ReadLoRA(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "again")
	if err := WritePEFT(out, l, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	raw, err = os.ReadFile(filepath.Join(out, PEFTConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	var ours map[string]any
	if err := json.Unmarshal(raw, &ours); err != nil {
		t.Fatal(err)
	}
	for k := range ours {
		if _, ok := golden[k]; !ok {
			t.Errorf("we write %q, which PEFT 0.21's config does not have", k)
		}
	}
	for _, k := range []string{"r", "lora_alpha", "peft_type", "bias", "fan_in_fan_out", "use_dora", "use_rslora", "task_type", "rank_pattern", "alpha_pattern", "base_model_name_or_path", "lora_dropout"} {
		if !reflect.DeepEqual(ours[k], golden[k]) {
			t.Errorf("%s = %v, golden has %v", k, ours[k], golden[k])
		}
	}
	if !reflect.DeepEqual(ours["target_modules"], golden["target_modules"]) {
		t.Errorf("target_modules %v, golden %v", ours["target_modules"], golden["target_modules"])
	}
	back, _, err := ReadLoRA(out)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, l) {
		t.Error("golden adapter re-exported as PEFT does not read back identically")
	}
}

// TestPEFTPatterns: layers that differ from the defaults go into
// rank_pattern / alpha_pattern under a key that matches that module only.
func TestPEFTPatterns(t *testing.T) {
	l := testLoRA(t)
	dir := filepath.Join(t.TempDir(), "p")
	if err := WritePEFT(dir, l, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	var c struct {
		Rank  map[string]float64 `json:"rank_pattern"`
		Alpha map[string]float64 `json:"alpha_pattern"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	key := `noise_refiner\.0\.adaLN_modulation\.1`
	if len(c.Rank) != 1 || c.Rank[key] != 5 || len(c.Alpha) != 1 || c.Alpha[key] != 2.5 {
		t.Errorf("rank_pattern %v alpha_pattern %v, want only %s → 5 / 2.5", c.Rank, c.Alpha, key)
	}
	ps, err := parsePatterns("x", "rank_pattern", json.RawMessage(`{"`+strings.ReplaceAll(key, `\`, `\\`)+`": 5}`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		hit  bool
	}{
		{"noise_refiner.0.adaLN_modulation.1", true},
		{"noise_refiner.10.adaLN_modulation.1", false},
		{"noise_refiner.0.adaLN_modulation.11", false},
		{"noise_refinerX0.adaLN_modulation.1", false},
	}
	for _, cs := range cases {
		if _, hit := matchPattern(ps, cs.path); hit != cs.hit {
			t.Errorf("pattern %s on %s: hit %v, want %v", key, cs.path, hit, cs.hit)
		}
	}
}

// TestDetectLoRAFormat covers the key forms and the refusals.
func TestDetectLoRAFormat(t *testing.T) {
	cases := []struct {
		keys []string
		want Format
		err  string
	}{
		{[]string{"base_model.model.layers.0.attention.qkv.lora_A.weight"}, FormatPEFT, ""},
		{[]string{"diffusion_model.layers.0.attention.qkv.lora_B.weight", "diffusion_model.layers.0.attention.qkv.alpha"}, FormatComfyUI, ""},
		{[]string{"lora_unet_layers_0_attention_qkv.lora_up.weight"}, FormatKohya, ""},
		{[]string{"lora_unet_a.lora_up.weight", "diffusion_model.a.lora_B.weight"}, "", "several LoRA formats"},
		{[]string{"transformer.layers.0.attn.to_q.lora_A.weight"}, "", "diffusers-named"},
		{[]string{"model.layers.0.weight"}, "", "no LoRA keys"},
		{[]string{"lora_unet_a.lora_up.weight", "stray"}, "", `"stray"`},
		{nil, "", "no tensors"},
	}
	for _, c := range cases {
		got, err := DetectLoRAFormat(c.keys)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: error %v, want one containing %q", c.keys, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%v: %s, %v; want %s", c.keys, got, err, c.want)
		}
	}
}

// TestKohyaPath: the underscore form reads back to the module path for
// every Next-DiT module kind.
func TestKohyaPath(t *testing.T) {
	for _, p := range []string{
		"layers.0.attention.qkv", "layers.35.attention.out", "layers.3.feed_forward.w1",
		"noise_refiner.1.adaLN_modulation.1", "context_refiner.0.feed_forward.w3",
		"final_layer.adaLN_modulation.1", "final_layer.linear", "x_embedder", "cap_embedder.1",
		"t_embedder.mlp.0", "clip_text_pooled_proj.1", "time_text_embed.1",
		"layers.2.attention.q_norm", "layers.2.attention_norm1",
	} {
		k := kohyaName(p)
		if got := kohyaPath(strings.TrimPrefix(k, kohyaPrefix)); got != p {
			t.Errorf("%s → %s → %s", p, k, got)
		}
	}
}

// TestLoRAErrors: bad adapters and bad files are refused with the layer or
// key named.
func TestLoRAErrors(t *testing.T) {
	t.Run("validate", func(t *testing.T) {
		cases := []struct {
			mod  func(l *LoRA)
			want string
		}{
			{func(l *LoRA) {
				ly := l.Layers["layers.0.attention.qkv"]
				ly.A = ly.A[1:]
				l.Layers["layers.0.attention.qkv"] = ly
			}, `"layers.0.attention.qkv": A has`},
			{func(l *LoRA) {
				ly := l.Layers["final_layer.adaLN_modulation.1"]
				ly.Out++
				l.Layers["final_layer.adaLN_modulation.1"] = ly
			}, `"final_layer.adaLN_modulation.1": B has`},
			{func(l *LoRA) { l.Layers["x.weight"] = l.Layers["layers.0.attention.qkv"] }, "without .weight"},
			{func(l *LoRA) { l.Alpha = math.NaN() }, "alpha"},
			{func(l *LoRA) { l.Layers = nil }, "no layers"},
		}
		for _, c := range cases {
			l := testLoRA(t)
			c.mod(l)
			err := WriteLoRA(filepath.Join(t.TempDir(), "x.safetensors"), l, FormatComfyUI, ExportOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		}
	})
	t.Run("kohya-ambiguous", func(t *testing.T) {
		l := testLoRA(t)
		l.Layers["my_block.proj"] = l.Layers["layers.0.attention.qkv"]
		err := WriteKohya(filepath.Join(t.TempDir(), "k.safetensors"), l, ExportOptions{})
		if err == nil || !strings.Contains(err.Error(), "my_block.proj") {
			t.Errorf("error %v, want one naming my_block.proj", err)
		}
	})
	t.Run("dtype", func(t *testing.T) {
		err := WriteLoRA(filepath.Join(t.TempDir(), "x.safetensors"), testLoRA(t), FormatKohya, ExportOptions{DType: safetensors.I32})
		if err == nil || !strings.Contains(err.Error(), "I32") {
			t.Errorf("error %v, want one naming I32", err)
		}
	})
	t.Run("missing-half", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "half.safetensors")
		a := floatTensor("diffusion_model.layers.0.attention.qkv.lora_A.weight", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}, safetensors.F32)
		if err := safetensors.Write(p, []safetensors.Tensor{a}, nil); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReadLoRA(p)
		if err == nil || !strings.Contains(err.Error(), "lora_A.weight") || !strings.Contains(err.Error(), "no up/B") {
			t.Errorf("error %v, want one naming the lone A key", err)
		}
	})
	t.Run("rank-mismatch", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "r.safetensors")
		ts := []safetensors.Tensor{
			floatTensor("lora_unet_layers_0_attention_qkv.lora_down.weight", []int{2, 3}, make([]float32, 6), safetensors.F32),
			floatTensor("lora_unet_layers_0_attention_qkv.lora_up.weight", []int{4, 3}, make([]float32, 12), safetensors.F32),
		}
		if err := safetensors.Write(p, ts, nil); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReadLoRA(p)
		if err == nil || !strings.Contains(err.Error(), "ranks differ") || !strings.Contains(err.Error(), p) {
			t.Errorf("error %v, want a rank mismatch naming the file", err)
		}
	})
	t.Run("peft-config", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "p")
		if err := WritePEFT(dir, testLoRA(t), ExportOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(dir, PEFTConfigFile)
		raw, _ := os.ReadFile(cfg)
		os.WriteFile(cfg, []byte(strings.Replace(string(raw), `"use_dora": false`, `"use_dora": true`, 1)), 0o644)
		_, _, err := ReadLoRA(dir)
		if err == nil || !strings.Contains(err.Error(), "DoRA") || !strings.Contains(err.Error(), cfg) {
			t.Errorf("error %v, want a DoRA refusal naming %s", err, cfg)
		}
	})
}

// TestPEFTReplace: writing a PEFT folder over an existing one replaces it
// whole and leaves no temporary folder behind.
func TestPEFTReplace(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "adapter")
	first := testLoRA(t)
	if err := WritePEFT(dir, first, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "stale.txt"), []byte("x"), 0o644)
	second := testLoRA(t)
	second.Meta[MetaSteps] = "2400"
	if err := WritePEFT(dir, second, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadLoRA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Meta[MetaSteps] != "2400" {
		t.Errorf("steps %q after replacing, want 2400", got.Meta[MetaSteps])
	}
	if _, err := os.Stat(filepath.Join(dir, "stale.txt")); err == nil {
		t.Error("a file of the old folder survived the replacement")
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("folder holds %v, want only adapter", names)
	}
}

// TestForeignSingleFile: a single file written by another tool (no
// metadata of ours, [1]-shaped or missing alphas, BF16 alpha, lora_up/down
// under diffusion_model.) reads with the defaults ComfyUI would apply: a
// missing alpha means scale 1 (alpha = rank), and the adapter's rank and
// alpha are those of most layers.
func TestForeignSingleFile(t *testing.T) {
	bf16Alpha := []byte{0x00, 0x41} // 8.0 in bfloat16
	f32 := func(name string, shape []int, n int) safetensors.Tensor {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(i%7) - 2.5
		}
		return floatTensor(name, shape, v, safetensors.F32)
	}
	cases := []struct {
		name   string
		ts     []safetensors.Tensor
		format Format
		rank   int
		alpha  float64
		layers map[string]float64 // layer → alpha
	}{
		{"comfy-mixed", []safetensors.Tensor{
			f32("diffusion_model.layers.0.attention.qkv.lora_A.weight", []int{2, 5}, 10),
			f32("diffusion_model.layers.0.attention.qkv.lora_B.weight", []int{9, 2}, 18),
			{Name: "diffusion_model.layers.0.attention.qkv.alpha", DType: safetensors.BF16, Shape: []int{1}, Data: bf16Alpha},
			f32("diffusion_model.layers.1.attention.out.lora_down.weight", []int{2, 5}, 10),
			f32("diffusion_model.layers.1.attention.out.lora_up.weight", []int{5, 2}, 10),
			{Name: "diffusion_model.layers.1.attention.out.alpha", DType: safetensors.BF16, Shape: []int{}, Data: bf16Alpha},
			f32("diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight", []int{3, 5}, 15),
			f32("diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight", []int{5, 3}, 15),
		}, FormatComfyUI, 2, 8, map[string]float64{
			"layers.0.attention.qkv": 8, "layers.1.attention.out": 8, "final_layer.adaLN_modulation.1": 3}},
		{"kohya-no-alpha", []safetensors.Tensor{
			f32("lora_unet_context_refiner_0_feed_forward_w2.lora_down.weight", []int{4, 7}, 28),
			f32("lora_unet_context_refiner_0_feed_forward_w2.lora_up.weight", []int{5, 4}, 20),
		}, FormatKohya, 4, 4, map[string]float64{"context_refiner.0.feed_forward.w2": 4}},
		{"bare-peft", []safetensors.Tensor{
			f32("base_model.model.layers.0.feed_forward.w1.lora_A.weight", []int{3, 5}, 15),
			f32("base_model.model.layers.0.feed_forward.w1.lora_B.weight", []int{11, 3}, 33),
		}, FormatPEFT, 3, 3, map[string]float64{"layers.0.feed_forward.w1": 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "foreign.safetensors")
			if err := safetensors.Write(p, c.ts, map[string]string{"ss_training_comment": "hello"}); err != nil {
				t.Fatal(err)
			}
			l, f, err := ReadLoRA(p)
			if err != nil {
				t.Fatal(err)
			}
			if f != c.format || l.Rank != c.rank || l.Alpha != c.alpha {
				t.Errorf("format %s rank %d alpha %v, want %s %d %v", f, l.Rank, l.Alpha, c.format, c.rank, c.alpha)
			}
			if len(l.Layers) != len(c.layers) {
				t.Errorf("layers %v", l.LayerNames())
			}
			for name, a := range c.layers {
				if ly, ok := l.Layers[name]; !ok || ly.Alpha != a {
					t.Errorf("layer %s: present %v alpha %v, want alpha %v", name, ok, ly.Alpha, a)
				}
			}
			if l.Meta["ss_training_comment"] != "hello" {
				t.Errorf("foreign metadata lost: %v", l.Meta)
			}
			if err := l.Validate(); err != nil {
				t.Errorf("imported adapter does not validate: %v", err)
			}
		})
	}
}
