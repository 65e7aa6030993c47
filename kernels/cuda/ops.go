package cuda

import (
	"encoding/binary"
	"math"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

// blockSize is the thread count of the elementwise and row kernels.
const blockSize = 256

// suffix picks the kernel instantiation: double arithmetic when any output
// is F64 (the contract's "float64 for F64 outputs"), float otherwise.
func suffix(outs ...*buffer) string {
	for _, b := range outs {
		if b != nil && b.dt == kernels.F64 {
			return "_d"
		}
	}
	return "_f"
}

func dt(b *buffer) int {
	if b == nil {
		return 0
	}
	return int(b.dt)
}

func ptr(b *buffer) uint64 {
	if b == nil {
		return 0
	}
	return b.ptr
}

// fbuf checks a float operand of exactly n elements (n < 0: any length).
func (c *Backend) fbuf(op, name string, b kernels.Buffer, n int) *buffer {
	cb := c.buf(op, name, b)
	if cb == nil {
		return nil
	}
	if !cb.dt.IsFloat() {
		c.failf("%s: operand %s is %v, want a float dtype", op, name, cb.dt)
		return nil
	}
	if n >= 0 && cb.n != n {
		c.failf("%s: operand %s has %d elements, want %d", op, name, cb.n, n)
		return nil
	}
	return cb
}

// optFbuf is fbuf for operands that may be nil.
func (c *Backend) optFbuf(op, name string, b kernels.Buffer, n int) (*buffer, bool) {
	if b == nil {
		return nil, true
	}
	if cb, ok := b.(*buffer); ok && cb == nil {
		return nil, true
	}
	cb := c.fbuf(op, name, b, n)
	return cb, cb != nil
}

// statBuf checks a statistics operand (F32 or F64, n elements).
func (c *Backend) statBuf(op, name string, b kernels.Buffer, n int) *buffer {
	cb := c.buf(op, name, b)
	if cb == nil {
		return nil
	}
	if cb.dt != kernels.F32 && cb.dt != kernels.F64 {
		c.failf("%s: operand %s is %v, want F32 or F64", op, name, cb.dt)
		return nil
	}
	if cb.n != n {
		c.failf("%s: operand %s has %d elements, want %d", op, name, cb.n, n)
		return nil
	}
	return cb
}

func (c *Backend) positive(op string, dims ...int) bool {
	for _, d := range dims {
		if d < 0 {
			c.failf("%s: negative dimension in %v", op, dims)
			return false
		}
	}
	return true
}

// Fill sets every element of dst to v.
func (c *Backend) Fill(dst kernels.Buffer, v float64) {
	if !c.enter("Fill") {
		c.leave()
		return
	}
	defer c.leave()
	d := c.buf("Fill", "dst", dst)
	if d == nil || d.n == 0 {
		return
	}
	c.launch("fill"+suffix(d), c.grid1(d.n, blockSize), blockSize, 0, d.ptr, dt(d), d.n, v)
}

// Cast converts src to dst's dtype elementwise.
func (c *Backend) Cast(dst, src kernels.Buffer) {
	if !c.enter("Cast") {
		c.leave()
		return
	}
	defer c.leave()
	d, s := c.buf("Cast", "dst", dst), c.buf("Cast", "src", src)
	if d == nil || s == nil {
		return
	}
	if d.n != s.n {
		c.failf("Cast: dst has %d elements, src %d", d.n, s.n)
		return
	}
	if d.n == 0 {
		return
	}
	sfx := suffix(d)
	if d.dt == kernels.I32 || s.dt == kernels.I32 {
		sfx = "_d" // integers pass through double exactly
	}
	c.launch("cast"+sfx, c.grid1(d.n, blockSize), blockSize, 0, d.ptr, dt(d), s.ptr, dt(s), d.n)
}

// Copy2D copies a rows×cols block between strided layouts, casting when
// the dtypes differ.
func (c *Backend) Copy2D(dst kernels.Buffer, dstOff, dstStride int, src kernels.Buffer, srcOff, srcStride int, rows, cols int) {
	if !c.enter("Copy2D") {
		c.leave()
		return
	}
	defer c.leave()
	d, s := c.buf("Copy2D", "dst", dst), c.buf("Copy2D", "src", src)
	if d == nil || s == nil {
		return
	}
	// A source stride below cols (0 included) re-reads rows: broadcasting a
	// row is a Copy2D. Destination rows must not overlap.
	if rows < 0 || cols < 0 || dstOff < 0 || srcOff < 0 || srcStride < 0 || (rows > 1 && dstStride < cols) {
		c.failf("Copy2D: bad block %d×%d (dst offset %d stride %d, src offset %d stride %d)", rows, cols, dstOff, dstStride, srcOff, srcStride)
		return
	}
	if rows == 0 || cols == 0 {
		return
	}
	if dstOff+(rows-1)*dstStride+cols > d.n || srcOff+(rows-1)*srcStride+cols > s.n {
		c.failf("Copy2D: block %d×%d at dst %d (stride %d, %d elements) / src %d (stride %d, %d elements) is out of range", rows, cols, dstOff, dstStride, d.n, srcOff, srcStride, s.n)
		return
	}
	if esz := d.dt.Size(); srcStride == 0 && d.dt == s.dt && dstStride == cols && (cols*esz)%16 == 0 && (dstOff*esz)%16 == 0 && (srcOff*esz)%16 == 0 {
		// A row broadcast into a dense block, 16 bytes a store.
		chunks := cols * esz / 16
		c.launch("bcast_rows16", c.grid1(rows*chunks, blockSize), blockSize, 0, d.ptr+uint64(dstOff*esz), s.ptr+uint64(srcOff*esz), rows, chunks)
		return
	}
	sfx := suffix(d)
	if d.dt == kernels.I32 || s.dt == kernels.I32 {
		sfx = "_d"
	}
	c.launch("copy2d"+sfx, c.grid1(rows*cols, blockSize), blockSize, 0, d.ptr, dt(d), dstOff, dstStride, s.ptr, dt(s), srcOff, srcStride, rows, cols)
}

// Permute writes dst = src transposed by perm (rank ≤ 6).
func (c *Backend) Permute(dst, src kernels.Buffer, shape []int, perm []int) {
	if !c.enter("Permute") {
		c.leave()
		return
	}
	defer c.leave()
	d, s := c.buf("Permute", "dst", dst), c.buf("Permute", "src", src)
	if d == nil || s == nil {
		return
	}
	n, err := kernels.PermuteLen(shape, perm)
	if err != nil {
		c.failf("Permute: %v", err)
		return
	}
	r := len(shape)
	if d.n != n || s.n != n {
		c.failf("Permute: shape %v has %d elements but src has %d and dst %d", shape, n, s.n, d.n)
		return
	}
	if n == 0 {
		return
	}
	stride := make([]int, r)
	acc := 1
	for i := r - 1; i >= 0; i-- {
		stride[i] = acc
		acc *= shape[i]
	}
	fields := []any{r}
	dshape := make([]any, 6)
	sstr := make([]any, 6)
	for k := 0; k < 6; k++ {
		dshape[k], sstr[k] = 1, 0
		if k < r {
			dshape[k], sstr[k] = shape[perm[k]], stride[perm[k]]
		}
	}
	fields = append(append(fields, dshape...), sstr...)
	sfx := suffix(d)
	if d.dt == kernels.I32 || s.dt == kernels.I32 {
		sfx = "_d"
	}
	c.launch("permute"+sfx, c.grid1(n, blockSize), blockSize, 0, d.ptr, dt(d), s.ptr, dt(s), n, structBytes(fields...))
}

// Unary computes dst[i] = f(src[i]).
func (c *Backend) Unary(op kernels.UnaryOp, dst, src kernels.Buffer, p kernels.UnaryParams) {
	if !c.enter("Unary") {
		c.leave()
		return
	}
	defer c.leave()
	d := c.fbuf("Unary", "dst", dst, -1)
	if d == nil {
		return
	}
	s := c.fbuf("Unary", "src", src, d.n)
	if s == nil {
		return
	}
	if op < kernels.Identity || op > kernels.LastUnary {
		c.failf("Unary: unknown op %d", op)
		return
	}
	if d.n == 0 {
		return
	}
	c.unary(op, d, s, p)
}

// unary launches dst = f(src) over checked, equally long, non-empty buffers.
func (c *Backend) unary(op kernels.UnaryOp, d, s *buffer, p kernels.UnaryParams) {
	if d.dt == kernels.BF16 && s.dt == kernels.BF16 && d.n%8 == 0 {
		c.launch("unary_bf16_vec", c.grid1(d.n/8, blockSize), blockSize, 0, int(op), d.ptr, s.ptr, d.n/8, p.A, p.B)
		return
	}
	c.launch("unary"+suffix(d), c.grid1(d.n, blockSize), blockSize, 0, int(op), d.ptr, dt(d), s.ptr, dt(s), d.n, p.A, p.B)
}

// UnaryGrad computes dx[i] = dy[i]·f'(x[i]).
func (c *Backend) UnaryGrad(op kernels.UnaryOp, dx, x, dy kernels.Buffer, p kernels.UnaryParams) {
	if !c.enter("UnaryGrad") {
		c.leave()
		return
	}
	defer c.leave()
	d := c.fbuf("UnaryGrad", "dx", dx, -1)
	if d == nil {
		return
	}
	xs, g := c.fbuf("UnaryGrad", "x", x, d.n), c.fbuf("UnaryGrad", "dy", dy, d.n)
	if xs == nil || g == nil {
		return
	}
	if op < kernels.Identity || op > kernels.LastUnary {
		c.failf("UnaryGrad: unknown op %d", op)
		return
	}
	if d.n == 0 {
		return
	}
	if d.dt == kernels.BF16 && xs.dt == kernels.BF16 && g.dt == kernels.BF16 && d.n%8 == 0 {
		c.launch("unary_grad_bf16_vec", c.grid1(d.n/8, blockSize), blockSize, 0, int(op), d.ptr, xs.ptr, g.ptr, d.n/8, p.A)
		return
	}
	c.launch("unary_grad"+suffix(d), c.grid1(d.n, blockSize), blockSize, 0, int(op), d.ptr, dt(d), xs.ptr, dt(xs), g.ptr, dt(g), d.n, p.A)
}

// maxBinaryRank bounds Binary's rank (the kernel's Bcast struct).
const maxBinaryRank = 8

// Binary computes dst = a ∘ b with NumPy broadcasting over equal ranks.
func (c *Backend) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	if !c.enter("Binary") {
		c.leave()
		return
	}
	defer c.leave()
	if op < kernels.Add || op > kernels.Minimum {
		c.failf("Binary: unknown op %d", op)
		return
	}
	r := len(dstShape)
	if len(aShape) != r || len(bShape) != r || r > maxBinaryRank {
		c.failf("Binary: shapes dst %v, a %v, b %v must have one rank ≤ %d", dstShape, aShape, bShape, maxBinaryRank)
		return
	}
	n, na, nb := 1, 1, 1
	same := true
	for i := 0; i < r; i++ {
		if dstShape[i] < 0 || (aShape[i] != dstShape[i] && aShape[i] != 1) || (bShape[i] != dstShape[i] && bShape[i] != 1) {
			c.failf("Binary: shapes a %v and b %v do not broadcast to dst %v", aShape, bShape, dstShape)
			return
		}
		n *= dstShape[i]
		na *= aShape[i]
		nb *= bShape[i]
		same = same && aShape[i] == dstShape[i] && bShape[i] == dstShape[i]
	}
	d := c.fbuf("Binary", "dst", dst, n)
	as := c.fbuf("Binary", "a", a, na)
	bs := c.fbuf("Binary", "b", b, nb)
	if d == nil || as == nil || bs == nil || n == 0 {
		return
	}
	if d.dt == kernels.BF16 && as.dt == kernels.BF16 && bs.dt == kernels.BF16 {
		if mode, s, dd, ok := vecBroadcast(dstShape, aShape, bShape, same); ok {
			c.launch("binary_bf16_vec", c.grid1(n/8, blockSize), blockSize, 0, int(op), d.ptr, as.ptr, bs.ptr, n/8, mode, s, dd)
			return
		}
	}
	fields := make([]any, 1+3*maxBinaryRank)
	fields[0] = 0
	for k := 1; k < len(fields); k++ {
		fields[k] = 1
	}
	if !same {
		fields[0] = r
		sa, sb := 1, 1
		for i := r - 1; i >= 0; i-- {
			fields[1+i] = dstShape[i]
			fields[1+maxBinaryRank+i], fields[1+2*maxBinaryRank+i] = 0, 0
			if aShape[i] != 1 {
				fields[1+maxBinaryRank+i] = sa
			}
			if bShape[i] != 1 {
				fields[1+2*maxBinaryRank+i] = sb
			}
			sa *= aShape[i]
			sb *= bShape[i]
		}
	}
	c.launch("binary"+suffix(d), c.grid1(n, blockSize), blockSize, 0, int(op), d.ptr, dt(d), as.ptr, dt(as), bs.ptr, dt(bs), n, structBytes(fields...))
}

