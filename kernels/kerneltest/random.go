package kerneltest

import (
	"fmt"
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("RandNormal", testRandNormal)
	register("RandUniform", testRandUniform)
}

// paDraw runs one draw of n elements of dtype d at offset off.
type paDraw func(buf kernels.Buffer, seed, off uint64)

// paRandCheck checks a generator against its definition (at element
// offset+i) for every float dtype: bitwise for F64 and F32, one rounding from
// float32 for BF16/F16; and that shifting the offset continues the stream.
func paRandCheck(t *testing.T, b kernels.Backend, draw paDraw, at func(seed, idx uint64) float64) {
	const seed = 0x5eed_1234_abcd
	for _, d := range paFloats {
		for _, off := range []uint64{0, 7, 1 << 40} {
			t.Run(fmt.Sprintf("%v/offset=%d", d, off), func(t *testing.T) {
				const n = 101
				buf := Poisoned(t, b, d, n)
				draw(buf, seed, off)
				want := make([]float64, n)
				for i := range want {
					want[i] = at(seed, off+uint64(i))
				}
				Check(t, "definition", Get(t, b, buf), Quantize(d, want), 0)
			})
		}
	}
	t.Run("offsets", func(t *testing.T) {
		// 100 draws at offset 0 equal 50 at 0 followed by 50 at 50.
		whole := Poisoned(t, b, kernels.F32, 100)
		draw(whole, seed, 0)
		first := Poisoned(t, b, kernels.F32, 50)
		second := Poisoned(t, b, kernels.F32, 50)
		draw(first, seed, 0)
		draw(second, seed, 50)
		Check(t, "split draw", append(Get(t, b, first), Get(t, b, second)...), Get(t, b, whole), 0)
		other := Poisoned(t, b, kernels.F32, 100)
		draw(other, seed+1, 0)
		if kernels.RelErr(Get(t, b, other), Get(t, b, whole)) < 0.5 {
			t.Errorf("seeds %d and %d give nearly the same draw", seed, seed+1)
		}
	})
}

// paMoments returns the sample mean and standard deviation.
func paMoments(v []float64) (mean, std float64) {
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	for _, x := range v {
		std += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(std / float64(len(v)-1))
}

func testRandNormal(t *testing.T, b kernels.Backend) {
	const mean, std = 0.25, 1.5
	paRandCheck(t, b, func(buf kernels.Buffer, seed, off uint64) { b.RandNormal(buf, seed, off, mean, std) },
		func(seed, idx uint64) float64 { return kernels.NormalAt(seed, idx, mean, std) })
	t.Run("moments", func(t *testing.T) {
		const n = 100000
		buf := Poisoned(t, b, kernels.F32, n)
		b.RandNormal(buf, 42, 0, mean, std)
		m, s := paMoments(Get(t, b, buf))
		// Standard errors are std/√n ≈ 0.0047 for the mean and about
		// std/√(2n) ≈ 0.0034 for the std: allow five of them.
		if math.Abs(m-mean) > 5*std/math.Sqrt(n) || math.Abs(s-std) > 5*std/math.Sqrt(2*n) {
			t.Errorf("sample mean %.4f std %.4f, want %.4f and %.4f", m, s, mean, std)
		}
	})
}

func testRandUniform(t *testing.T, b kernels.Backend) {
	const lo, hi = -0.5, 2.0
	paRandCheck(t, b, func(buf kernels.Buffer, seed, off uint64) { b.RandUniform(buf, seed, off, lo, hi) },
		func(seed, idx uint64) float64 { return kernels.UniformAt(seed, idx, lo, hi) })
	t.Run("moments", func(t *testing.T) {
		const n = 100000
		buf := Poisoned(t, b, kernels.F64, n)
		b.RandUniform(buf, 42, 0, lo, hi)
		v := Get(t, b, buf)
		for i, x := range v {
			if x < lo || x >= hi {
				t.Fatalf("element %d = %g outside [%g, %g)", i, x, lo, hi)
			}
		}
		m, s := paMoments(v)
		wantM, wantS := (lo+hi)/2, (hi-lo)/math.Sqrt(12)
		if math.Abs(m-wantM) > 5*wantS/math.Sqrt(n) || math.Abs(s-wantS) > 5*wantS/math.Sqrt(2*n) {
			t.Errorf("sample mean %.4f std %.4f, want %.4f and %.4f", m, s, wantM, wantS)
		}
	})
}
