package autograd

import (
	"github.com/newbie-train/newbie-train/kernels"
)

// Conv2D returns the 2-D cross-correlation of x [N, Cin, H, W] with w
// [Cout, Cin, KH, KW] plus bias [Cout] (nil for none), with a square stride
// and symmetric zero padding. Under autocast it runs on autocast-dtype
// operands, like PyTorch's conv2d.
func Conv2D(x, w, bias *Tensor, stride, pad int) *Tensor {
	e := x.e
	if !e.live("Conv2D", x, w, bias) {
		return e.failed(x.dtype, x.shape)
	}
	if len(x.shape) != 4 || len(w.shape) != 4 || w.shape[1] != x.shape[1] || stride < 1 || pad < 0 ||
		(bias != nil && (len(bias.shape) != 1 || bias.shape[0] != w.shape[0])) {
		e.failf("Conv2D", "x %v, w %v, bias %v, stride %d, pad %d do not fit", x.shape, w.shape, shapeOf(bias), stride, pad)
		return e.failed(x.dtype, x.shape)
	}
	a := kernels.ConvArgs{N: x.shape[0], Cin: x.shape[1], H: x.shape[2], W: x.shape[3],
		Cout: w.shape[0], KH: w.shape[2], KW: w.shape[3], Stride: stride, Pad: pad}
	if a.OutH() < 1 || a.OutW() < 1 {
		e.failf("Conv2D", "a %dx%d kernel does not fit %v with padding %d", a.KH, a.KW, x.shape, pad)
		return e.failed(x.dtype, x.shape)
	}
	orig := []*Tensor{x, w, bias}
	in := e.prepare(lowPrecision, x, w, bias)
	defer releaseCasts(orig, in)
	x, w, bias = in[0], in[1], in[2]
	out := e.newTensor(x.dtype, []int{a.N, a.Cout, a.OutH(), a.OutW()})
	if out.st == nil {
		return out
	}
	e.b.Conv2D(out.st.buf, x.st.buf, w.st.buf, bufOf(bias), a)
	e.trace("Conv2D", out, x, w, bias)
	if e.recording(x, w, bias) {
		sx, sw := e.save(x), e.save(w)
		needX, needW, needB := x.requiresGrad, w.requiresGrad, bias != nil && bias.requiresGrad
		var bd kernels.DType
		if bias != nil {
			bd = bias.dtype
		}
		e.record("Conv2D", out, []*Tensor{x, w, bias}, []*Tensor{sx, sw}, func(g *Tensor) []*Tensor {
			var dx, dw, db *Tensor
			if needX {
				dx = e.newTensor(sx.dtype, sx.shape)
			}
			if needW {
				dw = e.newTensor(sw.dtype, sw.shape)
			}
			if needB {
				db = e.newTensor(bd, []int{a.Cout})
			}
			if e.live("Conv2D backward", g, sx, sw) {
				e.b.Conv2DGrad(bufOf(dx), bufOf(dw), bufOf(db), g.st.buf, sx.st.buf, sw.st.buf, a)
			}
			return []*Tensor{dx, dw, db}
		})
	}
	return out
}

// Upsample2x repeats each pixel of x [N, C, H, W] into a 2×2 block (nearest).
func Upsample2x(x *Tensor) *Tensor {
	e := x.e
	if !e.live("Upsample2x", x) {
		return e.failed(x.dtype, x.shape)
	}
	if len(x.shape) != 4 {
		e.failf("Upsample2x", "%v is not [N,C,H,W]", x)
		return e.failed(x.dtype, x.shape)
	}
	n, c, h, w := x.shape[0], x.shape[1], x.shape[2], x.shape[3]
	out := e.newTensor(x.dtype, []int{n, c, 2 * h, 2 * w})
	if out.st == nil {
		return out
	}
	e.b.Upsample2x(out.st.buf, x.st.buf, n, c, h, w)
	if e.recording(x) {
		e.record("Upsample2x", out, []*Tensor{x}, nil, func(g *Tensor) []*Tensor {
			dx := e.newTensor(g.dtype, []int{n, c, h, w})
			if e.live("Upsample2x backward", g) && dx.st != nil {
				e.b.Upsample2xGrad(dx.st.buf, g.st.buf, n, c, h, w)
			}
			return []*Tensor{dx}
		})
	}
	return out
}

func shapeOf(t *Tensor) []int {
	if t == nil {
		return nil
	}
	return t.shape
}