// vecBroadcast recognises the layouts binary_bf16_vec handles: equal shapes
// (mode 0), or one operand broadcast over a middle block of axes of dst
// viewed as [X, S, D] — [X, 1, D] against [X, S, D] — with b (mode 1) or a
// (mode 2) the broadcast one; D (and so every row) a multiple of 8 elements.
func vecBroadcast(dst, a, b []int, same bool) (mode, s, d int, ok bool) {
	n := 1
	for _, v := range dst {
		n *= v
	}
	if same {
		return 0, 1, 1, n%8 == 0
	}
	split := func(op []int) (s, d int, ok bool) {
		r := len(dst)
		i := r - 1
		d = 1
		for ; i >= 0 && op[i] == dst[i]; i-- {
			d *= dst[i]
		}
		s = 1
		for ; i >= 0 && op[i] == 1; i-- {
			s *= dst[i]
		}
		for ; i >= 0; i-- {
			if op[i] != dst[i] {
				return 0, 0, false
			}
		}
		return s, d, d%8 == 0 && s > 1
	}
	full := func(op []int) bool {
		for i := range dst {
			if op[i] != dst[i] {
				return false
			}
		}
		return true
	}
	if full(a) {
		if s, d, ok := split(b); ok {
			return 1, s, d, true
		}
	}
	if full(b) {
		if s, d, ok := split(a); ok {
			return 2, s, d, true
		}
	}
	return 0, 0, 0, false
}

