package lora

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// The tiny Next-DiT's golden files; needGolden skips a test when they are
// absent.
var (
	weightsPath = tinyGolden("tiny.weights.safetensors")
	goldenPath  = tinyGolden("tiny.golden.safetensors")
	peftDir     = tinyGolden("tiny.peft_lora")
)

func tinyGolden(name string) string {
	d, _ := golden.Dir()
	return filepath.Join(d, "nextdit", name)
}

// needGolden opens the tiny golden reference, or skips when the golden
// weights, reference or PEFT adapter are absent.
func needGolden(t *testing.T) *golden.File {
	t.Helper()
	goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
	goldentest.Path(t, "nextdit", "tiny.peft_lora", PEFTWeightsFile)
	return goldentest.Open(t, "nextdit", "tiny.golden.safetensors")
}

func get(t *testing.T, f *golden.File, name string) []float64 {
	t.Helper()
	return goldentest.Tensor(t, f, name).Values
}

func shape(t *testing.T, f *golden.File, name string) []int {
	t.Helper()
	return goldentest.Tensor(t, f, name).Shape
}

func values(t *testing.T, x *ag.Tensor) []float64 {
	t.Helper()
	v, err := x.Values()
	if err != nil {
		t.Fatalf("read %v: %v", x, err)
	}
	return v
}

// run is one forward (and backward of sum(y ⊙ grad_out)) of the tiny model
// on the golden inputs; it returns the output values and the input x.
func run(t *testing.T, m *nextdit.Model, g *golden.File, d, autocast kernels.DType, backward bool) ([]float64, *ag.Tensor) {
	t.Helper()
	e := m.Engine()
	x := e.FromFloat64(d, shape(t, g, "in.x"), get(t, g, "in.x")).Input()
	cf := e.FromFloat64(d, shape(t, g, "in.cap_feats"), get(t, g, "in.cap_feats"))
	clip := e.FromFloat64(d, shape(t, g, "in.clip_text_pooled"), get(t, g, "in.clip_text_pooled"))
	ms := shape(t, g, "in.cap_mask")
	lens, err := nextdit.CapLensFromMask(get(t, g, "in.cap_mask"), ms[0], ms[1])
	if err != nil {
		t.Fatal(err)
	}
	e.SetAutocast(autocast)
	defer e.SetAutocast(0)
	y, err := m.Forward(nextdit.Inputs{X: x, T: get(t, g, "in.t"), CapFeats: cf, CapLens: lens, ClipPooled: clip})
	if err != nil {
		t.Fatalf("forward: %v", err)
	}
	yv := values(t, y)
	if backward {
		gradOut := e.FromFloat64(d, shape(t, g, "in.grad_out"), get(t, g, "in.grad_out"))
		if err := e.Backward(ag.SumAll(ag.Mul(y, gradOut))); err != nil {
			t.Fatalf("backward: %v", err)
		}
	}
	return yv, x
}

func loadTiny(t *testing.T, d kernels.DType) *nextdit.Model {
	t.Helper()
	return loadTinyOn(t, cpu.New(), d)
}

func loadTinyOn(t *testing.T, be kernels.Backend, d kernels.DType) *nextdit.Model {
	t.Helper()
	m, err := nextdit.Load(ag.New(be), weightsPath, nextdit.Options{DType: d})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return m
}

// parityCase is one precision setting of the PEFT parity check.
type parityCase struct {
	name            string
	storage, master kernels.DType
	autocast        kernels.DType
	checkpoint      bool
	outTol, gradTol float64
}

// TestPEFTGoldenParity loads the golden PEFT adapter onto the frozen tiny
// model and compares out.y_lora, grad.in.x_lora and every grad_lora.*.
func TestPEFTGoldenParity(t *testing.T) {
	g := needGolden(t)
	cases := []parityCase{
		{"f64", kernels.F64, kernels.F64, 0, false, 1e-6, 1e-6},
		{"f32", kernels.F32, kernels.F32, 0, false, 1e-5, 1e-5},
		{"f32-checkpointed", kernels.F32, kernels.F32, 0, true, 1e-5, 1e-5},
		{"bf16-storage-autocast", kernels.BF16, kernels.F32, kernels.BF16, false, 2e-2, 5e-2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkPEFTParity(t, g, cpu.New(), tc) })
	}
}

