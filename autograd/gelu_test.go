package autograd_test

import (
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// TestGELU compares the composed exact GELU with ½x(1+erf(x/√2)) from
// math.Erf over [−40, 40], at ±0, at tiny and at huge inputs, in every
// dtype: float64 within 1e-15·max(1,|y|) per element, float32 within 2e-7
// (its own rounding), bf16 within one rounding of the exact value (the
// reference is computed from the same rounded inputs).
func TestGELU(t *testing.T) {
	var xs []float64
	for i := range 40001 {
		xs = append(xs, -40+80*float64(i)/40000)
	}
	xs = append(xs, 0, math.Copysign(0, -1), 1e-300, -1e-300, 1e-8, -1e-8, 1e30, -1e30)
	gelu := func(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }
	for _, tc := range []struct {
		dtype kernels.DType
		tol   float64
	}{
		{kernels.F64, 1e-15},
		{kernels.F32, 2e-7},
		{kernels.BF16, 1.0 / 256}, // the output's rounding: half a bf16 spacing is at most 2^-8 of the value
	} {
		t.Run(tc.dtype.String(), func(t *testing.T) {
			e := autograd.New(cpu.New())
			x := e.FromFloat64(tc.dtype, []int{len(xs)}, xs)
			y := autograd.GELU(x)
			if y.DType() != tc.dtype {
				t.Fatalf("GELU of %v returned %v", tc.dtype, y.DType())
			}
			got, err := y.Values()
			if err != nil {
				t.Fatal(err)
			}
			in, _ := x.Values()
			worst, at := 0.0, 0.0
			for i, v := range in {
				want := gelu(v)
				if math.IsInf(v, 0) || math.Abs(v) > 1e20 {
					want = math.Max(v, 0)
				}
				d := math.Abs(got[i]-want) / math.Max(1, math.Abs(want))
				if !(d <= worst) {
					worst, at = d, v
				}
			}
			t.Logf("%v: worst error %.3g (at x = %g)", tc.dtype, worst, at)
			if !(worst <= tc.tol) {
				t.Errorf("%v: error %.3g at x = %g, beyond %.g", tc.dtype, worst, at, tc.tol)
			}
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestGELUFreesIntermediates checks that a GELU outside a tape leaves only
// its output allocated.
func TestGELUFreesIntermediates(t *testing.T) {
	for _, d := range []kernels.DType{kernels.F64, kernels.F32, kernels.BF16} {
		b := cpu.New()
		e := autograd.New(b)
		x := e.FromFloat64(d, []int{3, 5}, []float64{-3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
		before := b.MemStats().Allocated
		y := autograd.GELU(x)
		if got, want := b.MemStats().Allocated-before, int64(15*d.Size()); got != want {
			t.Errorf("%v: GELU left %d bytes allocated, its output is %d", d, got, want)
		}
		y.Release()
	}
}