// Reduce reduces src [outer, axis, inner] over the middle axis.
func (c *Backend) Reduce(op kernels.ReduceOp, dst, src kernels.Buffer, outer, axis, inner int) {
	if !c.enter("Reduce") {
		c.leave()
		return
	}
	defer c.leave()
	if op < kernels.Sum || op > kernels.Max {
		c.failf("Reduce: unknown op %d", op)
		return
	}
	if !c.positive("Reduce", outer, axis, inner) {
		return
	}
	d := c.fbuf("Reduce", "dst", dst, outer*inner)
	s := c.fbuf("Reduce", "src", src, outer*axis*inner)
	if d == nil || s == nil || d.n == 0 {
		return
	}
	sfx := suffix(d, s) // F64 sources accumulate in double too
	if inner == 1 {
		c.launch("reduce_rows"+sfx, dims{min(outer, c.dev.sms*16), 1, 1}, blockSize, 0, int(op), d.ptr, dt(d), s.ptr, dt(s), outer, axis)
		return
	}
	if outer*inner < c.dev.sms*blockSize*4 && axis > 2*reduceChunk {
		// Too few outputs to fill the GPU one thread each: reduce chunks of
		// the axis in parallel, then fold the partials in order.
		nchunk := (axis + reduceChunk - 1) / reduceChunk
		size := int64(8)
		if sfx == "_f" {
			size = 4
		}
		part, psize, err := c.alloc.get(int64(outer*nchunk*inner) * size)
		if err != nil {
			c.failf("Reduce: partials: %v", err)
			return
		}
		defer c.alloc.put(part, psize)
		c.launch("reduce_cols_part"+sfx, c.grid1(outer*nchunk*inner, blockSize), blockSize, 0, int(op), part, s.ptr, dt(s), outer, axis, inner, reduceChunk, nchunk)
		c.launch("reduce_cols_fold"+sfx, c.grid1(outer*inner, blockSize), blockSize, 0, int(op), d.ptr, dt(d), part, outer, nchunk, inner, axis)
		return
	}
	c.launch("reduce_cols"+sfx, c.grid1(outer*inner, blockSize), blockSize, 0, int(op), d.ptr, dt(d), s.ptr, dt(s), outer, axis, inner)
}

