package autograd

import (
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// SwiGLU returns SiLU(a) ⊙ b (same shapes), the gate of a SwiGLU
// feed-forward. It keeps only a and b for the backward and recomputes
// SiLU(a) there, instead of also holding SiLU(a) as separate SiLU and Mul
// ops would: one activation of the feed-forward's hidden width less per
// block. Forward and backward are one backend pass each (kernels'
// SwiGLU, SwiGLUGrad), computing what the SiLU and Mul ops would; a
// gradient arriving in another dtype than a's takes those separate ops.
func SwiGLU(a, b *Tensor) *Tensor {
	e := a.e
	if !e.live("SwiGLU", a, b) {
		return e.failed(a.dtype, a.shape)
	}
	if !slices.Equal(a.shape, b.shape) {
		e.failf("SwiGLU", "gate %v and value %v differ in shape", a.shape, b.shape)
		return e.failed(a.dtype, a.shape)
	}
	orig := []*Tensor{a, b}
	in := e.prepare(promoted, a, b)
	defer releaseCasts(orig, in)
	a, b = in[0], in[1]
	out := e.swiglu(a, b)
	e.trace("SwiGLU", out, a, b)
	if e.recording(a, b) {
		sa, sb := e.save(a), e.save(b)
		needA, needB := a.requiresGrad, b.requiresGrad
		e.record("SwiGLU", out, []*Tensor{a, b}, []*Tensor{sa, sb}, func(g *Tensor) []*Tensor {
			var ga, gb *Tensor
			if g.dtype == sa.dtype {
				// Both gradients in one pass (the backend's SwiGLUGrad: the
				// very roundings of the separate ops below).
				if needA {
					ga = e.newTensor(sa.dtype, sa.shape)
				}
				if needB {
					gb = e.newTensor(sb.dtype, sb.shape)
				}
				if e.live("SwiGLU backward", g) && (ga == nil || ga.st != nil) && (gb == nil || gb.st != nil) {
					e.b.SwiGLUGrad(bufOf(ga), bufOf(gb), g.st.buf, sa.st.buf, sb.st.buf)
				}
				return []*Tensor{ga, gb}
			}
			if needA { // d/da = g·b·SiLU'(a)
				gbv := e.rawBinary(kernels.Mul, g, sb)
				ga = e.newTensor(sa.dtype, sa.shape)
				if e.live("SwiGLU backward", gbv) && ga.st != nil {
					e.b.UnaryGrad(kernels.SiLU, ga.st.buf, sa.st.buf, gbv.st.buf, kernels.UnaryParams{})
				}
				gbv.Release()
			}
			if needB { // d/db = g·SiLU(a)
				s := e.rawUnary(kernels.SiLU, sa, kernels.UnaryParams{})
				gb = e.newTensor(sb.dtype, sb.shape)
				if e.live("SwiGLU backward", g, s) && gb.st != nil {
					e.b.Binary(kernels.Mul, gb.st.buf, sb.shape, g.st.buf, g.shape, s.st.buf, s.shape)
				}
				s.Release()
			}
			return []*Tensor{ga, gb}
		})
	}
	return out
}

// swiglu is SiLU(a) ⊙ b (same shapes and dtype) in one backend pass, into
// a new tensor, recording nothing.
func (e *Engine) swiglu(a, b *Tensor) *Tensor {
	out := e.newTensor(a.dtype, a.shape)
	if out.st != nil && e.live("SwiGLU", a, b) {
		e.b.SwiGLU(out.st.buf, a.st.buf, b.st.buf) // SiLU(a) rounded, times b
	}
	return out
}
