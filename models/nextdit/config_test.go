package nextdit

import (
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestPresetParameterCounts counts each preset's weights from its config
// alone (nothing is allocated). newbie-exp0.1's figure is the published
// one; lumina2's is what its config gives (its bf16 file is ~5.2 GB).
func TestPresetParameterCounts(t *testing.T) {
	cases := []struct {
		preset  string
		params  int64
		tensors int
		ffn     int
	}{
		{"newbie-exp0.1", 3_486_636_096, 535, 9216},
		{"lumina2", 2_609_771_456, 400, 9216},
		{"tiny", 1_056_928, 93, 384},
	}
	for _, c := range cases {
		cfg, err := Preset(c.preset)
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", c.preset, err)
		}
		if got := cfg.NumParams(); got != c.params {
			t.Errorf("%s: %d parameters, want %d", c.preset, got, c.params)
		}
		if got := len(cfg.Params()); got != c.tensors {
			t.Errorf("%s: %d tensors, want %d", c.preset, got, c.tensors)
		}
		if got := cfg.FFNHidden(); got != c.ffn {
			t.Errorf("%s: FFN hidden %d, want %d", c.preset, got, c.ffn)
		}
	}
	if _, err := Preset("sdxl"); err == nil || !strings.Contains(err.Error(), "newbie-exp0.1") {
		t.Errorf("unknown preset error does not list the presets: %v", err)
	}
}

// TestTinyPresetIsGoldenConfig checks that the tiny preset is the golden
// file's architecture, read from its metadata.
func TestTinyPresetIsGoldenConfig(t *testing.T) {
	g := openGolden(t)
	f, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fromFile, err := ConfigFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	tiny, _ := Preset("tiny")
	if fromFile.JSON() != tiny.JSON() {
		t.Errorf("golden config %s\n differs from the tiny preset %s", fromFile.JSON(), tiny.JSON())
	}
	if err := CheckKeys(f, tiny); err != nil {
		t.Errorf("golden weights do not fit the tiny preset: %v", err)
	}
}

// TestParseConfig covers the JSON spellings upstream writes and the fields
// that make a config unbuildable.
func TestParseConfig(t *testing.T) {
	base := `"patch_size": 2, "in_channels": 16, "dim": 96, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "multiple_of": 32, "norm_eps": 1e-05, "qk_norm": true, "cap_feat_dim": 64, "axes_lens": [64, 32, 32]`
	cases := []struct {
		name, js string
		want     string // error substring; "" for success
		ffn      int
	}{
		{"ok, kv heads default", `{` + base + `, "axes_dims": [16, 16, 16]}`, "", 384},
		{"ffn multiplier", `{` + base + `, "axes_dims": [16, 16, 16], "ffn_dim_multiplier": 1.3}`, "", 512},
		{"axes do not sum", `{` + base + `, "axes_dims": [16, 16, 8]}`, "axes_dims", 0},
		{"odd axis", `{` + base + `, "axes_dims": [15, 17, 16]}`, "axes_dims", 0},
		{"bad kv heads", `{` + base + `, "axes_dims": [16, 16, 16], "n_kv_heads": 3}`, "n_kv_heads", 0},
		{"not json", `{"dim": }`, "JSON", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig(c.js)
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %v does not mention %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.NKVHeads != cfg.NHeads {
				t.Errorf("n_kv_heads %d, want n_heads %d", cfg.NKVHeads, cfg.NHeads)
			}
			if got := cfg.FFNHidden(); got != c.ffn {
				t.Errorf("FFN hidden %d, want %d", got, c.ffn)
			}
		})
	}
}

// TestLoaderReportsAllKeyProblems writes a file with one weight missing,
// one extra and one mis-shaped, and expects all three named together.
func TestLoaderReportsAllKeyProblems(t *testing.T) {
	cfg, _ := Preset("tiny")
	var ts []safetensors.Tensor
	for _, p := range cfg.Params() {
		shape := p.Shape
		switch p.Name {
		case "layers.1.feed_forward.w3.weight":
			continue // missing
		case "layers.0.attention.out.weight":
			shape = []int{96, 95} // mis-shaped
		case "norm_final.weight":
			continue // absent but unused upstream: accepted
		}
		n := 1
		for _, s := range shape {
			n *= s
		}
		ts = append(ts, safetensors.Tensor{Name: p.Name, DType: safetensors.F32, Shape: shape, Data: make([]byte, 4*n)})
	}
	ts = append(ts, safetensors.Tensor{Name: "pad_token", DType: safetensors.F32, Shape: []int{96}, Data: make([]byte, 4*96)})
	path := filepath.Join(t.TempDir(), "bad.safetensors")
	if err := safetensors.Write(path, ts, map[string]string{"config": cfg.JSON()}); err != nil {
		t.Fatal(err)
	}
	_, err := Load(ag.New(cpu.New()), path, Options{DType: kernels.F32})
	ke, ok := IsKeyError(err)
	if !ok {
		t.Fatalf("want a *KeyError, got %v", err)
	}
	if len(ke.Missing) != 1 || ke.Missing[0].Name != "layers.1.feed_forward.w3.weight" {
		t.Errorf("missing = %v", ke.Missing)
	}
	if len(ke.Unexpected) != 1 || ke.Unexpected[0] != "pad_token" {
		t.Errorf("unexpected = %v", ke.Unexpected)
	}
	if len(ke.Misshaped) != 1 || ke.Misshaped[0].Name != "layers.0.attention.out.weight" {
		t.Errorf("mis-shaped = %v", ke.Misshaped)
	}
	for _, want := range []string{
		"missing    layers.1.feed_forward.w3.weight (expected shape [384 96])",
		"unexpected pad_token",
		"mis-shaped layers.0.attention.out.weight: file has [96 95], expected [96 96]",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("report lacks %q:\n%v", want, err)
		}
	}
}

