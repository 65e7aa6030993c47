package autograd

import (
	"github.com/newbie-train/newbie-train/kernels"
)

// reduceAxis reduces x over one axis (removed from the shape, or kept as 1
// with keep) in float32 under autocast.
func reduceAxis(name string, op kernels.ReduceOp, x *Tensor, axis int, keep bool) *Tensor {
	e := x.e
	if !e.live(name, x) {
		return e.failed(x.dtype, x.shape)
	}
	if axis < 0 {
		axis += len(x.shape)
	}
	if axis < 0 || axis >= len(x.shape) {
		e.failf(name, "axis out of range for %v", x)
		return e.failed(x.dtype, x.shape)
	}
	orig := []*Tensor{x}
	in := e.prepare(fullPrecision, x)
	defer releaseCasts(orig, in)
	x = in[0]
	kept := append([]int(nil), x.shape...)
	kept[axis] = 1
	shape := kept
	if !keep {
		shape = append(append([]int(nil), x.shape[:axis]...), x.shape[axis+1:]...)
	}
	outer, n, inner := numel(x.shape[:axis]), x.shape[axis], numel(x.shape[axis+1:])
	out := e.newTensor(x.dtype, shape)
	if out.st == nil {
		return out
	}
	e.b.Reduce(op, out.st.buf, x.st.buf, outer, n, inner)
	e.trace(name, out, x)
	if e.recording(x) {
		xShape, xd := x.shape, x.dtype
		var sx *Tensor
		saved := []*Tensor{}
		if op == kernels.SumSq {
			sx = e.save(x)
			saved = append(saved, sx)
		}
		e.record(name, out, []*Tensor{x}, saved, func(g *Tensor) []*Tensor {
			gk := e.alias(g, kept)
			defer gk.Release()
			var dx *Tensor
			switch op {
			case kernels.Sum:
				dx = e.expand(gk, xShape, xd, 1)
			case kernels.Mean:
				dx = e.expand(gk, xShape, xd, 1/float64(n))
			case kernels.SumSq:
				t := e.expand(gk, xShape, xd, 2)
				dx = e.rawBinary(kernels.Mul, t, sx)
				t.Release()
			default:
				e.failf(name, "has no gradient")
			}
			return []*Tensor{dx}
		})
	}
	return out
}

// expand broadcasts g to shape (dtype d), multiplied by s.
func (e *Engine) expand(g *Tensor, shape []int, d kernels.DType, s float64) *Tensor {
	out := e.newTensor(d, shape)
	one := make([]int, len(shape))
	for i := range one {
		one[i] = 1
	}
	k := e.newTensor(g.dtype, one)
	if e.live("expand", g) && out.st != nil && k.st != nil {
		e.b.Fill(k.st.buf, s)
		e.b.Binary(kernels.Mul, out.st.buf, shape, g.st.buf, g.shape, k.st.buf, one)
	}
	k.Release()
	return out
}

// Sum sums x over axis (negative counts from the end); keep leaves the axis
// with size 1.
func Sum(x *Tensor, axis int, keep bool) *Tensor {
	return reduceAxis("Sum", kernels.Sum, x, axis, keep)
}

// Mean averages x over axis.
func Mean(x *Tensor, axis int, keep bool) *Tensor {
	return reduceAxis("Mean", kernels.Mean, x, axis, keep)
}

// SumSquares sums x² over axis.
func SumSquares(x *Tensor, axis int, keep bool) *Tensor {
	return reduceAxis("SumSquares", kernels.SumSq, x, axis, keep)
}

// SumAll sums every element into a [1] tensor.
func SumAll(x *Tensor) *Tensor {
	flat := Reshape(x, []int{x.Len()})
	s := Sum(flat, 0, true)
	flat.Release()
	return s
}

// MeanAll averages every element into a [1] tensor.
func MeanAll(x *Tensor) *Tensor {
	flat := Reshape(x, []int{x.Len()})
	s := Mean(flat, 0, true)
	flat.Release()
	return s
}

// MSE is the mean squared error between pred and target, in float32 under
// autocast (float64 for F64 inputs): mean((pred − target)²).
func MSE(pred, target *Tensor) *Tensor {
	e := pred.e
	orig := []*Tensor{pred, target}
	in := e.prepare(fullPrecision, pred, target)
	defer releaseCasts(orig, in)
	d := Sub(in[0], in[1])
	sq := Square(d)
	d.Release()
	m := MeanAll(sq)
	sq.Release()
	return m
}
