package kerneltest

import (
	"fmt"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() { register("Upsample2x", testUpsample2x) }

// upsampleRef repeats each pixel of x [n, c, h, w] into a 2×2 block.
func upsampleRef(x []float64, planes, h, w int) []float64 {
	y := make([]float64, 4*len(x))
	for p := 0; p < planes; p++ {
		for i := 0; i < 2*h; i++ {
			for j := 0; j < 2*w; j++ {
				y[(p*2*h+i)*2*w+j] = x[(p*h+i/2)*w+j/2]
			}
		}
	}
	return y
}

// upsampleGradRef sums each 2×2 block of dy, the adjoint of upsampleRef.
func upsampleGradRef(dy []float64, planes, h, w int) []float64 {
	dx := make([]float64, len(dy)/4)
	for p := 0; p < planes; p++ {
		for i := 0; i < 2*h; i++ {
			for j := 0; j < 2*w; j++ {
				dx[(p*h+i/2)*w+j/2] += dy[(p*2*h+i)*2*w+j]
			}
		}
	}
	return dx
}

func testUpsample2x(t *testing.T, b kernels.Backend) {
	t.Run("reference adjoint", func(t *testing.T) {
		r := Rng(t)
		x, g := Randn(r, 2*3*5*7, 1), Randn(r, 4*2*3*5*7, 1)
		lhs, rhs := pbDot(upsampleRef(x, 6, 5, 7), g), pbDot(x, upsampleGradRef(g, 6, 5, 7))
		Check(t, "⟨U x, g⟩ vs ⟨x, Uᵀ g⟩", []float64{lhs}, []float64{rhs}, 1e-13)
	})
	for ci, sz := range []struct{ n, c, h, w int }{{2, 3, 5, 7}, {1, 1, 1, 1}, {1, 13, 37, 9}, {2, 16, 40, 60}} {
		for _, d := range pbDTypesFor(ci) {
			t.Run(fmt.Sprintf("%v/n%d_c%d_%dx%d", d, sz.n, sz.c, sz.h, sz.w), func(t *testing.T) {
				r := Rng(t)
				planes := sz.n * sz.c
				n := planes * sz.h * sz.w
				xb, x := Put(t, b, d, Randn(r, n, 1))
				yb := Poisoned(t, b, d, 4*n)
				b.Upsample2x(yb, xb, sz.n, sz.c, sz.h, sz.w)
				Check(t, "y", Get(t, b, yb), upsampleRef(x, planes, sz.h, sz.w), Tol(d, d))
				dyb, dy := Put(t, b, d, Randn(r, 4*n, 1))
				dxb := Poisoned(t, b, d, n)
				b.Upsample2xGrad(dxb, dyb, sz.n, sz.c, sz.h, sz.w)
				Check(t, "dx", Get(t, b, dxb), upsampleGradRef(dy, planes, sz.h, sz.w), Tol(d, d))
			})
		}
	}
}
