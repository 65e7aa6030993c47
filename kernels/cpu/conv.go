package cpu

import "github.com/newbie-train/newbie-train/kernels"

// The convolutions are direct loops, no im2col: every output row segment is
// an axpy over a row of the input plane, which keeps memory at one plane per
// task (im2col of a 512-channel 3×3 layer at 256×256 would take 1.2 GB) and
// gives each output element one fixed summation order (input channel, then
// kernel row, then kernel column), so results are reproducible bit for bit.

// convOK validates the shapes of a convolution and records a failure when
// they make no sense.
func (c *Backend) convOK(op string, a kernels.ConvArgs) bool {
	if a.N < 1 || a.Cin < 1 || a.H < 1 || a.W < 1 || a.Cout < 1 || a.KH < 1 || a.KW < 1 || a.Stride < 1 || a.Pad < 0 {
		c.fail("%s: bad convolution shape %+v", op, a)
		return false
	}
	if a.H+2*a.Pad < a.KH || a.W+2*a.Pad < a.KW {
		c.fail("%s: kernel %d×%d is larger than the padded %d×%d input", op, a.KH, a.KW, a.H+2*a.Pad, a.W+2*a.Pad)
		return false
	}
	return c.shapeOK(op, a.N, a.Cin, a.H, a.W) && c.shapeOK(op, a.Cout, a.Cin, a.KH, a.KW) &&
		c.shapeOK(op, a.N, a.Cout, a.OutH(), a.OutW())
}

// outRange returns the outputs [lo, hi) along one axis of size out whose
// input index o·stride + k − pad falls inside [0, in).
func outRange(in, out, k, stride, pad int) (lo, hi int) {
	// o·stride ≥ pad−k  ⇔  o ≥ ceil((pad−k)/stride)
	if d := pad - k; d > 0 {
		lo = (d + stride - 1) / stride
	}
	// o·stride ≤ in−1+pad−k
	if d := in - 1 + pad - k; d >= 0 {
		hi = min(out, d/stride+1)
	}
	return lo, max(lo, hi)
}

// Conv2D computes y [n, cout, ho, wo] = x ⋆ w + bias (cross-correlation, as
// in PyTorch) with zero padding a.Pad on every side and stride a.Stride.
func (c *Backend) Conv2D(y, x, w, bias kernels.Buffer, a kernels.ConvArgs) {
	const op = "Conv2D"
	if !c.convOK(op, a) {
		return
	}
	ho, wo := a.OutH(), a.OutW()
	yb := c.floatArg(op, "y", y, a.N*a.Cout*ho*wo)
	xb := c.floatArg(op, "x", x, a.N*a.Cin*a.H*a.W)
	wb := c.floatArg(op, "w", w, a.Cout*a.Cin*a.KH*a.KW)
	bb, bok := c.optFloatArg(op, "bias", bias, a.Cout)
	if yb == nil || xb == nil || wb == nil || !bok {
		return
	}
	if anyF64(yb, xb, wb) {
		convFwd[float64](yb, xb, wb, bb, a)
	} else {
		convFwd[float32](yb, xb, wb, bb, a)
	}
}

