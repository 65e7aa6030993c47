package textenc

import (
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// jinaGolden is the reference batch of ../shared/golden/jina.
type jinaGolden struct {
	weights              string
	ids, mask            [][]int32
	b, l, hidden         int
	last                 []float64 // [B, L, hidden]
	pooled, pooledNoLoRA []float64 // [B, hidden]
}

func openJinaGolden(t *testing.T) jinaGolden {
	t.Helper()
	w := goldentest.Path(t, "jina", "jina_tiny.weights.safetensors")
	f := goldentest.Open(t, "jina", "jina_tiny.golden.safetensors")
	last := goldentest.Tensor(t, f, "out.last_hidden_state")
	return jinaGolden{
		weights: w,
		ids:     goldentest.Rows(t, f, "in.input_ids"),
		mask:    goldentest.Rows(t, f, "in.attention_mask"),
		b:       last.Shape[0], l: last.Shape[1], hidden: last.Shape[2],
		last:         last.Values,
		pooled:       goldentest.Tensor(t, f, "out.pooled").Values,
		pooledNoLoRA: goldentest.Tensor(t, f, "out.pooled_no_lora").Values,
	}
}

// masked keeps the rows of v [B, L, hidden] where the mask is 1.
func (g jinaGolden) masked(v []float64) []float64 { return maskedRows(v, g.mask, g.l, g.hidden) }

// TestJinaGolden runs Jina's own PyTorch forward's inputs through the text
// tower loaded from jina-clip-v2's key names, in every precision, and
// compares the pooled vector and the last hidden state at real tokens with
// the README's tolerances: float64 1e-6, float32 1e-5, bf16 2e-2 (bf16
// weights and activations, float32 norms and softmax).
func TestJinaGolden(t *testing.T) {
	g := openJinaGolden(t)
	for _, dtype := range []kernels.DType{kernels.F64, kernels.F32, kernels.BF16} {
		tol := JinaTolerances.For(dtype)
		t.Run(dtype.String(), func(t *testing.T) {
			e := ag.New(cpu.New())
			j, err := LoadJina(e, g.weights, JinaOptions{DType: dtype})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Release()
			if j.Task() != "retrieval.query" {
				t.Errorf("task %q, want the config's default retrieval.query", j.Task())
			}
			last, err := j.Forward(g.ids, g.mask)
			if err != nil {
				t.Fatal(err)
			}
			if last.DType() != dtype {
				t.Errorf("last hidden state is %v, want %v", last.DType(), dtype)
			}
			pooled, err := j.Pooled(g.ids, g.mask)
			if err != nil {
				t.Fatal(err)
			}
			goldentest.Check(t, "out.pooled", values(t, pooled), g.pooled, tol)
			goldentest.Check(t, "out.last_hidden_state (mask 1)", g.masked(values(t, last)), g.masked(g.last), tol)
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestJinaGoldenExact builds the rotary tables in float64, as the golden's
// out.pooled_rope_f64 does: the float64 path then meets Jina's to rounding,
// so the architecture, the LoRA merge and the pooling are exact and what
// TestJinaGolden's float64 error (about 4e-10) measures is only float32
// trigonometry in two libraries.
func TestJinaGoldenExact(t *testing.T) {
	g := openJinaGolden(t)
	f := goldentest.Open(t, "jina", "jina_tiny.golden.safetensors")
	want := goldentest.Tensor(t, f, "out.pooled_rope_f64").Values
	e := ag.New(cpu.New())
	j, err := LoadJina(e, g.weights, JinaOptions{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Release()
	j.tables = func(e *ag.Engine, d kernels.DType, r Rope, dim, b, l int) (cos, sin *ag.Tensor) {
		half := dim / 2
		c, s := make([]float64, b*l*half), make([]float64, b*l*half)
		for i := range b * l {
			for k := range half {
				a := float64(i%l) / math.Pow(r.Theta, float64(2*k)/float64(dim))
				c[i*half+k], s[i*half+k] = math.Cos(a), math.Sin(a)
			}
		}
		shape := []int{b, l, half}
		return e.FromFloat64(d, shape, c), e.FromFloat64(d, shape, s)
	}
	p, err := j.Pooled(g.ids, g.mask)
	if err != nil {
		t.Fatal(err)
	}
	goldentest.Check(t, "out.pooled_rope_f64", values(t, p), want, 1e-13)
}

// TestJinaGoldenNeedsLoRA proves the adapter is applied and matters: the
// base weights land on out.pooled_no_lora (and far from out.pooled), the
// merged ones do not.
func TestJinaGoldenNeedsLoRA(t *testing.T) {
	g := openJinaGolden(t)
	run := func(opts JinaOptions) []float64 {
		e := ag.New(cpu.New())
		j, err := LoadJina(e, g.weights, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer j.Release()
		p, err := j.Pooled(g.ids, g.mask)
		if err != nil {
			t.Fatal(err)
		}
		return values(t, p)
	}
	base := run(JinaOptions{DType: kernels.F64, BaseWeights: true})
	goldentest.Check(t, "base weights vs out.pooled_no_lora", base, g.pooledNoLoRA, 1e-6)
	if d := kernels.RelErr(base, g.pooled); d < 0.1 {
		t.Errorf("the base weights are within %.3g of out.pooled: the golden does not tell the adapter from none", d)
	}
	merged := run(JinaOptions{DType: kernels.F64})
	if d := kernels.RelErr(merged, g.pooledNoLoRA); d < 0.1 {
		t.Errorf("the merged model is within %.3g of out.pooled_no_lora: the adapter was not applied", d)
	}
}
