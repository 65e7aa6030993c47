package autograd

import (
	"fmt"
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// LoRALinear returns x·wᵀ + bias + scale·(h·aᵀ)·bᵀ: a linear layer with a
// low-rank update, as one op. x is [..., in], w [out, in] (frozen or
// trainable), bias [out] or nil, a [r, in] and b [out, r]; h is what the
// update reads, shaped like x: x itself, or dropout(x) made by the caller.
//
// Composed from Linear, ScaledLinear and Add, the update costs a second
// output-sized tensor and an add pass in the forward, and in the backward
// the add hands its gradient to both branches and x's two gradient
// contributions are summed by one more pass. Here the product scale·u·bᵀ
// (u = h·aᵀ) and the frozen product share y: the update writes it and the
// frozen product accumulates onto it (beta = 1; with a bias the update is
// accumulated after the bias, as Linear + Add would round it), and when h
// is x the update's contribution du·a and the frozen product share dx the
// same way: one rounding fewer in low precision, no extra tensor, and the
// thin products write their output without reading it. Under
// autocast every operand runs in the autocast dtype, as in Linear.
//
// The tape keeps only what the backward reads: u (for b's gradient), h (for
// a's), x (for w's), and w, a, b as the gradients that need them require.
func LoRALinear(x, h, w, bias, a, b *Tensor, scale float64) *Tensor {
	const name = "LoRALinear"
	e := x.e
	if !e.live(name, x, h, w, bias, a, b) {
		return e.failed(x.dtype, x.shape)
	}
	if h == nil || w == nil || a == nil || b == nil {
		e.failf(name, "needs x, h, w, a and b (only bias may be nil)")
		return e.failed(x.dtype, x.shape)
	}
	err := linearShapes(x, w, bias)
	switch {
	case err != nil:
	case !slices.Equal(h.shape, x.shape):
		err = fmt.Errorf("update input %v is not shaped like the input %v", h, x)
	default:
		err = adapterShapes(w, a, b)
	}
	if err != nil {
		e.failf(name, "%v", err)
		return e.failed(x.dtype, x.shape)
	}
	return lowRankLinear(name, x, h, nil, w, bias, a, b, scale)
}

// LowRankLinear returns x·wᵀ + bias + scale·u·bᵀ for x [..., in], w
// [out, in], bias [out] or nil, u [..., r] (x's leading axes) and b
// [out, r]: the form of LoRALinear for a low-rank factor u = h·aᵀ computed
// elsewhere. The model uses it where the adapter's input is worth
// recomputing rather than keeping (the feed-forward's w2 reads the widest
// activation): u comes out of a Checkpoint, and the update is still
// accumulated into the layer's own product, with no update-sized tensor and
// no add. u's gradient is scale·g·b.
func LowRankLinear(x, w, bias, u, b *Tensor, scale float64) *Tensor {
	const name = "LowRankLinear"
	e := x.e
	if !e.live(name, x, w, bias, u, b) {
		return e.failed(x.dtype, x.shape)
	}
	if w == nil || u == nil || b == nil {
		e.failf(name, "needs x, w, u and b (only bias may be nil)")
		return e.failed(x.dtype, x.shape)
	}
	err := linearShapes(x, w, bias)
	switch {
	case err != nil:
	case len(u.shape) != len(x.shape) || !slices.Equal(u.shape[:len(u.shape)-1], x.shape[:len(x.shape)-1]):
		err = fmt.Errorf("low-rank factor %v does not share the leading axes of the input %v", u, x)
	default:
		err = upShape(b, w, u.shape[len(u.shape)-1])
	}
	if err != nil {
		e.failf(name, "%v", err)
		return e.failed(x.dtype, x.shape)
	}
	return lowRankLinear(name, x, nil, u, w, bias, nil, b, scale)
}

// linearShapes checks the base layer's shapes.
func linearShapes(x, w, bias *Tensor) error {
	switch {
	case len(w.shape) != 2:
		return fmt.Errorf("weight %v is not [out, in]", w)
	case len(x.shape) < 1 || x.shape[len(x.shape)-1] != w.shape[1]:
		return fmt.Errorf("input %v does not end in the weight's in width %d", x, w.shape[1])
	case bias != nil && (len(bias.shape) != 1 || bias.shape[0] != w.shape[0]):
		return fmt.Errorf("bias %v is not [%d]", bias, w.shape[0])
	}
	return nil
}

// adapterShapes checks lora_A a [rank, in] against the weight w and
// lora_B b against both.
func adapterShapes(w, a, b *Tensor) error {
	if len(a.shape) != 2 || a.shape[1] != w.shape[1] {
		return fmt.Errorf("lora_A %v is not [rank, %d]", a, w.shape[1])
	}
	return upShape(b, w, a.shape[0])
}

// upShape checks the up-projection b against the weight and the rank.
func upShape(b, w *Tensor, rank int) error {
	if len(b.shape) != 2 || b.shape[0] != w.shape[0] || b.shape[1] != rank {
		return fmt.Errorf("lora_B %v is not [%d, %d]", b, w.shape[0], rank)
	}
	return nil
}

// lowRankLinear is LoRALinear (h and a given, u made here) and
// LowRankLinear (u given), on checked shapes.
func lowRankLinear(name string, x, h, u, w, bias, a, b *Tensor, scale float64) *Tensor {
	e := x.e
	fused := a != nil
	same := fused && h == x
	orig := []*Tensor{x, h, u, w, bias, a, b}
	if same {
		// One operand, cast once: the update's gradient then lands in the
		// same dx as the base product's.
		orig[1] = nil
	}
	// An fp8 weight is dequantised into x's prepared dtype for the
	// product, and again in the backward: the tape keeps the codes.
	var wq *Tensor
	if w.scale != nil {
		wq, orig[3] = w, nil
	}
	in := e.prepare(lowPrecision, orig...)
	defer releaseCasts(orig, in)
	inF, outF, r := w.shape[1], w.shape[0], b.shape[1]
	rows := x.Len() / inF
	shape := append(append([]int(nil), x.shape[:len(x.shape)-1]...), outF)
	if !e.live(name, in...) { // a cast prepare made could not be allocated
		return e.failed(x.dtype, shape)
	}
	x, h, u, w, bias, a, b = in[0], in[1], in[2], in[3], in[4], in[5], in[6]
	if same {
		h = x
	}
	if wq != nil {
		w = e.dequantised(wq, x.dtype)
		defer w.Release()
		if !e.live(name, w) {
			return e.failed(x.dtype, shape)
		}
	}

	y := e.newTensor(x.dtype, shape)
	if fused {
		u = e.newTensor(h.dtype, []int{rows, r})
	}
	if y.st == nil || u.st == nil {
		y.Release()
		if fused {
			u.Release()
		}
		return e.failed(x.dtype, shape)
	}
	if fused {
		e.gemm(h, false, a, true, u, 1, rows, r, inF, false, false, 1, 0)
	}
	if bias != nil {
		e.gemm(x, false, w, true, y, 1, rows, outF, inF, false, false, 1, 0)
		// In place, rounded as Linear's Add rounds it: y = (x·wᵀ + bias) + update.
		e.b.Binary(kernels.Add, y.st.buf, []int{rows, outF}, y.st.buf, []int{rows, outF}, bias.st.buf, []int{1, outF})
		e.gemm(u, false, b, true, y, 1, rows, outF, r, false, false, scale, 1)
	} else {
		// The thin update writes y and the frozen product accumulates onto
		// it: the update's pass over y is a write only, where accumulating
		// it after the frozen product reads y as well, and the frozen
		// product, bound by its arithmetic, reads C for free.
		e.gemm(u, false, b, true, y, 1, rows, outF, r, false, false, scale, 0)
		e.gemm(x, false, w, true, y, 1, rows, outF, inF, false, false, 1, 1)
	}
	e.trace(name, y, in...)

	if !e.recording(x, h, u, w, bias, a, b) {
		if fused {
			u.Release()
		}
		return y
	}
	needX, needW, needB := x.requiresGrad, w.requiresGrad, b.requiresGrad
	needBias := bias != nil && bias.requiresGrad
	needA := fused && a.requiresGrad
	needH := fused && !same && h.requiresGrad
	needU := !fused && u.requiresGrad
	// du feeds a's gradient and h's (x's, when h is x), or is u's gradient.
	needDu := needA || needH || (same && needX) || needU
	var sx, sh, sw, sa, sb, su *Tensor
	if needW || (same && needA) {
		sx = e.save(x)
	}
	switch {
	case same:
		sh = sx
	case needA:
		sh = e.save(h)
	}
	if needX {
		sw = e.save(w)
		if wq != nil {
			sw.Release()
			sw = e.save(wq)
		}
	}
	if needH || (same && needX) {
		sa = e.save(a)
	}
	if needDu {
		sb = e.save(b)
	}
	if needB {
		su = e.save(u)
	}
	if fused {
		u.Release()
	}
	saved := []*Tensor{sx, sw, sa, sb, su}
	if !same {
		saved = append(saved, sh)
	}
	if fused && same && bias == nil && sx != nil && sw != nil && sb != nil && su != nil {
		// For Recompute: the forward's two products again, in its order,
		// from this node's saves (released after its backward, which
		// comes after every reader's).
		y.recompute = func() {
			e.rebuildable(y, func(buf kernels.Buffer) {
				e.materialize(sx)
				yv := &Tensor{e: e, shape: []int{rows, outF}, dtype: y.dtype, st: &storage{e: e, buf: buf}}
				wb := sw
				if sw.scale != nil {
					wb = e.dequantised(sw, sx.dtype)
					defer wb.Release()
				}
				if e.live(name+" recompute", sx, wb, su, sb) {
					e.gemm(su, false, sb, true, yv, 1, rows, outF, r, false, false, scale, 0)
					e.gemm(sx, false, wb, true, yv, 1, rows, outF, inF, false, false, 1, 1)
				}
			})
		}
	}
	saved = slices.DeleteFunc(saved, func(t *Tensor) bool { return t == nil })

	xIn := x // the tensor x's gradient is pending under
	inputs := []*Tensor{x, h, u, w, bias, a, b}
	if same {
		inputs[1] = nil // its gradient is part of x's
	}
	if fused {
		inputs[2] = nil // made here
	}
	yd := y.dtype
	xd, xs, wd, ws, bd, bs := x.dtype, x.shape, w.dtype, w.shape, b.dtype, b.shape
	// The adapter matrices as the caller passed them (before autocast's
	// casts): the leaves whose gradients may be accumulated into directly.
	aLeaf, bLeaf := leafBehindCast(orig[5], a), leafBehindCast(orig[6], b)
	var hd, ad, ud kernels.DType
	var hs, as, us, biasS []int
	if fused {
		hd, hs, ad, as, ud, us = h.dtype, h.shape, a.dtype, a.shape, h.dtype, []int{rows, r}
	} else {
		ud, us = u.dtype, u.shape
	}
	biasD := x.dtype
	if bias != nil {
		biasD, biasS = bias.dtype, bias.shape
	}
	e.record(name, y, inputs, saved, func(g *Tensor) []*Tensor {
		if g.dtype != yd {
			// Every operand of the products shares y's dtype.
			g = castTo(g, yd)
			defer g.Release()
		}
		gf := e.flat(g)
		var gx, gh, gu, gw, gbias, ga, gb *Tensor
		if needDu { // du = scale·g·b
			gu = e.newTensor(ud, us)
			e.gemm(gf, false, sb, false, gu, 1, rows, r, outF, false, false, scale, 0)
		}
		// The adapters' gradients go straight into their masters' fp32
		// gradients where they can (gradSink), so the step has no bf16
		// gradient, accumulating add or rounding per adapter matrix.
		if needB { // db = scale·gᵀ·u
			gb = e.adapterGrad(bLeaf, gf.dtype, bd, bs, func(dst *Tensor, beta float64) {
				e.gemm(gf, true, e.flat(su), false, dst, 1, outF, r, rows, false, false, scale, beta)
			})
		}
		if needA { // da = duᵀ·h
			ga = e.adapterGrad(aLeaf, gu.dtype, ad, as, func(dst *Tensor, beta float64) {
				e.gemm(gu, true, e.flat(sh), false, dst, 1, r, inF, rows, false, false, 1, beta)
			})
		}
		if needX { // dx = g·w (+ du·a when h is x)
			// Into x's pending gradient when another reader's backward has
			// made one (w1 and w3 read the same input): no second
			// gradient and no add.
			beta := 0.0
			dst := e.pendingSink(xIn, xd)
			if dst != nil {
				beta = 1
			} else {
				dst = e.newTensor(xd, xs)
				gx = dst
			}
			wb := sw
			if sw.scale != nil {
				wb = e.dequantised(sw, xd)
				defer wb.Release()
			}
			if same { // the update's share first; the frozen product accumulates
				e.gemm(gu, false, sa, false, dst, 1, rows, inF, r, false, false, 1, beta)
				beta = 1
			}
			e.gemm(gf, false, wb, false, dst, 1, rows, inF, outF, false, false, 1, beta)
		}
		if needH { // dh = du·a
			gh = e.newTensor(hd, hs)
			e.gemm(gu, false, sa, false, gh, 1, rows, inF, r, false, false, 1, 0)
		}
		if needW { // dw = gᵀ·x
			gw = e.newTensor(wd, ws)
			e.gemm(gf, true, e.flat(sx), false, gw, 1, outF, inF, rows, false, false, 1, 0)
		}
		if needBias {
			gbias = sumTo(g, biasS, biasD)
		}
		if fused && gu != nil {
			gu.Release() // an intermediate of the update, not an input's gradient
			gu = nil
		}
		return []*Tensor{gx, gh, gu, gw, gbias, ga, gb}
	})
	return y
}

// leafBehindCast returns orig when prepared is orig itself or autocast's
// cast of it (so a gradient for prepared would reach orig and nothing
// else), nil otherwise.
func leafBehindCast(orig, prepared *Tensor) *Tensor {
	switch {
	case orig == nil || prepared == nil || !orig.leaf:
		return nil
	case prepared == orig:
		return orig
	case prepared.node != nil && prepared.node.op == "Cast" && len(prepared.node.inputs) == 1 && prepared.node.inputs[0] == orig:
		return orig
	}
	return nil
}

// adapterGrad runs product — an adapter matrix's gradient — straight into
// leaf's gradient where it can take it (gradSink; beta = 1, and nil is
// returned), else into a new tensor of dtype d and shape, returned for the
// tape to carry (beta = 0).
func (e *Engine) adapterGrad(leaf *Tensor, operand, d kernels.DType, shape []int, product func(dst *Tensor, beta float64)) *Tensor {
	if sink := e.gradSink(leaf, operand); sink != nil {
		product(sink, 1)
		return nil
	}
	g := e.newTensor(d, shape)
	product(g, 0)
	return g
}