// convFwd is Conv2D in compute type T: one task per (sample, output
// channel) plane.
func convFwd[T realT](y, x, w, bias *buffer, a kernels.ConvArgs) {
	xs, ws := viewReal[T](x), viewReal[T](w)
	var bs []T
	if bias != nil {
		bs = viewReal[T](bias)
	}
	ho, wo := a.OutH(), a.OutW()
	hw, ohw := a.H*a.W, ho*wo
	kk := a.KH * a.KW
	work := a.Cin * kk * ohw
	kernels.ParallelFor(a.N*a.Cout, max(1, 65536/max(work, 1)), func(lo, hi int) {
		acc := make([]T, ohw)
		for t := lo; t < hi; t++ {
			n, co := t/a.Cout, t%a.Cout
			clear(acc)
			for ci := 0; ci < a.Cin; ci++ {
				xp := xs[(n*a.Cin+ci)*hw : (n*a.Cin+ci+1)*hw]
				wk := ws[(co*a.Cin+ci)*kk : (co*a.Cin+ci+1)*kk]
				for kh := 0; kh < a.KH; kh++ {
					ohLo, ohHi := outRange(a.H, ho, kh, a.Stride, a.Pad)
					for kw := 0; kw < a.KW; kw++ {
						wv := wk[kh*a.KW+kw]
						owLo, owHi := outRange(a.W, wo, kw, a.Stride, a.Pad)
						if owLo >= owHi {
							continue
						}
						for oh := ohLo; oh < ohHi; oh++ {
							xr := xp[(oh*a.Stride+kh-a.Pad)*a.W:]
							ar := acc[oh*wo+owLo : oh*wo+owHi]
							if a.Stride == 1 {
								xx := xr[owLo+kw-a.Pad : owHi+kw-a.Pad]
								for i := range ar {
									ar[i] += wv * xx[i]
								}
							} else {
								ix := owLo*a.Stride + kw - a.Pad
								for i := range ar {
									ar[i] += wv * xr[ix]
									ix += a.Stride
								}
							}
						}
					}
				}
			}
			if bs != nil {
				for i := range acc {
					acc[i] += bs[co]
				}
			}
			writeReal(y, t*ohw, acc)
		}
	})
}

// Conv2DGrad computes dx, dw and dbias (each may be nil) from dy.
func (c *Backend) Conv2DGrad(dx, dw, dbias, dy, x, w kernels.Buffer, a kernels.ConvArgs) {
	const op = "Conv2DGrad"
	if !c.convOK(op, a) {
		return
	}
	ho, wo := a.OutH(), a.OutW()
	dxb, dxok := c.optFloatArg(op, "dx", dx, a.N*a.Cin*a.H*a.W)
	dwb, dwok := c.optFloatArg(op, "dw", dw, a.Cout*a.Cin*a.KH*a.KW)
	dbb, dbok := c.optFloatArg(op, "dbias", dbias, a.Cout)
	dyb := c.floatArg(op, "dy", dy, a.N*a.Cout*ho*wo)
	xb := c.floatArg(op, "x", x, a.N*a.Cin*a.H*a.W)
	wb := c.floatArg(op, "w", w, a.Cout*a.Cin*a.KH*a.KW)
	if !dxok || !dwok || !dbok || dyb == nil || xb == nil || wb == nil {
		return
	}
	if anyF64(dxb, dwb, dbb, dyb, xb, wb) {
		convBwd[float64](dxb, dwb, dbb, dyb, xb, wb, a)
	} else {
		convBwd[float32](dxb, dwb, dbb, dyb, xb, wb, a)
	}
}

// convBwd is Conv2DGrad in compute type T: dx by (sample, input channel)
// planes, dw by (output, input channel) kernels, dbias by output channel.
func convBwd[T realT](dx, dw, dbias, dy, x, w *buffer, a kernels.ConvArgs) {
	dys := viewReal[T](dy)
	ho, wo := a.OutH(), a.OutW()
	hw, ohw := a.H*a.W, ho*wo
	kk := a.KH * a.KW
	if dx != nil {
		convBwdData(dx, dys, viewReal[T](w), a)
	}
	if dw != nil {
		xs := viewReal[T](x)
		work := a.N * kk * ohw
		kernels.ParallelFor(a.Cout*a.Cin, max(1, 65536/max(work, 1)), func(lo, hi int) {
			acc := make([]T, kk)
			for t := lo; t < hi; t++ {
				co, ci := t/a.Cin, t%a.Cin
				clear(acc)
				for n := 0; n < a.N; n++ {
					xp := xs[(n*a.Cin+ci)*hw : (n*a.Cin+ci+1)*hw]
					gp := dys[(n*a.Cout+co)*ohw : (n*a.Cout+co+1)*ohw]
					for kh := 0; kh < a.KH; kh++ {
						ohLo, ohHi := outRange(a.H, ho, kh, a.Stride, a.Pad)
						for kw := 0; kw < a.KW; kw++ {
							owLo, owHi := outRange(a.W, wo, kw, a.Stride, a.Pad)
							var s T
							for oh := ohLo; oh < ohHi; oh++ {
								xr := xp[(oh*a.Stride+kh-a.Pad)*a.W:]
								gr := gp[oh*wo+owLo : oh*wo+owHi]
								s += convDot(gr, xr[owLo*a.Stride+kw-a.Pad:], a.Stride)
							}
							acc[kh*a.KW+kw] += s
						}
					}
				}
				writeReal(dw, t*kk, acc)
			}
		})
	}
	if dbias != nil {
		kernels.ParallelFor(a.Cout, max(1, 65536/max(a.N*ohw, 1)), func(lo, hi int) {
			acc := make([]T, hi-lo)
			for co := lo; co < hi; co++ {
				var s T
				for n := 0; n < a.N; n++ {
					for _, g := range dys[(n*a.Cout+co)*ohw : (n*a.Cout+co+1)*ohw] {
						s += g
					}
				}
				acc[co-lo] = s
			}
			writeReal(dbias, lo, acc)
		})
	}
}

