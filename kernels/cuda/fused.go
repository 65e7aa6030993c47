package cuda

import (
	"github.com/newbie-train/newbie-train/kernels"
)

// The fused ops' one-pass kernels are a fast path (fastFused): with
// NEWBIE_TRAIN_CUDA_OFF naming "fused" they run as their compositions of
// this backend's primitive kernels (kernels.Compose*), the op sequence of
// the engine before they existed.

// composed runs a fused op as its composition (fused kernels off),
// recording an allocation failure as the op's.
func (c *Backend) composed(op string, run func() error) {
	if err := run(); err != nil {
		c.mu.Lock()
		c.failf("%s: %v", op, err)
		c.mu.Unlock()
	}
}

// nsArgs packs the factor and residual of NormScale (NSArgs in
// fused_norm.cu); ok is false when an operand is bad.
func (c *Backend) nsArgs(op string, a kernels.NormScaleArgs) (sb, rb *buffer, ok bool) {
	if err := a.Check(); err != nil {
		c.failf("%s: %v", op, err)
		return nil, nil, false
	}
	if sb, ok = c.optFbuf(op, "S", a.S, -1); !ok {
		return nil, nil, false
	}
	if rb, ok = c.optFbuf(op, "Res", a.Res, a.Rows*a.Cols); !ok {
		return nil, nil, false
	}
	return sb, rb, true
}

// nsStruct is NSArgs; nsVec is NSVec (the bf16 kernels').
func nsStruct(a kernels.NormScaleArgs, sb, rb *buffer) []byte {
	return structBytes(ptr(sb), dt(sb), a.SOff, a.SStride, max(a.Seq, 1), int(a.Mode), ptr(rb), dt(rb))
}

func nsVec(a kernels.NormScaleArgs, sb, rb *buffer) []byte {
	return structBytes(ptr(sb), a.SOff, a.SStride, max(a.Seq, 1), int(a.Mode), ptr(rb))
}

// nsVecOK reports whether the factor and residual suit the bf16 kernels.
func nsVecOK(a kernels.NormScaleArgs, sb, rb *buffer) bool {
	return a.Cols%8 == 0 && (sb == nil || (sb.dt == kernels.BF16 && a.SOff%8 == 0 && a.SStride%8 == 0)) &&
		(rb == nil || rb.dt == kernels.BF16)
}

// NormScale computes res + RMSNorm(x)·w ⊙ f(s) in one pass.
func (c *Backend) NormScale(y, rstd, x, w kernels.Buffer, a kernels.NormScaleArgs) {
	const op = "NormScale"
	if !c.fast(fastFused) {
		c.composed(op, func() error { return kernels.ComposeNormScale(c, y, rstd, x, w, a) })
		return
	}
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	sb, rb, ok := c.nsArgs(op, a)
	if !ok {
		return
	}
	n := a.Rows * a.Cols
	yb, xb, rs := c.fbuf(op, "y", y, n), c.fbuf(op, "x", x, n), c.statBuf(op, "rstd", rstd, a.Rows)
	wb, wok := c.optFbuf(op, "w", w, a.Cols)
	if yb == nil || xb == nil || rs == nil || !wok || n == 0 {
		return
	}
	if yb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rs.dt == kernels.F32 && (wb == nil || wb.dt == kernels.BF16) && nsVecOK(a, sb, rb) {
		name, lanes, per := rowKernel("normscale_bf16_rows", a.Cols)
		c.launch(name, c.grid1(a.Rows, per), blockSize, 0, yb.ptr, rs.ptr, xb.ptr, ptr(wb), nsVec(a, sb, rb), a.Rows, a.Cols, lanes, a.Eps)
		return
	}
	c.launch("normscale"+suffix(yb, rs), dims{min(a.Rows, c.dev.sms*16), 1, 1}, blockSize, 0, yb.ptr, dt(yb), rs.ptr, dt(rs),
		xb.ptr, dt(xb), ptr(wb), dt(wb), nsStruct(a, sb, rb), a.Rows, a.Cols, a.Eps)
}

