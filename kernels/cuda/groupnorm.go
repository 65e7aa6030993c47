package cuda

import "github.com/newbie-train/newbie-train/kernels"

var _ kernels.GroupNormSiLUBackend = (*Backend)(nil)

// groupNormFast runs GroupNorm (and the SiLU after it when silu is set)
// with the multi-block kernels of groupnorm_fast.cu where they serve: x and
// y bf16 or fp32, fp32 statistics, hw a multiple of 8, unless
// NEWBIE_TRAIN_CUDA_OFF names "groupnorm". It reports false where the
// general kernel must run. Operands are checked and the tensor is not empty.
func (c *Backend) groupNormFast(op string, silu bool, y, mean, rstd, x, w, b *buffer, n, ch, hw, groups int, eps float64) bool {
	name := map[kernels.DType]string{kernels.BF16: "bf16", kernels.F32: "f32"}
	xn, yn := name[x.dt], name[y.dt]
	if !c.fast(fastGroupNorm) || xn == "" || yn == "" || mean.dt != kernels.F32 || rstd.dt != kernels.F32 || hw%8 != 0 {
		return false
	}
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
	c.launch("gn_stats_"+xn, dims{slices, rows, 1}, 256, 0, part, x.ptr, ch/groups*hw, slices)
	kernel := "gn_apply_"
	if silu {
		kernel += "silu_"
	}
	c.launch(kernel+xn+"_"+yn, dims{slices, rows, 1}, 256, 0, y.ptr, mean.ptr, rstd.ptr, x.ptr, ptr(w), dt(w), ptr(b), dt(b), part,
		ch, hw, groups, slices, slices, eps)
	return true
}
