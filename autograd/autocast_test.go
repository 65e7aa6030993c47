package autograd_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestAutocastPolicy records the dtype every op ran in under bf16 autocast
// and compares it with PyTorch's CUDA autocast policy.
func TestAutocastPolicy(t *testing.T) {
	e := autograd.New(cpu.New())
	var ran []string
	e.Trace = func(op string, in []kernels.DType, out kernels.DType) {
		ran = append(ran, fmt.Sprintf("%s%v→%v", op, in, out))
	}
	r := kerneltest.Rng(t)
	x := e.FromFloat64(kernels.F32, []int{2, 3, 8}, kerneltest.Randn(r, 48, 1))
	w := e.Param("w", kernels.F32, []int{8, 8}, kerneltest.Randn(r, 64, 0.3))
	nw := e.Param("norm", kernels.F32, []int{8}, kerneltest.Randn(r, 8, 1))
	e.SetAutocast(kernels.BF16)

	h := autograd.Linear(x, w, nil)                                      // matmul: bf16
	n := autograd.RMSNorm(h, nw, 1e-6)                                   // norm: fp32
	a := autograd.SiLU(h)                                                // activation: keeps bf16
	s := autograd.Add(n, a)                                              // promotion: fp32
	q := autograd.Reshape(autograd.Linear(s, w, nil), []int{2, 3, 2, 4}) // same cached cast of w
	o := autograd.Attention(q, q, q, autograd.AttentionOptions{})        // attention: bf16
	p := autograd.Softmax(o)                                             // softmax: fp32
	l := autograd.MSE(autograd.Exp(p), e.Zeros(kernels.F32, p.Shape()))  // exp, loss: fp32
	if err := e.Backward(l); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Cast[F32]→BF16", // x
		"Cast[F32]→BF16", // w, once for the step
		"MatMul[BF16 BF16]→BF16",
		"RMSNorm[BF16 F32]→F32", // reads bf16 h directly; bf16 × fp32 weight promotes to fp32
		"SiLU[BF16]→BF16",
		"Cast[BF16]→F32", // promotion of the bf16 operand
		"Add[F32 F32]→F32",
		"Cast[F32]→BF16", // s
		"MatMul[BF16 BF16]→BF16",
		"Attention[BF16 BF16 BF16]→BF16",
		"Cast[BF16]→F32",
		"Softmax[F32]→F32",
		"Exp[F32]→F32",
		"Sub[F32 F32]→F32",
		"Square[F32]→F32",
		"Mean[F32]→F32",
	}
	if got := strings.Join(ran, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("ops ran as\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	if w.Grad() == nil || w.Grad().DType() != kernels.F32 {
		t.Errorf("weight gradient %v, want an F32 gradient", w.Grad())
	}
}

// twoLayer is a small model: MSE(Linear(SiLU(Linear(x)))) against a target.
func twoLayer(t *testing.T, cast kernels.DType) map[string][]float64 {
	e := autograd.New(cpu.New())
	r := kerneltest.Rng(t)
	x := e.FromFloat64(kernels.F32, []int{16, 24}, kerneltest.Randn(r, 16*24, 1))
	target := e.FromFloat64(kernels.F32, []int{16, 8}, kerneltest.Randn(r, 16*8, 1))
	params := []*autograd.Tensor{
		e.Param("w1", kernels.F32, []int{32, 24}, kerneltest.Randn(r, 32*24, 0.2)),
		e.Param("b1", kernels.F32, []int{32}, kerneltest.Randn(r, 32, 0.1)),
		e.Param("w2", kernels.F32, []int{8, 32}, kerneltest.Randn(r, 8*32, 0.2)),
		e.Param("b2", kernels.F32, []int{8}, kerneltest.Randn(r, 8, 0.1)),
	}
	e.SetAutocast(cast)
	h := autograd.SiLU(autograd.Linear(x, params[0], params[1]))
	y := autograd.Linear(h, params[2], params[3])
	if err := e.Backward(autograd.MSE(y, target)); err != nil {
		t.Fatal(err)
	}
	grads := map[string][]float64{}
	for _, p := range params {
		g, err := p.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		grads[p.Name] = g
	}
	return grads
}

// TestAutocastGradientsCloseToFP32: a bf16-autocast two-layer model's
// gradients are within 2e-2 (relative norm) of the fp32 ones, and not equal
// to them (the low precision really ran).
func TestAutocastGradientsCloseToFP32(t *testing.T) {
	ref := twoLayer(t, 0)
	for _, d := range []kernels.DType{kernels.BF16, kernels.F16} {
		got := twoLayer(t, d)
		for name, want := range ref {
			err := kernels.RelErr(got[name], want)
			if !(err < 2e-2) {
				t.Errorf("%v: %s gradient differs from fp32 by %.3g", d, name, err)
			}
			if err == 0 {
				t.Errorf("%v: %s gradient equals fp32 exactly: autocast did not run", d, name)
			}
		}
	}
}

// TestSharedCastSumsInSourceDType: under autocast one bf16 cast of an fp32
// activation serves every product that reads it; its readers' gradients
// must be summed in fp32, as PyTorch's per-use casts are — so the result is
// bit for bit what the same products give when each makes its own cast
// (under a checkpoint nothing is shared), and it differs from summing in
// bf16.
func TestSharedCastSumsInSourceDType(t *testing.T) {
	r := kerneltest.Rng(t)
	pv, w1v, w2v, w3v := kerneltest.Randn(r, 3*40, 1), kerneltest.Randn(r, 40*40, 0.3), kerneltest.Randn(r, 40*40, 0.3), kerneltest.Randn(r, 40*40, 0.3)
	grad := func(checkpoint bool) []float64 {
		e := autograd.New(cpu.New())
		p := e.Param("p", kernels.F32, []int{3, 40}, pv)
		ws := []*autograd.Tensor{
			e.Param("w1", kernels.F32, []int{40, 40}, w1v),
			e.Param("w2", kernels.F32, []int{40, 40}, w2v),
			e.Param("w3", kernels.F32, []int{40, 40}, w3v),
		}
		e.SetAutocast(kernels.BF16)
		f := func(in []*autograd.Tensor) *autograd.Tensor {
			x := autograd.Tanh(in[0]) // an fp32 activation read by three products
			var sum *autograd.Tensor
			for _, w := range ws {
				y := autograd.SumAll(autograd.Square(autograd.Linear(x, w, nil)))
				if sum == nil {
					sum = y
				} else {
					sum = autograd.Add(sum, y)
				}
			}
			return sum
		}
		var l *autograd.Tensor
		if checkpoint {
			l = autograd.Checkpoint(f, p)
		} else {
			l = f([]*autograd.Tensor{p})
		}
		if err := e.Backward(l); err != nil {
			t.Fatal(err)
		}
		v, err := p.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	shared, own := grad(false), grad(true)
	kerneltest.Check(t, "p's gradient, shared cast vs one cast per product", shared, own, 0)
}
