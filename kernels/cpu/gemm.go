package cpu

import (
	"runtime"
	"sync/atomic"

	"github.com/newbie-train/newbie-train/kernels"
)

// The matrix product follows the Goto/BLIS scheme: C is cut into tiles of
// up to gemmMC×gemmNC, and the tiles are shared out among goroutines. For one
// tile, K is walked in blocks of gemmKC; each block of op(A) is packed into
// row panels of gemmMR and each block of op(B) into column panels of gemmNR,
// converted to the accumulation type on the way (so BF16/F16 operands are
// widened once, not once per use). A register-tiled micro-kernel then
// multiplies one A panel by one B panel with gemmMR×gemmNR accumulators held
// in locals, and adds the block's partial sums into a float32 (float64)
// tile of accumulators. After the last block the tile is scaled, combined
// with beta·C and rounded once into C.
//
// Determinism: element (i, j) is always Σ over K blocks, in order, of a
// register sum over k in order, whatever the tile sizes or the number of
// goroutines, so the result does not depend on scheduling.

const (
	gemmMR = 2   // rows of the micro-kernel's register tile
	gemmNR = 4   // columns of the micro-kernel's register tile
	gemmKC = 256 // depth of one packed block: a B micro-panel (KC×NR) stays in L1
	gemmMC = 128 // rows of a C tile: the packed A block (MC×KC) stays in L2
	gemmNC = 512 // columns of a C tile
)

// Gemm computes C = alpha·op(A)·op(B) + beta·C for every batch. With beta 0,
// C is not read (NaN or Inf already there does not leak into the result), and
// with alpha 0 or K 0, A and B are not read.
func (c *Backend) Gemm(g kernels.GemmArgs) {
	a := c.buf("Gemm", "A", g.A)
	b := c.buf("Gemm", "B", g.B)
	cc := c.buf("Gemm", "C", g.C)
	if a == nil || b == nil || cc == nil {
		return
	}
	if !c.gemmCheck(g, a, b, cc) {
		return
	}
	if g.M == 0 || g.N == 0 || g.Batch == 0 {
		return
	}
	if a.dt == kernels.F64 {
		gemmRun[float64](g, a, b, cc, gemmKernel2x4[float64])
	} else {
		gemmRun[float32](g, a, b, cc, gemmKernel2x4[float32])
	}
}

// gemmCheck validates dtypes, leading dimensions, strides and bounds,
// recording the first problem found.
func (c *Backend) gemmCheck(g kernels.GemmArgs, a, b, cc *buffer) bool {
	if a.dt != b.dt {
		c.fail("Gemm: A is %v but B is %v (operands must share one dtype)", a.dt, b.dt)
		return false
	}
	okC := false
	switch a.dt {
	case kernels.F32:
		okC = cc.dt == kernels.F32
	case kernels.F64:
		okC = cc.dt == kernels.F64
	case kernels.BF16, kernels.F16:
		okC = cc.dt == kernels.F32 || cc.dt == kernels.BF16 || cc.dt == kernels.F16
	default:
		c.fail("Gemm: operand dtype %v is not F32, BF16, F16 or F64", a.dt)
		return false
	}
	if !okC {
		c.fail("Gemm: C is %v, which %v operands cannot write", cc.dt, a.dt)
		return false
	}
	if g.M < 0 || g.N < 0 || g.K < 0 || g.Batch < 0 {
		c.fail("Gemm: negative size M=%d N=%d K=%d Batch=%d", g.M, g.N, g.K, g.Batch)
		return false
	}
	if cc == a || cc == b {
		c.fail("Gemm: C must not be the same buffer as A or B")
		return false
	}
	aRows, aCols := g.M, g.K
	if g.TransA {
		aRows, aCols = g.K, g.M
	}
	bRows, bCols := g.K, g.N
	if g.TransB {
		bRows, bCols = g.N, g.K
	}
	type operand struct {
		name            string
		buf             *buffer
		rows, cols      int
		off, ld, stride int
		skip            bool
	}
	readsAB := g.K > 0 && g.Alpha != 0
	for _, o := range []operand{
		{"A", a, aRows, aCols, g.OffA, g.LDA, g.StrideA, !readsAB},
		{"B", b, bRows, bCols, g.OffB, g.LDB, g.StrideB, !readsAB},
		{"C", cc, g.M, g.N, g.OffC, g.LDC, g.StrideC, false},
	} {
		if o.ld < max(1, o.cols) {
			c.fail("Gemm: LD%s=%d is less than the %d columns %s is stored with", o.name, o.ld, o.cols, o.name)
			return false
		}
		if o.stride < 0 || o.off < 0 {
			c.fail("Gemm: %s has offset %d and batch stride %d (both must be ≥ 0)", o.name, o.off, o.stride)
			return false
		}
		if o.skip || o.rows == 0 || o.cols == 0 || g.Batch == 0 {
			continue
		}
		last := o.off + (g.Batch-1)*o.stride + (o.rows-1)*o.ld + o.cols
		if last > o.buf.n {
			c.fail("Gemm: %s needs %d elements (offset %d, %d×%d, ld %d, %d batches of stride %d) but has %d",
				o.name, last, o.off, o.rows, o.cols, o.ld, g.Batch, o.stride, o.buf.n)
			return false
		}
	}
	if g.Batch > 1 && g.M > 0 && g.N > 0 && g.StrideC < (g.M-1)*g.LDC+g.N {
		c.fail("Gemm: StrideC=%d makes the %d batches' C matrices (%d×%d, ld %d) overlap", g.StrideC, g.Batch, g.M, g.N, g.LDC)
		return false
	}
	return true
}

