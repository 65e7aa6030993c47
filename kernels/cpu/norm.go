package cpu

import (
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// This file holds the normalisation ops (RMSNorm, LayerNorm, GroupNorm and
// their backwards) and the small typed-access helpers shared by the other
// "part B" ops (attention, rope, conv, upsample).
//
// Every op here picks one compute type: float64 when an operand it reads or
// the result it writes is F64 (checks and references), float32 otherwise.
// Writing the kernels once over that type parameter keeps the two paths
// identical in structure, so the F64 path really checks the F32 one.

// anyF64 reports whether any of the (non-nil) buffers is F64, which makes an
// op compute in float64.
func anyF64(bs ...*buffer) bool {
	for _, b := range bs {
		if b != nil && b.dt == kernels.F64 {
			return true
		}
	}
	return false
}

// viewReal returns every element of b as T: the buffer's own slice when its
// dtype is T (no copy; callers only read it), a converted copy otherwise.
// Converting a whole operand once is cheaper than converting the same
// elements again in every inner loop that revisits them (conv, attention).
func viewReal[T realT](b *buffer) []T {
	var zero T
	switch any(zero).(type) {
	case float32:
		if b.dt == kernels.F32 {
			return any(b.f32[:b.n]).([]T)
		}
	case float64:
		if b.dt == kernels.F64 {
			return any(b.f64[:b.n]).([]T)
		}
	}
	out := make([]T, b.n)
	readReal(out, b, 0)
	return out
}

// floatArg returns operand b as a live float buffer of exactly n elements,
// or records a failure naming the op and the operand and returns nil.
func (c *Backend) floatArg(op, name string, b kernels.Buffer, n int) *buffer {
	if b == nil {
		c.fail("%s: operand %s is nil", op, name)
		return nil
	}
	cb := c.buf(op, name, b)
	if cb == nil {
		return nil
	}
	if !cb.dt.IsFloat() {
		c.fail("%s: operand %s has dtype %v, want a float dtype", op, name, cb.dt)
		return nil
	}
	if cb.n != n {
		c.fail("%s: operand %s has %d elements, the shapes need %d", op, name, cb.n, n)
		return nil
	}
	return cb
}

// optFloatArg is floatArg for an operand that may be nil (an absent weight,
// bias or gradient). ok is false only when a non-nil operand is bad.
func (c *Backend) optFloatArg(op, name string, b kernels.Buffer, n int) (cb *buffer, ok bool) {
	if b == nil {
		return nil, true
	}
	cb = c.floatArg(op, name, b, n)
	return cb, cb != nil
}

// statArg is floatArg for saved statistics (rstd, mean, LSE), which the
// interface keeps in F32 or F64 so they never lose precision to a half type.
func (c *Backend) statArg(op, name string, b kernels.Buffer, n int) *buffer {
	cb := c.floatArg(op, name, b, n)
	if cb != nil && cb.dt != kernels.F32 && cb.dt != kernels.F64 {
		c.fail("%s: operand %s has dtype %v, want F32 or F64", op, name, cb.dt)
		return nil
	}
	return cb
}

// shapeOK records a failure when a size argument is negative or a product of
// sizes overflows what a buffer can hold; it returns whether all is well.
func (c *Backend) shapeOK(op string, dims ...int) bool {
	const maxElems = 1 << 50 // far beyond any memory, far below overflow
	total := 1
	for _, d := range dims {
		if d < 0 {
			c.fail("%s: negative size %d in %v", op, d, dims)
			return false
		}
		if d != 0 && total > maxElems/d {
			c.fail("%s: sizes %v are too large", op, dims)
			return false
		}
		total *= d
	}
	return true
}

// rowGrain is how many rows of length cols one parallel task takes, so that
// a task has enough work to pay for its goroutine.
func rowGrain(cols int) int { return max(1, 16384/max(cols, 1)) }

// RMSNorm computes y = x·rstd·w per row with rstd = 1/sqrt(mean(x²)+eps).
func (c *Backend) RMSNorm(y, rstd, x, w kernels.Buffer, rows, cols int, eps float64) {
	const op = "RMSNorm"
	if !c.shapeOK(op, rows, cols) {
		return
	}
	yb := c.floatArg(op, "y", y, rows*cols)
	rb := c.statArg(op, "rstd", rstd, rows)
	xb := c.floatArg(op, "x", x, rows*cols)
	wb, wok := c.optFloatArg(op, "w", w, cols)
	if yb == nil || rb == nil || xb == nil || !wok {
		return
	}
	if anyF64(yb, xb) {
		rmsNormFwd[float64](yb, rb, xb, wb, rows, cols, eps)
	} else {
		rmsNormFwd[float32](yb, rb, xb, wb, rows, cols, eps)
	}
}

// rmsNormFwd is RMSNorm in compute type T; rows are independent tasks.
func rmsNormFwd[T realT](y, rstd, x, w *buffer, rows, cols int, eps float64) {
	var wv []T
	if w != nil {
		wv = viewReal[T](w)
	}
	kernels.ParallelFor(rows, rowGrain(cols), func(lo, hi int) {
		xr := make([]T, cols)
		yr := make([]T, cols)
		for r := lo; r < hi; r++ {
			readReal(xr, x, r*cols)
			var ss T
			for _, v := range xr {
				ss += v * v
			}
			rs := T(1 / math.Sqrt(float64(ss/T(cols))+eps))
			if wv != nil {
				for j, v := range xr {
					yr[j] = v * rs * wv[j]
				}
			} else {
				for j, v := range xr {
					yr[j] = v * rs
				}
			}
			writeReal(y, r*cols, yr)
			rstd.set(r, float64(rs))
		}
	})
}

// RMSNormGrad computes dx = rstd·(g − x̂·mean(g⊙x̂)) with g = dy⊙w and
// x̂ = x·rstd, and dw = Σ_rows dy⊙x̂ when dw is not nil.
func (c *Backend) RMSNormGrad(dx, dw, dy, x, w, rstd kernels.Buffer, rows, cols int) {
	const op = "RMSNormGrad"
	if !c.shapeOK(op, rows, cols) {
		return
	}
	dxb := c.floatArg(op, "dx", dx, rows*cols)
	dwb, dwok := c.optFloatArg(op, "dw", dw, cols)
	dyb := c.floatArg(op, "dy", dy, rows*cols)
	xb := c.floatArg(op, "x", x, rows*cols)
	wb, wok := c.optFloatArg(op, "w", w, cols)
	rb := c.statArg(op, "rstd", rstd, rows)
	if dxb == nil || !dwok || dyb == nil || xb == nil || !wok || rb == nil {
		return
	}
	if anyF64(dxb, dwb, dyb, xb) {
		rmsNormBwd[float64](dxb, dwb, dyb, xb, wb, rb, rows, cols)
	} else {
		rmsNormBwd[float32](dxb, dwb, dyb, xb, wb, rb, rows, cols)
	}
}

// rmsNormBwd is RMSNormGrad in compute type T: dx by rows, then dw by
// columns.
func rmsNormBwd[T realT](dx, dw, dy, x, w, rstd *buffer, rows, cols int) {
	var wv []T
	if w != nil {
		wv = viewReal[T](w)
	}
	rs := viewReal[T](rstd)
	// dw first: it reads x and dy, which dx may overwrite when it aliases
	// either of them (a row is read whole before it is written).
	if dw != nil {
		// dw sums over rows; each task owns a run of columns and walks the rows
		// in order, so the sum order never depends on the number of cores.
		kernels.ParallelFor(cols, max(1, 16384/max(rows, 1)), func(lo, hi int) {
			n := hi - lo
			acc := make([]T, n)
			xr := make([]T, n)
			gr := make([]T, n)
			for r := 0; r < rows; r++ {
				readReal(xr, x, r*cols+lo)
				readReal(gr, dy, r*cols+lo)
				for j := range acc {
					acc[j] += gr[j] * xr[j] * rs[r]
				}
			}
			writeReal(dw, lo, acc)
		})
	}
	kernels.ParallelFor(rows, rowGrain(cols), func(lo, hi int) {
		xr := make([]T, cols)
		gr := make([]T, cols)
		for r := lo; r < hi; r++ {
			readReal(xr, x, r*cols)
			readReal(gr, dy, r*cols)
			if wv != nil {
				for j := range gr {
					gr[j] *= wv[j]
				}
			}
			// x̂ = x·rstd; the mean of g⊙x̂ is the component of g along x̂.
			var dot T
			for j, v := range xr {
				dot += gr[j] * v
			}
			k := dot * rs[r] * rs[r] / T(cols)
			for j, v := range xr {
				gr[j] = rs[r] * (gr[j] - v*k)
			}
			writeReal(dx, r*cols, gr)
		}
	})
}

// LayerNorm computes y = (x−mean)·rstd·w + b per row of length cols.
func (c *Backend) LayerNorm(y, mean, rstd, x, w, b kernels.Buffer, rows, cols int, eps float64) {
	const op = "LayerNorm"
	if !c.shapeOK(op, rows, cols) {
		return
	}
	// A LayerNorm row is a GroupNorm sample of cols channels, one group and
	// one pixel per channel: the same kernel serves both.
	c.groupNorm(op, y, mean, rstd, x, w, b, rows, cols, 1, 1, eps)
}

// LayerNormGrad computes dx, and dw, db when they are not nil.
func (c *Backend) LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, rows, cols int) {
	const op = "LayerNormGrad"
	if !c.shapeOK(op, rows, cols) {
		return
	}
	c.groupNormGrad(op, dx, dw, db, dy, x, w, mean, rstd, rows, cols, 1, 1)
}

