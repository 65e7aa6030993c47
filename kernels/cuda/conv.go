package cuda

import "github.com/newbie-train/newbie-train/kernels"

func (c *Backend) convShape(op string, a kernels.ConvArgs) ([]byte, bool) {
	if a.N < 0 || a.Cin < 1 || a.H < 1 || a.W < 1 || a.Cout < 1 || a.KH < 1 || a.KW < 1 || a.Stride < 1 || a.Pad < 0 || a.OutH() < 1 || a.OutW() < 1 {
		c.failf("%s: bad convolution %+v", op, a)
		return nil, false
	}
	return structBytes(a.N, a.Cin, a.H, a.W, a.Cout, a.KH, a.KW, a.Stride, a.Pad, a.OutH(), a.OutW()), true
}

// Conv2D computes y = conv(x, w) + bias (NCHW cross-correlation).
func (c *Backend) Conv2D(y, x, w, bias kernels.Buffer, a kernels.ConvArgs) {
	if !c.enter("Conv2D") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "Conv2D"
	sh, ok := c.convShape(op, a)
	if !ok {
		return
	}
	yb := c.fbuf(op, "y", y, a.N*a.Cout*a.OutH()*a.OutW())
	xb := c.fbuf(op, "x", x, a.N*a.Cin*a.H*a.W)
	wb := c.fbuf(op, "w", w, a.Cout*a.Cin*a.KH*a.KW)
	bb, okb := c.optFbuf(op, "bias", bias, a.Cout)
	if yb == nil || xb == nil || wb == nil || !okb || yb.n == 0 {
		return
	}
	if c.convTC(a, yb, xb, wb, bb) || c.convGEMM(a, yb, xb, wb, bb) {
		return
	}
	c.launch("conv"+suffix(yb), c.grid1(yb.n, blockSize), blockSize, 0, yb.ptr, dt(yb), xb.ptr, dt(xb), wb.ptr, dt(wb), ptr(bb), dt(bb), sh)
}

// convTC runs the tensor-core implicit GEMM (conv_tc.cu) where it serves the
// call — bf16 x, w and y on sm_80 or later, unless NEWBIE_TRAIN_CUDA_OFF
// names "conv" — and reports false where the direct kernel must run. It
// needs two workspaces for the call: the input in NHWC layout with the
// channels padded to a multiple of 32, and the weights as [Cout][KH·KW][Cp].
func (c *Backend) convTC(a kernels.ConvArgs, y, x, w, bias *buffer) bool {
	if !c.fast(fastConv) || c.dev.arch < 80 || x.dt != kernels.BF16 || w.dt != kernels.BF16 || y.dt != kernels.BF16 {
		return false
	}
	const op = "Conv2D"
	cp := (a.Cin + 31) / 32 * 32
	taps := a.KH * a.KW
	xt, xs, err := c.alloc.get(int64(a.N*a.H*a.W*cp) * 2)
	if err != nil {
		c.failf("%s: NHWC input workspace (%d MiB) for the tensor-core convolution: %v (%s=%s runs the direct kernel, which needs none)",
			op, a.N*a.H*a.W*cp*2>>20, err, fastPathEnv, fastConv)
		return true
	}
	defer c.alloc.put(xt, xs)
	wp, ws, err := c.alloc.get(int64(a.Cout*taps*cp) * 2)
	if err != nil {
		c.failf("%s: weight workspace for the tensor-core convolution: %v", op, err)
		return true
	}
	defer c.alloc.put(wp, ws)
	sh := structBytes(a.N, a.Cin, a.H, a.W, a.Cout, a.KH, a.KW, a.Stride, a.Pad, a.OutH(), a.OutW(), cp)
	c.launch("conv_tc_weights", c.grid1(a.Cout*taps*cp, blockSize), blockSize, 0, wp, w.ptr, sh)
	hw := a.H * a.W
	c.launch("conv_tc_nhwc", dims{(hw + 63) / 64, cp / 32, a.N}, 256, 0, xt, x.ptr, a.N, a.Cin, hw, cp)
	// The channel tile: 128 for wide layers; narrower ones (the VAE's
	// 3- and 32-channel output convolutions) waste less of it.
	bm := 128
	switch {
	case a.Cout <= 16:
		bm = 16
	case a.Cout <= 32:
		bm = 32
	case a.Cout <= 64:
		bm = 64
	}
	pixels := a.N * a.OutH() * a.OutW()
	blocks := (a.Cout + bm - 1) / bm * ((pixels + 127) / 128)
	// 4 stages of a bm × 40 and a 128 × 40 bf16 tile (conv_tc_body).
	smem := 4 * (bm + 128) * 40 * 2
	c.launch("conv_tc"+itoa(bm), dims{blocks, 1, 1}, 256, smem, y.ptr, xt, wp, ptr(bias), dt(bias), sh)
	return true
}

// convColumnBytes bounds convGEMM's column workspace: the columns of as
// many output pixels as fit (at least 64), so a 1024² image's convolutions
// take a few dozen products instead of one 1.2 GB layout.
const convColumnBytes = 64 << 20