// gemmTile is one tile of C: rows [i0, i0+mc) and columns [j0, j0+nc) of
// batch bt.
type gemmTile struct{ bt, i0, mc, j0, nc int }

// gemmRun runs the product with accumulation type T; kern is the
// micro-kernel.
func gemmRun[T realT](g kernels.GemmArgs, a, b, cc *buffer, kern func(int, []T, []T, []T, int)) {
	// Tile sizes only decide how work is shared, never the arithmetic, so
	// shrink them when C is small to keep every core busy.
	workers := runtime.GOMAXPROCS(0)
	// Never larger than C itself (rounded up to whole panels), so a small
	// product allocates small scratch.
	mcMax := min(gemmMC, gemmCeil(g.M, gemmMR)*gemmMR)
	ncMax := min(gemmNC, gemmCeil(g.N, gemmNR)*gemmNR)
	for ncMax > 4*gemmNR && g.Batch*gemmCeil(g.M, mcMax)*gemmCeil(g.N, ncMax) < 2*workers {
		ncMax /= 2
	}
	for mcMax > 4*gemmMR && g.Batch*gemmCeil(g.M, mcMax)*gemmCeil(g.N, ncMax) < 2*workers {
		mcMax /= 2
	}
	mt, nt := gemmCeil(g.M, mcMax), gemmCeil(g.N, ncMax)
	tiles := g.Batch * mt * nt
	product := g.K > 0 && g.Alpha != 0
	kcMax := min(gemmKC, max(g.K, 1))
	mPad := gemmCeil(mcMax, gemmMR) * gemmMR
	nPad := gemmCeil(ncMax, gemmNR) * gemmNR

	// Tiles are handed out one at a time from a shared counter rather than
	// in fixed ranges, so a goroutine slowed by other load on the machine
	// does not hold up the rest. Which goroutine computes a tile never
	// changes its arithmetic.
	var next atomic.Int64
	kernels.ParallelFor(min(workers, tiles), 1, func(int, int) {
		packA := make([]T, mPad*kcMax)
		packB := make([]T, nPad*kcMax)
		acc := make([]T, mPad*nPad)
		tmp := make([]T, kcMax)
		for {
			t := int(next.Add(1) - 1)
			if t >= tiles {
				return
			}
			bt := t / (mt * nt)
			r := t % (mt * nt)
			i0 := (r / nt) * mcMax
			j0 := (r % nt) * ncMax
			tl := gemmTile{bt: bt, i0: i0, mc: min(mcMax, g.M-i0), j0: j0, nc: min(ncMax, g.N-j0)}
			clear(acc)
			if product {
				gemmTileProduct(g, a, b, tl, packA, packB, acc, tmp, nPad, kern)
			}
			gemmStore(g, cc, tl, acc, nPad)
		}
	})
}

// gemmTileProduct accumulates op(A)·op(B) for one tile into acc (row stride
// ldAcc), walking K in blocks of gemmKC.
func gemmTileProduct[T realT](g kernels.GemmArgs, a, b *buffer, tl gemmTile, packA, packB, acc, tmp []T, ldAcc int,
	kern func(int, []T, []T, []T, int)) {
	offA := g.OffA + tl.bt*g.StrideA
	offB := g.OffB + tl.bt*g.StrideB
	mPanels := gemmCeil(tl.mc, gemmMR)
	nPanels := gemmCeil(tl.nc, gemmNR)
	for k0 := 0; k0 < g.K; k0 += gemmKC {
		kc := min(gemmKC, g.K-k0)
		// op(A)[i, k] is A[i*LDA + k], or A[k*LDA + i] when transposed.
		gemmPack(packA, a, offA, g.LDA, gemmMR, tl.i0, tl.mc, k0, kc, g.TransA, tmp)
		// op(B)[k, j] is B[k*LDB + j], or B[j*LDB + k] when transposed.
		gemmPack(packB, b, offB, g.LDB, gemmNR, tl.j0, tl.nc, k0, kc, !g.TransB, tmp)
		for jp := 0; jp < nPanels; jp++ {
			pb := packB[jp*gemmNR*kc : (jp+1)*gemmNR*kc]
			for ip := 0; ip < mPanels; ip++ {
				pa := packA[ip*gemmMR*kc : (ip+1)*gemmMR*kc]
				kern(kc, pa, pb, acc[ip*gemmMR*ldAcc+jp*gemmNR:], ldAcc)
			}
		}
	}
}