// GroupNorm normalises x [n, ch, hw] over groups of ch/groups channels.
func (c *Backend) GroupNorm(y, mean, rstd, x, w, b kernels.Buffer, n, ch, hw, groups int, eps float64) {
	const op = "GroupNorm"
	if !c.shapeOK(op, n, ch, hw) {
		return
	}
	if groups < 1 || ch%groups != 0 {
		c.fail("%s: %d channels do not split into %d groups", op, ch, groups)
		return
	}
	c.groupNorm(op, y, mean, rstd, x, w, b, n, ch, hw, groups, eps)
}

// GroupNormGrad computes dx, and dw, db when they are not nil.
func (c *Backend) GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, n, ch, hw, groups int) {
	const op = "GroupNormGrad"
	if !c.shapeOK(op, n, ch, hw) {
		return
	}
	if groups < 1 || ch%groups != 0 {
		c.fail("%s: %d channels do not split into %d groups", op, ch, groups)
		return
	}
	c.groupNormGrad(op, dx, dw, db, dy, x, w, mean, rstd, n, ch, hw, groups)
}

// groupNorm validates the operands of GroupNorm (and LayerNorm, its
// one-group, one-pixel case) and runs the kernel in the compute type.
func (c *Backend) groupNorm(op string, y, mean, rstd, x, w, b kernels.Buffer, n, ch, hw, groups int, eps float64) {
	size := n * ch * hw
	yb := c.floatArg(op, "y", y, size)
	mb := c.statArg(op, "mean", mean, n*groups)
	rb := c.statArg(op, "rstd", rstd, n*groups)
	xb := c.floatArg(op, "x", x, size)
	wb, wok := c.optFloatArg(op, "w", w, ch)
	bb, bok := c.optFloatArg(op, "b", b, ch)
	if yb == nil || mb == nil || rb == nil || xb == nil || !wok || !bok {
		return
	}
	if anyF64(yb, xb) {
		groupNormFwd[float64](yb, mb, rb, xb, wb, bb, n, ch, hw, groups, eps)
	} else {
		groupNormFwd[float32](yb, mb, rb, xb, wb, bb, n, ch, hw, groups, eps)
	}
}

