package cpu

import (
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// Softmax over the last axis of src viewed as [rows, cols]. Each row is
// shifted by its maximum before exponentiating, so no term overflows, and
// summed in order in float32 (float64 for F64 output). dst may alias src.
// A row whose maximum is +Inf or NaN, or that is all −Inf, gives NaN, as in
// PyTorch.
func (c *Backend) Softmax(dst, src kernels.Buffer, rows, cols int) {
	if rows < 0 || cols < 0 {
		c.fail("Softmax: negative view [%d, %d]", rows, cols)
		return
	}
	d := c.floatOperand("Softmax", "dst", dst, rows*cols)
	if d == nil {
		return
	}
	s := c.floatOperand("Softmax", "src", src, rows*cols)
	if s == nil || rows*cols == 0 {
		return
	}
	kernels.ParallelFor(rows, max(1, elemGrain/cols), func(lo, hi int) {
		if wide(d) {
			softmaxRows[float64](d, s, lo, hi, cols)
		} else {
			softmaxRows[float32](d, s, lo, hi, cols)
		}
	})
}

// softmaxRows computes rows [lo, hi) of Softmax in T.
func softmaxRows[T realT](d, s *buffer, lo, hi, cols int) {
	row := make([]T, cols)
	for r := lo; r < hi; r++ {
		readReal(row, s, r*cols)
		m := T(math.Inf(-1))
		for _, v := range row {
			if v > m || v != v {
				m = v
			}
		}
		var sum T
		for j, v := range row {
			e := T(math.Exp(float64(v - m)))
			row[j] = e
			sum += e
		}
		for j := range row {
			row[j] /= sum
		}
		writeReal(d, r*cols, row)
	}
}

// SoftmaxGrad computes dx = y ⊙ (dy − Σ_row y⊙dy) from the forward output y;
// the row sum is accumulated in order in float32 (float64 for F64 output).
// dx may alias y or dy.
func (c *Backend) SoftmaxGrad(dx, y, dy kernels.Buffer, rows, cols int) {
	if rows < 0 || cols < 0 {
		c.fail("SoftmaxGrad: negative view [%d, %d]", rows, cols)
		return
	}
	d := c.floatOperand("SoftmaxGrad", "dx", dx, rows*cols)
	if d == nil {
		return
	}
	ys := c.floatOperand("SoftmaxGrad", "y", y, rows*cols)
	if ys == nil {
		return
	}
	g := c.floatOperand("SoftmaxGrad", "dy", dy, rows*cols)
	if g == nil || rows*cols == 0 {
		return
	}
	kernels.ParallelFor(rows, max(1, elemGrain/cols), func(lo, hi int) {
		if wide(d) {
			softmaxGradRows[float64](d, ys, g, lo, hi, cols)
		} else {
			softmaxGradRows[float32](d, ys, g, lo, hi, cols)
		}
	})
}

// softmaxGradRows computes rows [lo, hi) of SoftmaxGrad in T.
func softmaxGradRows[T realT](d, ys, g *buffer, lo, hi, cols int) {
	yr := make([]T, cols)
	gr := make([]T, cols)
	for r := lo; r < hi; r++ {
		readReal(yr, ys, r*cols)
		readReal(gr, g, r*cols)
		var dot T
		for j, v := range yr {
			dot += v * gr[j]
		}
		for j, v := range yr {
			gr[j] = v * (gr[j] - dot)
		}
		writeReal(d, r*cols, gr)
	}
}
