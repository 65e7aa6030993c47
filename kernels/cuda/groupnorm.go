package cuda

import "github.com/newbie-train/newbie-train/kernels"

var _ kernels.GroupNormSiLUBackend = (*Backend)(nil)

// groupNormFast runs GroupNorm (and the SiLU after it when silu is set)
// with the multi-block kernels of groupnorm_fast.cu where they serve: x and
// y bf16 or fp32, fp32 statistics, hw a multiple of 8, unless
// NEWBIE_TRAIN_CUDA_OFF names "groupnorm". It reports false where the
// general kernel must run. Operands are checked and the tensor is not empty.
func (c *Backend) groupNormFast(op string, silu bool, y, mean, rstd, x, w, b *buffer, n, ch, hw, groups int, eps float64) bool {
	vec := func(d kernels.DType) bool { return d == kernels.BF16 || d == kernels.F32 }
	if !c.fast(fastGroupNorm) || !vec(x.dt) || !vec(y.dt) || mean.dt != kernels.F32 || rstd.dt != kernels.F32 || hw%8 != 0 {
		return false
	}
	flag := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	xbf, ybf := flag(x.dt == kernels.BF16), flag(y.dt == kernels.BF16)
	rows := n * groups
	if rows > 65535 { // the grid's y extent
		return false
	}
	chunks := ch / groups * hw / 8
	// Slices per group: enough blocks for four per multiprocessor, but at
	// least 1024 chunks (four a thread) in each.
	slices := max(1, min((4*c.dev.sms+rows-1)/rows, chunks/1024))
	part, psize, err := c.alloc.get(int64(rows*slices*3) * 4)
	if err != nil {
		c.failf("%s: partial statistics: %v", op, err)
		return true
	}
	defer c.alloc.put(part, psize)
	c.launch("gn_stats_kernel", dims{slices, rows, 1}, 256, 0, part, x.ptr, xbf, ch/groups*hw, slices)
	c.launch("gn_apply_kernel", dims{slices, rows, 1}, 256, 0, y.ptr, ybf, mean.ptr, rstd.ptr, x.ptr, xbf, ptr(w), dt(w), ptr(b), dt(b), part,
		ch, hw, groups, slices, slices, flag(silu), eps)
	return true
}