// groupNormFwd normalises each of the n·groups contiguous blocks of
// (ch/groups)·hw elements. Mean and variance take two passes over the block
// (not E[x²]−E[x]²), which loses nothing to cancellation when |mean| ≫ std.
func groupNormFwd[T realT](y, mean, rstd, x, w, b *buffer, n, ch, hw, groups int, eps float64) {
	var wv, bv []T
	if w != nil {
		wv = viewReal[T](w)
	}
	if b != nil {
		bv = viewReal[T](b)
	}
	cpg := ch / groups
	m := cpg * hw
	kernels.ParallelFor(n*groups, rowGrain(m), func(lo, hi int) {
		blk := make([]T, m)
		for g := lo; g < hi; g++ {
			readReal(blk, x, g*m)
			var s T
			for _, v := range blk {
				s += v
			}
			mu := s / T(m)
			var ss T
			for _, v := range blk {
				d := v - mu
				ss += d * d
			}
			rs := T(1 / math.Sqrt(float64(ss/T(m))+eps))
			c0 := (g % groups) * cpg
			for k := 0; k < cpg; k++ {
				sc, sh := rs, -mu*rs
				if wv != nil {
					sc, sh = rs*wv[c0+k], -mu*rs*wv[c0+k]
				}
				if bv != nil {
					sh += bv[c0+k]
				}
				seg := blk[k*hw : (k+1)*hw]
				for i, v := range seg {
					seg[i] = v*sc + sh
				}
			}
			writeReal(y, g*m, blk)
			mean.set(g, float64(mu))
			rstd.set(g, float64(rs))
		}
	})
}