// convBwdData scatters dy back through the kernel: dx[n, ci] accumulates
// w[co, ci, kh, kw]·dy[n, co] shifted by (kh, kw), over co then kh then kw.
// Each task owns one (n, ci) plane, so no two tasks write the same element.
func convBwdData[T realT](dx *buffer, dys, ws []T, a kernels.ConvArgs) {
	ho, wo := a.OutH(), a.OutW()
	hw, ohw := a.H*a.W, ho*wo
	kk := a.KH * a.KW
	work := a.Cout * kk * ohw
	kernels.ParallelFor(a.N*a.Cin, max(1, 65536/max(work, 1)), func(lo, hi int) {
		acc := make([]T, hw)
		for t := lo; t < hi; t++ {
			n, ci := t/a.Cin, t%a.Cin
			clear(acc)
			for co := 0; co < a.Cout; co++ {
				gp := dys[(n*a.Cout+co)*ohw : (n*a.Cout+co+1)*ohw]
				wk := ws[(co*a.Cin+ci)*kk : (co*a.Cin+ci+1)*kk]
				for kh := 0; kh < a.KH; kh++ {
					ohLo, ohHi := outRange(a.H, ho, kh, a.Stride, a.Pad)
					for kw := 0; kw < a.KW; kw++ {
						wv := wk[kh*a.KW+kw]
						owLo, owHi := outRange(a.W, wo, kw, a.Stride, a.Pad)
						if owLo >= owHi {
							continue
						}
						for oh := ohLo; oh < ohHi; oh++ {
							ar := acc[(oh*a.Stride+kh-a.Pad)*a.W:]
							gr := gp[oh*wo+owLo : oh*wo+owHi]
							if a.Stride == 1 {
								aa := ar[owLo+kw-a.Pad : owHi+kw-a.Pad]
								for i, g := range gr {
									aa[i] += wv * g
								}
							} else {
								ix := owLo*a.Stride + kw - a.Pad
								for _, g := range gr {
									ar[ix] += wv * g
									ix += a.Stride
								}
							}
						}
					}
				}
			}
			writeReal(dx, t*hw, acc)
		}
	})
}

// convDot is Σ_i g[i]·x[i·stride] with four partial sums, so the adds do not
// wait on one another (one chain would be bound by the add latency); the
// sums combine in a fixed order.
func convDot[T realT](g, x []T, stride int) T {
	var s0, s1, s2, s3 T
	i := 0
	if stride == 1 {
		x = x[:len(g)]
		for ; i+4 <= len(g); i += 4 {
			s0 += g[i] * x[i]
			s1 += g[i+1] * x[i+1]
			s2 += g[i+2] * x[i+2]
			s3 += g[i+3] * x[i+3]
		}
	}
	for ; i < len(g); i++ {
		s0 += g[i] * x[i*stride]
	}
	return (s0 + s1) + (s2 + s3)
}
