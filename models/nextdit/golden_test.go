package nextdit

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// goldenRun is the opened tiny.* reference files: ref is the raw file, gold
// the same file read through the package's Golden (inputs, references).
type goldenRun struct {
	weights, path string
	ref           *golden.File
	gold          *Golden
}

func openGolden(t *testing.T) goldenRun {
	t.Helper()
	w := goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
	ref := goldentest.Open(t, "nextdit", "tiny.golden.safetensors")
	gold, err := OpenGolden(ref.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gold.Close() })
	return goldenRun{weights: w, path: ref.Path(), ref: ref, gold: gold}
}

// get reads a reference tensor as float64.
func (g goldenRun) get(t *testing.T, name string) []float64 {
	t.Helper()
	return goldentest.Tensor(t, g.ref, name).Values
}

// goldenInputs uploads the golden inputs in dtype d, marked as inputs so
// their gradients are kept.
func goldenInputs(t *testing.T, e *ag.Engine, g goldenRun, d kernels.DType) (Inputs, *ag.Tensor) {
	t.Helper()
	in, gradOut, err := g.gold.Inputs(e, d)
	if err != nil {
		t.Fatal(err)
	}
	return in, gradOut
}

// runGolden loads the tiny weights in storage dtype d, makes every weight
// trainable (masters in d for F64/F32), runs forward and the backward of
// sum(y ⊙ grad_out), and returns the model, inputs and output values.
func runGolden(t *testing.T, g goldenRun, d kernels.DType, autocast kernels.DType, ckpt int) (*Model, Inputs, []float64) {
	t.Helper()
	return runGoldenOn(t, cpu.New(), g, d, autocast, ckpt)
}

// Checkpointing of a golden run: ckptNone, ckptAll, or a positive count of
// blocks (Options.CheckpointBlocks).
const (
	ckptNone = 0
	ckptAll  = -1
)

// runGoldenOn is runGolden on a given backend.
func runGoldenOn(t *testing.T, be kernels.Backend, g goldenRun, d kernels.DType, autocast kernels.DType, ckpt int) (*Model, Inputs, []float64) {
	t.Helper()
	e := ag.New(be)
	m, err := Load(e, g.weights, Options{DType: d, Checkpoint: ckpt != ckptNone, CheckpointBlocks: max(ckpt, 0)})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	master := d
	if d != kernels.F64 {
		master = kernels.F32
	}
	if _, err := m.SetTrainable(func(string) bool { return true }, master); err != nil {
		t.Fatalf("SetTrainable: %v", err)
	}
	in, gradOut := goldenInputs(t, e, g, master)
	e.SetAutocast(autocast)
	y, err := m.Forward(in)
	if err != nil {
		t.Fatalf("forward: %v", err)
	}
	prod := ag.Mul(y, gradOut)
	loss := ag.SumAll(prod)
	e.SetAutocast(0)
	yv, err := y.Values()
	if err != nil {
		t.Fatalf("forward values: %v", err)
	}
	if err := e.Backward(loss); err != nil {
		t.Fatalf("backward: %v", err)
	}
	return m, in, yv
}

// gradValues reads a leaf's gradient.
func gradValues(t *testing.T, x *ag.Tensor) []float64 {
	t.Helper()
	if x.Grad() == nil {
		t.Fatalf("%v has no gradient", x)
	}
	v, err := x.Grad().Values()
	if err != nil {
		t.Fatalf("grad of %v: %v", x, err)
	}
	return v
}

// TestGoldenParity compares output, every parameter gradient and the input
// gradients with the upstream float64 reference, through RunGolden (what
// `newbie-train parity --golden` runs).
func TestGoldenParity(t *testing.T) {
	g := openGolden(t)
	cases := []struct {
		precision  string
		checkpoint bool
	}{
		{"fp64", false},
		{"fp32", false},
		{"fp32", true},
		{"bf16", false},
	}
	for _, tc := range cases {
		name := tc.precision
		if tc.checkpoint {
			name += "-checkpointed"
		}
		t.Run(name, func(t *testing.T) {
			p, err := ParsePrecision(tc.precision)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := RunGolden(cpu.New(), g.weights, g.path, GoldenOptions{Precision: p, Checkpoint: tc.checkpoint})
			if err != nil {
				t.Fatal(err)
			}
			if ok, fails := rep.Pass(p); !ok {
				t.Errorf("beyond tolerance: %s", strings.Join(fails, "; "))
			}
			if len(rep.Inputs) != 3 {
				t.Errorf("compared %d input gradients, want 3 (x, cap_feats, clip_text_pooled)", len(rep.Inputs))
			}
			cfg, err := g.gold.Config()
			if err != nil {
				t.Fatal(err)
			}
			if n := len(cfg.Params()) - 1; len(rep.Params) != n { // every weight but the unused norm_final
				t.Errorf("compared %d parameter gradients, want %d", len(rep.Params), n)
			}
			worst, worstName := Worst(rep.Params)
			t.Logf("out rel err %.3g, grad x %.3g, worst of %d parameter gradients %.3g (%s)",
				rep.Output, rep.Inputs["grad.in.x"], len(rep.Params), worst, worstName)
		})
	}
}

