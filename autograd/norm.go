package autograd

import (
	"github.com/newbie-train/newbie-train/kernels"
)

// statDType is the dtype of saved normalisation statistics for inputs of d.
func statDType(d kernels.DType) kernels.DType {
	if d == kernels.F64 {
		return kernels.F64
	}
	return kernels.F32
}

// paramGrad turns a backend-computed parameter gradient (F32/F64) into the
// parameter's dtype.
func paramGrad(g *Tensor, p *Tensor) *Tensor {
	if g == nil || p == nil {
		return nil
	}
	return castOwned(g, p.dtype)
}

// RMSNorm returns x/√(mean(x²)+eps)·w over the last axis (w [last] may be
// nil), computed in float32 under autocast; a bf16/fp16 input gives a
// result in the promotion of its dtype and w's, as upstream's RMSNorm module
// (type_as(x) · weight) does.
func RMSNorm(x, w *Tensor, eps float64) *Tensor {
	e := x.e
	if !e.rmsNormFits("RMSNorm", x, w) {
		return e.failed(x.dtype, x.shape)
	}
	x, w, outDType, done := e.rmsNormOperands(x, w)
	defer done()
	return e.rmsNorm(x, w, eps, outDType)
}

// RMSNormAs returns x/√(mean(x²)+eps)·w over the last axis computed in
// float32 (float64 for F64 operands) and rounded once to x's dtype,
// whatever w's dtype: transformers' Gemma3RMSNorm, whose float32 weight
// meets x.float() and whose result is type_as(x). For a bf16 x and a
// float32 w it is Cast(RMSNorm(Cast(x, F32), w), BF16) in one pass, with
// neither float32 copy stored.
func RMSNormAs(x, w *Tensor, eps float64) *Tensor {
	e := x.e
	if !e.rmsNormFits("RMSNormAs", x, w) {
		return e.failed(x.dtype, x.shape)
	}
	if !x.dtype.IsFloat() || (w != nil && !w.dtype.IsFloat()) {
		e.failf("RMSNormAs", "%v and %v are not both float tensors", x, w)
		return e.failed(x.dtype, x.shape)
	}
	return e.rmsNorm(x, w, eps, x.dtype)
}

// rmsNormFits reports whether op can run on x and w (live tensors, w nil
// or one value per column of x), recording the failure when not.
func (e *Engine) rmsNormFits(op string, x, w *Tensor) bool {
	if !e.live(op, x, w) {
		return false
	}
	cols := x.shape[len(x.shape)-1]
	if w != nil && (len(w.shape) != 1 || w.shape[0] != cols) {
		e.failf(op, "weight %v does not fit %v", w, x)
		return false
	}
	return true
}

// rmsNorm runs RMSNorm on operands already in the dtypes the op reads and
// records its backward.
func (e *Engine) rmsNorm(x, w *Tensor, eps float64, outDType kernels.DType) *Tensor {
	cols := x.shape[len(x.shape)-1]
	rows := x.Len() / cols
	out := e.newTensor(outDType, x.shape)
	rstd := e.newTensor(statDType(x.dtype), []int{rows})
	if out.st == nil || rstd.st == nil {
		return out
	}
	e.b.RMSNorm(out.st.buf, rstd.st.buf, x.st.buf, bufOf(w), rows, cols, eps)
	e.trace("RMSNorm", out, x, w)
	if e.recording(x, w) {
		sx, sw, sr := e.save(x), e.save(w), e.save(rstd)
		needX, needW := x.requiresGrad, w != nil && w.requiresGrad
		e.record("RMSNorm", out, []*Tensor{x, w}, []*Tensor{sx, sw, sr}, func(g *Tensor) []*Tensor {
			dx := e.newTensor(sx.dtype, sx.shape)
			var dw *Tensor
			if needW {
				dw = e.newTensor(statDType(sx.dtype), sw.shape)
			}
			if e.live("RMSNorm backward", g) && dx.st != nil {
				e.b.RMSNormGrad(dx.st.buf, bufOf(dw), g.st.buf, sx.st.buf, bufOf(sw), sr.st.buf, rows, cols)
			}
			if !needX {
				dx.Release()
				dx = nil
			}
			return []*Tensor{dx, paramGrad(dw, sw)}
		})
	}
	rstd.Release()
	return out
}