// TestLoadConvertsToStorageDType checks that weights land in the storage
// dtype, rounded once from the file's values: from the golden's F32 file
// and from a BF16 copy of it, into every storage dtype (the backend's Cast
// converts the file's own bytes where both dtypes are 16- or 32-bit
// floats; the host converts for F64).
func TestLoadConvertsToStorageDType(t *testing.T) {
	g := openGolden(t)
	f, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const name = "layers.0.feed_forward.w1.weight"
	src, err := f.Float64(name)
	if err != nil {
		t.Fatal(err)
	}
	// The same weights rounded to bf16, as a bf16 checkpoint holds them.
	bf16Path := filepath.Join(t.TempDir(), "bf16.safetensors")
	var ts []safetensors.Tensor
	for _, ti := range f.Tensors() {
		v, err := f.BF16(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.Tensor{Name: ti.Name, DType: safetensors.BF16, Shape: ti.Shape, Data: safetensors.EncodeU16(v)})
	}
	if err := safetensors.Write(bf16Path, ts, f.Metadata()); err != nil {
		t.Fatal(err)
	}
	for _, file := range []struct {
		name, path string
		values     []float64
	}{
		{"F32 file", g.weights, src},
		{"BF16 file", bf16Path, kerneltest.Quantize(kernels.BF16, src)},
	} {
		for _, d := range []kernels.DType{kernels.BF16, kernels.F16, kernels.F32, kernels.F64} {
			m, err := Load(ag.New(cpu.New()), file.path, Options{DType: d})
			if err != nil {
				t.Fatal(err)
			}
			w := m.Weight(name)
			if w.DType() != d || w.RequiresGrad() {
				t.Errorf("%s, %v: weight is %v (requires grad %v)", file.name, d, w.DType(), w.RequiresGrad())
			}
			got, err := w.Values()
			if err != nil {
				t.Fatal(err)
			}
			kerneltest.Check(t, file.name+", stored "+d.String(), got, kerneltest.Quantize(d, file.values), 0)
			m.Release()
		}
	}
}

// TestBatchMatchesSingleSamples runs the golden batch (caption lengths 12
// and 7, so the joint sequences are padded differently) and each sample
// alone, in float64: padding and masks must not leak between samples.
func TestBatchMatchesSingleSamples(t *testing.T) {
	g := openGolden(t)
	e := ag.New(cpu.New())
	m, err := Load(e, g.weights, Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := goldenInputs(t, e, g, kernels.F64)
	y, err := m.Forward(in)
	if err != nil {
		t.Fatal(err)
	}
	all, err := y.Values()
	if err != nil {
		t.Fatal(err)
	}
	per := len(all) / 2
	for b := range 2 {
		cl := in.CapLens[b]
		one := Inputs{
			X:          ag.Slice(in.X, 0, b, b+1),
			T:          in.T[b : b+1],
			CapFeats:   ag.Slice(ag.Slice(in.CapFeats, 0, b, b+1), 1, 0, cl), // no padding at all
			CapLens:    []int{cl},
			ClipPooled: ag.Slice(in.ClipPooled, 0, b, b+1),
		}
		ys, err := m.Forward(one)
		if err != nil {
			t.Fatal(err)
		}
		v, err := ys.Values()
		if err != nil {
			t.Fatal(err)
		}
		kerneltest.Check(t, "sample alone vs in batch", v, all[b*per:(b+1)*per], 1e-12)
	}
}

// TestForwardArgumentErrors checks that malformed inputs are refused with
// a message naming the input.
func TestForwardArgumentErrors(t *testing.T) {
	cfg, _ := Preset("tiny")
	e := ag.New(cpu.New())
	m, err := NewRandom(e, cfg, Options{DType: kernels.F32}, 1)
	if err != nil {
		t.Fatal(err)
	}
	x := e.Full(kernels.F32, []int{2, 16, 6, 10}, 0.5)
	cf := e.Full(kernels.F32, []int{2, 5, 64}, 0.5)
	clip := e.Full(kernels.F32, []int{2, 32}, 0.5)
	ok := Inputs{X: x, T: []float64{0.3, 0.7}, CapFeats: cf, CapLens: []int{5, 3}, ClipPooled: clip}
	cases := []struct {
		name string
		edit func(in *Inputs)
		want string
	}{
		{"odd latent side", func(in *Inputs) { in.X = e.Full(kernels.F32, []int{2, 16, 7, 10}, 1) }, "multiples of 2"},
		{"wrong channels", func(in *Inputs) { in.X = e.Full(kernels.F32, []int{2, 4, 6, 10}, 1) }, "X"},
		{"caption width", func(in *Inputs) { in.CapFeats = e.Full(kernels.F32, []int{2, 5, 63}, 1) }, "CapFeats"},
		{"timesteps", func(in *Inputs) { in.T = []float64{0.5} }, "timesteps"},
		{"caption length", func(in *Inputs) { in.CapLens = []int{6, 1} }, "caption length 6"},
		{"clip width", func(in *Inputs) { in.ClipPooled = e.Full(kernels.F32, []int{2, 31}, 1) }, "ClipPooled"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := ok
			c.edit(&in)
			if _, err := m.Forward(in); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v does not mention %q", err, c.want)
			}
		})
	}
	// The unmodified inputs run (a non-square latent, a short caption).
	y, err := m.Forward(ok)
	if err != nil {
		t.Fatal(err)
	}
	v, err := y.Values()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range v {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			t.Fatalf("non-finite output %g", f)
		}
	}
}

