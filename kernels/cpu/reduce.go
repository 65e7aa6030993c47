package cpu

import (
	"math"
	"strconv"

	"github.com/newbie-train/newbie-train/kernels"
)

// Reductions: Reduce over the middle axis of [outer, axis, inner], and the
// whole-buffer SumSquares and NonFinite used by gradient clipping and the
// loss scaler.
//
// Reduce cuts the axis into blocks of redBlock. Each block's partial result
// is computed on its own (so blocks can run on different goroutines), then
// the partials are combined block by block in order. The summation order of
// every output element is therefore fixed by the shapes alone, and a long
// axis sums as ~axis/256 + 256 additions deep rather than axis deep, which
// keeps float32 sums accurate.

// redBlock is the number of axis rows summed into one partial result.
const redBlock = 256

// Reduce reduces src viewed as [outer, axis, inner] over the middle axis
// into dst viewed as [outer, inner]. It accumulates in float32, or in
// float64 when src or dst is F64. An empty axis gives 0 for Sum and SumSq,
// NaN for Mean (0/0) and −Inf for Max; Max propagates NaN.
func (c *Backend) Reduce(op kernels.ReduceOp, dst, src kernels.Buffer, outer, axis, inner int) {
	if op < kernels.Sum || op > kernels.Max {
		c.fail("Reduce: unknown op %d", op)
		return
	}
	if outer < 0 || axis < 0 || inner < 0 {
		c.fail("Reduce: negative view [%d, %d, %d]", outer, axis, inner)
		return
	}
	d := c.floatOperand("Reduce", "dst", dst, outer*inner)
	if d == nil {
		return
	}
	s := c.floatOperand("Reduce", "src", src, outer*axis*inner)
	if s == nil {
		return
	}
	if d == s && axis != 1 {
		c.fail("Reduce: dst and src are the same buffer")
		return
	}
	if outer*inner == 0 {
		return
	}
	if wide(d) || wide(s) {
		reduceRun[float64](op, d, s, outer, axis, inner)
	} else {
		reduceRun[float32](op, d, s, outer, axis, inner)
	}
}

// reduceRun is Reduce computing in T.
func reduceRun[T realT](op kernels.ReduceOp, d, s *buffer, outer, axis, inner int) {
	init := T(0)
	if op == kernels.Max {
		init = T(math.Inf(-1))
	}
	nblk := (axis + redBlock - 1) / redBlock
	pieceLen := min(inner, ewChunk)
	pieces := (inner + pieceLen - 1) / pieceLen
	parts := make([]T, outer*nblk*inner)

	// Pass 1: the partial result of every (outer, block, inner piece).
	units := outer * nblk * pieces
	kernels.ParallelFor(units, max(1, elemGrain/(redBlock*pieceLen)), func(lo, hi int) {
		var tmp [ewChunk]T
		for u := lo; u < hi; u++ {
			o, rest := u/(nblk*pieces), u%(nblk*pieces)
			blk, pc := rest/pieces, rest%pieces
			j0 := pc * pieceLen
			m := min(pieceLen, inner-j0)
			part := parts[(o*nblk+blk)*inner+j0:][:m]
			for j := range part {
				part[j] = init
			}
			a0, a1 := blk*redBlock, min(axis, (blk+1)*redBlock)
			// Read as many whole rows at once as fit the scratch when a row
			// is short; otherwise one piece of one row at a time.
			rowsPer := 1
			if m == inner {
				rowsPer = max(1, ewChunk/inner)
			}
			for a := a0; a < a1; a += rowsPer {
				r := min(rowsPer, a1-a)
				if m == inner {
					readReal(tmp[:r*inner], s, (o*axis+a)*inner)
				} else {
					readReal(tmp[:m], s, (o*axis+a)*inner+j0)
				}
				for rr := 0; rr < r; rr++ {
					reduceInto(op, part, tmp[rr*m:rr*m+m])
				}
			}
		}
	})

	// Pass 2: combine the blocks in order and store.
	kernels.ParallelFor(outer, max(1, elemGrain/max(1, inner*max(1, nblk))), func(lo, hi int) {
		acc := make([]T, inner)
		for o := lo; o < hi; o++ {
			for j := range acc {
				acc[j] = init
			}
			for blk := 0; blk < nblk; blk++ {
				part := parts[(o*nblk+blk)*inner:][:inner]
				if op == kernels.Max {
					reduceInto(kernels.Max, acc, part)
				} else {
					for j, v := range part {
						acc[j] += v
					}
				}
			}
			if op == kernels.Mean {
				n := T(axis)
				for j := range acc {
					acc[j] /= n
				}
			}
			writeReal(d, o*inner, acc)
		}
	})
}

// reduceInto folds one row x into the running partial acc.
func reduceInto[T realT](op kernels.ReduceOp, acc, x []T) {
	x = x[:len(acc)]
	switch op {
	case kernels.Sum, kernels.Mean:
		for j, v := range x {
			acc[j] += v
		}
	case kernels.SumSq:
		for j, v := range x {
			acc[j] += v * v
		}
	case kernels.Max:
		for j, v := range x {
			// Once NaN, stay NaN: v > NaN is false, and a NaN v replaces.
			if (v > acc[j] || v != v) && acc[j] == acc[j] {
				acc[j] = v
			}
		}
	}
}

