package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Rope", testRope)
	register("RopeReferenceAdjoint", testRopeReferenceAdjoint)
}

// ropeRef rotates pair i of every head of x [b, s, h, d] by the angle
// theta[b, s, i] (negated when inverse): (x[2i], x[2i+1]) when interleaved,
// (x[i], x[i+d/2]) otherwise.
func ropeRef(x, cos, sin []float64, b, s, h, d int, interleaved, inverse bool) []float64 {
	y := make([]float64, len(x))
	half := d / 2
	for p := 0; p < b*s; p++ {
		for hh := 0; hh < h; hh++ {
			base := (p*h + hh) * d
			for i := 0; i < half; i++ {
				i0, i1 := base+i, base+i+half
				if interleaved {
					i0, i1 = base+2*i, base+2*i+1
				}
				c, sn := cos[p*half+i], sin[p*half+i]
				if inverse {
					sn = -sn
				}
				y[i0] = x[i0]*c - x[i1]*sn
				y[i1] = x[i0]*sn + x[i1]*c
			}
		}
	}
	return y
}

// ropeTables returns cos and sin of random angles for [b, s, d/2].
func ropeTables(r *rand.Rand, n int) (cos, sin []float64) {
	theta := pbRand(r, n, -math.Pi, math.Pi)
	cos, sin = make([]float64, n), make([]float64, n)
	for i, a := range theta {
		cos[i], sin[i] = math.Cos(a), math.Sin(a)
	}
	return cos, sin
}

func testRope(t *testing.T, b kernels.Backend) {
	for ci, sz := range []struct{ b, s, h, d int }{{2, 7, 3, 40}, {1, 13, 2, 96}, {3, 5, 1, 2}, {1, 100, 24, 32}} {
		for _, d := range pbDTypesFor(ci) {
			for _, mode := range []struct{ interleaved, inverse, inPlace bool }{
				{false, false, false}, {true, false, false}, {false, true, false}, {true, true, true}, {false, false, true},
			} {
				name := fmt.Sprintf("%v/b%d_s%d_h%d_d%d/interleaved=%v/inverse=%v/inplace=%v",
					d, sz.b, sz.s, sz.h, sz.d, mode.interleaved, mode.inverse, mode.inPlace)
				t.Run(name, func(t *testing.T) {
					n := sz.b * sz.s * sz.h * sz.d
					// Tables in F32, as autocast keeps them; x in the case's dtype.
					r := Rng(t)
					cosv, sinv := ropeTables(r, sz.b*sz.s*sz.d/2)
					cb, cosq := Put(t, b, pbStat(d), cosv)
					sb, sinq := Put(t, b, pbStat(d), sinv)
					xb, x := Put(t, b, d, Randn(r, n, 1))
					dst := xb
					if !mode.inPlace {
						dst = Poisoned(t, b, d, n)
					}
					b.Rope(dst, xb, cb, sb, sz.b, sz.s, sz.h, sz.d, mode.interleaved, mode.inverse)
					want := ropeRef(x, cosq, sinq, sz.b, sz.s, sz.h, sz.d, mode.interleaved, mode.inverse)
					Check(t, "y", Get(t, b, dst), want, Tol(d, d))
				})
			}
		}
	}
}

// testRopeReferenceAdjoint checks that the reference's inverse rotation is
// the backward of its forward: ⟨R(x), g⟩ = ⟨x, R⁻¹(g)⟩ for the linear map R,
// which is what finite differences of ⟨R(x), g⟩ would measure exactly. It
// also checks that R⁻¹(R(x)) = x.
func testRopeReferenceAdjoint(t *testing.T, _ kernels.Backend) {
	r := Rng(t)
	const b, s, h, d = 2, 3, 2, 6
	cos, sin := ropeTables(r, b*s*d/2)
	for _, interleaved := range []bool{false, true} {
		x, g := Randn(r, b*s*h*d, 1), Randn(r, b*s*h*d, 1)
		fwd := ropeRef(x, cos, sin, b, s, h, d, interleaved, false)
		bwd := ropeRef(g, cos, sin, b, s, h, d, interleaved, true)
		lhs, rhs := pbDot(fwd, g), pbDot(x, bwd)
		if math.Abs(lhs-rhs) > 1e-12*math.Abs(lhs)+1e-12 {
			t.Errorf("interleaved=%v: ⟨R x, g⟩ = %v but ⟨x, R⁻¹ g⟩ = %v", interleaved, lhs, rhs)
		}
		Check(t, "R⁻¹(R x)", ropeRef(fwd, cos, sin, b, s, h, d, interleaved, true), x, 1e-14)
		loss := func() float64 { return pbDot(ropeRef(x, cos, sin, b, s, h, d, interleaved, false), g) }
		Check(t, "R⁻¹ g against finite differences", bwd, pbNumGrad(loss, x, 1e-6), 1e-8)
	}
}
