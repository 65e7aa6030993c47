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
func (gc goldenCase) masked(v []float64) []float64 {
	var out []float64
	for b := range gc.b {
		for i := range gc.l {
			if gc.mask[b][i] == 1 {
				out = append(out, v[(b*gc.l+i)*gc.hidden:(b*gc.l+i+1)*gc.hidden]...)
			}
		}
	}
	return out
}

func values(t *testing.T, x *ag.Tensor) []float64 {
	t.Helper()
	v, err := x.Values()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestGolden compares hidden_states[-2] and last_hidden_state with
// transformers' run, at the real (unpadded) positions.
//
// The float64 bounds: the golden is 8.6e-7 / 1.02e-6 from our float64
// path, and so is an independent plain-loop float64 forward (hostForward,
// which matches our path to 1e-15 in TestAgainstHostReference). The floor is
// in the reference itself: transformers' Gemma3RMSNorm upcasts to float32
// (x.float()) even in a float64 model, and float32 norms alone move a
// float64 result of this random model by 6–9e-7. So hidden_states[-2] is
// held to the brief's 1e-6 and last_hidden_state, one layer and one norm
// further, to 1.5e-6.
//
// BF16 runs weights and hidden states in bf16, as transformers' bf16 Gemma
// does: rounding the weights to bf16 alone moves these outputs by 2.2e-2
// / 2.6e-2 (measured with F32 compute), bf16 activations bring it to
// 3.7e-2 / 4.3e-2; the bound is 6e-2.
func TestGolden(t *testing.T) {
	gc := openGolden(t)
	for _, tc := range []struct {
		dtype         kernels.DType
		tolM2, tolEnd float64
	}{
		{kernels.F64, 1e-6, 1.5e-6},
		{kernels.F32, 1e-5, 1e-5},
		{kernels.BF16, 6e-2, 6e-2},
	} {
		t.Run(tc.dtype.String(), func(t *testing.T) {
			e := ag.New(cpu.New())
			g, err := Load(e, gc.weights, Options{DType: tc.dtype})
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
				if h.DType() != tc.dtype {
					t.Errorf("hidden state dtype %v, want %v", h.DType(), tc.dtype)
				}
			}
			m2 := values(t, hs[len(hs)-2])
			last := values(t, hs[len(hs)-1])
			kerneltest.Check(t, "hidden_states[-2]", gc.masked(m2), gc.masked(gc.m2), tc.tolM2)
			kerneltest.Check(t, "last_hidden_state", gc.masked(last), gc.masked(gc.last), tc.tolEnd)
			t.Logf("%v: hidden_states[-2] rel err %.3g, last_hidden_state %.3g", tc.dtype,
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