// NormScaleGrad computes dx (one row pass) and ds (a column pass over each
// sample's rows and a fold that writes every element of ds).
func (c *Backend) NormScaleGrad(dx, ds, dy, x, w, rstd kernels.Buffer, a kernels.NormScaleArgs) {
	const op = "NormScaleGrad"
	if !c.fast(fastFused) {
		c.composed(op, func() error { return kernels.ComposeNormScaleGrad(c, dx, ds, dy, x, w, rstd, a) })
		return
	}
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	sb, rb, ok := c.nsArgs(op, a)
	if !ok {
		return
	}
	n := a.Rows * a.Cols
	dxb, dyb, xb := c.fbuf(op, "dx", dx, n), c.fbuf(op, "dy", dy, n), c.fbuf(op, "x", x, n)
	rs := c.statBuf(op, "rstd", rstd, a.Rows)
	wb, wok := c.optFbuf(op, "w", w, a.Cols)
	dsb, dsok := c.optFbuf(op, "ds", ds, -1)
	if dxb == nil || dyb == nil || xb == nil || rs == nil || !wok || !dsok {
		return
	}
	if dsb != nil && (sb == nil || dsb.n != sb.n || dsb.dt != sb.dt) {
		c.failf("%s: ds must be shaped and typed like the factor S", op)
		return
	}
	if n == 0 {
		return
	}
	if dxb.dt == kernels.BF16 && dyb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rs.dt == kernels.F32 &&
		(wb == nil || wb.dt == kernels.BF16) && nsVecOK(a, sb, rb) {
		name, lanes, per := rowKernel("normscale_grad_bf16_rows", a.Cols)
		c.launch(name, c.grid1(a.Rows, per), blockSize, 0, dxb.ptr, dyb.ptr, xb.ptr, ptr(wb), rs.ptr, nsVec(a, sb, rb), a.Rows, a.Cols, lanes)
	} else {
		c.launch("normscale_grad"+suffix(dxb, rs), dims{min(a.Rows, c.dev.sms*16), 1, 1}, blockSize, 0, dxb.ptr, dt(dxb), dyb.ptr, dt(dyb),
			xb.ptr, dt(xb), ptr(wb), dt(wb), rs.ptr, dt(rs), nsStruct(a, sb, rb), a.Rows, a.Cols)
	}
	if dsb == nil {
		return
	}
	samples := a.Samples()
	sfx, esz := suffix(dsb, dyb, xb, rs), int64(4)
	if sfx == "_d" {
		esz = 8
	}
	// The bf16 kernel reads a 16-byte chunk a thread, 32 chunks a block;
	// the generic one a column a thread, 32 columns a block.
	vec := sfx == "_f" && dyb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rs.dt == kernels.F32 &&
		(wb == nil || wb.dt == kernels.BF16) && a.Cols%8 == 0
	colBlocks, minRows := (a.Cols+31)/32, 256
	if vec {
		colBlocks, minRows = (a.Cols/8+31)/32, 64
	}
	// Split each sample's rows into slices when the columns alone give too
	// few blocks to fill the GPU (slices of at least minRows rows);
	// partials are folded in slice order.
	slices := max(1, min((c.dev.sms*8+colBlocks*samples-1)/(colBlocks*samples), (a.Seq+minRows-1)/minRows))
	per := (a.Seq + slices - 1) / slices
	part, psize, err := c.alloc.get(int64(samples*slices*a.Cols) * esz)
	if err != nil {
		c.failf("%s: partials: %v", op, err)
		return
	}
	defer c.alloc.put(part, psize)
	if vec {
		c.launch("normscale_sgrad_part_bf16", dims{colBlocks, samples * slices, 1}, 256, 0, part, dyb.ptr, xb.ptr, ptr(wb), rs.ptr,
			a.Seq, slices, per, a.Cols)
	} else {
		c.launch("normscale_sgrad_part"+sfx, dims{colBlocks, samples * slices, 1}, 256, 0, part, dyb.ptr, dt(dyb), xb.ptr, dt(xb),
			ptr(wb), dt(wb), rs.ptr, dt(rs), a.Seq, slices, per, a.Cols)
	}
	c.launch("normscale_sgrad_fold"+sfx, c.grid1(dsb.n, blockSize), blockSize, 0, dsb.ptr, dsb.n, part, nsStruct(a, sb, rb),
		samples, slices, a.Cols)
}

// qkvShape is QKVShape in fused_norm.cu.
func qkvShape(a kernels.QKVArgs) []byte {
	il := 0
	if a.Interleaved {
		il = 1
	}
	return structBytes(a.B, a.S, a.Hq, a.Hkv, a.D, a.Eps, il)
}

// qkvLanes is the lane-group width of the bf16 QKV kernels: the smallest
// power of two covering a head's 16-byte chunks; 0 when the head does not
// fit one chunk a lane of a warp.
func qkvLanes(d int) int {
	if d%8 != 0 || d/8 > 32 || d == 0 {
		return 0
	}
	l := 1
	for l < d/8 {
		l *= 2
	}
	return l
}

// qkvPairs checks that the three heads' tensors (q, k, v or their
// gradients), the two rstd, the two tables and the two weights each share
// a dtype, the weights both given or both nil, as the kernels read them.
func (c *Backend) qkvPairs(op string, q, k, v, rq, rk, cs, sn, wq, wk *buffer) bool {
	if q.dt != k.dt || q.dt != v.dt || rq.dt != rk.dt || cs.dt != sn.dt || (wq == nil) != (wk == nil) || (wq != nil && wq.dt != wk.dt) {
		c.failf("%s: the q, k and v tensors, the two rstd, the two tables and the two weights must each share a dtype (weights both given or both nil)", op)
		return false
	}
	return true
}