// rmsNormOperands applies RMSNorm's precision policy: under autocast a
// bf16/fp16 x is read as it is and the result has the promotion of x's and
// w's dtypes, as upstream's RMSNorm module (normalise in float32, return
// type_as(x) times the weight: bf16 for a bf16 model, so the residual
// stream stays bf16); otherwise x and w are prepared for a float32-policy
// op. It returns the operands to read, the result's dtype and what to call
// once the op has run (releasing the casts it made).
func (e *Engine) rmsNormOperands(x, w *Tensor) (xin, win *Tensor, out kernels.DType, done func()) {
	if e.readsLowPrecision(x) {
		out = x.dtype
		if w != nil {
			out = promote(x.dtype, w.dtype)
		}
		return x, w, out, func() {}
	}
	orig := []*Tensor{x, w}
	in := e.prepare(fullPrecision, x, w)
	return in[0], in[1], in[0].dtype, func() { releaseCasts(orig, in) }
}

// LayerNorm returns (x−mean)/√(var+eps)·w + b over the last axis (w and b
// [last] may be nil), in float32 under autocast.
func LayerNorm(x, w, b *Tensor, eps float64) *Tensor {
	e := x.e
	if !e.live("LayerNorm", x, w, b) {
		return e.failed(x.dtype, x.shape)
	}
	cols := x.shape[len(x.shape)-1]
	for _, p := range []*Tensor{w, b} {
		if p != nil && (len(p.shape) != 1 || p.shape[0] != cols) {
			e.failf("LayerNorm", "parameter %v does not fit %v", p, x)
			return e.failed(x.dtype, x.shape)
		}
	}
	outDType := x.dtype
	if e.readsLowPrecision(x) {
		outDType = kernels.F32
	} else {
		orig := []*Tensor{x, w, b}
		in := e.prepare(fullPrecision, x, w, b)
		defer releaseCasts(orig, in)
		x, w, b = in[0], in[1], in[2]
		outDType = x.dtype
	}
	rows := x.Len() / cols
	out := e.newTensor(outDType, x.shape)
	mean := e.newTensor(statDType(x.dtype), []int{rows})
	rstd := e.newTensor(statDType(x.dtype), []int{rows})
	if out.st == nil || mean.st == nil || rstd.st == nil {
		return out
	}
	e.b.LayerNorm(out.st.buf, mean.st.buf, rstd.st.buf, x.st.buf, bufOf(w), bufOf(b), rows, cols, eps)
	e.trace("LayerNorm", out, x, w, b)
	if e.recording(x, w, b) {
		e.recordAffineNorm("LayerNorm", out, x, w, b, mean, rstd, cols, func(dx, dw, db, g, sx, sw, sm, sr *Tensor) {
			e.b.LayerNormGrad(dx.st.buf, bufOf(dw), bufOf(db), g.st.buf, sx.st.buf, bufOf(sw), sm.st.buf, sr.st.buf, rows, cols)
		})
	}
	mean.Release()
	rstd.Release()
	return out
}

// recordAffineNorm records the backward of a norm that saved its mean and
// rstd and applies optional per-channel w and b ([channels]): grad runs the
// backend's gradient op into dx and, where asked for, dw and db (nil
// otherwise), from the upstream gradient g and the saved x, w, mean, rstd.
// dw and db are computed in the statistics' dtype; db is returned in b's.
func (e *Engine) recordAffineNorm(name string, out, x, w, b, mean, rstd *Tensor, channels int, grad func(dx, dw, db, g, sx, sw, sm, sr *Tensor)) {
	sx, sw, sm, sr := e.save(x), e.save(w), e.save(mean), e.save(rstd)
	needX, needW, needB := x.requiresGrad, w != nil && w.requiresGrad, b != nil && b.requiresGrad
	var bDType kernels.DType
	if b != nil {
		bDType = b.dtype
	}
	e.record(name, out, []*Tensor{x, w, b}, []*Tensor{sx, sw, sm, sr}, func(g *Tensor) []*Tensor {
		dx := e.newTensor(sx.dtype, sx.shape)
		var dw, db *Tensor
		if needW {
			dw = e.newTensor(statDType(sx.dtype), []int{channels})
		}
		if needB {
			db = e.newTensor(statDType(sx.dtype), []int{channels})
		}
		if e.live(name+" backward", g) && dx.st != nil {
			grad(dx, dw, db, g, sx, sw, sm, sr)
		}
		if !needX {
			dx.Release()
			dx = nil
		}
		if db != nil {
			db = castOwned(db, bDType)
		}
		return []*Tensor{dx, paramGrad(dw, sw), db}
	})
}

// GroupNorm normalises x [N, C, ...] over groups of C/groups channels and
// all trailing positions, then applies per-channel w and b (nil allowed), in
// float32 under autocast.
func GroupNorm(x *Tensor, groups int, w, b *Tensor, eps float64) *Tensor {
	return groupNorm("GroupNorm", x, groups, w, b, eps, nil)
}

