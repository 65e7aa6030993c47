package cpu

import (
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// Memory and layout ops: Fill, Cast, Copy2D, Permute, and the run loaders
// the other ops of this backend use to read a contiguous stretch of any
// dtype into a float32 or float64 scratch slice without allocating.

// elemGrain is the number of elements a goroutine should at least own in a
// memory-bound elementwise loop: below it, starting goroutines costs more
// than the loop.
const elemGrain = 1 << 15

// toI32 truncates v toward zero, saturating at the int32 range and mapping
// NaN to 0: Go leaves out-of-range float→int conversions unspecified, and a
// cast must give the same answer on every machine.
func toI32(v float64) int32 {
	switch {
	case v != v:
		return 0
	case v >= math.MaxInt32:
		return math.MaxInt32
	case v <= math.MinInt32:
		return math.MinInt32
	}
	return int32(v)
}

// wide reports whether an op writing dst should compute in float64: the
// conventions compute in float32 except when the result is stored as F64.
func wide(dst *buffer) bool { return dst.dt == kernels.F64 }

// Fill sets every element of dst to v (rounded once to dst's dtype; I32
// truncates toward zero).
func (c *Backend) Fill(dst kernels.Buffer, v float64) {
	d := c.buf("Fill", "dst", dst)
	if d == nil {
		return
	}
	kernels.ParallelFor(d.n, elemGrain, func(lo, hi int) {
		switch d.dt {
		case kernels.F32:
			fillSlice(d.f32[lo:hi], float32(v))
		case kernels.F64:
			fillSlice(d.f64[lo:hi], v)
		case kernels.BF16:
			fillSlice(d.u16[lo:hi], kernels.BF16FromF32(float32(v)))
		case kernels.F16:
			fillSlice(d.u16[lo:hi], kernels.F16FromF32(float32(v)))
		case kernels.I32:
			fillSlice(d.i32[lo:hi], toI32(v))
		case kernels.F8E4M3:
			fillSlice(d.u8[lo:hi], kernels.F8E4M3FromF32(float32(v)))
		}
	})
}

// fillSlice sets every element of s to v.
func fillSlice[T any](s []T, v T) {
	for i := range s {
		s[i] = v
	}
}

// Cast converts src to dst's dtype elementwise. Between float dtypes the
// value is rounded to nearest even (from F64 to BF16/F16 through float32,
// like every other store of this backend); float→I32 truncates toward zero,
// saturating, with NaN → 0.
func (c *Backend) Cast(dst, src kernels.Buffer) {
	d := c.buf("Cast", "dst", dst)
	s := c.buf("Cast", "src", src)
	if d == nil || s == nil {
		return
	}
	if d.n != s.n {
		c.fail("Cast: dst has %d elements, src %d", d.n, s.n)
		return
	}
	kernels.ParallelFor(d.n, elemGrain, func(lo, hi int) {
		copyConvert(d, lo, s, lo, hi-lo)
	})
}

// copyConvert copies n elements from s[so:] to d[do:], converting dtypes.
// Equal dtypes copy raw bits (NaN payloads and -0 survive); F64 and I32 pairs
// go through float64 so no precision is lost; the rest through float32.
func copyConvert(d *buffer, do int, s *buffer, so, n int) {
	if d.dt == s.dt {
		switch d.dt {
		case kernels.F32:
			copy(d.f32[do:do+n], s.f32[so:so+n])
		case kernels.F64:
			copy(d.f64[do:do+n], s.f64[so:so+n])
		case kernels.BF16, kernels.F16:
			copy(d.u16[do:do+n], s.u16[so:so+n])
		case kernels.I32:
			copy(d.i32[do:do+n], s.i32[so:so+n])
		case kernels.F8E4M3:
			copy(d.u8[do:do+n], s.u8[so:so+n])
		}
		return
	}
	const chunk = 1024
	if d.dt == kernels.F64 || s.dt == kernels.F64 || d.dt == kernels.I32 || s.dt == kernels.I32 {
		var tmp [chunk]float64
		for i := 0; i < n; i += chunk {
			m := min(chunk, n-i)
			readReal(tmp[:m], s, so+i)
			writeReal(d, do+i, tmp[:m])
		}
		return
	}
	var tmp [chunk]float32
	for i := 0; i < n; i += chunk {
		m := min(chunk, n-i)
		readReal(tmp[:m], s, so+i)
		writeReal(d, do+i, tmp[:m])
	}
}

// spanOK reports whether rows runs of cols elements starting at off with row
// stride stride all lie inside a buffer of n elements.
func spanOK(n, off, stride, rows, cols int) bool {
	if rows == 0 || cols == 0 {
		return true
	}
	first, last := off, off+(rows-1)*stride
	if first > last {
		first, last = last, first
	}
	return first >= 0 && last+cols <= n
}

// Copy2D copies a rows×cols block between strided row layouts, converting
// dtypes when they differ. A source stride of 0 repeats one row. dst and src
// may be the same buffer only when the blocks do not overlap.
func (c *Backend) Copy2D(dst kernels.Buffer, dstOff, dstStride int, src kernels.Buffer, srcOff, srcStride int, rows, cols int) {
	d := c.buf("Copy2D", "dst", dst)
	s := c.buf("Copy2D", "src", src)
	if d == nil || s == nil {
		return
	}
	if rows < 0 || cols < 0 {
		c.fail("Copy2D: negative block %d×%d", rows, cols)
		return
	}
	if !spanOK(d.n, dstOff, dstStride, rows, cols) {
		c.fail("Copy2D: dst block %d×%d at %d stride %d does not fit %d elements", rows, cols, dstOff, dstStride, d.n)
		return
	}
	if !spanOK(s.n, srcOff, srcStride, rows, cols) {
		c.fail("Copy2D: src block %d×%d at %d stride %d does not fit %d elements", rows, cols, srcOff, srcStride, s.n)
		return
	}
	if rows == 0 || cols == 0 {
		return
	}
	if rows > 1 && max(dstStride, -dstStride) < cols {
		// Rows written over each other have no defined result (and would
		// race across goroutines).
		c.fail("Copy2D: dst rows of %d elements at stride %d overlap", cols, dstStride)
		return
	}
	if d == s {
		// The same buffer: run serially so no row is read after another
		// goroutine wrote over it.
		for r := 0; r < rows; r++ {
			copyConvert(d, dstOff+r*dstStride, s, srcOff+r*srcStride, cols)
		}
		return
	}
	kernels.ParallelFor(rows, max(1, elemGrain/cols), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			copyConvert(d, dstOff+r*dstStride, s, srcOff+r*srcStride, cols)
		}
	})
}

