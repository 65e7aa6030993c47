package kerneltest

import (
	"fmt"
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Softmax", testSoftmax)
	register("SoftmaxGrad", testSoftmaxGrad)
}

// paSoftmaxRef is the row softmax in float64, shifted by the row maximum.
func paSoftmaxRef(x []float64, rows, cols int) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < rows; r++ {
		row := x[r*cols : (r+1)*cols]
		m := math.Inf(-1)
		for _, v := range row {
			m = math.Max(m, v)
		}
		var s float64
		for j, v := range row {
			y[r*cols+j] = math.Exp(v - m)
			s += y[r*cols+j]
		}
		for j := range row {
			y[r*cols+j] /= s
		}
	}
	return y
}

var paSoftmaxPairs = [][2]kernels.DType{ // in, out
	{kernels.F64, kernels.F64}, {kernels.F32, kernels.F32}, {kernels.BF16, kernels.BF16},
	{kernels.BF16, kernels.F32}, {kernels.F16, kernels.F32}, {kernels.F16, kernels.F16},
}

var paSoftmaxShapes = [][2]int{{7, 13}, {3, 1000}, {1, 1}, {37, 2}}

func testSoftmax(t *testing.T, b kernels.Backend) {
	for _, p := range paSoftmaxPairs {
		for _, s := range paSoftmaxShapes {
			for _, shift := range []float64{0, 100} {
				t.Run(fmt.Sprintf("%v->%v/%v/shift=%g", p[0], p[1], s, shift), func(t *testing.T) {
					rows, cols := s[0], s[1]
					// A shift of 100 overflows exp in float32 unless the row
					// maximum is subtracted first.
					src, x := Put(t, b, p[0], paShift(Randn(Rng(t), rows*cols, 2), shift))
					dst := Poisoned(t, b, p[1], rows*cols)
					b.Softmax(dst, src, rows, cols)
					Check(t, "Softmax", Get(t, b, dst), paSoftmaxRef(x, rows, cols), Tol(p[0], p[1]))
				})
			}
		}
	}
	t.Run("masked", func(t *testing.T) {
		// −Inf entries (masked scores) get probability 0.
		const rows, cols = 5, 11
		v := Randn(Rng(t), rows*cols, 1)
		for r := 0; r < rows; r++ {
			for j := cols - 1 - r; j < cols-1; j++ {
				v[r*cols+j] = math.Inf(-1)
			}
		}
		src, x := Put(t, b, kernels.F32, v)
		dst := Poisoned(t, b, kernels.F32, rows*cols)
		b.Softmax(dst, src, rows, cols)
		Check(t, "Softmax masked", Get(t, b, dst), paSoftmaxRef(x, rows, cols), Tol(kernels.F32, kernels.F32))
	})
	t.Run("in-place", func(t *testing.T) {
		buf, x := Put(t, b, kernels.BF16, Randn(Rng(t), 7*13, 1))
		b.Softmax(buf, buf, 7, 13)
		Check(t, "Softmax in place", Get(t, b, buf), paSoftmaxRef(x, 7, 13), Tol(kernels.BF16, kernels.BF16))
	})
}

func testSoftmaxGrad(t *testing.T, b kernels.Backend) {
	for _, p := range paSoftmaxPairs {
		for _, s := range paSoftmaxShapes {
			t.Run(fmt.Sprintf("%v->%v/%v", p[0], p[1], s), func(t *testing.T) {
				rows, cols := s[0], s[1]
				r := Rng(t)
				yb, y := Put(t, b, p[0], paSoftmaxRef(Randn(r, rows*cols, 1), rows, cols))
				gb, g := Put(t, b, p[0], Randn(r, rows*cols, 1))
				dx := Poisoned(t, b, p[1], rows*cols)
				b.SoftmaxGrad(dx, yb, gb, rows, cols)
				want := make([]float64, rows*cols)
				for i := 0; i < rows; i++ {
					var dot float64
					for j := 0; j < cols; j++ {
						dot += y[i*cols+j] * g[i*cols+j]
					}
					for j := 0; j < cols; j++ {
						want[i*cols+j] = y[i*cols+j] * (g[i*cols+j] - dot)
					}
				}
				Check(t, "SoftmaxGrad", Get(t, b, dx), want, Tol(p[0], p[1]))
			})
		}
	}
	t.Run("reference", func(t *testing.T) {
		// The formula above is the Jacobian-vector product of softmax:
		// check it against central differences of ⟨softmax(x), g⟩.
		const rows, cols = 3, 7
		r := Rng(t)
		x := Randn(r, rows*cols, 1)
		g := Randn(r, rows*cols, 1)
		y := paSoftmaxRef(x, rows, cols)
		for i := range x {
			const h = 1e-6
			x0 := x[i]
			x[i] = x0 + h
			fp := paDot(paSoftmaxRef(x, rows, cols), g)
			x[i] = x0 - h
			fm := paDot(paSoftmaxRef(x, rows, cols), g)
			x[i] = x0
			row := i / cols
			var dot float64
			for j := 0; j < cols; j++ {
				dot += y[row*cols+j] * g[row*cols+j]
			}
			want := y[i] * (g[i] - dot)
			if num := (fp - fm) / (2 * h); math.Abs(num-want) > 1e-7 {
				t.Errorf("element %d: formula %g, finite difference %g", i, want, num)
			}
		}
	})
}

// paDot is Σ a⊙b.
func paDot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}