// groupNormGrad is groupNorm's counterpart for the backward.
func (c *Backend) groupNormGrad(op string, dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, n, ch, hw, groups int) {
	size := n * ch * hw
	dxb := c.floatArg(op, "dx", dx, size)
	dwb, dwok := c.optFloatArg(op, "dw", dw, ch)
	dbb, dbok := c.optFloatArg(op, "db", db, ch)
	dyb := c.floatArg(op, "dy", dy, size)
	xb := c.floatArg(op, "x", x, size)
	wb, wok := c.optFloatArg(op, "w", w, ch)
	mb := c.statArg(op, "mean", mean, n*groups)
	rb := c.statArg(op, "rstd", rstd, n*groups)
	if dxb == nil || !dwok || !dbok || dyb == nil || xb == nil || !wok || mb == nil || rb == nil {
		return
	}
	if anyF64(dxb, dwb, dbb, dyb, xb) {
		groupNormBwd[float64](dxb, dwb, dbb, dyb, xb, wb, mb, rb, n, ch, hw, groups)
	} else {
		groupNormBwd[float32](dxb, dwb, dbb, dyb, xb, wb, mb, rb, n, ch, hw, groups)
	}
}

// groupNormBwd uses the closed form over a block of m elements:
// dx = rstd·(g − mean(g) − x̂·mean(g⊙x̂)) with g = dy·w[channel] and
// x̂ = (x−mean)·rstd, the saved statistics.
func groupNormBwd[T realT](dx, dw, db, dy, x, w, mean, rstd *buffer, n, ch, hw, groups int) {
	var wv []T
	if w != nil {
		wv = viewReal[T](w)
	}
	mus := viewReal[T](mean)
	rss := viewReal[T](rstd)
	cpg := ch / groups
	m := cpg * hw
	// dw and db first: they read x and dy, which dx may overwrite when it
	// aliases either of them (a block is read whole before it is written).
	if dw != nil || db != nil {
		// dw and db sum over samples and pixels. Each task owns a run of
		// channels and visits samples in order, so the order of every sum is
		// fixed whatever the core count. A run covers whole channels of a row
		// for LayerNorm (hw = 1), keeping the row reads contiguous.
		kernels.ParallelFor(ch, max(1, 16384/max(n*hw, 1)), func(lo, hi int) {
			k := hi - lo
			accW := make([]T, k)
			accB := make([]T, k)
			// Read a slab of whole channels at a time, at most ~16K values
			// (one channel when a plane is bigger), so memory stays bounded
			// for VAE-sized planes while LayerNorm rows are read in runs.
			step := max(1, 16384/max(hw, 1))
			xs := make([]T, min(k, step)*hw)
			gs := make([]T, min(k, step)*hw)
			for s := 0; s < n; s++ {
				for c0 := lo; c0 < hi; c0 += step {
					c1 := min(hi, c0+step)
					off := (s*ch + c0) * hw
					xr, gr := xs[:(c1-c0)*hw], gs[:(c1-c0)*hw]
					readReal(xr, x, off)
					readReal(gr, dy, off)
					for c := c0; c < c1; c++ {
						g := s*groups + c/cpg
						mu, rs := mus[g], rss[g]
						var aw, ab T
						for i := (c - c0) * hw; i < (c-c0+1)*hw; i++ {
							aw += gr[i] * (xr[i] - mu) * rs
							ab += gr[i]
						}
						accW[c-lo] += aw
						accB[c-lo] += ab
					}
				}
			}
			if dw != nil {
				writeReal(dw, lo, accW)
			}
			if db != nil {
				writeReal(db, lo, accB)
			}
		})
	}
	kernels.ParallelFor(n*groups, rowGrain(m), func(lo, hi int) {
		xh := make([]T, m)
		gr := make([]T, m)
		for g := lo; g < hi; g++ {
			readReal(xh, x, g*m)
			readReal(gr, dy, g*m)
			mu, rs := mus[g], rss[g]
			c0 := (g % groups) * cpg
			var sg, sgx T
			for k := 0; k < cpg; k++ {
				wk := T(1)
				if wv != nil {
					wk = wv[c0+k]
				}
				for i := k * hw; i < (k+1)*hw; i++ {
					xh[i] = (xh[i] - mu) * rs
					gr[i] *= wk
					sg += gr[i]
					sgx += gr[i] * xh[i]
				}
			}
			sg /= T(m)
			sgx /= T(m)
			for i := range gr {
				gr[i] = rs * (gr[i] - sg - xh[i]*sgx)
			}
			writeReal(dx, g*m, gr)
		}
	})
}