// checkPEFTParity runs one parity case on a backend.
func checkPEFTParity(t *testing.T, g *golden.File, be kernels.Backend, tc parityCase) {
	m := loadTinyOn(t, be, tc.storage)
	m.SetCheckpoint(tc.checkpoint)
	s, err := LoadPEFT(m, peftDir, tc.master)
	if err != nil {
		t.Fatalf("LoadPEFT: %v", err)
	}
	act := tc.master
	y, x := run(t, m, g, act, tc.autocast, true)
	kerneltest.Check(t, "out.y_lora", y, get(t, g, "out.y_lora"), tc.outTol)
	kerneltest.Check(t, "grad.in.x_lora", values(t, x.Grad()), get(t, g, "grad.in.x_lora"), tc.gradTol)
	n, worst := 0, 0.0
	for _, a := range s.Adapters() {
		for _, which := range []string{"A", "B"} {
			p := a.A
			if which == "B" {
				p = a.B
			}
			key := "grad_lora." + PEFTPrefix + a.Name + ".lora_" + which + ".default.weight"
			got, want := values(t, p.Grad()), get(t, g, key)
			kerneltest.Check(t, key, got, want, tc.gradTol)
			worst = max(worst, kernels.RelErr(got, want))
			n++
		}
	}
	golden := 0
	for _, k := range g.Names() {
		if strings.HasPrefix(k, "grad_lora.") {
			golden++
		}
	}
	if n != golden {
		t.Errorf("compared %d adapter gradients; the golden file has %d", n, golden)
	}
	t.Logf("%s: out rel err %.3g, worst adapter gradient %.3g over %d tensors", be.Name(),
		kernels.RelErr(y, get(t, g, "out.y_lora")), worst, n)
}

// TestMergeUnmerge checks that a merged model computes what the adapters
// add, and that unmerging restores the base weights.
func TestMergeUnmerge(t *testing.T) {
	g := needGolden(t)
	cases := []struct {
		name     string
		storage  kernels.DType
		mergeTol float64 // merged output vs adapter output
		restore  float64 // unmerged weights vs the originals
	}{
		{"f64", kernels.F64, 1e-12, 1e-14},
		{"f32", kernels.F32, 1e-5, 1e-6},
		{"bf16", kernels.BF16, 2e-2, 1e-2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := loadTiny(t, tc.storage)
			master := kernels.F32
			if tc.storage == kernels.F64 {
				master = kernels.F64
			}
			s, err := LoadPEFT(m, peftDir, master)
			if err != nil {
				t.Fatalf("LoadPEFT: %v", err)
			}
			name := "layers.1.feed_forward.w2.weight"
			before := values(t, m.Weight(name))
			want, _ := run(t, m, g, master, 0, false)
			if err := m.Engine().EndStep(); err != nil {
				t.Fatal(err)
			}
			if err := s.Merge(); err != nil {
				t.Fatalf("merge: %v", err)
			}
			if s.Merge() == nil {
				t.Errorf("merging twice did not fail")
			}
			got, _ := run(t, m, g, master, 0, false)
			kerneltest.Check(t, "merged output", got, want, tc.mergeTol)
			if err := s.Unmerge(); err != nil {
				t.Fatalf("unmerge: %v", err)
			}
			kerneltest.Check(t, "restored "+name, values(t, m.Weight(name)), before, tc.restore)
			if s.Unmerge() == nil {
				t.Errorf("unmerging twice did not fail")
			}
		})
	}
}