// reduceChunk is how many axis rows one partial of the two-pass column
// reduction sums.
const reduceChunk = 64

// mtChunk is the multi-tensor kernels' chunk (MT_CHUNK in reduce.cu).
const mtChunk = 4096

// tempDevice allocates a short-lived device block holding host bytes. It
// goes back to the cache right after the launch that reads it is queued:
// the stream runs in order, so the next owner's writes come later.
func (c *Backend) tempDevice(host []byte) (uint64, int64, bool) {
	p, size, err := c.alloc.get(int64(len(host)))
	if err != nil {
		c.failf("temporary device buffer: %v", err)
		return 0, 0, false
	}
	if !c.htod(p, host) {
		c.alloc.put(p, size)
		return 0, 0, false
	}
	return p, size, true
}

// multiTensor runs the sum-of-squares (mode 0) or non-finite (mode 1) pass
// over many buffers in one launch, then folds the per-block partials.
func (c *Backend) multiTensor(op string, mode int, dst kernels.Buffer, srcs []kernels.Buffer) {
	d := c.buf(op, "dst", dst)
	if d == nil {
		return
	}
	if d.n < 1 {
		c.failf("%s: dst is empty", op)
		return
	}
	if mode == 0 && d.dt != kernels.F32 && d.dt != kernels.F64 {
		c.failf("%s: dst is %v, want F32 or F64", op, d.dt)
		return
	}
	var desc []byte
	chunks := 0
	anyF64 := d.dt == kernels.F64
	nt := 0
	for i, s := range srcs {
		b := c.fbuf(op, opName("srcs", i), s, -1)
		if b == nil {
			return
		}
		if b.n == 0 {
			continue
		}
		desc = append(desc, structBytes(b.ptr, b.n, int(b.dt), chunks)...)
		chunks += (b.n + mtChunk - 1) / mtChunk
		nt++
	}
	if nt == 0 {
		c.launch("fill"+suffix(d), dims{1, 1, 1}, 32, 0, d.ptr, dt(d), 1, 0.0)
		return
	}
	sfx, esz := "_f", 4
	if anyF64 {
		sfx, esz = "_d", 8
	}
	dp, dsize, ok := c.tempDevice(desc)
	if !ok {
		return
	}
	defer c.alloc.put(dp, dsize)
	grid := c.dev.sms * 4 // fixed per device, so the sum order is fixed
	pp, psize, err := c.alloc.get(int64(grid * esz))
	if err != nil {
		c.failf("%s: %v", op, err)
		return
	}
	defer c.alloc.put(pp, psize)
	c.launch("mt_partial"+sfx, dims{grid, 1, 1}, blockSize, 0, dp, nt, chunks, mode, pp)
	c.launch("mt_final"+sfx, dims{1, 1, 1}, 1024, 0, pp, grid, mode, d.ptr, dt(d))
}

// SumSquares writes Σ x² over all listed buffers into dst[0].
func (c *Backend) SumSquares(dst kernels.Buffer, srcs []kernels.Buffer) {
	if !c.enter("SumSquares") {
		c.leave()
		return
	}
	defer c.leave()
	c.multiTensor("SumSquares", 0, dst, srcs)
}

// NonFinite writes 1 into dst[0] if any listed element is ±Inf or NaN.
func (c *Backend) NonFinite(dst kernels.Buffer, srcs []kernels.Buffer) {
	if !c.enter("NonFinite") {
		c.leave()
		return
	}
	defer c.leave()
	c.multiTensor("NonFinite", 1, dst, srcs)
}

// Softmax over rows of length cols.
func (c *Backend) Softmax(dst, src kernels.Buffer, rows, cols int) {
	if !c.enter("Softmax") {
		c.leave()
		return
	}
	defer c.leave()
	if !c.positive("Softmax", rows, cols) {
		return
	}
	d, s := c.fbuf("Softmax", "dst", dst, rows*cols), c.fbuf("Softmax", "src", src, rows*cols)
	if d == nil || s == nil || rows*cols == 0 {
		return
	}
	c.launch("softmax"+suffix(d), dims{min(rows, c.dev.sms*16), 1, 1}, blockSize, 0, d.ptr, dt(d), s.ptr, dt(s), rows, cols)
}

