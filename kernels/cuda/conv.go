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
	c.launch("conv"+suffix(yb), c.grid1(yb.n, blockSize), blockSize, 0, yb.ptr, dt(yb), xb.ptr, dt(xb), wb.ptr, dt(wb), ptr(bb), dt(bb), sh)
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
