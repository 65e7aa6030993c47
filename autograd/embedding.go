package autograd

import (
	"github.com/newbie-train/newbie-train/kernels"
)

// Embedding returns the rows of table [rows, dim] selected by ids (I32, any
// shape), shaped [ids..., dim]. The table's gradient adds each row's
// gradient into the rows it was read from.
func Embedding(table, ids *Tensor) *Tensor {
	e := table.e
	if !e.live("Embedding", table, ids) {
		return e.failed(table.dtype, table.shape)
	}
	if len(table.shape) != 2 || ids.dtype != kernels.I32 {
		e.failf("Embedding", "table %v must be [rows, dim] and ids %v I32", table, ids)
		return e.failed(table.dtype, table.shape)
	}
	dim := table.shape[1]
	shape := append(append([]int(nil), ids.shape...), dim)
	out := e.newTensor(table.dtype, shape)
	if out.st == nil {
		return out
	}
	e.b.Gather(out.st.buf, table.st.buf, ids.st.buf, dim)
	if e.recording(table) {
		si := e.save(ids)
		ts := table.shape
		e.record("Embedding", out, []*Tensor{table}, []*Tensor{si}, func(g *Tensor) []*Tensor {
			dt := e.Zeros(statDType(g.dtype), ts)
			if e.live("Embedding backward", g, si) && dt.st != nil {
				e.b.ScatterAdd(dt.st.buf, g.st.buf, si.st.buf, dim)
			}
			return []*Tensor{castOwned(dt, g.dtype)}
		})
	}
	return out
}

// Dropout zeroes each element of x with probability p and scales the rest
// by 1/(1−p). The mask comes from the engine's counter-based generator, so
// a checkpointed recompute draws the same mask. With p = 0 it returns x.
func Dropout(x *Tensor, p float64) *Tensor {
	e := x.e
	if p == 0 {
		return x
	}
	if p < 0 || p >= 1 {
		e.failf("Dropout", "probability %g is outside [0, 1)", p)
		return e.failed(x.dtype, x.shape)
	}
	if !e.live("Dropout", x) {
		return e.failed(x.dtype, x.shape)
	}
	mask := e.newTensor(x.dtype, x.shape)
	if mask.st == nil {
		return mask
	}
	e.b.RandUniform(mask.st.buf, e.rngSeed, e.takeRandom(x.Len()), 0, 1)
	e.b.Unary(kernels.DropoutMask, mask.st.buf, mask.st.buf, kernels.UnaryParams{A: p, B: 1 / (1 - p)})
	out := Mul(x, mask)
	mask.Release()
	return out
}
