package autograd

import (
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// NormScaleOptions are NormScale's factor and residual.
type NormScaleOptions struct {
	// S, when set, is a per-sample factor [B, Chunks·D] for x [B, …, D]:
	// its chunk Chunk (of Chunks; 0 means 1) multiplies every row of
	// sample b, through Mode (1+s for adaLN's scale, tanh s for its gate).
	S             *Tensor
	Chunk, Chunks int
	Mode          kernels.ScaleMode
	// Res, when set, is added to the result (x's shape).
	Res *Tensor
}

// NormScale returns Res + RMSNorm(x, w)·f(chunk of S) as one op: the
// sandwich norm of a Next-DiT block with its adaLN scale or tanh gate and
// the residual add. It computes exactly what RMSNorm, Slice, the mode's
// Tanh or AddScalar, Mul and Add compute in turn (same dtypes, same
// roundings), without storing the normalised rows, the factor's chunk or
// the product: the backward recomputes the norm from x and the saved
// rstd. Where that equivalence cannot hold — a factor or residual wider
// than the norm's result, or a trainable norm weight, whose gradient the
// fused backward leaves out — it runs as those separate ops.
func NormScale(x, w *Tensor, eps float64, o NormScaleOptions) *Tensor {
	const name = "NormScale"
	e := x.e
	if !e.live(name, x, w, o.S, o.Res) {
		return e.failed(x.dtype, x.shape)
	}
	cols := x.shape[len(x.shape)-1]
	chunks := max(o.Chunks, 1)
	switch {
	case w != nil && (len(w.shape) != 1 || w.shape[0] != cols):
		e.failf(name, "weight %v does not fit %v", w, x)
		return e.failed(x.dtype, x.shape)
	case o.S != nil && (len(x.shape) < 2 || len(o.S.shape) != 2 || o.S.shape[0] != x.shape[0] || o.S.shape[1] != chunks*cols ||
		o.Chunk < 0 || o.Chunk >= chunks):
		e.failf(name, "factor %v is not [%d, %d·%d] for %v, or chunk %d is not one of its %d", o.S, x.shape[0], chunks, cols, x, o.Chunk, chunks)
		return e.failed(x.dtype, x.shape)
	case o.Res != nil && !slices.Equal(o.Res.shape, x.shape):
		e.failf(name, "residual %v is not shaped like %v", o.Res, x)
		return e.failed(x.dtype, x.shape)
	case o.Mode > kernels.ScaleTanh:
		e.failf(name, "unknown scale mode %d", o.Mode)
		return e.failed(x.dtype, x.shape)
	}
	// The norm's inputs and dtype, as RMSNorm picks them.
	xin, win, nD, done := e.rmsNormOperands(x, w)
	defer done()
	if (o.S != nil && promote(nD, o.S.dtype) != nD) || (o.Res != nil && promote(nD, o.Res.dtype) != nD) ||
		(w != nil && e.recording(w)) || !o.S.floatOrNil() || !o.Res.floatOrNil() || x.Len() == 0 {
		return composeNormScale(x, w, eps, o)
	}
	rows := x.Len() / cols
	a := kernels.NormScaleArgs{Rows: rows, Cols: cols, Eps: eps, Res: bufOf(o.Res)}
	if o.S != nil {
		a.S, a.Seq, a.SOff, a.SStride, a.Mode = o.S.st.buf, rows/x.shape[0], o.Chunk*cols, chunks*cols, o.Mode
	}
	out := e.newTensor(nD, x.shape)
	rstd := e.newTensor(statDType(xin.dtype), []int{rows})
	if out.st == nil || rstd.st == nil {
		return out
	}
	e.b.NormScale(out.st.buf, rstd.st.buf, xin.st.buf, bufOf(win), a)
	e.trace(name, out, xin, win, o.S, o.Res)
	if e.recording(xin, win, o.S, o.Res) {
		sx, sw, ss, sr := e.save(xin), e.save(win), e.save(o.S), e.save(rstd)
		needX, needS := xin.requiresGrad, o.S != nil && o.S.requiresGrad
		var resD kernels.DType
		var resShape []int
		needRes := o.Res != nil && o.Res.requiresGrad
		if needRes {
			resD, resShape = o.Res.dtype, o.Res.shape
		}
		saved := slices.DeleteFunc([]*Tensor{sx, sw, ss, sr}, func(t *Tensor) bool { return t == nil })
		e.record(name, out, []*Tensor{xin, win, o.S, o.Res}, saved, func(g *Tensor) []*Tensor {
			var dres *Tensor
			if needRes {
				dres = sumTo(g, resShape, resD)
			}
			if !needX && !needS {
				return []*Tensor{nil, nil, nil, dres}
			}
			gn := g
			if g.dtype != nD {
				// The fused backward takes dy in y's dtype (the separate
				// ops would have multiplied in g's and then rounded).
				gn = castTo(g, nD)
				defer gn.Release()
			}
			var ds *Tensor
			ga := a
			ga.Res = nil // the forward's residual (its buffer may be gone)
			if ss != nil {
				ga.S = ss.st.buf
			}
			// Into x's pending gradient when another reader's backward has
			// made one — the block's residual path reads x too (the
			// post-norm's Res) — so that no second gradient and no add
			// over the model width are needed: NormScaleGrad's Res is the
			// gradient dx adds to, here dx itself.
			var dx, dst *Tensor
			if needX {
				dst = e.pendingSink(xin, sx.dtype)
			}
			if dst != nil {
				ga.Res = dst.st.buf
			} else {
				dx = e.newTensor(sx.dtype, sx.shape)
				dst = dx
			}
			if needS {
				ds = e.newTensor(ss.dtype, ss.shape)
			}
			if e.live(name+" backward", gn) && dst.st != nil && (ds == nil || ds.st != nil) {
				e.b.NormScaleGrad(dst.st.buf, bufOf(ds), gn.st.buf, sx.st.buf, bufOf(sw), sr.st.buf, ga)
			}
			if !needX {
				dx.Release()
				dx = nil
			}
			return []*Tensor{dx, nil, ds, dres}
		})
		// For Recompute: the forward again from this node's saves, which
		// its backward — after every reader's — releases, and the
		// residual, which the node then keeps as well.
		res, rd := o.Res, rstd.dtype
		out.recompute = func() {
			if res != nil && res.released {
				return
			}
			sres := e.save(res)
			if sres != nil {
				out.node.saved = append(out.node.saved, sres)
			}
			e.rebuildable(out, func(buf kernels.Buffer) {
				e.materialize(sx)
				e.materialize(sres)
				rs := e.newTensor(rd, []int{rows})
				defer rs.Release()
				ra := a
				if ss != nil {
					ra.S = ss.st.buf
				}
				ra.Res = bufOf(sres)
				if e.live(name+" recompute", sx, rs) {
					e.b.NormScale(buf, rs.st.buf, sx.st.buf, bufOf(sw), ra)
				}
			})
		}
	}
	rstd.Release()
	return out
}

// floatOrNil reports whether t is absent or a float tensor.
func (t *Tensor) floatOrNil() bool { return t == nil || t.dtype.IsFloat() }

// composeNormScale is NormScale as the separate ops: the definition the
// fused op must match, and its fallback.
func composeNormScale(x, w *Tensor, eps float64, o NormScaleOptions) *Tensor {
	n := RMSNorm(x, w, eps)
	m := n
	if o.S != nil {
		cols := x.shape[len(x.shape)-1]
		chunk := Slice(o.S, 1, o.Chunk*cols, (o.Chunk+1)*cols)
		f := chunk
		switch o.Mode {
		case kernels.ScaleOnePlus:
			f = AddScalar(chunk, 1)
		case kernels.ScaleTanh:
			f = Tanh(chunk)
		}
		shape := make([]int, len(x.shape))
		for i := range shape {
			shape[i] = 1
		}
		shape[0], shape[len(shape)-1] = x.shape[0], cols
		r := Reshape(f, shape)
		m = Mul(n, r)
		release(n, chunk, f, r)
	}
	if o.Res == nil {
		return m
	}
	y := Add(o.Res, m)
	m.Release()
	return y
}

// QKVNormRope splits the fused projection qkv [B, S, (hq+2·hkv)·D] into
// the attention's q [B, S, hq, D], k and v [B, S, hkv, D], with the per-head
// RMSNorms (weights wq, wk [D], nil for none) and the rotation by the tables
// cos, sin [B, S, D/2] applied to q and k on the way, as one op with one
// backward that writes qkv's gradient whole. It computes exactly what
// Slice, Reshape, RMSNorm and Rope compute in turn; where that cannot hold
// (norm weights wider than qkv, or trainable: the fused backward gives them
// no gradient) it runs as those ops.
func QKVNormRope(qkv, wq, wk, cos, sin *Tensor, hq, hkv int, eps float64, interleaved bool) (q, k, v *Tensor) {
	const name = "QKVNormRope"
	e := qkv.e
	failed := func() (*Tensor, *Tensor, *Tensor) {
		return e.failed(qkv.dtype, qkv.shape), e.failed(qkv.dtype, qkv.shape), e.failed(qkv.dtype, qkv.shape)
	}
	if !e.live(name, qkv, wq, wk, cos, sin) {
		return failed()
	}
	heads := hq + 2*hkv
	if len(qkv.shape) != 3 || hq <= 0 || hkv <= 0 || qkv.shape[2]%heads != 0 || (qkv.shape[2]/heads)%2 != 0 {
		e.failf(name, "%v is not [B, S, (%d+2·%d)·D] with an even D", qkv, hq, hkv)
		return failed()
	}
	b, s, d := qkv.shape[0], qkv.shape[1], qkv.shape[2]/heads
	for _, w := range []*Tensor{wq, wk} {
		if w != nil && (len(w.shape) != 1 || w.shape[0] != d) {
			e.failf(name, "norm weight %v is not [%d]", w, d)
			return failed()
		}
	}
	want := []int{b, s, d / 2}
	if !slices.Equal(cos.shape, want) || !slices.Equal(sin.shape, want) {
		e.failf(name, "tables %v and %v must be %v", cos.shape, sin.shape, want)
		return failed()
	}
	narrow := func(w *Tensor) bool {
		return w == nil || (promote(qkv.dtype, w.dtype) == qkv.dtype && !(w.requiresGrad && e.recording(w)))
	}
	if (wq == nil) != (wk == nil) || !narrow(wq) || !narrow(wk) || (wq != nil && wq.dtype != wk.dtype) || cos.dtype != sin.dtype || b*s == 0 {
		return composeQKVNormRope(qkv, wq, wk, cos, sin, hq, hkv, eps, interleaved)
	}
	a := kernels.QKVArgs{B: b, S: s, Hq: hq, Hkv: hkv, D: d, Eps: eps, Interleaved: interleaved}
	rows := b * s
	q = e.newTensor(qkv.dtype, []int{b, s, hq, d})
	k = e.newTensor(qkv.dtype, []int{b, s, hkv, d})
	v = e.newTensor(qkv.dtype, []int{b, s, hkv, d})
	rq := e.newTensor(statDType(qkv.dtype), []int{rows * hq})
	rk := e.newTensor(statDType(qkv.dtype), []int{rows * hkv})
	defer rq.Release()
	defer rk.Release()
	if q.st == nil || k.st == nil || v.st == nil || rq.st == nil || rk.st == nil {
		return q, k, v
	}
	e.b.QKVNormRope(q.st.buf, k.st.buf, v.st.buf, rq.st.buf, rk.st.buf, qkv.st.buf, bufOf(wq), bufOf(wk), cos.st.buf, sin.st.buf, a)
	e.trace(name, q, qkv, wq, wk)
	if !e.recording(qkv) {
		return q, k, v
	}
	sx, swq, swk, src, srs, sc, ssn := e.save(qkv), e.save(wq), e.save(wk), e.save(rq), e.save(rk), e.save(cos), e.save(sin)
	saved := slices.DeleteFunc([]*Tensor{sx, swq, swk, src, srs, sc, ssn}, func(t *Tensor) bool { return t == nil })
	// For Recompute, of any of the three: the forward again from this
	// node's saves (qkv, the weights and tables), which its backward —
	// after the attention's — releases; the rstd it writes are scratch
	// (the node kept the forward's).
	armed := false
	arm := func() {
		if armed {
			return
		}
		armed = true
		e.rebuildableGroup([]*Tensor{q, k, v}, func(bufs []kernels.Buffer) {
			e.materialize(sx)
			tq, tk := e.newTensor(src.dtype, src.shape), e.newTensor(srs.dtype, srs.shape)
			defer release(tq, tk)
			if e.live(name+" recompute", sx, tq, tk) {
				e.b.QKVNormRope(bufs[0], bufs[1], bufs[2], tq.st.buf, tk.st.buf, sx.st.buf, bufOf(swq), bufOf(swk), sc.st.buf, ssn.st.buf, a)
			}
		})
	}
	q.recompute, k.recompute, v.recompute = arm, arm, arm
	xd := qkv.dtype
	e.recordN(name, []*Tensor{q, k, v}, []*Tensor{qkv}, saved, func(gs []*Tensor) []*Tensor {
		shapes := [][]int{{b, s, hq, d}, {b, s, hkv, d}, {b, s, hkv, d}}
		ins := make([]*Tensor, 3)
		for i, g := range gs {
			switch {
			case g == nil:
				// An output no loss reached: its gradient is zero.
				ins[i] = e.Zeros(xd, shapes[i])
			case g.dtype != xd:
				ins[i] = castTo(g, xd)
			default:
				ins[i] = e.alias(g, g.shape)
			}
		}
		defer release(ins...)
		dx := e.newTensor(xd, sx.shape)
		if e.live(name+" backward", ins...) && dx.st != nil {
			e.b.QKVNormRopeGrad(dx.st.buf, ins[0].st.buf, ins[1].st.buf, ins[2].st.buf, sx.st.buf, bufOf(swq), bufOf(swk),
				src.st.buf, srs.st.buf, sc.st.buf, ssn.st.buf, a)
		}
		return []*Tensor{dx}
	})
	return q, k, v
}

// composeQKVNormRope is QKVNormRope as the separate ops.
func composeQKVNormRope(qkv, wq, wk, cos, sin *Tensor, hq, hkv int, eps float64, interleaved bool) (q, k, v *Tensor) {
	b, s := qkv.shape[0], qkv.shape[1]
	d := qkv.shape[2] / (hq + 2*hkv)
	q0 := Slice(qkv, 2, 0, hq*d)
	k0 := Slice(qkv, 2, hq*d, (hq+hkv)*d)
	v0 := Slice(qkv, 2, (hq+hkv)*d, (hq+2*hkv)*d)
	q1 := Reshape(q0, []int{b, s, hq, d})
	k1 := Reshape(k0, []int{b, s, hkv, d})
	v = Reshape(v0, []int{b, s, hkv, d})
	q2 := RMSNorm(q1, wq, eps)
	k2 := RMSNorm(k1, wk, eps)
	q = Rope(q2, cos, sin, interleaved)
	k = Rope(k2, cos, sin, interleaved)
	release(q0, k0, v0, q1, k1, q2, k2)
	return q, k, v
}

// release drops the handles of tensors an op no longer needs (nil skipped).
func release(ts ...*Tensor) {
	for _, t := range ts {
		if t != nil {
			t.Release()
		}
	}
}
