package autograd

import "github.com/newbie-train/newbie-train/kernels"

// GroupNormSiLU returns SiLU(GroupNorm(x, groups, w, b, eps)), the VAE's
// norm-then-activation. Where nothing is recorded and the backend fuses the
// two (kernels.GroupNormSiLUBackend), it is one pass over x with one
// rounding of the result; otherwise it is GroupNorm then SiLU, whose
// backward needs the norm's output. Dtypes follow GroupNorm (float32 under
// autocast).
func GroupNormSiLU(x *Tensor, groups int, w, b *Tensor, eps float64) *Tensor {
	e := x.e
	fused, ok := e.b.(kernels.GroupNormSiLUBackend)
	if !ok || e.recording(x, w, b) {
		nx := GroupNorm(x, groups, w, b, eps)
		y := SiLU(nx)
		nx.Release()
		return y
	}
	n, c, hw, ok := groupNormShape("GroupNormSiLU", x, groups, w, b)
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
	defer mean.Release()
	defer rstd.Release()
	if out.st == nil || mean.st == nil || rstd.st == nil {
		return out
	}
	fused.GroupNormSiLU(out.st.buf, mean.st.buf, rstd.st.buf, x.st.buf, bufOf(w), bufOf(b), n, c, hw, groups, eps)
	e.trace("GroupNormSiLU", out, x, w, b)
	return out
}