// TestFreshAdapterIsIdentity checks PEFT's initialisation: B = 0 leaves the
// output unchanged, A lies within Kaiming-uniform's bound (or has the
// Gaussian's spread), and the default targets select the NewBie set.
func TestFreshAdapterIsIdentity(t *testing.T) {
	g := needGolden(t)
	cases := []struct {
		name string
		init Init
	}{
		{"peft", InitPEFT},
		{"gaussian", InitGaussian},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := loadTiny(t, kernels.F64)
			base, _ := run(t, m, g, kernels.F64, 0, false)
			s, err := Attach(m, Config{Rank: 3, Alpha: 7, Init: tc.init, Seed: 11, Master: kernels.F64})
			if err != nil {
				t.Fatal(err)
			}
			// 2 noise refiners × 6 + 2 context refiners × 5 + 2 layers × 6 + final adaLN.
			if n := len(s.Adapters()); n != 35 {
				t.Errorf("default targets gave %d adapters, want 35", n)
			}
			got, _ := run(t, m, g, kernels.F64, 0, false)
			kerneltest.Check(t, "fresh adapter output", got, base, 0)
			a := s.Adapter("layers.0.feed_forward.w2")
			av := values(t, a.A)
			var sum2 float64
			for _, v := range av {
				sum2 += v * v
				if v == 0 {
					t.Fatalf("A has an exact zero")
				}
				if tc.init == InitPEFT && math.Abs(v) > 1/math.Sqrt(float64(a.In)) {
					t.Fatalf("A value %g beyond the Kaiming bound %g", v, 1/math.Sqrt(float64(a.In)))
				}
			}
			std := math.Sqrt(sum2 / float64(len(av)))
			want := 1 / math.Sqrt(3*float64(a.In)) // uniform(±b) has std b/√3
			if tc.init == InitGaussian {
				want = 1 / math.Sqrt(3)
			}
			if math.Abs(std-want) > 0.1*want {
				t.Errorf("A std %.4g, want about %.4g", std, want)
			}
			for _, v := range values(t, a.B) {
				if v != 0 {
					t.Fatalf("B starts at %g, not 0", v)
				}
			}
		})
	}
}

// TestDropoutCheckpointReplay checks that adapter dropout draws the same
// mask when a checkpointed block recomputes, so gradients match the plain
// run exactly.
func TestDropoutCheckpointReplay(t *testing.T) {
	g := needGolden(t)
	grads := map[bool][]float64{}
	for _, ck := range []bool{false, true} {
		m := loadTiny(t, kernels.F32)
		m.SetCheckpoint(ck)
		s, err := Attach(m, Config{Rank: 4, Alpha: 8, Dropout: 0.3, Seed: 5, Init: InitGaussian})
		if err != nil {
			t.Fatal(err)
		}
		setB(m, s)
		m.Engine().SeedRandom(123, 0)
		run(t, m, g, kernels.F32, 0, true)
		grads[ck] = values(t, s.Adapter("layers.1.attention.qkv").A.Grad())
	}
	kerneltest.Check(t, "dropout grads, checkpointed vs plain", grads[true], grads[false], 0)
	var norm float64
	for _, v := range grads[false] {
		norm += v * v
	}
	if norm == 0 {
		t.Fatalf("adapter gradient is zero: dropout path not exercised")
	}
}

// setB gives every adapter's B fixed nonzero values (a fresh B is zero), so
// the update carries gradient to A.
func setB(m *nextdit.Model, s *Set) {
	for i, a := range s.Adapters() {
		v := make([]float64, a.B.Len())
		for j := range v {
			v[j] = kernels.NormalAt(99, uint64(i*100000+j), 0, 0.05)
		}
		m.Engine().Backend().Upload(a.B.Buffer(), 0, kernels.EncodeF64(a.B.DType(), v))
	}
}

// TestMatches is PEFT's suffix rule for target_modules.
func TestMatches(t *testing.T) {
	cases := []struct {
		name, pattern string
		want          bool
	}{
		{"layers.0.attention.qkv", "attention.qkv", true},
		{"layers.0.attention.qkv", "qkv", true},
		{"layers.0.attention.qkv", "layers.0.attention.qkv", true},
		{"layers.0.attention.qkv", "ention.qkv", false},
		{"final_layer.adaLN_modulation.1", "adaLN_modulation.1", true},
		{"time_text_embed.1", "adaLN_modulation.1", false},
		{"t_embedder.mlp.0", "mlp", false},
	}
	for _, c := range cases {
		if got := Matches(c.name, c.pattern); got != c.want {
			t.Errorf("Matches(%q, %q) = %v, want %v", c.name, c.pattern, got, c.want)
		}
	}
}