// maxPermuteRank is the highest rank Permute takes.
const maxPermuteRank = kernels.MaxPermuteRank

// Permute writes dst = src transposed by perm: dst's axis k is src's axis
// perm[k]. Dtypes may differ (the copy converts).
func (c *Backend) Permute(dst, src kernels.Buffer, shape []int, perm []int) {
	d := c.buf("Permute", "dst", dst)
	s := c.buf("Permute", "src", src)
	if d == nil || s == nil {
		return
	}
	n, err := kernels.PermuteLen(shape, perm)
	if err != nil {
		c.fail("Permute: %v", err)
		return
	}
	rank := len(shape)
	if s.n != n || d.n != n {
		c.fail("Permute: shape %v has %d elements but src has %d and dst %d", shape, n, s.n, d.n)
		return
	}
	if n == 0 {
		return
	}
	if d == s {
		c.fail("Permute: dst and src are the same buffer")
		return
	}
	// Strides of src in elements, then dst's extents and the matching src
	// strides, padded at the front to the full rank with extent 1.
	var srcStride [maxPermuteRank]int
	st := 1
	for k := rank - 1; k >= 0; k-- {
		srcStride[k] = st
		st *= shape[k]
	}
	var ext, str [maxPermuteRank]int
	pad := maxPermuteRank - rank
	for k := 0; k < pad; k++ {
		ext[k] = 1
	}
	for k, p := range perm {
		ext[pad+k] = shape[p]
		str[pad+k] = srcStride[p]
	}
	inner := ext[maxPermuteRank-1]
	innerStride := str[maxPermuteRank-1]
	rows := n / inner
	kernels.ParallelFor(rows, max(1, elemGrain/inner), func(lo, hi int) {
		// Decompose the first row index into its multi-index, then advance it
		// like an odometer so each row costs O(1).
		var idx [maxPermuteRank - 1]int
		r := lo
		for k := maxPermuteRank - 2; k >= 0; k-- {
			idx[k] = r % ext[k]
			r /= ext[k]
		}
		var tmp []float64
		if d.dt != s.dt {
			tmp = make([]float64, inner)
		}
		for row := lo; row < hi; row++ {
			base := 0
			for k := 0; k < maxPermuteRank-1; k++ {
				base += idx[k] * str[k]
			}
			permuteRow(d, row*inner, s, base, innerStride, inner, tmp)
			for k := maxPermuteRank - 2; k >= 0; k-- {
				idx[k]++
				if idx[k] < ext[k] {
					break
				}
				idx[k] = 0
			}
		}
	})
}

// permuteRow copies n elements of s, from base with stride st, to the
// contiguous run d[do:do+n]; tmp (length n) is scratch when dtypes differ.
func permuteRow(d *buffer, do int, s *buffer, base, st, n int, tmp []float64) {
	if d.dt == s.dt {
		switch d.dt {
		case kernels.F32:
			gatherStrided(d.f32[do:do+n], s.f32, base, st)
		case kernels.F64:
			gatherStrided(d.f64[do:do+n], s.f64, base, st)
		case kernels.BF16, kernels.F16:
			gatherStrided(d.u16[do:do+n], s.u16, base, st)
		case kernels.I32:
			gatherStrided(d.i32[do:do+n], s.i32, base, st)
		case kernels.F8E4M3:
			gatherStrided(d.u8[do:do+n], s.u8, base, st)
		}
		return
	}
	for i := range tmp {
		tmp[i] = s.at(base + i*st)
	}
	writeReal(d, do, tmp)
}

// gatherStrided copies src[base + i*st] to dst[i] for every i.
func gatherStrided[T any](dst, src []T, base, st int) {
	for i := range dst {
		dst[i] = src[base+i*st]
	}
}