// SoftmaxGrad computes dx = y ⊙ (dy − Σ y⊙dy) per row.
func (c *Backend) SoftmaxGrad(dx, y, dy kernels.Buffer, rows, cols int) {
	if !c.enter("SoftmaxGrad") {
		c.leave()
		return
	}
	defer c.leave()
	if !c.positive("SoftmaxGrad", rows, cols) {
		return
	}
	n := rows * cols
	d, yb, g := c.fbuf("SoftmaxGrad", "dx", dx, n), c.fbuf("SoftmaxGrad", "y", y, n), c.fbuf("SoftmaxGrad", "dy", dy, n)
	if d == nil || yb == nil || g == nil || n == 0 {
		return
	}
	c.launch("softmax_grad"+suffix(d), dims{min(rows, c.dev.sms*16), 1, 1}, blockSize, 0, d.ptr, dt(d), yb.ptr, dt(yb), g.ptr, dt(g), rows, cols)
}

// RMSNorm computes y = x·rstd·w per row and saves rstd.
func (c *Backend) RMSNorm(y, rstd, x, w kernels.Buffer, rows, cols int, eps float64) {
	if !c.enter("RMSNorm") {
		c.leave()
		return
	}
	defer c.leave()
	c.rowNorm("RMSNorm", true, y, nil, rstd, x, w, nil, rows, cols, eps)
}

// LayerNorm computes y = (x−mean)·rstd·w + b per row and saves mean, rstd.
func (c *Backend) LayerNorm(y, mean, rstd, x, w, b kernels.Buffer, rows, cols int, eps float64) {
	if !c.enter("LayerNorm") {
		c.leave()
		return
	}
	defer c.leave()
	c.rowNorm("LayerNorm", false, y, mean, rstd, x, w, b, rows, cols, eps)
}

func (c *Backend) rowNorm(op string, rms bool, y, mean, rstd, x, w, b kernels.Buffer, rows, cols int, eps float64) {
	if !c.positive(op, rows, cols) {
		return
	}
	yb, xb := c.fbuf(op, "y", y, rows*cols), c.fbuf(op, "x", x, rows*cols)
	rb := c.statBuf(op, "rstd", rstd, rows)
	if yb == nil || xb == nil || rb == nil {
		return
	}
	var mb *buffer
	if !rms {
		if mb = c.statBuf(op, "mean", mean, rows); mb == nil {
			return
		}
	}
	wb, ok1 := c.optFbuf(op, "w", w, cols)
	bb, ok2 := c.optFbuf(op, "b", b, cols)
	if !ok1 || !ok2 || rows*cols == 0 {
		return
	}
	if rms && yb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rb.dt == kernels.F32 && cols%8 == 0 &&
		(wb == nil || wb.dt == kernels.BF16 || wb.dt == kernels.F32) {
		base := "rmsnorm_bf16_rows"
		if wb != nil && wb.dt == kernels.F32 {
			base += "_wf"
		}
		name, lanes, per := rowKernel(base, cols)
		c.launch(name, c.grid1(rows, per), blockSize, 0, yb.ptr, rb.ptr, xb.ptr, ptr(wb), rows, cols, lanes, eps)
		return
	}
	if !rms && yb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rb.dt == kernels.F32 && mb.dt == kernels.F32 && cols%8 == 0 &&
		(wb == nil || wb.dt == kernels.BF16) && (bb == nil || bb.dt == kernels.BF16) {
		// One row per lane group; chunks in registers up to 4 a lane.
		_, lanes, _ := rowKernel("", cols)
		name := "layernorm_bf16_rows"
		if cols/8 <= 4*lanes {
			name += "_h4"
		}
		c.launch(name, c.grid1(rows, blockSize/lanes), blockSize, 0, yb.ptr, mb.ptr, rb.ptr, xb.ptr, ptr(wb), ptr(bb), rows, cols, lanes, eps)
		return
	}
	flag := 0
	if rms {
		flag = 1
	}
	c.launch("rownorm"+suffix(yb, rb), dims{min(rows, c.dev.sms*16), 1, 1}, blockSize, 0, flag, yb.ptr, dt(yb), ptr(mb), rb.ptr, dt(rb), xb.ptr, dt(xb),
		ptr(wb), dt(wb), ptr(bb), dt(bb), rows, cols, eps)
}

// rowKernel picks the bf16 row kernel (rownorm_vec.cu) for rows of cols
// elements (a multiple of 8), its lane-group width and the rows a block
// takes per step. The width is the smallest power of two that gives each
// 16-byte chunk of the row its own lane, at most a warp, so narrow rows
// (the q/k norms' 96 columns: 16 lanes) share a warp instead of leaving
// most of a 256-thread block idle. The suffix says how many chunks a lane
// keeps in registers: "_h1" one (of each of 4 rows per step), "_h2" up to
// two (of 2 rows); longer rows take the plain kernel, which reads them
// twice, one row per group and step. rowsPerBlock only sizes the grid: the
// kernels walk the rows grid-stride from their own constants.
func rowKernel(base string, cols int) (name string, lanes, rowsPerBlock int) {
	chunks := cols / 8
	lanes = 1
	for lanes < chunks && lanes < 32 {
		lanes *= 2
	}
	groups := blockSize / lanes
	switch perLane := (chunks + lanes - 1) / lanes; {
	case perLane <= 1:
		return base + "_h1", lanes, 4 * groups
	case perLane <= 2:
		return base + "_h2", lanes, 2 * groups
	}
	return base, lanes, groups
}

// RMSNormGrad computes dx and, when dw is not nil, dw.
func (c *Backend) RMSNormGrad(dx, dw, dy, x, w, rstd kernels.Buffer, rows, cols int) {
	if !c.enter("RMSNormGrad") {
		c.leave()
		return
	}
	defer c.leave()
	c.rowNormGrad("RMSNormGrad", true, dx, dw, nil, dy, x, w, nil, rstd, rows, cols)
}

