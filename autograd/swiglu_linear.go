package autograd

import (
	"fmt"
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// SwiGLULoRALinear returns g·wᵀ + scale·(g·aᵀ)·bᵀ for g = SwiGLU(h1, h3):
// a SwiGLU feed-forward's down projection with its LoRA update, as one op.
// h1 and h3 are [..., hidden], w is [out, hidden] (frozen or trainable,
// bf16 or fp8), a [r, hidden] and b [out, r]. There is no bias and no
// dropout on the update's input. Callers with either compose SwiGLU,
// LoRALinear and Dropout.
//
// g is the feed-forward's widest activation. This op never keeps it.
//
// In the forward, g is formed into a temporary, read by the update's
// down-projection and the frozen product, and freed. The tape keeps h1 and
// h3, which the SwiGLU backward needs anyway, and the small u = g·aᵀ.
//
// In the backward:
//   - g is formed again only for lora_A's gradient;
//   - g's gradient gets both contributions in one buffer: the frozen
//     product's dy·w, and the update's du·a accumulated onto it (beta = 1);
//   - one SwiGLU backward pass turns that into h1's and h3's gradients.
//
// The composition of SwiGLU, a checkpointed down-projection of g and
// LowRankLinear needs more passes: SwiGLU twice in the forward, a
// recomputed SwiGLU and two SwiGLU backward passes in the backward, and
// two adds of hidden-width gradients. Each product under autocast runs in
// the autocast dtype, as in LoRALinear, and the adapters' gradients go
// straight into their masters' fp32 gradients where those exist.
func SwiGLULoRALinear(h1, h3, w, a, b *Tensor, scale float64) *Tensor {
	const name = "SwiGLULoRALinear"
	e := h1.e
	if !e.live(name, h1, h3, w, a, b) {
		return e.failed(h1.dtype, h1.shape)
	}
	var err error
	switch {
	case !slices.Equal(h1.shape, h3.shape):
		err = fmt.Errorf("gate %v and value %v differ in shape", h1, h3)
	case len(w.shape) != 2 || len(h1.shape) < 1 || h1.shape[len(h1.shape)-1] != w.shape[1]:
		err = fmt.Errorf("weight %v is not [out, %d]", w, h1.shape[len(h1.shape)-1])
	default:
		err = adapterShapes(w, a, b)
	}
	if err != nil {
		e.failf(name, "%v", err)
		return e.failed(h1.dtype, h1.shape)
	}
	orig := []*Tensor{h1, h3, w, a, b}
	var wq *Tensor
	if w.scale != nil {
		wq, orig[2] = w, nil // fp8: dequantised for each product, the tape keeps the codes
	}
	in := e.prepare(lowPrecision, orig...)
	defer releaseCasts(orig, in)
	hidden, outF, r := w.shape[1], w.shape[0], b.shape[1]
	rows := h1.Len() / hidden
	shape := append(append([]int(nil), h1.shape[:len(h1.shape)-1]...), outF)
	if !e.live(name, in...) {
		return e.failed(h1.dtype, shape)
	}
	h1, h3, w, a, b = in[0], in[1], in[2], in[3], in[4]
	if h1.dtype != h3.dtype {
		e.failf(name, "gate %v and value %v differ in dtype", h1, h3)
		return e.failed(h1.dtype, shape)
	}
	if wq != nil {
		w = e.dequantised(wq, h1.dtype)
		defer w.Release()
		if !e.live(name, w) {
			return e.failed(h1.dtype, shape)
		}
	}
	g := e.swiglu(h1, h3) // a temporary
	y := e.newTensor(h1.dtype, shape)
	u := e.newTensor(h1.dtype, []int{rows, r})
	if g.st == nil || y.st == nil || u.st == nil {
		g.Release()
		y.Release()
		u.Release()
		return e.failed(h1.dtype, shape)
	}
	e.gemm(g, false, a, true, u, 1, rows, r, hidden, false, false, 1, 0)
	e.gemm(u, false, b, true, y, 1, rows, outF, r, false, false, scale, 0)
	e.gemm(g, false, w, true, y, 1, rows, outF, hidden, false, false, 1, 1)
	g.Release()
	e.trace(name, y, in...)
	if !e.recording(h1, h3, w, a, b) {
		u.Release()
		return y
	}
	needH := h1.requiresGrad || h3.requiresGrad
	needW, needA, needB := w.requiresGrad, a.requiresGrad, b.requiresGrad
	sh1, sh3 := e.save(h1), e.save(h3)
	var sw, sa, sb, su *Tensor
	if needH {
		sw = e.save(w)
		if wq != nil {
			sw.Release()
			sw = e.save(wq)
		}
		sa = e.save(a)
	}
	if needH || needA {
		sb = e.save(b)
	}
	if needB {
		su = e.save(u)
	}
	u.Release()
	saved := slices.DeleteFunc([]*Tensor{sh1, sh3, sw, sa, sb, su}, func(t *Tensor) bool { return t == nil })
	aLeaf, bLeaf := leafBehindCast(orig[3], a), leafBehindCast(orig[4], b)
	hd, wd, ad, bd := h1.dtype, w.dtype, a.dtype, b.dtype
	hs, ws, as, bs := h1.shape, w.shape, a.shape, b.shape
	need1, need3 := h1.requiresGrad, h3.requiresGrad
	yd := y.dtype
	e.record(name, y, []*Tensor{h1, h3, w, a, b}, saved, func(gy *Tensor) []*Tensor {
		if gy.dtype != yd {
			gy = castTo(gy, yd)
			defer gy.Release()
		}
		gf := e.flat(gy)
		var gh1, gh3, gw, ga, gb, du *Tensor
		if needH || needA { // du = scale·gy·b
			du = e.newTensor(hd, []int{rows, r})
			e.gemm(gf, false, sb, false, du, 1, rows, r, outF, false, false, scale, 0)
			defer du.Release()
		}
		if needB { // db = scale·gyᵀ·u
			gb = e.adapterGrad(bLeaf, gf.dtype, bd, bs, func(dst *Tensor, beta float64) {
				e.gemm(gf, true, e.flat(su), false, dst, 1, outF, r, rows, false, false, scale, beta)
			})
		}
		if needA || needW { // g again, for da = duᵀ·g and dw = gyᵀ·g
			g := e.swiglu(sh1, sh3)
			gflat := e.flat(g)
			if needA {
				ga = e.adapterGrad(aLeaf, du.dtype, ad, as, func(dst *Tensor, beta float64) {
					e.gemm(du, true, gflat, false, dst, 1, r, hidden, rows, false, false, 1, beta)
				})
			}
			if needW {
				gw = e.newTensor(wd, ws)
				e.gemm(gf, true, gflat, false, gw, 1, outF, hidden, rows, false, false, 1, 0)
			}
			g.Release()
		}
		if needH { // dg = du·a + gy·w, then SwiGLU's backward
			dg := e.newTensor(hd, hs)
			wb := sw
			if sw.scale != nil {
				wb = e.dequantised(sw, hd)
				defer wb.Release()
			}
			e.gemm(du, false, sa, false, dg, 1, rows, hidden, r, false, false, 1, 0)
			e.gemm(gf, false, wb, false, dg, 1, rows, hidden, outF, false, false, 1, 1)
			if need1 {
				gh1 = e.newTensor(hd, hs)
			}
			// h3's gradient is written over dg, which dies here (the
			// backend allows db to be dy): one hidden-width tensor
			// fewer at the backward's peak.
			if e.live(name+" backward", dg) && (gh1 == nil || gh1.st != nil) {
				var db kernels.Buffer
				if need3 {
					db = dg.st.buf
				}
				e.b.SwiGLUGrad(bufOf(gh1), db, dg.st.buf, sh1.st.buf, sh3.st.buf)
			}
			if need3 {
				gh3 = dg
			} else {
				dg.Release()
			}
		}
		return []*Tensor{gh1, gh3, gw, ga, gb}
	})
	return y
}
