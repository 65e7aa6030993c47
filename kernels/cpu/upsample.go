package cpu

import "github.com/newbie-train/newbie-train/kernels"

// Upsample2x repeats each pixel of x [n, ch, h, w] into a 2×2 block of
// y [n, ch, 2h, 2w] (nearest-neighbour upsampling by two).
func (c *Backend) Upsample2x(y, x kernels.Buffer, n, ch, h, w int) {
	const op = "Upsample2x"
	if !c.shapeOK(op, n, ch, h, w, 4) {
		return
	}
	yb := c.floatArg(op, "y", y, n*ch*h*w*4)
	xb := c.floatArg(op, "x", x, n*ch*h*w)
	if yb == nil || xb == nil {
		return
	}
	if anyF64(yb, xb) {
		upsampleFwd[float64](yb, xb, n*ch, h, w)
	} else {
		upsampleFwd[float32](yb, xb, n*ch, h, w)
	}
}

// upsampleFwd does one (sample, channel) plane per task.
func upsampleFwd[T realT](y, x *buffer, planes, h, w int) {
	kernels.ParallelFor(planes, rowGrain(4*h*w), func(lo, hi int) {
		in := make([]T, h*w)
		out := make([]T, 4*h*w)
		for p := lo; p < hi; p++ {
			readReal(in, x, p*h*w)
			for i := 0; i < h; i++ {
				r0 := out[2*i*2*w : (2*i+1)*2*w]
				for j, v := range in[i*w : (i+1)*w] {
					r0[2*j], r0[2*j+1] = v, v
				}
				copy(out[(2*i+1)*2*w:(2*i+2)*2*w], r0)
			}
			writeReal(y, p*4*h*w, out)
		}
	})
}

// Upsample2xGrad sums each 2×2 block of dy [n, ch, 2h, 2w] into dx
// [n, ch, h, w], the adjoint of Upsample2x.
func (c *Backend) Upsample2xGrad(dx, dy kernels.Buffer, n, ch, h, w int) {
	const op = "Upsample2xGrad"
	if !c.shapeOK(op, n, ch, h, w, 4) {
		return
	}
	dxb := c.floatArg(op, "dx", dx, n*ch*h*w)
	dyb := c.floatArg(op, "dy", dy, n*ch*h*w*4)
	if dxb == nil || dyb == nil {
		return
	}
	if anyF64(dxb, dyb) {
		upsampleBwd[float64](dxb, dyb, n*ch, h, w)
	} else {
		upsampleBwd[float32](dxb, dyb, n*ch, h, w)
	}
}

// upsampleBwd does one (sample, channel) plane per task.
func upsampleBwd[T realT](dx, dy *buffer, planes, h, w int) {
	kernels.ParallelFor(planes, rowGrain(4*h*w), func(lo, hi int) {
		in := make([]T, 4*h*w)
		out := make([]T, h*w)
		for p := lo; p < hi; p++ {
			readReal(in, dy, p*4*h*w)
			for i := 0; i < h; i++ {
				r0 := in[2*i*2*w : (2*i+1)*2*w]
				r1 := in[(2*i+1)*2*w : (2*i+2)*2*w]
				o := out[i*w : (i+1)*w]
				for j := range o {
					// Fixed order: top pair, then bottom pair.
					o[j] = (r0[2*j] + r0[2*j+1]) + (r1[2*j] + r1[2*j+1])
				}
			}
			writeReal(dx, p*h*w, out)
		}
	})
}
