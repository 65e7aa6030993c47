package autograd_test

import (
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// fusingBackend is the CPU backend with a GroupNormSiLU that counts its
// calls (computed as GroupNorm then SiLU, so results are comparable).
type fusingBackend struct {
	kernels.Backend
	calls int
}

func (f *fusingBackend) GroupNormSiLU(y, mean, rstd, x, w, b kernels.Buffer, n, c, hw, groups int, eps float64) {
	f.calls++
	f.Backend.GroupNorm(y, mean, rstd, x, w, b, n, c, hw, groups, eps)
	f.Backend.Unary(kernels.SiLU, y, y, kernels.UnaryParams{})
}

// TestGroupNormSiLU: without a tape the fused backend call runs once and
// gives GroupNorm then SiLU, with GroupNorm's dtypes (float32 under
// autocast); while recording it composes the two ops, so the gradient
// flows; a backend without the call composes them too.
func TestGroupNormSiLU(t *testing.T) {
	r := kerneltest.Rng(t)
	shape := []int{2, 8, 3, 4}
	xv, wv, bv := kerneltest.Randn(r, 2*8*12, 1.5), kerneltest.Randn(r, 8, 1), kerneltest.Randn(r, 8, 0.5)
	composed := func(e *autograd.Engine, d kernels.DType) []float64 {
		var out []float64
		e.NoGrad(func() {
			x, w, b := e.FromFloat64(d, shape, xv), e.FromFloat64(d, []int{8}, wv), e.FromFloat64(d, []int{8}, bv)
			v, err := autograd.SiLU(autograd.GroupNorm(x, 4, w, b, 1e-6)).Values()
			if err != nil {
				t.Fatal(err)
			}
			out = v
		})
		return out
	}
	for _, tc := range []struct {
		name     string
		d        kernels.DType
		autocast kernels.DType
		want     kernels.DType
	}{
		{"f32", kernels.F32, 0, kernels.F32},
		{"bf16", kernels.BF16, 0, kernels.BF16},
		{"bf16-autocast", kernels.BF16, kernels.BF16, kernels.F32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := &fusingBackend{Backend: cpu.New()}
			e := autograd.New(fb)
			e.SetAutocast(tc.autocast)
			want := composed(e, tc.d)
			var got []float64
			e.NoGrad(func() {
				x, w, b := e.FromFloat64(tc.d, shape, xv), e.FromFloat64(tc.d, []int{8}, wv), e.FromFloat64(tc.d, []int{8}, bv)
				y := autograd.GroupNormSiLU(x, 4, w, b, 1e-6)
				if y.DType() != tc.want {
					t.Errorf("dtype %v, want %v", y.DType(), tc.want)
				}
				v, err := y.Values()
				if err != nil {
					t.Fatal(err)
				}
				got = v
			})
			if fb.calls != 1 {
				t.Errorf("%d fused calls without a tape, want 1", fb.calls)
			}
			kerneltest.Check(t, "fused", got, want, 0)

			x := e.FromFloat64(tc.d, shape, xv).Input()
			w, b := e.FromFloat64(tc.d, []int{8}, wv), e.FromFloat64(tc.d, []int{8}, bv)
			y := autograd.GroupNormSiLU(x, 4, w, b, 1e-6)
			if fb.calls != 1 {
				t.Errorf("the fused call ran while recording")
			}
			if err := e.Backward(autograd.SumAll(y)); err != nil {
				t.Fatal(err)
			}
			if g, err := x.Grad().Values(); err != nil || len(g) != len(xv) {
				t.Errorf("gradient %d values, %v", len(g), err)
			}
		})
	}
	e := autograd.New(cpu.New())
	want := composed(e, kernels.F32)
	var got []float64
	e.NoGrad(func() {
		x, w, b := e.FromFloat64(kernels.F32, shape, xv), e.FromFloat64(kernels.F32, []int{8}, wv), e.FromFloat64(kernels.F32, []int{8}, bv)
		v, err := autograd.GroupNormSiLU(x, 4, w, b, 1e-6).Values()
		if err != nil {
			t.Fatal(err)
		}
		got = v
	})
	kerneltest.Check(t, "composed on a backend without the fused call", got, want, 0)
}
