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
	if fused, ok := e.b.(kernels.GroupNormSiLUBackend); ok && !e.recording(x, w, b) {
		return groupNorm("GroupNormSiLU", x, groups, w, b, eps, fused)
	}
	nx := GroupNorm(x, groups, w, b, eps)
	y := SiLU(nx)
	nx.Release()
	return y
}
