package cpu

// Methods not yet written. Each helper deletes the stubs it implements; this
// file must be gone before the package ships.

import "github.com/newbie-train/newbie-train/kernels"

func (c *Backend) Fill(dst kernels.Buffer, v float64) { c.fail("Fill: not implemented") }
func (c *Backend) Cast(dst, src kernels.Buffer)       { c.fail("Cast: not implemented") }
func (c *Backend) Copy2D(dst kernels.Buffer, dstOff, dstStride int, src kernels.Buffer, srcOff, srcStride int, rows, cols int) {
	c.fail("Copy2D: not implemented")
}
func (c *Backend) Permute(dst, src kernels.Buffer, shape []int, perm []int) {
	c.fail("Permute: not implemented")
}
func (c *Backend) Gemm(g kernels.GemmArgs) { c.fail("Gemm: not implemented") }
func (c *Backend) Unary(op kernels.UnaryOp, dst, src kernels.Buffer, p kernels.UnaryParams) {
	c.fail("Unary: not implemented")
}
func (c *Backend) UnaryGrad(op kernels.UnaryOp, dx, x, dy kernels.Buffer, p kernels.UnaryParams) {
	c.fail("UnaryGrad: not implemented")
}
func (c *Backend) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	c.fail("Binary: not implemented")
}
func (c *Backend) Reduce(op kernels.ReduceOp, dst, src kernels.Buffer, outer, axis, inner int) {
	c.fail("Reduce: not implemented")
}
func (c *Backend) SumSquares(dst kernels.Buffer, srcs []kernels.Buffer) {
	c.fail("SumSquares: not implemented")
}
func (c *Backend) NonFinite(dst kernels.Buffer, srcs []kernels.Buffer) {
	c.fail("NonFinite: not implemented")
}
func (c *Backend) Softmax(dst, src kernels.Buffer, rows, cols int) {
	c.fail("Softmax: not implemented")
}
func (c *Backend) SoftmaxGrad(dx, y, dy kernels.Buffer, rows, cols int) {
	c.fail("SoftmaxGrad: not implemented")
}
func (c *Backend) RMSNorm(y, rstd, x, w kernels.Buffer, rows, cols int, eps float64) {
	c.fail("RMSNorm: not implemented")
}
func (c *Backend) RMSNormGrad(dx, dw, dy, x, w, rstd kernels.Buffer, rows, cols int) {
	c.fail("RMSNormGrad: not implemented")
}
func (c *Backend) LayerNorm(y, mean, rstd, x, w, b kernels.Buffer, rows, cols int, eps float64) {
	c.fail("LayerNorm: not implemented")
}
func (c *Backend) LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, rows, cols int) {
	c.fail("LayerNormGrad: not implemented")
}
func (c *Backend) GroupNorm(y, mean, rstd, x, w, b kernels.Buffer, n, ch, hw, groups int, eps float64) {
	c.fail("GroupNorm: not implemented")
}
func (c *Backend) GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, n, ch, hw, groups int) {
	c.fail("GroupNormGrad: not implemented")
}
func (c *Backend) Attention(a kernels.AttentionArgs, o, lse kernels.Buffer) {
	c.fail("Attention: not implemented")
}
func (c *Backend) AttentionGrad(a kernels.AttentionArgs, o, lse, dO, dQ, dK, dV kernels.Buffer) {
	c.fail("AttentionGrad: not implemented")
}
func (c *Backend) Rope(dst, x, cos, sin kernels.Buffer, b, s, h, d int, interleaved, inverse bool) {
	c.fail("Rope: not implemented")
}
func (c *Backend) Conv2D(y, x, w, bias kernels.Buffer, a kernels.ConvArgs) {
	c.fail("Conv2D: not implemented")
}
func (c *Backend) Conv2DGrad(dx, dw, dbias, dy, x, w kernels.Buffer, a kernels.ConvArgs) {
	c.fail("Conv2DGrad: not implemented")
}
func (c *Backend) Upsample2x(y, x kernels.Buffer, n, ch, h, w int) {
	c.fail("Upsample2x: not implemented")
}
func (c *Backend) Upsample2xGrad(dx, dy kernels.Buffer, n, ch, h, w int) {
	c.fail("Upsample2xGrad: not implemented")
}
func (c *Backend) Gather(dst, table, ids kernels.Buffer, dim int) { c.fail("Gather: not implemented") }
func (c *Backend) ScatterAdd(dst, src, ids kernels.Buffer, dim int) {
	c.fail("ScatterAdd: not implemented")
}
func (c *Backend) RandNormal(dst kernels.Buffer, seed, offset uint64, mean, std float64) {
	c.fail("RandNormal: not implemented")
}
func (c *Backend) RandUniform(dst kernels.Buffer, seed, offset uint64, lo, hi float64) {
	c.fail("RandUniform: not implemented")
}
func (c *Backend) AdamW(a kernels.AdamWArgs) { c.fail("AdamW: not implemented") }