// QKVNormRope splits qkv into q, k, v with the q/k norms and the rotation
// applied, in one pass.
func (c *Backend) QKVNormRope(q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin kernels.Buffer, a kernels.QKVArgs) {
	const op = "QKVNormRope"
	if !c.fast(fastFused) {
		c.composed(op, func() error { return kernels.ComposeQKVNormRope(c, q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin, a) })
		return
	}
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	if err := a.Check(); err != nil {
		c.failf("%s: %v", op, err)
		return
	}
	rows := a.B * a.S
	qb, kb, vb := c.fbuf(op, "q", q, rows*a.Hq*a.D), c.fbuf(op, "k", k, rows*a.Hkv*a.D), c.fbuf(op, "v", v, rows*a.Hkv*a.D)
	rq, rk := c.statBuf(op, "rstdQ", rstdQ, rows*a.Hq), c.statBuf(op, "rstdK", rstdK, rows*a.Hkv)
	xb := c.fbuf(op, "qkv", qkv, rows*a.Width())
	cb, sb := c.fbuf(op, "cos", cos, rows*a.D/2), c.fbuf(op, "sin", sin, rows*a.D/2)
	wqb, ok1 := c.optFbuf(op, "wq", wq, a.D)
	wkb, ok2 := c.optFbuf(op, "wk", wk, a.D)
	if qb == nil || kb == nil || vb == nil || rq == nil || rk == nil || xb == nil || cb == nil || sb == nil || !ok1 || !ok2 {
		return
	}
	if !c.qkvPairs(op, qb, kb, vb, rq, rk, cb, sb, wqb, wkb) {
		return
	}
	units := rows * (a.Hq + 2*a.Hkv)
	if units == 0 {
		return
	}
	if l := qkvLanes(a.D); l > 0 && a.Interleaved && qb.dt == kernels.BF16 && xb.dt == kernels.BF16 && rq.dt == kernels.F32 &&
		cb.dt == kernels.F32 && (wqb == nil || wqb.dt == kernels.BF16) {
		c.launch("qkv_norm_rope_bf16", c.grid1(units, 4*blockSize/l), blockSize, 0, qb.ptr, kb.ptr, vb.ptr, rq.ptr, rk.ptr, xb.ptr,
			ptr(wqb), ptr(wkb), cb.ptr, sb.ptr, qkvShape(a), l)
		return
	}
	c.launch("qkv_norm_rope"+suffix(qb, rq), c.grid1(units, blockSize/32), blockSize, 0, qb.ptr, kb.ptr, vb.ptr, dt(qb), rq.ptr, rk.ptr, dt(rq),
		xb.ptr, dt(xb), ptr(wqb), ptr(wkb), dt(wqb), cb.ptr, sb.ptr, dt(cb), qkvShape(a))
}

// QKVNormRopeGrad computes dqkv from the gradients of q, k and v in one
// pass.
func (c *Backend) QKVNormRopeGrad(dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin kernels.Buffer, a kernels.QKVArgs) {
	const op = "QKVNormRopeGrad"
	if !c.fast(fastFused) {
		c.composed(op, func() error {
			return kernels.ComposeQKVNormRopeGrad(c, dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin, a)
		})
		return
	}
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	if err := a.Check(); err != nil {
		c.failf("%s: %v", op, err)
		return
	}
	rows := a.B * a.S
	db, xb := c.fbuf(op, "dqkv", dqkv, rows*a.Width()), c.fbuf(op, "qkv", qkv, rows*a.Width())
	gq, gk, gv := c.fbuf(op, "dq", dq, rows*a.Hq*a.D), c.fbuf(op, "dk", dk, rows*a.Hkv*a.D), c.fbuf(op, "dv", dv, rows*a.Hkv*a.D)
	rq, rk := c.statBuf(op, "rstdQ", rstdQ, rows*a.Hq), c.statBuf(op, "rstdK", rstdK, rows*a.Hkv)
	cb, sb := c.fbuf(op, "cos", cos, rows*a.D/2), c.fbuf(op, "sin", sin, rows*a.D/2)
	wqb, ok1 := c.optFbuf(op, "wq", wq, a.D)
	wkb, ok2 := c.optFbuf(op, "wk", wk, a.D)
	if db == nil || xb == nil || gq == nil || gk == nil || gv == nil || rq == nil || rk == nil || cb == nil || sb == nil || !ok1 || !ok2 {
		return
	}
	if !c.qkvPairs(op, gq, gk, gv, rq, rk, cb, sb, wqb, wkb) {
		return
	}
	units := rows * (a.Hq + 2*a.Hkv)
	if units == 0 {
		return
	}
	if l := qkvLanes(a.D); l > 0 && a.Interleaved && db.dt == kernels.BF16 && gq.dt == kernels.BF16 && xb.dt == kernels.BF16 &&
		rq.dt == kernels.F32 && cb.dt == kernels.F32 && (wqb == nil || wqb.dt == kernels.BF16) {
		c.launch("qkv_norm_rope_grad_bf16", c.grid1(units, 4*blockSize/l), blockSize, 0, db.ptr, gq.ptr, gk.ptr, gv.ptr, xb.ptr,
			ptr(wqb), ptr(wkb), rq.ptr, rk.ptr, cb.ptr, sb.ptr, qkvShape(a), l)
		return
	}
	c.launch("qkv_norm_rope_grad"+suffix(db, gq, rq), c.grid1(units, blockSize/32), blockSize, 0, db.ptr, dt(db), gq.ptr, gk.ptr, gv.ptr, dt(gq),
		xb.ptr, dt(xb), ptr(wqb), ptr(wkb), dt(wqb), rq.ptr, rk.ptr, dt(rq), cb.ptr, sb.ptr, dt(cb), qkvShape(a))
}