// LayerNormGrad computes dx and, when not nil, dw and db.
func (c *Backend) LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, rows, cols int) {
	if !c.enter("LayerNormGrad") {
		c.leave()
		return
	}
	defer c.leave()
	c.rowNormGrad("LayerNormGrad", false, dx, dw, db, dy, x, w, mean, rstd, rows, cols)
}

func (c *Backend) rowNormGrad(op string, rms bool, dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, rows, cols int) {
	if !c.positive(op, rows, cols) {
		return
	}
	n := rows * cols
	dxb, dyb, xb := c.fbuf(op, "dx", dx, n), c.fbuf(op, "dy", dy, n), c.fbuf(op, "x", x, n)
	rb := c.statBuf(op, "rstd", rstd, rows)
	if dxb == nil || dyb == nil || xb == nil || rb == nil {
		return
	}
	var mb *buffer
	if !rms {
		if mb = c.statBuf(op, "mean", mean, rows); mb == nil {
			return
		}
	}
	wb, ok1 := c.optFbuf(op, "w", w, cols)
	dwb, ok2 := c.optFbuf(op, "dw", dw, cols)
	dbb, ok3 := c.optFbuf(op, "db", db, cols)
	if !ok1 || !ok2 || !ok3 || n == 0 {
		return
	}
	if rms && dxb.dt == kernels.BF16 && dyb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rb.dt == kernels.F32 && cols%8 == 0 &&
		(wb == nil || wb.dt == kernels.BF16) {
		name, lanes, per := rowKernel("rmsnorm_grad_bf16_rows", cols)
		c.launch(name, c.grid1(rows, per), blockSize, 0, dxb.ptr, dyb.ptr, xb.ptr, ptr(wb), rb.ptr, rows, cols, lanes)
	} else {
		flag := 0
		if rms {
			flag = 1
		}
		c.launch("rownorm_grad"+suffix(dxb, rb), dims{min(rows, c.dev.sms*16), 1, 1}, blockSize, 0, flag, dxb.ptr, dt(dxb), dyb.ptr, dt(dyb),
			xb.ptr, dt(xb), ptr(wb), dt(wb), ptr(mb), rb.ptr, dt(rb), rows, cols)
	}
	if dwb == nil && dbb == nil {
		return
	}
	colBlocks := (cols + 31) / 32
	sfx := suffix(dwb, dbb, rb)
	// Split the rows when the columns alone give too few blocks to fill the
	// GPU (one slice otherwise); partials are folded in slice order, so
	// results stay reproducible.
	slices := max(1, min((c.dev.sms*8+colBlocks-1)/colBlocks, (rows+255)/256))
	per := (rows + slices - 1) / slices
	size := int64(4)
	if sfx == "_d" {
		size = 8
	}
	part, psize, err := c.alloc.get(2 * int64(slices*cols) * size)
	if err != nil {
		c.failf("%s: partials: %v", op, err)
		return
	}
	defer c.alloc.put(part, psize)
	pb := part + uint64(int64(slices*cols)*size)
	c.launch("rownorm_wgrad_part"+sfx, dims{colBlocks, slices, 1}, 256, 0, part, pb,
		dyb.ptr, dt(dyb), xb.ptr, dt(xb), ptr(mb), rb.ptr, dt(rb), rows, cols, per)
	c.launch("rownorm_wgrad_fold"+sfx, c.grid1(cols, blockSize), blockSize, 0, ptr(dwb), dt(dwb), ptr(dbb), dt(dbb), part, pb, slices, cols)
}

// GroupNorm normalises x [n, c, hw] over groups of channels.
func (c *Backend) GroupNorm(y, mean, rstd, x, w, b kernels.Buffer, n, ch, hw, groups int, eps float64) {
	c.groupNormOp("GroupNorm", false, y, mean, rstd, x, w, b, n, ch, hw, groups, eps)
}

// GroupNormSiLU writes y = SiLU(GroupNorm(x)) (kernels.GroupNormSiLUBackend):
// one pass where the fast kernels serve, else GroupNorm then SiLU in place.
func (c *Backend) GroupNormSiLU(y, mean, rstd, x, w, b kernels.Buffer, n, ch, hw, groups int, eps float64) {
	c.groupNormOp("GroupNormSiLU", true, y, mean, rstd, x, w, b, n, ch, hw, groups, eps)
}

func (c *Backend) groupNormOp(op string, silu bool, y, mean, rstd, x, w, b kernels.Buffer, n, ch, hw, groups int, eps float64) {
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	if !c.groupShape(op, n, ch, hw, groups) {
		return
	}
	yb, xb := c.fbuf(op, "y", y, n*ch*hw), c.fbuf(op, "x", x, n*ch*hw)
	mb, rb := c.statBuf(op, "mean", mean, n*groups), c.statBuf(op, "rstd", rstd, n*groups)
	if yb == nil || xb == nil || mb == nil || rb == nil {
		return
	}
	wb, ok1 := c.optFbuf(op, "w", w, ch)
	bb, ok2 := c.optFbuf(op, "b", b, ch)
	if !ok1 || !ok2 || n*ch*hw == 0 {
		return
	}
	if c.groupNormFast(op, silu, yb, mb, rb, xb, wb, bb, n, ch, hw, groups, eps) {
		return
	}
	c.launch("groupnorm"+suffix(yb, rb), dims{min(n*groups, c.dev.sms*16), 1, 1}, blockSize, 0, yb.ptr, dt(yb), mb.ptr, rb.ptr, dt(rb),
		xb.ptr, dt(xb), ptr(wb), dt(wb), ptr(bb), dt(bb), n, ch, hw, groups, eps)
	if silu {
		c.unary(kernels.SiLU, yb, yb, kernels.UnaryParams{})
	}
}