// TestCheckpointSameGradients checks that checkpointed blocks give the same
// gradients as plain ones, bit for bit on the CPU backend.
func TestCheckpointSameGradients(t *testing.T) {
	g := openGolden(t)
	plain, pin, py := runGolden(t, g, kernels.F32, 0, ckptNone)
	names := plain.Names()
	sort.Strings(names)
	// Every block, and some of them (spread over refiners and layers).
	for _, ckpt := range []int{ckptAll, 1, 3} {
		ck, cin, cy := runGolden(t, g, kernels.F32, 0, ckpt)
		label := fmt.Sprintf("checkpoint %d: ", ckpt)
		kerneltest.Check(t, label+"output", cy, py, 0)
		kerneltest.Check(t, label+"grad x", gradValues(t, cin.X), gradValues(t, pin.X), 0)
		for _, n := range names {
			if n == "norm_final.weight" {
				continue
			}
			kerneltest.Check(t, label+"grad "+n, gradValues(t, ck.Weight(n)), gradValues(t, plain.Weight(n)), 0)
		}
	}
}

// TestNoClipPath checks the Lumina-Image-2.0 form (clip_text_dim 0): a
// model built without the CLIP-pooled weights computes what the full model
// computes when no pooled embedding is given (upstream: adaLN input = t_emb).
func TestNoClipPath(t *testing.T) {
	g := openGolden(t)
	src, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cfg, err := ConfigFromFile(src)
	if err != nil {
		t.Fatal(err)
	}
	noClip := cfg
	noClip.ClipTextDim = 0
	var ts []safetensors.Tensor
	for _, p := range noClip.Params() {
		raw, err := src.Bytes(p.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.Tensor{Name: p.Name, DType: safetensors.F32, Shape: p.Shape, Data: raw})
	}
	path := filepath.Join(t.TempDir(), "noclip.safetensors")
	if err := safetensors.Write(path, ts, map[string]string{"config": noClip.JSON()}); err != nil {
		t.Fatal(err)
	}
	outs := map[string][]float64{}
	for name, file := range map[string]string{"full": g.weights, "noclip": path} {
		e := ag.New(cpu.New())
		m, err := Load(e, file, Options{DType: kernels.F64})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		in, _ := goldenInputs(t, e, g, kernels.F64)
		in.ClipPooled = nil
		y, err := m.Forward(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if outs[name], err = y.Values(); err != nil {
			t.Fatal(err)
		}
	}
	kerneltest.Check(t, "no-CLIP model vs full model without pooled input", outs["noclip"], outs["full"], 0)
	if kernels.RelErr(outs["full"], g.get(t, "out.y")) < 1e-3 {
		t.Errorf("dropping the pooled CLIP input did not change the output")
	}
}

// TestStepFreesActivations checks that after forward, backward and EndStep
// the backend holds only the weights, their gradients and the RoPE tables
// the model keeps for the shape again, and that a second step of the same
// shape keeps nothing more.
func TestStepFreesActivations(t *testing.T) {
	g := openGolden(t)
	for _, ck := range []bool{false, true} {
		be := cpu.New()
		e := ag.New(be)
		m, err := Load(e, g.weights, Options{DType: kernels.F32, Checkpoint: ck})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.SetTrainable(func(n string) bool { return strings.Contains(n, "layers.1.") }, 0); err != nil {
			t.Fatal(err)
		}
		base := be.MemStats().Allocated
		for step := range 2 {
			in, gradOut := goldenInputs(t, e, g, kernels.F32)
			y, err := m.Forward(in)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Backward(ag.SumAll(ag.Mul(y, gradOut))); err != nil {
				t.Fatal(err)
			}
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
			var ropes int64
			for _, r := range m.ropes {
				for _, t := range []*ag.Tensor{r.capCos, r.capSin, r.imgCos, r.imgSin, r.jCos, r.jSin} {
					ropes += int64(t.Len() * t.DType().Size())
				}
			}
			if len(m.ropes) != 1 || ropes == 0 {
				t.Errorf("checkpoint %v, step %d: %d shapes of RoPE tables kept (%d bytes), want 1", ck, step, len(m.ropes), ropes)
			}
			if got := be.MemStats().Allocated; got != base+ropes {
				t.Errorf("checkpoint %v, step %d: %d bytes allocated after EndStep, want %d (weights) + %d (RoPE tables)", ck, step, got, base, ropes)
			}
		}
	}
}