// swigluOperands checks SwiGLU's operands: live float buffers of one dtype
// and length n (nil ones skipped; the first must be given).
func (c *Backend) swigluOperands(op string, n int, names []string, bufs ...kernels.Buffer) ([]*buffer, bool) {
	out := make([]*buffer, len(bufs))
	var dt kernels.DType
	for i, b := range bufs {
		cb, ok := c.optFbuf(op, names[i], b, n)
		if !ok {
			return nil, false
		}
		if cb == nil {
			continue
		}
		if dt != 0 && cb.dt != dt {
			c.failf("%s: operand %s is %v, the others %v (SwiGLU takes one dtype)", op, names[i], cb.dt, dt)
			return nil, false
		}
		dt, out[i] = cb.dt, cb
	}
	return out, true
}

// SwiGLU computes y = SiLU(a) ⊙ b in one pass.
func (c *Backend) SwiGLU(y, a, b kernels.Buffer) {
	const op = "SwiGLU"
	if !c.fast(fastFused) {
		c.composed(op, func() error { return kernels.ComposeSwiGLU(c, y, a, b) })
		return
	}
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	if a == nil || b == nil || y == nil {
		c.failf("%s: y, a and b are required", op)
		return
	}
	bs, ok := c.swigluOperands(op, a.Len(), []string{"y", "a", "b"}, y, a, b)
	if !ok || bs[0].n == 0 {
		return
	}
	yb, ab, vb := bs[0], bs[1], bs[2]
	if yb.dt == kernels.BF16 && yb.n%8 == 0 {
		c.launch("swiglu_bf16_vec", c.grid1(yb.n/8, blockSize), blockSize, 0, yb.ptr, ab.ptr, vb.ptr, yb.n/8)
		return
	}
	c.launch("swiglu"+suffix(yb), c.grid1(yb.n, blockSize), blockSize, 0, yb.ptr, ab.ptr, vb.ptr, dt(yb), yb.n)
}

// SwiGLUGrad computes da and db of SwiGLU in one pass.
func (c *Backend) SwiGLUGrad(da, db, dy, a, b kernels.Buffer) {
	const op = "SwiGLUGrad"
	if !c.fast(fastFused) {
		c.composed(op, func() error { return kernels.ComposeSwiGLUGrad(c, da, db, dy, a, b) })
		return
	}
	if !c.enter(op) {
		c.leave()
		return
	}
	defer c.leave()
	if dy == nil || a == nil || b == nil {
		c.failf("%s: dy, a and b are required", op)
		return
	}
	bs, ok := c.swigluOperands(op, a.Len(), []string{"dy", "a", "b", "da", "db"}, dy, a, b, da, db)
	if !ok || bs[0].n == 0 || (bs[3] == nil && bs[4] == nil) {
		return
	}
	gb, ab, vb, dab, dbb := bs[0], bs[1], bs[2], bs[3], bs[4]
	if gb.dt == kernels.BF16 && gb.n%8 == 0 {
		c.launch("swiglu_grad_bf16_vec", c.grid1(gb.n/8, blockSize), blockSize, 0, ptr(dab), ptr(dbb), gb.ptr, ab.ptr, vb.ptr, gb.n/8)
		return
	}
	c.launch("swiglu_grad"+suffix(gb), c.grid1(gb.n, blockSize), blockSize, 0, ptr(dab), ptr(dbb), gb.ptr, ab.ptr, vb.ptr, dt(gb), gb.n)
}