// groupNorm is GroupNorm, or with fused set (callers never set it while
// recording) the backend's GroupNorm followed by SiLU in one pass.
func groupNorm(op string, x *Tensor, groups int, w, b *Tensor, eps float64, fused kernels.GroupNormSiLUBackend) *Tensor {
	e := x.e
	n, c, hw, ok := groupNormShape(op, x, groups, w, b)
	if !ok {
		return e.failed(x.dtype, x.shape)
	}
	orig := []*Tensor{x, w, b}
	in := e.prepare(fullPrecision, x, w, b)
	defer releaseCasts(orig, in)
	x, w, b = in[0], in[1], in[2]
	out := e.newTensor(x.dtype, x.shape)
	mean := e.newTensor(statDType(x.dtype), []int{n, groups})
	rstd := e.newTensor(statDType(x.dtype), []int{n, groups})
	if out.st == nil || mean.st == nil || rstd.st == nil {
		return out
	}
	if fused != nil {
		fused.GroupNormSiLU(out.st.buf, mean.st.buf, rstd.st.buf, x.st.buf, bufOf(w), bufOf(b), n, c, hw, groups, eps)
	} else {
		e.b.GroupNorm(out.st.buf, mean.st.buf, rstd.st.buf, x.st.buf, bufOf(w), bufOf(b), n, c, hw, groups, eps)
	}
	e.trace(op, out, x, w, b)
	if fused == nil && e.recording(x, w, b) {
		e.recordAffineNorm("GroupNorm", out, x, w, b, mean, rstd, c, func(dx, dw, db, g, sx, sw, sm, sr *Tensor) {
			e.b.GroupNormGrad(dx.st.buf, bufOf(dw), bufOf(db), g.st.buf, sx.st.buf, bufOf(sw), sm.st.buf, sr.st.buf, n, c, hw, groups)
		})
	}
	mean.Release()
	rstd.Release()
	return out
}

// groupNormShape checks GroupNorm's operands and returns x's batch,
// channels and pixels per channel.
func groupNormShape(op string, x *Tensor, groups int, w, b *Tensor) (n, c, hw int, ok bool) {
	e := x.e
	if !e.live(op, x, w, b) {
		return 0, 0, 0, false
	}
	if len(x.shape) < 2 || groups <= 0 || x.shape[1]%groups != 0 {
		e.failf(op, "%d groups do not divide the channels of %v", groups, x)
		return 0, 0, 0, false
	}
	n, c = x.shape[0], x.shape[1]
	for _, p := range []*Tensor{w, b} {
		if p != nil && (len(p.shape) != 1 || p.shape[0] != c) {
			e.failf(op, "parameter %v does not fit %v", p, x)
			return 0, 0, 0, false
		}
	}
	return n, c, numel(x.shape[2:]), true
}

// Softmax returns the softmax over the last axis, in float32 under autocast.
func Softmax(x *Tensor) *Tensor {
	e := x.e
	if !e.live("Softmax", x) {
		return e.failed(x.dtype, x.shape)
	}
	orig := []*Tensor{x}
	in := e.prepare(fullPrecision, x)
	defer releaseCasts(orig, in)
	x = in[0]
	cols := x.shape[len(x.shape)-1]
	rows := x.Len() / cols
	out := e.newTensor(x.dtype, x.shape)
	if out.st == nil {
		return out
	}
	e.b.Softmax(out.st.buf, x.st.buf, rows, cols)
	e.trace("Softmax", out, x)
	if e.recording(x) {
		sy := e.save(out)
		e.record("Softmax", out, []*Tensor{x}, []*Tensor{sy}, func(g *Tensor) []*Tensor {
			dx := e.newTensor(sy.dtype, sy.shape)
			if e.live("Softmax backward", g) && dx.st != nil {
				e.b.SoftmaxGrad(dx.st.buf, sy.st.buf, g.st.buf, rows, cols)
			}
			return []*Tensor{dx}
		})
	}
	return out
}

// readsLowPrecision reports whether a float32-policy normalisation under
// autocast can read x as it is: the backend loads bf16/fp16 exactly into
// float32, computes, and writes a float32 result (with parameters of any
// dtype), which is what casting x first would give — without the float32
// copy of x that the tape would then hold for the backward. The gradient
// of x comes back in x's dtype, as the cast's backward would give it.
func (e *Engine) readsLowPrecision(x *Tensor) bool {
	return e.autocast != 0 && (x.dtype == kernels.BF16 || x.dtype == kernels.F16)
}

// bufOf returns t's buffer, or nil for a nil tensor.
func bufOf(t *Tensor) kernels.Buffer {
	if t == nil || t.st == nil {
		return nil
	}
	return t.st.buf
}