// gemmPack packs the block idx ∈ [idx0, idx0+n), k ∈ [k0, k0+kc) of an
// operand into panels of w indices: panel p holds, for each k in order, the
// w values at idx0+p*w … +w−1 (zero past n), so the micro-kernel reads it
// sequentially. When contig is true the operand's element (idx, k) lies at
// off + k*ld + idx (a run of idx is contiguous in memory); otherwise at
// off + idx*ld + k (a run of k is contiguous). tmp holds at least kc values.
func gemmPack[T realT](dst []T, src *buffer, off, ld, w, idx0, n, k0, kc int, contig bool, tmp []T) {
	panels := gemmCeil(n, w)
	for p := 0; p < panels; p++ {
		panel := dst[p*w*kc : (p+1)*w*kc]
		first := idx0 + p*w
		cnt := min(w, idx0+n-first)
		if contig {
			for k := 0; k < kc; k++ {
				row := panel[k*w : k*w+w]
				readReal(row[:cnt], src, off+(k0+k)*ld+first)
				clear(row[cnt:])
			}
			continue
		}
		for r := 0; r < cnt; r++ {
			readReal(tmp[:kc], src, off+(first+r)*ld+k0)
			for k, v := range tmp[:kc] {
				panel[k*w+r] = v
			}
		}
		for r := cnt; r < w; r++ {
			for k := 0; k < kc; k++ {
				panel[k*w+r] = 0
			}
		}
	}
}

// gemmStore writes C = alpha·acc + beta·C for one tile, computing in the
// accumulation type and rounding once to C's dtype. beta 0 never reads C.
func gemmStore[T realT](g kernels.GemmArgs, cc *buffer, tl gemmTile, acc []T, ldAcc int) {
	alpha, beta := T(g.Alpha), T(g.Beta)
	offC := g.OffC + tl.bt*g.StrideC
	row := make([]T, tl.nc)
	for i := 0; i < tl.mc; i++ {
		at := offC + (tl.i0+i)*g.LDC + tl.j0
		src := acc[i*ldAcc : i*ldAcc+tl.nc]
		if beta != 0 {
			gemmReadC(cc, row, at)
			for j, v := range src {
				row[j] = alpha*v + beta*row[j]
			}
		} else {
			for j, v := range src {
				row[j] = alpha * v
			}
		}
		gemmWriteC(cc, row, at)
	}
}

// gemmReadC loads a run of C into the accumulation type.
func gemmReadC[T realT](cc *buffer, dst []T, off int) {
	switch d := any(dst).(type) {
	case []float32:
		readReal(d, cc, off)
	case []float64:
		readReal(d, cc, off)
	}
}

// gemmWriteC stores a run of the accumulation type into C, rounding once.
func gemmWriteC[T realT](cc *buffer, src []T, off int) {
	switch s := any(src).(type) {
	case []float32:
		writeReal(cc, off, s)
	case []float64:
		writeReal(cc, off, s)
	}
}

// gemmKernel2x4 adds the product of a packed A panel (kc×2, k-major) and a
// packed B panel (kc×4) into the 2×4 block of c at row stride ldc. The eight
// sums, the four B values and one A value fit in the 15 vector registers Go
// allocates on amd64, so nothing spills; measured on the 2-core Xeon here, a
// 4×4 tile spilled and ran a third slower than this one.
func gemmKernel2x4[T realT](kc int, a, b, c []T, ldc int) {
	var c00, c01, c02, c03 T
	var c10, c11, c12, c13 T
	a = a[:2*kc]
	b = b[:4*kc]
	for len(a) >= 2 && len(b) >= 4 {
		b0, b1, b2, b3 := b[0], b[1], b[2], b[3]
		a0 := a[0]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		a1 := a[1]
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		a = a[2:]
		b = b[4:]
	}
	r0 := c[0:4:4]
	r0[0] += c00
	r0[1] += c01
	r0[2] += c02
	r0[3] += c03
	r1 := c[ldc : ldc+4 : ldc+4]
	r1[0] += c10
	r1[1] += c11
	r1[2] += c12
	r1[3] += c13
}

// gemmCeil is ⌈a/b⌉ for a ≥ 0, b > 0.
func gemmCeil(a, b int) int { return (a + b - 1) / b }