func (c *Backend) groupShape(op string, n, ch, hw, groups int) bool {
	if n < 0 || ch < 0 || hw < 0 || groups < 1 || ch%groups != 0 {
		c.failf("%s: bad shape n=%d c=%d hw=%d groups=%d (c must be a multiple of groups)", op, n, ch, hw, groups)
		return false
	}
	return true
}

// GroupNormGrad computes dx and, when not nil, dw and db.
func (c *Backend) GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, n, ch, hw, groups int) {
	if !c.enter("GroupNormGrad") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "GroupNormGrad"
	if !c.groupShape(op, n, ch, hw, groups) {
		return
	}
	tot := n * ch * hw
	dxb, dyb, xb := c.fbuf(op, "dx", dx, tot), c.fbuf(op, "dy", dy, tot), c.fbuf(op, "x", x, tot)
	mb, rb := c.statBuf(op, "mean", mean, n*groups), c.statBuf(op, "rstd", rstd, n*groups)
	if dxb == nil || dyb == nil || xb == nil || mb == nil || rb == nil {
		return
	}
	wb, ok1 := c.optFbuf(op, "w", w, ch)
	dwb, ok2 := c.optFbuf(op, "dw", dw, ch)
	dbb, ok3 := c.optFbuf(op, "db", db, ch)
	if !ok1 || !ok2 || !ok3 || tot == 0 {
		return
	}
	c.launch("groupnorm_grad"+suffix(dxb, rb), dims{min(n*groups, c.dev.sms*16), 1, 1}, blockSize, 0, dxb.ptr, dt(dxb), dyb.ptr, dt(dyb),
		xb.ptr, dt(xb), ptr(wb), dt(wb), mb.ptr, rb.ptr, dt(rb), n, ch, hw, groups)
	if dwb != nil || dbb != nil {
		c.launch("groupnorm_wgrad"+suffix(dwb, dbb, rb), dims{min(ch, c.dev.sms*16), 1, 1}, blockSize, 0, ptr(dwb), dt(dwb), ptr(dbb), dt(dbb),
			dyb.ptr, dt(dyb), xb.ptr, dt(xb), mb.ptr, rb.ptr, dt(rb), n, ch, hw, groups)
	}
}

// Rope rotates pairs of x [b, s, h, d] by the angles in cos/sin [b, s, d/2].
func (c *Backend) Rope(dst, x, cos, sin kernels.Buffer, b, s, h, d int, interleaved, inverse bool) {
	if !c.enter("Rope") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "Rope"
	if b < 0 || s < 0 || h < 0 || d < 0 || d%2 != 0 {
		c.failf("%s: bad shape b=%d s=%d h=%d d=%d (d must be even)", op, b, s, h, d)
		return
	}
	n := b * s * h * d
	db, xb := c.fbuf(op, "dst", dst, n), c.fbuf(op, "x", x, n)
	cb, sb := c.fbuf(op, "cos", cos, b*s*d/2), c.fbuf(op, "sin", sin, b*s*d/2)
	if db == nil || xb == nil || cb == nil || sb == nil || n == 0 {
		return
	}
	il, inv := 0, 0
	if interleaved {
		il = 1
	}
	if inverse {
		inv = 1
	}
	if !interleaved && d%16 == 0 && db.dt == kernels.BF16 && xb.dt == kernels.BF16 && cb.dt == sb.dt && (cb.dt == kernels.F32 || cb.dt == kernels.BF16) {
		name := "rope_bf16_vec"
		if cb.dt == kernels.BF16 {
			name += "_bt"
		}
		c.launch(name, c.grid1(n/16, blockSize), blockSize, 0, db.ptr, xb.ptr, cb.ptr, sb.ptr, b, s, h, d, inv)
		return
	}
	c.launch("rope"+suffix(db), c.grid1(n/2, blockSize), blockSize, 0, db.ptr, dt(db), xb.ptr, dt(xb), cb.ptr, dt(cb), sb.ptr, dt(sb), b, s, h, d, il, inv)
}

// Upsample2x repeats each pixel into a 2×2 block.
func (c *Backend) Upsample2x(y, x kernels.Buffer, n, ch, h, w int) {
	if !c.enter("Upsample2x") {
		c.leave()
		return
	}
	defer c.leave()
	if !c.positive("Upsample2x", n, ch, h, w) {
		return
	}
	yb, xb := c.fbuf("Upsample2x", "y", y, n*ch*h*w*4), c.fbuf("Upsample2x", "x", x, n*ch*h*w)
	if yb == nil || xb == nil || xb.n == 0 {
		return
	}
	c.launch("upsample"+suffix(yb), c.grid1(yb.n, blockSize), blockSize, 0, yb.ptr, dt(yb), xb.ptr, dt(xb), n*ch, h, w)
}

