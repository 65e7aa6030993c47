package cuda

import "github.com/newbie-train/newbie-train/kernels"

// attnFwd256 runs the tensor-core forward at head size 256 (Gemma 3's
// heads; the encoders are frozen, so there is no backward kernel and
// AttentionGrad stays on the portable kernels) for the operands
// attnFastFwd has checked (bf16 or fp16 Q/K/V/O, kernel suffix sfx, an F32
// LSE, a positive scale), and reports false where the portable forward
// must run: a GPU before sm_80, one whose blocks cannot have the kernel's
// shared memory, or NEWBIE_TRAIN_CUDA_OFF naming "attn256". It is
// attn_fwd_tc_body with one 16-row m-tile a warp (64 query rows a block)
// and two stages of 64-key K and V tiles, the mma.sync kernel on every
// GPU, Hopper included.
func (c *Backend) attnFwd256(a *kernels.AttentionArgs, q, k, v, o, lse *buffer, shape []byte, sfx string) bool {
	const rows = 64
	smem := (rows + 4*64) * (256 + 8) * 2
	if !c.fast(fastAttn256) || !c.tensorCoreArch() || smem > c.dev.maxSmem {
		return false
	}
	c.launch("attn_fwd_tc256"+sfx, dims{(a.Sq + rows - 1) / rows, a.Hq, a.B}, 128, smem, shape, q.ptr, k.ptr, v.ptr, o.ptr, lse.ptr)
	return true
}
