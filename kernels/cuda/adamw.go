package cuda

import (
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// adamTensorBytes is the size of one AdamTensor descriptor (reduce.cu).
const adamTensorBytes = 14 * 8

// AdamW updates every listed tensor in one launch: the per-tensor pointers,
// sizes and scalars go to the device as a descriptor array, and blocks walk
// fixed chunks of all tensors together, so a LoRA of hundreds of small
// tensors costs one launch, not hundreds. GradScale and Skip are read on
// the device, so the loss scaler's decision never comes back to the host;
// the step's changing scalars travel in the descriptor, so the launch
// itself repeats from step to step (a graph region replays it).
func (c *Backend) AdamW(a kernels.AdamWArgs) {
	if !c.enter("AdamW") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "AdamW"
	n := len(a.Params)
	if len(a.Grads) != n || len(a.M) != n || len(a.V) != n || len(a.LR) != n || len(a.WeightDecay) != n {
		c.failf("%s: %d params but %d grads, %d first moments, %d second moments, %d learning rates, %d weight decays",
			op, n, len(a.Grads), len(a.M), len(a.V), len(a.LR), len(a.WeightDecay))
		return
	}
	if a.Working != nil && len(a.Working) != n {
		c.failf("%s: %d params but %d working copies", op, n, len(a.Working))
		return
	}
	zero := 0
	if a.ZeroGrads {
		zero = 1
	}
	if a.Step < 1 {
		c.failf("%s: step %d (t counts from 1)", op, a.Step)
		return
	}
	if !(a.Beta1 >= 0 && a.Beta1 < 1 && a.Beta2 >= 0 && a.Beta2 < 1 && a.Eps >= 0) {
		c.failf("%s: betas (%g, %g) must lie in [0, 1) and eps %g must be ≥ 0", op, a.Beta1, a.Beta2, a.Eps)
		return
	}
	var scale, skip *buffer
	if a.GradScale != nil {
		if scale = c.fbuf(op, "GradScale", a.GradScale, -1); scale == nil {
			return
		}
		if scale.n < 1 {
			c.failf("%s: operand GradScale is empty", op)
			return
		}
	}
	if a.Skip != nil {
		if skip = c.buf(op, "Skip", a.Skip); skip == nil {
			return
		}
		if skip.n < 1 {
			c.failf("%s: operand Skip is empty", op)
			return
		}
	}
	bc1 := 1 - math.Pow(a.Beta1, float64(a.Step))
	bc2Sqrt := math.Sqrt(1 - math.Pow(a.Beta2, float64(a.Step)))
	var desc []byte
	chunks := 0
	for i := 0; i < n; i++ {
		p := c.buf(op, opName("Params", i), a.Params[i])
		g := c.fbuf(op, opName("Grads", i), a.Grads[i], -1)
		m := c.buf(op, opName("M", i), a.M[i])
		v := c.buf(op, opName("V", i), a.V[i])
		if p == nil || g == nil || m == nil || v == nil {
			return
		}
		if p.dt != kernels.F32 && p.dt != kernels.F64 {
			c.failf("%s: operand Params[%d] is %v, want F32 or F64", op, i, p.dt)
			return
		}
		if m.dt != p.dt || v.dt != p.dt {
			c.failf("%s: Params[%d] is %v but M[%d] is %v and V[%d] is %v (moments must match the parameter)", op, i, p.dt, i, m.dt, i, v.dt)
			return
		}
		if g.n != p.n || m.n != p.n || v.n != p.n {
			c.failf("%s: Params[%d] has %d elements but Grads %d, M %d, V %d", op, i, p.n, g.n, m.n, v.n)
			return
		}
		lr, wd := a.LR[i], a.WeightDecay[i]
		if !(lr >= 0) || !(wd >= 0) || math.IsInf(lr, 0) || math.IsInf(wd, 0) {
			c.failf("%s: tensor %d has lr %g, weight decay %g (want finite and ≥ 0)", op, i, lr, wd)
			return
		}
		var w *buffer
		if a.Working != nil && a.Working[i] != nil {
			if w = c.fbuf(op, opName("Working", i), a.Working[i], p.n); w == nil {
				return
			}
		}
		if p.n == 0 {
			continue
		}
		desc = append(desc, structBytes(p.ptr, g.ptr, m.ptr, v.ptr, p.n, int(g.dt), int(p.dt), chunks, 1-lr*wd, lr/bc1, bc2Sqrt,
			ptr(w), dt(w), zero)...)
		chunks += (p.n + mtChunk - 1) / mtChunk
	}
	if chunks == 0 {
		return
	}
	dp, dsize, ok := c.tempDevice(desc)
	if !ok {
		return
	}
	defer c.alloc.put(dp, dsize)
	scalars := structBytes(a.Beta1, a.Beta2, a.Eps, ptr(scale), dt(scale), ptr(skip), dt(skip))
	c.launch("adamw", dims{min(chunks, c.dev.sms*8), 1, 1}, blockSize, 0, dp, len(desc)/adamTensorBytes, chunks, scalars)
}
