package kerneltest

import (
	"fmt"
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Reduce", testReduce)
	register("SumSquares", testSumSquares)
	register("NonFinite", testNonFinite)
}

// paReduceRef reduces x viewed as [outer, axis, inner] over the middle axis
// in float64.
func paReduceRef(op kernels.ReduceOp, x []float64, outer, axis, inner int) []float64 {
	out := make([]float64, outer*inner)
	for o := 0; o < outer; o++ {
		for j := 0; j < inner; j++ {
			acc := 0.0
			if op == kernels.Max {
				acc = math.Inf(-1)
			}
			for a := 0; a < axis; a++ {
				v := x[(o*axis+a)*inner+j]
				switch op {
				case kernels.Sum, kernels.Mean:
					acc += v
				case kernels.SumSq:
					acc += v * v
				case kernels.Max:
					acc = math.Max(acc, v)
				}
			}
			if op == kernels.Mean {
				acc /= float64(axis)
			}
			out[o*inner+j] = acc
		}
	}
	return out
}

func testReduce(t *testing.T, b kernels.Backend) {
	ops := []struct {
		op   kernels.ReduceOp
		name string
	}{{kernels.Sum, "Sum"}, {kernels.Mean, "Mean"}, {kernels.SumSq, "SumSq"}, {kernels.Max, "Max"}}
	views := [][3]int{
		{7, 13, 1},    // rows of a matrix (last axis)
		{1, 1000, 1},  // one long vector: several partial blocks
		{3, 300, 5},   // a middle axis longer than one block
		{2, 5, 700},   // inner rows longer than one chunk
		{1, 37, 13},   // the first axis (column sums, as for a bias gradient)
		{1, 1000, 37}, // few outputs over a long axis (adaLN gradients: GPUs split the axis)
		{2, 333, 7},   // the same with an outer axis and a ragged last chunk
		{4, 1, 3},     // a length-1 axis
	}
	pairs := [][2]kernels.DType{ // src, dst
		{kernels.F64, kernels.F64}, {kernels.F32, kernels.F32}, {kernels.BF16, kernels.F32},
		{kernels.BF16, kernels.BF16}, {kernels.F16, kernels.F16}, {kernels.F32, kernels.F64},
	}
	for _, o := range ops {
		for _, v := range views {
			for _, p := range pairs {
				t.Run(fmt.Sprintf("%s/%v/%v->%v", o.name, v, p[0], p[1]), func(t *testing.T) {
					outer, axis, inner := v[0], v[1], v[2]
					// A mean offset of 0.5 keeps Sum and Mean away from 0, so the
					// relative error measures the sum and not cancellation.
					src, x := Put(t, b, p[0], paShift(Randn(Rng(t), outer*axis*inner, 1), 0.5))
					dst := Poisoned(t, b, p[1], outer*inner)
					b.Reduce(o.op, dst, src, outer, axis, inner)
					Check(t, "Reduce "+o.name, Get(t, b, dst), paReduceRef(o.op, x, outer, axis, inner), Tol(p[0], p[1]))
				})
			}
		}
	}
}

// paShift adds c to every element of v.
func paShift(v []float64, c float64) []float64 {
	for i := range v {
		v[i] += c
	}
	return v
}

func testSumSquares(t *testing.T, b kernels.Backend) {
	lists := [][]struct {
		d kernels.DType
		n int
	}{
		{{kernels.F32, 37}},
		{{kernels.F32, 1000}, {kernels.BF16, 13}, {kernels.F64, 7}, {kernels.F16, 100}},
		{{kernels.BF16, 20000}, {kernels.F32, 40001}}, // several scan chunks per buffer
		{},
	}
	for li, l := range lists {
		for _, out := range []kernels.DType{kernels.F32, kernels.F64} {
			t.Run(fmt.Sprintf("list%d/%v", li, out), func(t *testing.T) {
				r := Rng(t)
				var bufs []kernels.Buffer
				var want float64
				for _, e := range l {
					buf, v := Put(t, b, e.d, Randn(r, e.n, 1))
					bufs = append(bufs, buf)
					for _, x := range v {
						want += x * x
					}
				}
				dst := Poisoned(t, b, out, 1)
				b.SumSquares(dst, bufs)
				Check(t, "SumSquares", Get(t, b, dst), []float64{want}, Tol(kernels.F32, out))
			})
		}
	}
}

func testNonFinite(t *testing.T, b kernels.Backend) {
	bad := []struct {
		name string
		v    float64
	}{{"+Inf", math.Inf(1)}, {"-Inf", math.Inf(-1)}, {"NaN", math.NaN()}}
	for _, d := range paFloats {
		t.Run(d.String(), func(t *testing.T) {
			r := Rng(t)
			// Large finite, tiny subnormal-range and -0 values are finite.
			clean := Randn(r, 20001, 1)
			clean[5], clean[6], clean[7] = 6e4, 1e-7, math.Copysign(0, -1)
			if d == kernels.F64 || d == kernels.F32 {
				clean[8] = 1e38
			}
			other, _ := Put(t, b, kernels.F32, Randn(r, 13, 1))
			check := func(what string, vals []float64, want float64) {
				t.Helper()
				buf, _ := Put(t, b, d, vals)
				for _, out := range []kernels.DType{kernels.F32, kernels.F64} {
					dst := Poisoned(t, b, out, 1)
					b.NonFinite(dst, []kernels.Buffer{other, buf})
					Check(t, what+" into "+out.String(), Get(t, b, dst), []float64{want}, 0)
				}
			}
			check("clean", clean, 0)
			for _, bv := range bad {
				for _, pos := range []int{0, 16384, 20000} {
					v := append([]float64(nil), clean...)
					v[pos] = bv.v
					check(fmt.Sprintf("%s at %d", bv.name, pos), v, 1)
				}
			}
			if d == kernels.BF16 || d == kernels.F16 || d == kernels.F32 {
				// A finite float64 that overflows the dtype is stored as Inf.
				v := append([]float64(nil), clean...)
				v[3] = 1e300
				check("overflow", v, 1)
			}
		})
	}
	t.Run("empty-list", func(t *testing.T) {
		dst := Poisoned(t, b, kernels.F32, 1)
		b.NonFinite(dst, nil)
		Check(t, "NonFinite of nothing", Get(t, b, dst), []float64{0}, 0)
	})
}
