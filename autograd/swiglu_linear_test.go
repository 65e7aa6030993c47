package autograd_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// swigluLayer runs the feed-forward's down projection with its update on
// fresh tensors, fused (SwiGLULoRALinear) or composed (SwiGLU then
// LoRALinear), forward and backward, and returns the output and the
// gradients of h1, h3, w (when trainable), lora_A and lora_B.
func swigluLayer(t *testing.T, fused, trainW bool, d, master, cast kernels.DType) (out []float64, grads map[string][]float64, held int64) {
	t.Helper()
	const rows, hidden, outF, rank = 5, 24, 7, 3
	be := cpu.New()
	e := autograd.New(be)
	r := rand.New(rand.NewPCG(21, 22))
	h1 := e.FromFloat64(d, []int{1, rows, hidden}, kerneltest.Randn(r, rows*hidden, 1)).Input()
	h3 := e.FromFloat64(d, []int{1, rows, hidden}, kerneltest.Randn(r, rows*hidden, 1)).Input()
	var w *autograd.Tensor
	if trainW {
		w = e.Param("w", d, []int{outF, hidden}, kerneltest.Randn(r, outF*hidden, 0.3))
	} else {
		w = e.Constant("w", d, []int{outF, hidden}, kerneltest.Randn(r, outF*hidden, 0.3))
	}
	a := e.Param("a", master, []int{rank, hidden}, kerneltest.Randn(r, rank*hidden, 0.3))
	b := e.Param("b", master, []int{outF, rank}, kerneltest.Randn(r, outF*rank, 0.3))
	gy := kerneltest.Randn(r, rows*outF, 1)
	e.SetAutocast(cast)
	var y *autograd.Tensor
	if fused {
		y = autograd.SwiGLULoRALinear(h1, h3, w, a, b, 1.5)
	} else {
		g := autograd.SwiGLU(h1, h3)
		y = autograd.LoRALinear(g, g, w, nil, a, b, 1.5)
		g.Release()
	}
	loss := autograd.SumAll(autograd.Mul(y, e.FromFloat64(y.DType(), y.Shape(), gy)))
	if err := e.Backward(loss); err != nil {
		t.Fatal(err)
	}
	var err error
	if out, err = y.Values(); err != nil {
		t.Fatal(err)
	}
	grads = map[string][]float64{}
	named := map[string]*autograd.Tensor{"h1": h1, "h3": h3, "lora_A": a, "lora_B": b}
	if trainW {
		named["w"] = w
	}
	for name, p := range named {
		if grads[name], err = p.Grad().Values(); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return out, grads, be.MemStats().Allocated
}

// TestSwiGLULoRALinear: the fused op computes what SwiGLU followed by
// LoRALinear computes — in float64 to the last bits' worth, under bf16
// autocast within bf16's rounding — for every gradient, with the frozen
// weight and a trainable one, and after the step holds only the leaves and
// their gradients, as the composition does.
func TestSwiGLULoRALinear(t *testing.T) {
	for _, c := range []struct {
		name            string
		d, master, cast kernels.DType
		tol             float64
	}{{"fp64", kernels.F64, kernels.F64, 0, 1e-12}, {"bf16 autocast", kernels.BF16, kernels.F32, kernels.BF16, 2e-2}} {
		for _, trainW := range []bool{false, true} {
			name := c.name + "/frozen w"
			if trainW {
				name = c.name + "/trainable w"
			}
			t.Run(name, func(t *testing.T) {
				gotY, gotG, gotHeld := swigluLayer(t, true, trainW, c.d, c.master, c.cast)
				wantY, wantG, wantHeld := swigluLayer(t, false, trainW, c.d, c.master, c.cast)
				if err := kernels.RelErr(gotY, wantY); !(err <= c.tol) {
					t.Errorf("output %.3g from the composition's", err)
				}
				for name, want := range wantG {
					if err := kernels.RelErr(gotG[name], want); !(err <= c.tol) {
						t.Errorf("gradient of %s %.3g from the composition's", name, err)
					}
				}
				if len(gotG) != len(wantG) {
					t.Errorf("%d gradients, the composition %d", len(gotG), len(wantG))
				}
				if gotHeld != wantHeld {
					t.Errorf("%d bytes held after the step, the composition %d", gotHeld, wantHeld)
				}
			})
		}
	}
}

// TestSwiGLULoRALinearBadShapes: a mismatched operand is an error that
// names it, not a panic.
func TestSwiGLULoRALinearBadShapes(t *testing.T) {
	for _, c := range []struct {
		name        string
		h3, w, a, b []int
	}{
		{"value", []int{2, 5}, []int{3, 6}, []int{2, 6}, []int{3, 2}},
		{"weight", []int{2, 6}, []int{3, 5}, []int{2, 6}, []int{3, 2}},
		{"lora_A", []int{2, 6}, []int{3, 6}, []int{2, 5}, []int{3, 2}},
		{"lora_B", []int{2, 6}, []int{3, 6}, []int{2, 6}, []int{3, 4}},
	} {
		e := autograd.New(cpu.New())
		z := func(shape []int) *autograd.Tensor { return e.Zeros(kernels.F32, shape) }
		autograd.SwiGLULoRALinear(z([]int{2, 6}), z(c.h3), z(c.w), z(c.a), z(c.b), 1)
		if err := e.Err(); err == nil || !strings.Contains(err.Error(), c.name) {
			t.Errorf("bad %s: error %v, want one naming it", c.name, err)
		}
	}
}