// TestBadConfigs checks that bad adapter settings and mismatched PEFT files
// are refused with a message naming the problem.
func TestBadConfigs(t *testing.T) {
	needGolden(t)
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"zero rank", Config{Rank: 0, Alpha: 1}, "rank"},
		{"zero alpha", Config{Rank: 2, Alpha: 0}, "alpha"},
		{"dropout 1", Config{Rank: 2, Alpha: 1, Dropout: 1}, "dropout"},
		{"unknown target", Config{Rank: 2, Alpha: 1, Targets: []string{"attention.qkv", "to_q"}}, "to_q"},
		{"bad master", Config{Rank: 2, Alpha: 1, Master: kernels.BF16}, "master"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := loadTiny(t, kernels.F32)
			_, err := Attach(m, c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v does not mention %q", err, c.want)
			}
			if m.Hook() != nil {
				t.Errorf("a failed Attach left a hook on the model")
			}
		})
	}

	// A PEFT folder whose rank disagrees with its matrices.
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(peftDir, PEFTConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, PEFTConfigFile), []byte(strings.Replace(string(raw), `"r": 4`, `"r": 5`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(peftDir, PEFTWeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, PEFTWeightsFile), src, 0o644); err != nil {
		t.Fatal(err)
	}
	m := loadTiny(t, kernels.F32)
	_, err = LoadPEFT(m, dir, 0)
	if err == nil || !strings.Contains(err.Error(), `layer "context_refiner.0.attention.out" has rank 4 but adapter_config.json gives it 5`) {
		t.Errorf("rank mismatch not reported by name: %v", err)
	}
	if m.Hook() != nil {
		t.Errorf("a failed LoadPEFT left a hook on the model")
	}
}

// TestReadPEFTConfig accepts plain LoRA configs and refuses the variants
// whose arithmetic differs, naming the field.
func TestReadPEFTConfig(t *testing.T) {
	cases := []struct {
		name, js string
		want     string // error substring; "" for success
	}{
		{"plain", `{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["attention.qkv"], "bias": "none"}`, ""},
		{"regex targets", `{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ".*qkv"}`, "regular expression"},
		{"dora", `{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["attention.qkv"], "use_dora": true}`, "DoRA"},
		{"rslora", `{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["attention.qkv"], "use_rslora": true}`, "rsLoRA"},
		{"rank pattern", `{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["attention.qkv"], "rank_pattern": {"layers.0": 4}}`, "rank_pattern"},
		{"not lora", `{"peft_type": "IA3", "r": 8, "target_modules": ["attention.qkv"]}`, "IA3"},
		{"no rank", `{"peft_type": "LORA", "lora_alpha": 16, "target_modules": ["attention.qkv"]}`, "r must be positive"},
		{"bias", `{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["attention.qkv"], "bias": "all"}`, "bias"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, PEFTConfigFile), []byte(c.js), 0o644); err != nil {
				t.Fatal(err)
			}
			pc, err := ReadPEFTConfig(dir)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if pc.R != 8 || pc.LoraAlpha != 16 || pc.LoraDropout != 0.1 || len(pc.TargetModules) != 1 {
					t.Errorf("parsed %+v", pc)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v does not mention %q", err, c.want)
			}
		})
	}
}

// TestCheckpointingSameGradientsUnderAutocast: block checkpointing must not
// change a bf16-autocast LoRA step's gradients by a single bit, with fp32
// weights (every activation a norm hands to a product is cast, and one cast
// feeds several products) and with bf16 weights (the training setting).
func TestCheckpointingSameGradientsUnderAutocast(t *testing.T) {
	g := needGolden(t)
	for _, store := range []kernels.DType{kernels.F32, kernels.BF16} {
		grads := map[bool][][]float64{}
		for _, ck := range []bool{false, true} {
			m := loadTiny(t, store)
			m.SetCheckpoint(ck)
			s, err := Attach(m, Config{Rank: 4, Alpha: 8, Seed: 5, Init: InitGaussian})
			if err != nil {
				t.Fatal(err)
			}
			setB(m, s)
			run(t, m, g, store, kernels.BF16, true)
			for _, a := range s.Adapters() {
				grads[ck] = append(grads[ck], values(t, a.A.Grad()), values(t, a.B.Grad()))
			}
		}
		differ, total := 0, 0
		for i := range grads[false] {
			for j := range grads[false][i] {
				total++
				if grads[false][i][j] != grads[true][i][j] {
					differ++
				}
			}
		}
		if differ > 0 {
			t.Errorf("%v weights: %d of %d adapter gradient elements differ with checkpointing", store, differ, total)
		}
	}
}
