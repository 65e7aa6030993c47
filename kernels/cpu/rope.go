package cpu

import "github.com/newbie-train/newbie-train/kernels"

// Rope rotates the pairs of x [b, s, h, d] by the angles whose cosines and
// sines are cos, sin [b, s, d/2], shared by every head. Pair i is
// (x[2i], x[2i+1]) when interleaved and (x[i], x[i+d/2]) otherwise; inverse
// rotates by the negative angle. dst may be x itself: each position's row is
// read whole before any of it is written.
func (c *Backend) Rope(dst, x, cos, sin kernels.Buffer, b, s, h, d int, interleaved, inverse bool) {
	const op = "Rope"
	if !c.shapeOK(op, b, s, h, d) {
		return
	}
	if d%2 != 0 {
		c.fail("%s: head size %d is odd; rotary pairs need an even size", op, d)
		return
	}
	n := b * s * h * d
	db := c.floatArg(op, "dst", dst, n)
	xb := c.floatArg(op, "x", x, n)
	cb := c.floatArg(op, "cos", cos, b*s*d/2)
	sb := c.floatArg(op, "sin", sin, b*s*d/2)
	if db == nil || xb == nil || cb == nil || sb == nil {
		return
	}
	if anyF64(db, xb) {
		ropeRows[float64](db, xb, cb, sb, b*s, h, d, interleaved, inverse)
	} else {
		ropeRows[float32](db, xb, cb, sb, b*s, h, d, interleaved, inverse)
	}
}

// ropeRows rotates positions [0, pos), each a row of h heads of size d.
func ropeRows[T realT](dst, x, cos, sin *buffer, pos, h, d int, interleaved, inverse bool) {
	half := d / 2
	row := h * d
	kernels.ParallelFor(pos, rowGrain(row), func(lo, hi int) {
		cs := make([]T, half)
		sn := make([]T, half)
		xr := make([]T, row)
		for p := lo; p < hi; p++ {
			readReal(cs, cos, p*half)
			readReal(sn, sin, p*half)
			if inverse {
				for i := range sn {
					sn[i] = -sn[i]
				}
			}
			readReal(xr, x, p*row)
			for hh := 0; hh < h; hh++ {
				v := xr[hh*d : (hh+1)*d]
				for i := 0; i < half; i++ {
					a, b := i, i+half
					if interleaved {
						a, b = 2*i, 2*i+1
					}
					x0, x1 := v[a], v[b]
					v[a] = x0*cs[i] - x1*sn[i]
					v[b] = x0*sn[i] + x1*cs[i]
				}
			}
			writeReal(dst, p*row, xr)
		}
	})
}
