package autograd_test

import (
	"slices"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestRMSNormAsIsTypeAs checks RMSNormAs against what it replaces,
// Cast(RMSNorm(Cast(x, F32), w), x's dtype) with a float32 weight: the
// same bits forward, for bf16 and fp16 rows, and gradients within the
// rounding of x's dtype (the backward is RMSNormGrad on x's dtype, whose
// intermediates round as a bf16 or fp16 norm's do, where the composition's
// ran in float32); with one dtype throughout it is RMSNorm, bit for bit.
func TestRMSNormAsIsTypeAs(t *testing.T) {
	r := kerneltest.Rng(t)
	xs, gs, ws := kerneltest.Randn(r, 5*24, 3), kerneltest.Randn(r, 5*24, 1), kerneltest.Randn(r, 24, 1)
	type out struct{ y, dx, dw []float64 }
	run := func(t *testing.T, d kernels.DType, wd kernels.DType, fused bool) out {
		e := autograd.New(cpu.New())
		x := e.Param("x", d, []int{5, 24}, xs)
		w := e.Param("w", wd, []int{24}, ws)
		var y *autograd.Tensor
		switch {
		case fused:
			y = autograd.RMSNormAs(x, w, 1e-6)
		case d == wd:
			y = autograd.RMSNorm(x, w, 1e-6)
		default:
			y = autograd.Cast(autograd.RMSNorm(autograd.Cast(x, wd), w, 1e-6), d)
		}
		if y.DType() != d || !slices.Equal(y.Shape(), []int{5, 24}) {
			t.Fatalf("result is %v %v, want %v [5 24]", y.DType(), y.Shape(), d)
		}
		// A weighted sum, so every element's gradient differs.
		loss := autograd.MeanAll(autograd.Mul(autograd.Cast(y, kernels.F32), e.FromFloat64(kernels.F32, []int{5, 24}, gs)))
		if err := e.Backward(loss); err != nil {
			t.Fatal(err)
		}
		var o out
		var err error
		if o.y, err = y.Values(); err != nil {
			t.Fatal(err)
		}
		if o.dx, err = x.Grad().Values(); err != nil {
			t.Fatal(err)
		}
		if o.dw, err = w.Grad().Values(); err != nil {
			t.Fatal(err)
		}
		return o
	}
	for _, tc := range []struct {
		x, w  kernels.DType
		dxTol float64
	}{{kernels.BF16, kernels.F32, 8e-3}, {kernels.F16, kernels.F32, 1e-3}, {kernels.F32, kernels.F32, 0}, {kernels.BF16, kernels.BF16, 0}} {
		t.Run(tc.x.String()+"/"+tc.w.String(), func(t *testing.T) {
			got, want := run(t, tc.x, tc.w, true), run(t, tc.x, tc.w, false)
			if !slices.Equal(got.y, want.y) {
				t.Errorf("forward differs from the composition: relative %.3g", kernels.RelErr(got.y, want.y))
			}
			if e := kernels.RelErr(got.dx, want.dx); e > tc.dxTol || (tc.dxTol == 0 && !slices.Equal(got.dx, want.dx)) {
				t.Errorf("dx differs from the composition's by %.3g (bound %g)", e, tc.dxTol)
			}
			if e := kernels.RelErr(got.dw, want.dw); e > 1e-6 {
				t.Errorf("dw differs from the composition's by %.3g", e)
			}
		})
	}
}