// Upsample2xGrad sums each 2×2 block of dy into dx.
func (c *Backend) Upsample2xGrad(dx, dy kernels.Buffer, n, ch, h, w int) {
	if !c.enter("Upsample2xGrad") {
		c.leave()
		return
	}
	defer c.leave()
	if !c.positive("Upsample2xGrad", n, ch, h, w) {
		return
	}
	dxb, dyb := c.fbuf("Upsample2xGrad", "dx", dx, n*ch*h*w), c.fbuf("Upsample2xGrad", "dy", dy, n*ch*h*w*4)
	if dxb == nil || dyb == nil || dxb.n == 0 {
		return
	}
	c.launch("upsample_grad"+suffix(dxb), c.grid1(dxb.n, blockSize), blockSize, 0, dxb.ptr, dt(dxb), dyb.ptr, dt(dyb), n*ch, h, w)
}

// idsBuf checks an I32 id operand.
func (c *Backend) idsBuf(op string, ids kernels.Buffer) *buffer {
	b := c.buf(op, "ids", ids)
	if b == nil {
		return nil
	}
	if b.dt != kernels.I32 {
		c.failf("%s: operand ids is %v, want I32", op, b.dt)
		return nil
	}
	return b
}

// Gather copies rows of table selected by ids into dst; an id out of range
// is detected on the device and reported by Sync.
func (c *Backend) Gather(dst, table, ids kernels.Buffer, dim int) {
	if !c.enter("Gather") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "Gather"
	ib := c.idsBuf(op, ids)
	if ib == nil {
		return
	}
	if dim < 1 {
		c.failf("%s: dim %d", op, dim)
		return
	}
	tb := c.buf(op, "table", table)
	db := c.buf(op, "dst", dst)
	if tb == nil || db == nil {
		return
	}
	if tb.n%dim != 0 || db.n != ib.n*dim {
		c.failf("%s: table has %d elements (not rows of %d) or dst %d ≠ %d ids × %d", op, tb.n, dim, db.n, ib.n, dim)
		return
	}
	if db.n == 0 {
		return
	}
	sfx := suffix(db)
	if db.dt == kernels.I32 || tb.dt == kernels.I32 {
		sfx = "_d"
	}
	c.launch("gather"+sfx, c.grid1(db.n, blockSize), blockSize, 0, db.ptr, dt(db), tb.ptr, dt(tb), ib.ptr, ib.n, dim, tb.n/dim, c.errWord)
}

// ScatterAdd adds src rows into the dst rows named by ids (atomically, so
// repeated ids accumulate).
func (c *Backend) ScatterAdd(dst, src, ids kernels.Buffer, dim int) {
	if !c.enter("ScatterAdd") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "ScatterAdd"
	ib := c.idsBuf(op, ids)
	if ib == nil {
		return
	}
	if dim < 1 {
		c.failf("%s: dim %d", op, dim)
		return
	}
	db, sb := c.fbuf(op, "dst", dst, -1), c.fbuf(op, "src", src, ib.n*dim)
	if db == nil || sb == nil {
		return
	}
	if db.n%dim != 0 {
		c.failf("%s: dst has %d elements, not rows of %d", op, db.n, dim)
		return
	}
	if sb.n == 0 {
		return
	}
	c.launch("scatter_add", c.grid1(sb.n, blockSize), blockSize, 0, db.ptr, dt(db), sb.ptr, dt(sb), ib.ptr, ib.n, dim, db.n/dim, c.errWord)
}

// RandNormal fills dst with N(mean, std) draws, element i from counter
// offset+i, equal to kernels.NormalAt.
func (c *Backend) RandNormal(dst kernels.Buffer, seed, offset uint64, mean, std float64) {
	if !c.enter("RandNormal") {
		c.leave()
		return
	}
	defer c.leave()
	d := c.fbuf("RandNormal", "dst", dst, -1)
	if d == nil || d.n == 0 {
		return
	}
	c.launch("rand_normal", c.grid1(d.n, blockSize), blockSize, 0, d.ptr, dt(d), d.n, seed, offset, mean, std)
}

// RandUniform fills dst with U[lo, hi) draws equal to kernels.UniformAt.
func (c *Backend) RandUniform(dst kernels.Buffer, seed, offset uint64, lo, hi float64) {
	if !c.enter("RandUniform") {
		c.leave()
		return
	}
	defer c.leave()
	d := c.fbuf("RandUniform", "dst", dst, -1)
	if d == nil || d.n == 0 {
		return
	}
	c.launch("rand_uniform", c.grid1(d.n, blockSize), blockSize, 0, d.ptr, dt(d), d.n, seed, offset, lo, hi)
}

func opName(slice string, i int) string {
	return slice + "[" + itoa(i) + "]"
}

func itoa(i int) string {
	var b [20]byte
	p := len(b)
	neg := i < 0
	if neg {
		i = -i
	}
	for {
		p--
		b[p] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			break
		}
	}
	if neg {
		p--
		b[p] = '-'
	}
	return string(b[p:])
}

// hostScalar writes a float32 or float64 scalar into the pinned argument
// area at byte offset off and returns its address, for cuBLAS's host
// pointer-mode alpha and beta (read before the call returns).
func (c *Backend) hostScalar(off int, v float64, f64 bool) uintptr {
	area := unsafe.Slice((*byte)(c.args), argAreaBytes)
	if f64 {
		binary.LittleEndian.PutUint64(area[off:], math.Float64bits(v))
	} else {
		binary.LittleEndian.PutUint32(area[off:], math.Float32bits(float32(v)))
	}
	return uintptr(c.args) + uintptr(off)
}