// sqChunk is the number of elements in one partial sum of SumSquares and
// one scan unit of NonFinite.
const sqChunk = 1 << 14

// bufChunks lists (buffer, chunk) work units over several buffers.
type bufChunks struct {
	bufs  []*buffer
	first []int // first unit of each buffer; first[len(bufs)] is the total
}

// newBufChunks numbers the sqChunk-sized pieces of bufs consecutively.
func newBufChunks(bufs []*buffer) bufChunks {
	bc := bufChunks{bufs: bufs, first: make([]int, len(bufs)+1)}
	for i, b := range bufs {
		bc.first[i+1] = bc.first[i] + (b.n+sqChunk-1)/sqChunk
	}
	return bc
}

// unit returns the buffer and element range of work unit u.
func (bc bufChunks) unit(u int) (*buffer, int, int) {
	i := 0
	for bc.first[i+1] <= u {
		i++
	}
	b := bc.bufs[i]
	lo := (u - bc.first[i]) * sqChunk
	return b, lo, min(b.n, lo+sqChunk)
}

// scalarOut checks the one-element result operand of SumSquares/NonFinite.
func (c *Backend) scalarOut(op string, dst kernels.Buffer) *buffer {
	d := c.floatOperand(op, "dst", dst, -1)
	if d == nil {
		return nil
	}
	if d.n < 1 {
		c.fail("%s: dst is empty", op)
		return nil
	}
	return d
}

// floatList checks every listed buffer; ok is false after a failure.
func (c *Backend) floatList(op string, srcs []kernels.Buffer) (bufs []*buffer, ok bool) {
	bufs = make([]*buffer, len(srcs))
	for i, b := range srcs {
		cb := c.floatOperand(op, "srcs["+strconv.Itoa(i)+"]", b, -1)
		if cb == nil {
			return nil, false
		}
		bufs[i] = cb
	}
	return bufs, true
}

// SumSquares writes Σ x² over all listed buffers into dst[0]. It accumulates
// in float64 whatever the dtypes: the sum spans every gradient of the model
// (billions of terms for a full fine-tune), where float32 would lose digits.
// Chunks of sqChunk are summed in parallel and their partials added in list
// order, so the result is reproducible.
func (c *Backend) SumSquares(dst kernels.Buffer, srcs []kernels.Buffer) {
	d := c.scalarOut("SumSquares", dst)
	if d == nil {
		return
	}
	if d.dt != kernels.F32 && d.dt != kernels.F64 {
		c.fail("SumSquares: dst is %v, want F32 or F64", d.dt)
		return
	}
	bufs, ok := c.floatList("SumSquares", srcs)
	if !ok {
		return
	}
	bc := newBufChunks(bufs)
	units := bc.first[len(bufs)]
	parts := make([]float64, units)
	kernels.ParallelFor(units, 4, func(lo, hi int) {
		var tmp [ewChunk]float32
		for u := lo; u < hi; u++ {
			b, a, e := bc.unit(u)
			var sum float64
			if b.dt == kernels.F64 {
				for _, v := range b.f64[a:e] {
					sum += v * v
				}
			} else {
				for i := a; i < e; i += ewChunk {
					m := min(ewChunk, e-i)
					readReal(tmp[:m], b, i)
					for _, v := range tmp[:m] {
						w := float64(v)
						sum += w * w
					}
				}
			}
			parts[u] = sum
		}
	})
	var total float64
	for _, p := range parts {
		total += p
	}
	d.set(0, total)
}

// NonFinite writes 1 into dst[0] when any element of any listed buffer is
// ±Inf or NaN, and 0 otherwise. It tests exponent bits directly, so a
// subnormal or a -0 never counts.
func (c *Backend) NonFinite(dst kernels.Buffer, srcs []kernels.Buffer) {
	d := c.scalarOut("NonFinite", dst)
	if d == nil {
		return
	}
	bufs, ok := c.floatList("NonFinite", srcs)
	if !ok {
		return
	}
	bc := newBufChunks(bufs)
	units := bc.first[len(bufs)]
	found := make([]bool, units)
	kernels.ParallelFor(units, 4, func(lo, hi int) {
		for u := lo; u < hi; u++ {
			b, a, e := bc.unit(u)
			found[u] = hasNonFinite(b, a, e)
		}
	})
	v := 0.0
	for _, f := range found {
		if f {
			v = 1
			break
		}
	}
	d.set(0, v)
}

// hasNonFinite scans elements [a, e) of b for an all-ones exponent.
func hasNonFinite(b *buffer, a, e int) bool {
	switch b.dt {
	case kernels.F32:
		for _, v := range b.f32[a:e] {
			if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
				return true
			}
		}
	case kernels.F64:
		for _, v := range b.f64[a:e] {
			if math.Float64bits(v)&0x7ff0000000000000 == 0x7ff0000000000000 {
				return true
			}
		}
	case kernels.BF16:
		for _, h := range b.u16[a:e] {
			if h&0x7f80 == 0x7f80 {
				return true
			}
		}
	case kernels.F16:
		for _, h := range b.u16[a:e] {
			if h&0x7c00 == 0x7c00 {
				return true
			}
		}
	case kernels.F8E4M3: // no infinities: only the NaN codes
		for _, h := range b.u8[a:e] {
			if h&0x7f == 0x7f {
				return true
			}
		}
	}
	return false
}