// TestCapLensFromMask reads right-padded masks and refuses others.
func TestCapLensFromMask(t *testing.T) {
	cases := []struct {
		name string
		mask []float64
		want []int
		err  bool
	}{
		{"mixed", []float64{1, 1, 1, 0, 1, 0, 0, 0}, []int{3, 1}, false},
		{"full and empty", []float64{1, 1, 1, 1, 0, 0, 0, 0}, []int{4, 0}, false},
		{"left padded", []float64{0, 1, 1, 1, 1, 1, 1, 1}, nil, true},
	}
	for _, c := range cases {
		got, err := CapLensFromMask(c.mask, 2, 4)
		if (err != nil) != c.err {
			t.Errorf("%s: error %v", c.name, err)
			continue
		}
		for i := range c.want {
			if got[i] != c.want[i] {
				t.Errorf("%s: lens %v, want %v", c.name, got, c.want)
			}
		}
	}
}

// TestLoadHostAllocations: loading converts one tensor at a time straight
// to the storage dtype's bytes — no float64 copy of the weights on the way.
// Everything the load allocates on the Go heap (the conversions and, on the
// CPU backend, the stored weights themselves) stays under twice the file's
// tensor bytes; a float64 detour would take three times.
func TestLoadHostAllocations(t *testing.T) {
	g := openGolden(t)
	f, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	var fileBytes int64
	for _, ti := range f.Tensors() {
		fileBytes += int64(ti.NumElements() * ti.DType.Size())
	}
	f.Close()
	e := ag.New(cpu.New())
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	m, err := Load(e, g.weights, Options{DType: kernels.BF16})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if got := int64(after.TotalAlloc - before.TotalAlloc); got > 2*fileBytes {
		t.Errorf("loading %d tensor bytes allocated %d bytes on the heap (limit %d)", fileBytes, got, 2*fileBytes)
	} else {
		t.Logf("loading %d tensor bytes allocated %d bytes on the heap", fileBytes, got)
	}
}

// TestCheckpointedBlocks: CheckpointBlocks k checkpoints exactly k of the
// forward's blocks, spread over them (no two runs of checkpointed blocks
// longer than ⌈n/k⌉ apart), and every block or none outside 0 < k < n.
func TestCheckpointedBlocks(t *testing.T) {
	cfg, _ := Preset("newbie-exp0.1")
	n := cfg.Blocks()
	if n != 40 {
		t.Fatalf("NewBie runs %d blocks, want 40 (2 + 2 refiners, 36 layers)", n)
	}
	for _, c := range []struct {
		on   bool
		k    int
		want int
	}{{false, 0, 0}, {false, 7, 0}, {true, 0, 40}, {true, 40, 40}, {true, 99, 40}, {true, 1, 1}, {true, 13, 13}, {true, 26, 26}, {true, 39, 39}} {
		m := &Model{cfg: cfg, opts: Options{Checkpoint: c.on, CheckpointBlocks: c.k}}
		got, gap, maxGap := 0, 0, 0
		for i := range n {
			if m.checkpointed(i) {
				got++
				gap = 0
			} else if gap++; gap > maxGap {
				maxGap = gap
			}
		}
		if got != c.want {
			t.Errorf("checkpoint %v, %d blocks: %d of %d checkpointed, want %d", c.on, c.k, got, n, c.want)
		}
		if c.want > 0 && c.want < n && maxGap > (n+c.want-1)/c.want {
			t.Errorf("checkpoint %d blocks: %d unguarded blocks in a row", c.k, maxGap)
		}
	}
}