// convGEMM runs an fp32 or fp16 convolution as cuBLAS products
// (conv_gemm.cu): per image and range of output pixels, im2col columns with
// a row of ones, times the weights widened by the bias column, written
// straight into y's rows. The direct kernel (one thread per output element,
// re-reading every window) took 13.7 s for the FLUX VAE's fp32 decode of a
// 1024² image on the H200. It reports false where the direct kernel must
// run: other dtypes, or NEWBIE_TRAIN_CUDA_OFF naming "convgemm".
func (c *Backend) convGEMM(a kernels.ConvArgs, y, x, w, bias *buffer) bool {
	d := x.dt
	if !c.fast(fastConvGEMM) || (d != kernels.F32 && d != kernels.F16) || w.dt != d || y.dt != d {
		return false
	}
	const op = "Conv2D"
	esz := d.Size()
	k1 := a.Cin*a.KH*a.KW + 1
	hw := a.OutH() * a.OutW()
	pc := min(hw, max(64, convColumnBytes/(k1*esz)))
	wp, ws, err := c.alloc.get(int64(a.Cout * k1 * esz))
	if err != nil {
		c.failf("%s: weight workspace for the GEMM convolution: %v", op, err)
		return true
	}
	defer c.alloc.put(wp, ws)
	cp, cs, err := c.alloc.get(int64(k1 * pc * esz))
	if err != nil {
		c.failf("%s: column workspace (%d MiB) for the GEMM convolution: %v (%s=%s runs the direct kernel, which needs none)",
			op, k1*pc*esz>>20, err, fastPathEnv, fastConvGEMM)
		return true
	}
	defer c.alloc.put(cp, cs)
	sh := structBytes(a.N, a.Cin, a.H, a.W, a.Cout, a.KH, a.KW, a.Stride, a.Pad, a.OutH(), a.OutW())
	c.launch("conv_wbias_f", c.grid1(a.Cout*k1, blockSize), blockSize, 0, wp, w.ptr, ptr(bias), dt(bias), dt(w), a.Cout, k1-1)
	typ := cudaR32F
	if d == kernels.F16 {
		typ = cudaR16F
	}
	algo := uintptr(uint32(defaultAlgo))
	for n := range a.N {
		for p0 := 0; p0 < hw; p0 += pc {
			cols := min(pc, hw-p0)
			c.launch("conv_im2col_f", c.grid1(k1*cols, blockSize), blockSize, 0, cp, x.ptr, dt(x), sh, n, p0, cols)
			// Row-major y[co][p0 + j] = Σ_k wb[co][k]·col[k][j] is, for
			// column-major cuBLAS, yᵀ = colᵀ·wbᵀ: m = cols, n = Cout.
			yp := y.ptr + uint64((n*a.Cout*hw+p0)*esz)
			r := c.blasCall("cublasGemmEx", &c.l.blas.gemmEx, 6, 13, 1, 0, false, c.blas, uintptr(cublasOpN), uintptr(cublasOpN),
				uintptr(cols), uintptr(a.Cout), uintptr(k1), 0,
				uintptr(cp), uintptr(typ), uintptr(cols), uintptr(wp), uintptr(typ), uintptr(k1),
				0, uintptr(yp), uintptr(typ), uintptr(hw), uintptr(cublasCompute32F), algo)
			if r != 0 {
				c.failf("%s: cublasGemmEx for the GEMM convolution (m=%d n=%d k=%d, %v): cuBLAS status %d", op, cols, a.Cout, k1, d, r)
				return true
			}
		}
	}
	return true
}

// Conv2DGrad computes dx, dw and dbias (each may be nil).
func (c *Backend) Conv2DGrad(dx, dw, dbias, dy, x, w kernels.Buffer, a kernels.ConvArgs) {
	if !c.enter("Conv2DGrad") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "Conv2DGrad"
	sh, ok := c.convShape(op, a)
	if !ok {
		return
	}
	dyb := c.fbuf(op, "dy", dy, a.N*a.Cout*a.OutH()*a.OutW())
	xb := c.fbuf(op, "x", x, a.N*a.Cin*a.H*a.W)
	wb := c.fbuf(op, "w", w, a.Cout*a.Cin*a.KH*a.KW)
	dxb, ok1 := c.optFbuf(op, "dx", dx, a.N*a.Cin*a.H*a.W)
	dwb, ok2 := c.optFbuf(op, "dw", dw, a.Cout*a.Cin*a.KH*a.KW)
	dbb, ok3 := c.optFbuf(op, "dbias", dbias, a.Cout)
	if dyb == nil || xb == nil || wb == nil || !ok1 || !ok2 || !ok3 {
		return
	}
	if dxb != nil && dxb.n > 0 {
		c.launch("conv_dx"+suffix(dxb), c.grid1(dxb.n, blockSize), blockSize, 0, dxb.ptr, dt(dxb), dyb.ptr, dt(dyb), wb.ptr, dt(wb), sh)
	}
	if dwb != nil {
		c.launch("conv_dw"+suffix(dwb), dims{min(dwb.n, c.dev.sms*16), 1, 1}, blockSize, 0, dwb.ptr, dt(dwb), dyb.ptr, dt(dyb), xb.ptr, dt(xb), sh)
	}
	if dbb != nil {
		c.launch("conv_db"+suffix(dbb), dims{min(dbb.n, c.dev.sms*16), 1, 1}, blockSize, 0, dbb.ptr, dt(dbb), dyb.ptr, dt(dyb), sh)
	}
}
