package textenc

import (
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// goldenCase is the reference batch: inputs and transformers' outputs.
type goldenCase struct {
	weights      string
	ids, mask    [][]int32
	b, l, hidden int
	m2, last     []float64 // [B, L, hidden]
}

func openGolden(t *testing.T) goldenCase {
	t.Helper()
	w := goldentest.Path(t, "gemma3", "gemma_tiny.weights.safetensors")
	f := goldentest.Open(t, "gemma3", "gemma_tiny.golden.safetensors")
	m2 := goldentest.Tensor(t, f, "out.hidden_states_m2")
	return goldenCase{
		weights: w,
		ids:     goldentest.Rows(t, f, "in.input_ids"),
		mask:    goldentest.Rows(t, f, "in.attention_mask"),
		b:       m2.Shape[0], l: m2.Shape[1], hidden: m2.Shape[2],
		m2:   m2.Values,
		last: goldentest.Tensor(t, f, "out.last_hidden_state").Values,
	}
}

// masked keeps the rows of v [B, L, hidden] at positions where the mask is 1.
func (gc goldenCase) masked(v []float64) []float64 { return maskedRows(v, gc.mask, gc.l, gc.hidden) }

func values(t *testing.T, x *ag.Tensor) []float64 {
	t.Helper()
	v, err := x.Values()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestGolden compares hidden_states[-2] and last_hidden_state with
// transformers' run, at the real (unpadded) positions, held to
// GemmaTolerances (which says why its float64 and bf16 bounds are what they
// are).
func TestGolden(t *testing.T) {
	gc := openGolden(t)
	for _, dtype := range []kernels.DType{kernels.F64, kernels.F32, kernels.BF16} {
		tolM2, tolEnd := GemmaTolerances.Penultimate.For(dtype), GemmaTolerances.Last.For(dtype)
		t.Run(dtype.String(), func(t *testing.T) {
			e := ag.New(cpu.New())
			g, err := Load(e, gc.weights, Options{DType: dtype})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Release()
			hs, err := g.Forward(gc.ids, gc.mask)
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) != g.Config().NumLayers+1 {
				t.Fatalf("%d hidden states, want %d", len(hs), g.Config().NumLayers+1)
			}
			for _, h := range hs {
				if h.DType() != dtype {
					t.Errorf("hidden state dtype %v, want %v", h.DType(), dtype)
				}
			}
			m2 := values(t, hs[len(hs)-2])
			last := values(t, hs[len(hs)-1])
			kerneltest.Check(t, "hidden_states[-2]", gc.masked(m2), gc.masked(gc.m2), tolM2)
			kerneltest.Check(t, "last_hidden_state", gc.masked(last), gc.masked(gc.last), tolEnd)
			t.Logf("%v: hidden_states[-2] rel err %.3g, last_hidden_state %.3g", dtype,
				kernels.RelErr(gc.masked(m2), gc.masked(gc.m2)), kernels.RelErr(gc.masked(last), gc.masked(gc.last)))

			p, err := g.PenultimateHidden(gc.ids, gc.mask)
			if err != nil {
				t.Fatal(err)
			}
			kerneltest.Check(t, "PenultimateHidden vs Forward", values(t, p), m2, 0)
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestGoldenHostReference runs the plain-loop float64 forward on the golden
// weights and inputs: our float64 path must equal it to rounding, and its
// distance from the golden (logged) is the reference's own floor.
func TestGoldenHostReference(t *testing.T) {
	gc := openGolden(t)
	f, err := safetensors.Open(gc.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := ParseConfig(f.Metadata()["config"])
	if err != nil {
		t.Fatal(err)
	}
	w := map[string][]float64{}
	for _, p := range cfg.Params() {
		if w[p.Name], err = f.Float64(p.Name); err != nil {
			t.Fatal(err)
		}
	}
	lens := make([]int, gc.b)
	for b, row := range gc.mask {
		for _, m := range row {
			lens[b] += int(m)
		}
	}
	ref := hostForward(cfg, w, gc.ids, lens)
	hm2, hlast := flatten(ref[len(ref)-2], lens), flatten(ref[len(ref)-1], lens)
	t.Logf("plain float64 forward vs golden: hidden_states[-2] %.3g, last_hidden_state %.3g",
		kernels.RelErr(hm2, gc.masked(gc.m2)), kernels.RelErr(hlast, gc.masked(gc.last)))

	e := ag.New(cpu.New())
	g, err := Load(e, gc.weights, Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	hs, err := g.Forward(gc.ids, gc.mask)
	if err != nil {
		t.Fatal(err)
	}
	kerneltest.Check(t, "hidden_states[-2] vs plain float64", gc.masked(values(t, hs[len(hs)-2])), hm2, 1e-12)
	kerneltest.Check(t, "last_hidden_state vs plain float64", gc.masked(values(t, hs[len(hs)-1])), hlast, 1e-12)
}
