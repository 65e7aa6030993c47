package autograd

import (
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// SwiGLU returns SiLU(a) ⊙ b (same shapes), the gate of a SwiGLU
// feed-forward. It keeps only a and b for the backward and recomputes
// SiLU(a) there, instead of also holding SiLU(a) as separate SiLU and Mul
// ops would: one activation of the feed-forward's hidden width less per
// block, for one elementwise pass more.
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
	s := e.rawUnary(kernels.SiLU, a, kernels.UnaryParams{})
	out := e.newTensor(a.dtype, a.shape)
	if out.st != nil && e.live("SwiGLU", s) {
		e.b.Binary(kernels.Mul, out.st.buf, a.shape, s.st.buf, a.shape, b.st.buf, b.shape)
	}
	s.Release()
	e.trace("SwiGLU", out, a, b)
	if e.recording(a, b) {
		sa, sb := e.save(a), e.save(b)
		needA, needB := a.requiresGrad, b.requiresGrad
		e.record("SwiGLU", out, []*Tensor{a, b}, []*Tensor{sa, sb}, func(g *Tensor) []*Tensor {
			var ga, gb *Tensor
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
