package autograd

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// This file is the fp8 base-weight mode (kohya's --fp8_base): frozen
// linear weights stored as FP8 E4M3 codes with one float32 scale per output
// row, w ≈ q·scale[row], half the memory of bf16. Products never read the
// codes: each use dequantises the weight into the product's operand dtype
// (bf16 under autocast, the input's dtype otherwise) just before the
// product and frees it right after, and a backward that needs the weight
// dequantises it again rather than keep the copy — so at most one layer's
// weight exists in the wide dtype at a time. The GPU runs the same
// dequantise-then-product on its bf16 tensor cores; an fp8 product (which
// would also quantise the activations) is not built.

// fp8Min is the smallest scale QuantizeFP8 gives a row: an all-zero row
// then quantises to zeros instead of dividing by zero.
const fp8Min = 1.0 / (1 << 60)

// QuantizeFP8 returns the frozen weight w [out, in] quantised to FP8 E4M3
// with a per-row scale amax(|row|)/448, so each row's largest magnitude
// maps to E4M3's largest finite value and the rest round to nearest even.
// The result is a constant (it cannot be trained) that Linear, LoRALinear
// and LowRankLinear take in place of a weight, and whose Values are the
// dequantised q·scale. w itself is left as it was; release it to save the
// memory.
func QuantizeFP8(w *Tensor) (*Tensor, error) {
	e := w.e
	if !e.live("QuantizeFP8", w) {
		return nil, e.Err()
	}
	if len(w.shape) != 2 || !w.dtype.IsFloat() || w.dtype == kernels.F8E4M3 {
		return nil, fmt.Errorf("QuantizeFP8: %v is not a float weight [out, in]", w)
	}
	if w.requiresGrad {
		return nil, fmt.Errorf("QuantizeFP8: %v is trainable; only frozen weights are stored in fp8", w)
	}
	rows, cols := w.shape[0], w.shape[1]
	abs := e.newTensor(w.dtype, w.shape)
	amax := e.newTensor(kernels.F32, []int{rows})
	floor := e.Full(kernels.F32, []int{1}, fp8Min)
	scale := e.newTensor(kernels.F32, []int{rows})
	q := e.newTensor(kernels.F8E4M3, w.shape)
	defer release(abs, amax, floor)
	if abs.st == nil || amax.st == nil || floor.st == nil || scale.st == nil || q.st == nil {
		release(scale, q)
		return nil, e.Err()
	}
	e.b.Unary(kernels.Abs, abs.st.buf, w.st.buf, kernels.UnaryParams{})
	e.b.Reduce(kernels.Max, amax.st.buf, abs.st.buf, rows, cols, 1)
	e.b.Unary(kernels.Affine, scale.st.buf, amax.st.buf, kernels.UnaryParams{A: 1.0 / kernels.F8E4M3Max})
	e.b.Binary(kernels.Maximum, scale.st.buf, []int{rows}, scale.st.buf, []int{rows}, floor.st.buf, []int{1})
	e.b.Binary(kernels.Div, q.st.buf, []int{rows, cols}, w.st.buf, []int{rows, cols}, scale.st.buf, []int{rows, 1})
	e.persist(q)
	e.persist(scale)
	q.Name, q.leaf, q.scale = w.Name, true, scale
	scale.Name = w.Name + ".fp8_scale"
	if err := e.Err(); err != nil {
		q.Release()
		return nil, fmt.Errorf("QuantizeFP8 %s: %w", w.Name, err)
	}
	return q, nil
}

// FP8Scale returns the per-row scales of an fp8 weight, nil for any other
// tensor.
func (t *Tensor) FP8Scale() *Tensor { return t.scale }

// dequantised returns the weight q (fp8, with its scales) as a new tensor
// of dtype d, q·scale rounded once, outside the tape.
func (e *Engine) dequantised(q *Tensor, d kernels.DType) *Tensor {
	out := e.newTensor(d, q.shape)
	if e.live("dequantise", q, q.scale) && out.st != nil {
		rows, cols := q.shape[0], q.shape[1]
		e.b.Binary(kernels.Mul, out.st.buf, []int{rows, cols}, q.st.buf, []int{rows, cols}, q.scale.st.buf, []int{rows, 1})
	}
	return out
}

// quantLinear is Linear for an fp8 weight w: y = x·dq(w)ᵀ + bias with the
// weight dequantised for the product and again for dx; w takes no
// gradient.
func quantLinear(x, w, bias *Tensor) *Tensor {
	const name = "Linear"
	e := x.e
	if !e.live(name, x, w, bias) {
		return e.failed(x.dtype, x.shape)
	}
	if err := linearShapes(x, w, bias); err != nil {
		e.failf(name, "%v", err)
		return e.failed(x.dtype, x.shape)
	}
	orig := []*Tensor{x, bias}
	in := e.prepare(lowPrecision, x, bias)
	defer releaseCasts(orig, in)
	x, bias = in[0], in[1]
	inF, outF := w.shape[1], w.shape[0]
	rows := x.Len() / inF
	shape := append(append([]int(nil), x.shape[:len(x.shape)-1]...), outF)
	wd := e.dequantised(w, x.dtype) // the product's operand dtype: x's, as prepared
	y := e.newTensor(x.dtype, shape)
	if y.st == nil || wd.st == nil {
		release(wd)
		return e.failed(x.dtype, shape)
	}
	e.gemm(x, false, wd, true, y, 1, rows, outF, inF, false, false, 1, 0)
	wd.Release()
	if bias != nil {
		e.b.Binary(kernels.Add, y.st.buf, []int{rows, outF}, y.st.buf, []int{rows, outF}, bias.st.buf, []int{1, outF})
	}
	e.trace(name, y, x, w, bias)
	if !e.recording(x, bias) {
		return y
	}
	needX, needBias := x.requiresGrad, bias != nil && bias.requiresGrad
	var sw *Tensor
	if needX {
		sw = e.save(w)
	}
	saved := []*Tensor{}
	if sw != nil {
		saved = append(saved, sw)
	}
	xd, xs, yd := x.dtype, x.shape, y.dtype
	var biasD kernels.DType
	var biasS []int
	if bias != nil {
		biasD, biasS = bias.dtype, bias.shape
	}
	e.record(name, y, []*Tensor{x, nil, bias}, saved, func(g *Tensor) []*Tensor {
		if g.dtype != yd {
			g = castTo(g, yd)
			defer g.Release()
		}
		var gx, gbias *Tensor
		if needX {
			wd := e.dequantised(sw, xd)
			gx = e.newTensor(xd, xs)
			e.gemm(e.flat(g), false, wd, false, gx, 1, rows, inF, outF, false, false, 1, 0)
			wd.Release()
		}
		if needBias {
			gbias = sumTo(g, biasS, biasD)
		}
		return []*Tensor{gx, nil, gbias}
	})
	return y
}
