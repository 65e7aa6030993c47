package autograd

import (
	"math"
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// AttentionOptions are the masks and scale of Attention.
type AttentionOptions struct {
	// Scale multiplies the scores; 0 means 1/√D.
	Scale float64
	// KeyLens, when set, gives each sample's number of valid keys (right
	// padding): query rows of sample b see keys j < KeyLens[b].
	KeyLens []int32
	// Causal hides keys after the query; Window > 0 (with Causal) also hides
	// keys at or before i−Window.
	Causal bool
	Window int
}

// Attention returns softmax(scale·Q·Kᵀ + mask)·V for q [B, Sq, Hq, D] and k,
// v [B, Sk, Hkv, D] with grouped-query heads (Hq a multiple of Hkv), fused:
// the score matrix is never stored. Under autocast it runs on
// autocast-dtype operands; the result has the operands' dtype.
func Attention(q, k, v *Tensor, o AttentionOptions) *Tensor {
	e := q.e
	if !e.live("Attention", q, k, v) {
		return e.failed(q.dtype, q.shape)
	}
	if len(q.shape) != 4 || len(k.shape) != 4 || !slices.Equal(k.shape, v.shape) ||
		q.shape[0] != k.shape[0] || q.shape[3] != k.shape[3] || k.shape[2] == 0 || q.shape[2]%k.shape[2] != 0 {
		e.failf("Attention", "q %v, k %v, v %v are not [B,S,H,D] with matching batch, head size and grouped heads", q.shape, k.shape, v.shape)
		return e.failed(q.dtype, q.shape)
	}
	if o.KeyLens != nil && len(o.KeyLens) != q.shape[0] {
		e.failf("Attention", "%d key lengths for a batch of %d", len(o.KeyLens), q.shape[0])
		return e.failed(q.dtype, q.shape)
	}
	orig := []*Tensor{q, k, v}
	in := e.prepare(lowPrecision, q, k, v)
	defer releaseCasts(orig, in)
	q, k, v = in[0], in[1], in[2]
	scale := o.Scale
	if scale == 0 {
		scale = 1 / math.Sqrt(float64(q.shape[3]))
	}
	args := kernels.AttentionArgs{
		Q: q.st.buf, K: k.st.buf, V: v.st.buf,
		B: q.shape[0], Sq: q.shape[1], Sk: k.shape[1], Hq: q.shape[2], Hkv: k.shape[2], D: q.shape[3],
		Scale: scale, KeyLens: append([]int32(nil), o.KeyLens...), Causal: o.Causal, Window: o.Window,
	}
	out := e.newTensor(q.dtype, q.shape)
	lse := e.newTensor(statDType(q.dtype), []int{args.B, args.Hq, args.Sq})
	if out.st == nil || lse.st == nil {
		return out
	}
	e.b.Attention(args, out.st.buf, lse.st.buf)
	e.trace("Attention", out, q, k, v)
	if e.recording(q, k, v) {
		sq, sk, sv, so, sl := e.save(q), e.save(k), e.save(v), e.save(out), e.save(lse)
		e.record("Attention", out, []*Tensor{q, k, v}, []*Tensor{sq, sk, sv, so, sl}, func(g *Tensor) []*Tensor {
			dq := e.newTensor(sq.dtype, sq.shape)
			dk := e.newTensor(sk.dtype, sk.shape)
			dv := e.newTensor(sv.dtype, sv.shape)
			if e.live("Attention backward", g, sq, sk, sv, so, sl) && dq.st != nil && dk.st != nil && dv.st != nil {
				a := args
				a.Q, a.K, a.V = sq.st.buf, sk.st.buf, sv.st.buf
				gd := g
				if g.dtype != sq.dtype {
					gd = castTo(g, sq.dtype)
					defer gd.Release()
				}
				e.b.AttentionGrad(a, so.st.buf, sl.st.buf, gd.st.buf, dq.st.buf, dk.st.buf, dv.st.buf)
			}
			return []*Tensor{dq, dk, dv}
		})
	}
	lse.Release()
	return out
}

// Rope rotates pairs of x [B, S, H, D] by the angles whose cosines and sines
// are cos and sin [B, S, D/2] (constants, shared by all heads): pairs
// (x[2i], x[2i+1]) when interleaved (Lumina/Next-DiT), else (x[i], x[i+D/2])
// (Gemma's rotate-half). It computes in float32 and keeps x's dtype.
func Rope(x, cos, sin *Tensor, interleaved bool) *Tensor {
	e := x.e
	if !e.live("Rope", x, cos, sin) {
		return e.failed(x.dtype, x.shape)
	}
	if len(x.shape) != 4 || x.shape[3]%2 != 0 {
		e.failf("Rope", "%v is not [B,S,H,D] with even D", x)
		return e.failed(x.dtype, x.shape)
	}
	b, s, h, d := x.shape[0], x.shape[1], x.shape[2], x.shape[3]
	want := []int{b, s, d / 2}
	if !slices.Equal(cos.shape, want) || !slices.Equal(sin.shape, want) {
		e.failf("Rope", "tables %v and %v must be %v for %v", cos.shape, sin.shape, want, x)
		return e.failed(x.dtype, x.shape)
	}
	out := e.newTensor(x.dtype, x.shape)
	if out.st == nil {
		return out
	}
	e.b.Rope(out.st.buf, x.st.buf, cos.st.buf, sin.st.buf, b, s, h, d, interleaved, false)
	e.trace("Rope", out, x)
	if e.recording(x) {
		sc, ss := e.save(cos), e.save(sin)
		e.record("Rope", out, []*Tensor{x}, []*Tensor{sc, ss}, func(g *Tensor) []*Tensor {
			dx := e.newTensor(g.dtype, g.shape)
			if e.live("Rope backward", g, sc, ss) && dx.st != nil {
				e.b.Rope(dx.st.buf, g.st.buf, sc.st.buf, ss.st.buf, b, s, h, d, interleaved, true)
			}
			return []*Tensor{dx}
		})
	}
	return out
}
