package cuda

import (
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// attnWarps is the query (or key) rows per block of the portable kernels.
const attnWarps = 4

// attnCheck validates shapes, masks and operands shared by the forward and
// the backward, and returns Q, K, V and the packed AttnShape; the caller
// must give back keyLens' device block (the last result) when it is set.
func (c *Backend) attnCheck(op string, a *kernels.AttentionArgs) (q, k, v *buffer, shape []byte, klp uint64, kls int64, ok bool) {
	if a.B < 1 || a.Sq < 1 || a.Sk < 1 || a.Hq < 1 || a.Hkv < 1 || a.D < 1 {
		c.failf("%s: bad shape B=%d Sq=%d Sk=%d Hq=%d Hkv=%d D=%d", op, a.B, a.Sq, a.Sk, a.Hq, a.Hkv, a.D)
		return
	}
	if a.Hq%a.Hkv != 0 {
		c.failf("%s: %d query heads are not a multiple of %d kv heads", op, a.Hq, a.Hkv)
		return
	}
	if a.D > 256 {
		c.failf("%s: head size %d exceeds 256", op, a.D)
		return
	}
	if a.Window < 0 || (a.Window > 0 && !a.Causal) {
		c.failf("%s: Window %d needs Causal (a sliding window is only defined on causal attention)", op, a.Window)
		return
	}
	if math.IsNaN(a.Scale) || math.IsInf(a.Scale, 0) {
		c.failf("%s: scale %v is not finite", op, a.Scale)
		return
	}
	q = c.fbuf(op, "Q", a.Q, a.B*a.Sq*a.Hq*a.D)
	k = c.fbuf(op, "K", a.K, a.B*a.Sk*a.Hkv*a.D)
	v = c.fbuf(op, "V", a.V, a.B*a.Sk*a.Hkv*a.D)
	if q == nil || k == nil || v == nil {
		return
	}
	if k.dt != q.dt || v.dt != q.dt {
		c.failf("%s: Q, K and V must share one dtype, got %v, %v, %v", op, q.dt, k.dt, v.dt)
		return
	}
	if a.KeyLens != nil {
		if len(a.KeyLens) != a.B {
			c.failf("%s: KeyLens has %d entries for batch %d", op, len(a.KeyLens), a.B)
			return
		}
		for b, n := range a.KeyLens {
			if n < 0 || int(n) > a.Sk {
				c.failf("%s: KeyLens[%d] = %d is outside [0, %d]", op, b, n, a.Sk)
				return
			}
		}
		var good bool
		if klp, kls, good = c.tempDevice(kernels.EncodeI32(a.KeyLens)); !good {
			return
		}
	}
	causal := 0
	if a.Causal {
		causal = 1
	}
	shape = structBytes(a.B, a.Sq, a.Sk, a.Hq, a.Hkv, a.D, a.Scale, causal, a.Window, klp)
	return q, k, v, shape, klp, kls, true
}

// Attention computes O = softmax(scale·Q·Kᵀ + mask)·V and the row LSE.
func (c *Backend) Attention(a kernels.AttentionArgs, o, lse kernels.Buffer) {
	if !c.enter("Attention") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "Attention"
	q, k, v, shape, klp, kls, ok := c.attnCheck(op, &a)
	if !ok {
		return
	}
	if klp != 0 {
		defer c.alloc.put(klp, kls)
	}
	ob := c.fbuf(op, "O", o, a.B*a.Sq*a.Hq*a.D)
	lb := c.statBuf(op, "LSE", lse, a.B*a.Hq*a.Sq)
	if ob == nil || lb == nil {
		return
	}
	if c.attnFastFwd(&a, q, k, v, ob, lb, shape) || c.attnSIMTFwd(&a, q, k, v, ob, lb, shape) {
		return
	}
	sfx, esz := suffix(q, ob), 4
	if sfx == "_d" {
		esz = 8
	}
	g := dims{(a.Sq + attnWarps - 1) / attnWarps, a.Hq, a.B}
	c.launch("attn_fwd"+sfx, g, 32*attnWarps, attnWarps*a.D*esz, shape, q.ptr, k.ptr, v.ptr, dt(q), ob.ptr, dt(ob), lb.ptr, dt(lb))
}

// AttentionGrad computes dQ, dK and dV from dO and the forward's O and LSE.
func (c *Backend) AttentionGrad(a kernels.AttentionArgs, o, lse, dO, dQ, dK, dV kernels.Buffer) {
	if !c.enter("AttentionGrad") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "AttentionGrad"
	q, k, v, shape, klp, kls, ok := c.attnCheck(op, &a)
	if !ok {
		return
	}
	if klp != 0 {
		defer c.alloc.put(klp, kls)
	}
	nq, nk := a.B*a.Sq*a.Hq*a.D, a.B*a.Sk*a.Hkv*a.D
	ob, gb := c.fbuf(op, "O", o, nq), c.fbuf(op, "dO", dO, nq)
	lb := c.statBuf(op, "LSE", lse, a.B*a.Hq*a.Sq)
	dqb, dkb, dvb := c.fbuf(op, "dQ", dQ, nq), c.fbuf(op, "dK", dK, nk), c.fbuf(op, "dV", dV, nk)
	if ob == nil || gb == nil || lb == nil || dqb == nil || dkb == nil || dvb == nil {
		return
	}
	sfx, esz := suffix(q, dqb, dkb, dvb), 4
	if sfx == "_d" {
		esz = 8
	}
	rows := a.B * a.Hq * a.Sq
	sp, ss, err := c.alloc.get(int64(rows * esz))
	if err != nil {
		c.failf("%s: %v", op, err)
		return
	}
	defer c.alloc.put(sp, ss)
	if ob.dt == kernels.BF16 && gb.dt == kernels.BF16 && sfx == "_f" && a.D%8 == 0 {
		c.launch("attn_dot_bf16", c.grid1(rows*16, blockSize), blockSize, 0, shape, ob.ptr, gb.ptr, sp)
	} else {
		c.launch("attn_dot"+sfx, c.grid1(rows*32, 32*attnWarps), 32*attnWarps, 0, shape, ob.ptr, dt(ob), gb.ptr, dt(gb), sp)
	}
	if c.attnFastBwd(&a, q, k, v, lb, gb, sp, dqb, dkb, dvb, shape, sfx) {
		return
	}
	c.launch("attn_dq"+sfx, dims{(a.Sq + attnWarps - 1) / attnWarps, a.Hq, a.B}, 32*attnWarps, attnWarps*2*a.D*esz,
		shape, q.ptr, k.ptr, v.ptr, dt(q), lb.ptr, dt(lb), gb.ptr, dt(gb), sp, dqb.ptr, dt(dqb))
	c.launch("attn_dkv"+sfx, dims{(a.Sk + attnWarps - 1) / attnWarps, a.Hkv, a.B}, 32*attnWarps, attnWarps*2*a.D*esz,
		shape, q.ptr, k.ptr, v.ptr, dt(q), lb.ptr, dt(lb), gb.ptr, dt(gb), sp, dkb.ptr, dt(dkb), dvb.ptr, dt(dvb))
}

// hopperAttention reports whether the warpgroup-MMA (wgmma) attention
// kernels run: on sm_90 devices, unless a test asks for the mma.sync kernels
// that every other GPU runs, so that one H200 checks both.
func (c *Backend) hopperAttention() bool { return c.dev.arch == 90 && !attentionWithoutWGMMA }

// attentionWithoutWGMMA is set only by tests (see hopperAttention).
var attentionWithoutWGMMA bool

// tensorCoreAttention reports whether the tensor-core kernels
// (attention_tc.cu) serve head size d here: they have instantiations for
// 64, 96 and 128, and need sm_80 or later (bf16 and fp16 mma.sync,
// cp.async); older GPUs take the SIMT forward (attnSIMTFwd) and the
// portable kernels.
func (c *Backend) tensorCoreAttention(d int) bool {
	return c.tensorCoreArch() && (d == 64 || d == 96 || d == 128)
}

// tensorCoreArch reports whether the attention tensor-core kernels, those
// at head size 256 included, may run on this GPU: sm_80 or later, unless a
// test asks for what a GPU before sm_80 runs, so that one H200 checks the
// SIMT forward's fp16 and bf16 kernels and the portable backward too.
func (c *Backend) tensorCoreArch() bool { return c.dev.arch >= 80 && !attentionWithoutTensorCores }

// attentionWithoutTensorCores is set only by tests (see tensorCoreArch).
var attentionWithoutTensorCores bool

// attnFastFwd runs the tensor-core forward (Q, K, V and O all bf16 or all
// fp16, an F32 LSE, head size 64, 96, 128 or 256) and reports false where
// the portable kernel must run.
func (c *Backend) attnFastFwd(a *kernels.AttentionArgs, q, k, v, o, lse *buffer, shape []byte) bool {
	// The kernels fold the scale into their exp2 after taking row maxima
	// of the raw scores, which needs a positive scale. K and V have Q's
	// dtype (attnCheck); the fp16 kernels carry the suffix _f16.
	if o.dt != q.dt || lse.dt != kernels.F32 || !(a.Scale > 0) {
		return false
	}
	var sfx string
	switch q.dt {
	case kernels.BF16:
	case kernels.F16:
		sfx = "_f16"
	default:
		return false
	}
	if a.D == 256 {
		return c.attnFwd256(a, q, k, v, o, lse, shape, sfx)
	}
	if !c.tensorCoreAttention(a.D) {
		return false
	}
	if c.hopperAttention() {
		// Hopper: warpgroup MMA, 128 query rows a block, keys in tiles of
		// 64 (two blocks an SM; 128-key tiles measured 0.64 ms against
		// 0.50 at the model's shape); shared memory holds Q and two stages
		// of K and V, plus the slack that aligns the swizzled tiles to
		// 1024 bytes.
		smem := (128+4*64)*a.D*2 + 1024
		c.launch("attn_fwd_wg"+itoa(a.D)+sfx, dims{(a.Sq + 127) / 128, a.Hq, a.B}, 256, smem, shape, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr)
		return true
	}
	// Each warp owns mt m-tiles of 16 rows (attn_fwd_tc64/96 use two,
	// attn_fwd_tc128 one: registers run out past that).
	mt := 2
	if a.D > 96 {
		mt = 1
	}
	smem := (64*mt + 4*64) * (a.D + 8) * 2
	c.launch("attn_fwd_tc"+itoa(a.D)+sfx, dims{(a.Sq + 64*mt - 1) / (64 * mt), a.Hq, a.B}, 128, smem, shape, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr)
	return true
}

// attnSIMTFwd runs the tiled forward on the CUDA cores (attention_simt.cu:
// 64 query rows a block of 256 threads, keys in tiles of 64 from shared
// memory, fp32 arithmetic) when Q, K, V and O are all F32, all F16 or all
// BF16, the LSE F32 and the head size 64, 96 or 128, on any architecture
// whose blocks may take its 800·D bytes of shared memory; it reports false
// where the portable kernel must run. Attention calls it after
// attnFastFwd, so 16-bit operands come here only where the tensor cores do
// not serve them (before sm_80). The scale is folded into Q before the row
// maxima are taken, so any finite scale (attnCheck) is served, negative
// included.
func (c *Backend) attnSIMTFwd(a *kernels.AttentionArgs, q, k, v, o, lse *buffer, shape []byte) bool {
	if !c.fast(fastAttnSIMT) || o.dt != q.dt || lse.dt != kernels.F32 {
		return false
	}
	// K and V have Q's dtype (attnCheck).
	var sfx string
	switch q.dt {
	case kernels.F32:
	case kernels.BF16:
		sfx = "_bf16"
	case kernels.F16:
		sfx = "_f16"
	default:
		return false
	}
	if a.D != 64 && a.D != 96 && a.D != 128 {
		return false
	}
	// Rows are read in chunks of 4 elements (16-byte loads of fp32, 8-byte
	// loads of 16-bit values) and written in pairs; the allocator's blocks
	// are aligned far beyond that, but a foreign pointer must not fault.
	if (q.ptr|k.ptr|v.ptr|o.ptr)%16 != 0 || a.Sk > math.MaxInt32 {
		return false
	}
	// Shared memory holds fp32 tiles whatever the operands' dtype.
	smem := (2*68 + 64) * a.D * 4
	if smem > c.dev.maxSmem {
		return false
	}
	c.launch("attn_fwd_simt"+itoa(a.D)+sfx, dims{(a.Sq + 63) / 64, a.Hq, a.B}, 256, smem, shape, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr)
	return true
}

// attnFastBwd runs the tensor-core backward when every operand is bf16
// (LSE and the row statistic F32) and the head size has a kernel. dQ
// accumulates in an fp32 scratch across key blocks and is rounded once.
// The backward has no fp16 instantiation: fp16 gradients take the portable
// kernels (attn_dq_f, attn_dkv_f) even where the forward ran here.
func (c *Backend) attnFastBwd(a *kernels.AttentionArgs, q, k, v, lse, dO *buffer, stat uint64, dq, dk, dv *buffer, shape []byte, sfx string) bool {
	if q.dt != kernels.BF16 || dO.dt != kernels.BF16 || dq.dt != kernels.BF16 || dk.dt != kernels.BF16 || dv.dt != kernels.BF16 ||
		lse.dt != kernels.F32 || sfx != "_f" || !c.tensorCoreAttention(a.D) {
		return false
	}
	nq := a.B * a.Sq * a.Hq * a.D
	hopper := c.hopperAttention()
	// The Hopper kernel's scratch holds whole 64-query tiles in its
	// accumulator's fragment order.
	nacc := nq
	if hopper {
		nacc = a.B * a.Hq * ((a.Sq + 63) / 64) * 64 * a.D
	}
	acc, size, err := c.alloc.get(int64(nacc) * 4)
	if err != nil {
		c.failf("AttentionGrad: dQ scratch: %v", err)
		return true
	}
	defer c.alloc.put(acc, size)
	c.launch("fill_f", c.grid1(nacc, blockSize), blockSize, 0, acc, int(kernels.F32), nacc, 0.0)
	// Query heads run in parallel (more blocks than kv heads alone give);
	// with grouped heads each writes fp32 dK/dV partials that one pass sums.
	grp := a.Hq / a.Hkv
	var pk, pv uint64
	if grp > 1 {
		np := int64(a.B*a.Sk*a.Hq*a.D) * 4
		var sk, sv int64
		if pk, sk, err = c.alloc.get(np); err != nil {
			c.failf("AttentionGrad: dK scratch: %v", err)
			return true
		}
		defer c.alloc.put(pk, sk)
		if pv, sv, err = c.alloc.get(np); err != nil {
			c.failf("AttentionGrad: dV scratch: %v", err)
			return true
		}
		defer c.alloc.put(pv, sv)
	}
	// 8 warps, 128 keys a block (attn_bwd_tc_body's and attn_bwd_wg_body's
	// BK): K and V tiles, two stages of 64-query Q and dO tiles, the dSᵀ
	// tile, LSE and row statistics. The Hopper kernel's tiles are unpadded
	// (swizzled) and aligned to 1024 bytes.
	const bk = 128
	name, smem := "attn_bwd_tc"+itoa(a.D), (2*bk+4*64)*(a.D+8)*2+bk*72*2+4*64*4
	if hopper {
		// stages of tps query tiles (attn_bwd_wg_body's TPS), plus two
		// fp32 dQ staging tiles (one per warpgroup)
		tps := 2
		if a.D >= 128 {
			tps = 1
		}
		name, smem = "attn_bwd_wg"+itoa(a.D), (2*bk+4*64*tps)*a.D*2+bk*64*2+2*64*a.D*4+4*64*tps*4+1024
	}
	c.launch(name, dims{(a.Sk + bk - 1) / bk, a.Hq, a.B}, 256, smem, shape, q.ptr, k.ptr, v.ptr, lse.ptr, dO.ptr, stat, acc, dk.ptr, dv.ptr, pk, pv)
	if grp > 1 {
		rows := a.B * a.Sk * a.Hkv
		c.launch("attn_dkv_reduce", c.grid1(rows*a.D, blockSize), blockSize, 0, dk.ptr, dv.ptr, pk, pv, rows, a.Hkv, grp, a.D)
	}
	if hopper {
		c.launch("attn_dq_round_frag", c.grid1(nacc/4, blockSize), blockSize, 0, dq.ptr, acc, a.B, a.Sq, a.Hq, a.D)
		return true
	}
	c.launch("attn_dq_round", c.grid1(nq/8, blockSize), blockSize, 0, dq.ptr, acc, nq/8)
	return true
}
