package autograd

import "github.com/newbie-train/newbie-train/kernels"

// precision is how an op's float inputs are cast before it runs.
type precision uint8

const (
	// lowPrecision ops (matrix products, attention, convolution) run on
	// autocast-dtype operands with float32 accumulation.
	lowPrecision precision = iota + 1
	// fullPrecision ops (norms, softmax, reductions, exp/log/pow, losses)
	// run in float32 under autocast.
	fullPrecision
	// promoted ops (elementwise arithmetic) run in the widest input dtype.
	promoted
)

// castKey identifies a cached weight cast: the same leaf cast while recording
// and while not recording are different tensors (only the first carries a
// tape node).
type castKey struct {
	t         *Tensor
	recording bool
}

// prepare applies the autocast policy p to an op's inputs and returns the
// tensors the op must read, recording the casts it inserts so gradients
// flow back in each input's own dtype. Nil inputs stay nil; integer tensors
// are never cast. Without autocast, low and full precision ops promote their
// inputs to a common dtype like elementwise ops do.
func (e *Engine) prepare(p precision, ts ...*Tensor) []*Tensor {
	out := make([]*Tensor, len(ts))
	copy(out, ts)
	if e.err != nil {
		return out
	}
	target := kernels.DType(0)
	for _, t := range ts {
		if t == nil || !t.dtype.IsFloat() {
			continue
		}
		if target == 0 {
			target = t.dtype
		} else {
			target = promote(target, t.dtype)
		}
	}
	for i, t := range ts {
		if t == nil || !t.dtype.IsFloat() {
			continue
		}
		if t.scale != nil {
			// A cast would drop the scales: fp8 weights are read only by
			// the linear ops, which dequantise them.
			e.failf("autocast", "%v is an fp8 weight, which only Linear, LoRALinear and LowRankLinear read", t)
			return out
		}
		want := target
		if e.autocast != 0 && t.dtype != kernels.F64 {
			switch p {
			case lowPrecision:
				want = e.autocast
			case fullPrecision:
				want = kernels.F32
			}
		}
		if t.dtype == want {
			continue
		}
		out[i] = e.cachedCast(t, want)
	}
	return out
}

// cachedCast casts t to d once and reuses the result. Casts of leaves
// (weights) under autocast are made once per step and reused by every op
// that reads the weight. Casts of activations are reused while recording,
// so an activation read by several matrix products (the SwiGLU input feeds
// w1, w3 and their adapters) is stored in low precision once, not once per
// reader; the tape holds such a cast anyway, and the cache lets go of it when
// the tape is consumed. Inside checkpointed functions nothing is cached:
// their intermediates must not outlive them.
func (e *Engine) cachedCast(t *Tensor, d kernels.DType) *Tensor {
	recording := e.gradEnabled && t.requiresGrad
	if e.autocast == 0 || e.ckptDepth > 0 || (!t.leaf && !recording) {
		return Cast(t, d)
	}
	key := castKey{t, recording}
	if c, ok := e.castCache[key]; ok {
		if c.dtype == d && !c.released {
			return c
		}
		c.Release() // a cast to another dtype: replaced, not leaked
	}
	c := Cast(t, d)
	e.persist(c)
	c.cached = true
	e.castCache[key] = c
	return c
}

// releaseCasts drops the handles of the casts prepare made for one op
// (prepared[i] != orig[i]), except the per-step cached weight casts: the
// tape holds its own references to what a backward needs, so a cast lives
// no longer than its use — in a forward without gradients, not until the
// end of the step.
func releaseCasts(orig, prepared []*Tensor) {
	for i, t := range prepared {
		if t != nil && t != orig[i] && !t.cached {
			t.Release()
		}
	}
}

// dropRecordedCasts forgets cached casts that carry a tape node once the tape
// has been consumed: reusing them would silently cut the gradient path.
func (e *Engine) dropRecordedCasts() {
	for k, c := range e.castCache {
		if k.recording {
			c.Release()
			delete(e.castCache, k)
		}
	}
}

// trace reports an op's dtypes to the Trace hook.
func (e *Engine) trace(op string, out *Tensor, in ...*Tensor) {
	if e.Trace == nil {
		return
	}
	ds := make([]kernels.DType, 0, len(in))
	for _, t := range in {
		if t != nil {
			ds = append(ds, t.dtype)
		}
	}
	e.Trace(op, ds, out.dtype)
}

// Cast returns x converted to dtype d (x itself when it already is d). The
// gradient is cast back to x's dtype.
//
// A cast to a narrower dtype sums the gradients of its readers in x's
// dtype: autocast shares one cast among the products that read the same
// tensor (a weight, or an activation several products read), and summing
// their low-precision gradients in low precision would round where
// PyTorch's per-use casts do not — and would make the sum depend on whether
// the readers ran under a checkpoint, where casts are not shared.
func Cast(x *Tensor, d kernels.DType) *Tensor {
	e := x.e
	if x.dtype == d {
		return x
	}
	if !e.live("Cast", x) {
		return e.failed(d, x.shape)
	}
	var out *Tensor
	if w := x.working; w != nil && w.dtype == d && !w.released {
		out = e.alias(w, x.shape) // the owner keeps it equal to the cast (SetWorking)
	} else {
		out = castTo(x, d)
	}
	e.trace("Cast", out, x)
	if e.recording(x) {
		src, leaf := x.dtype, x.leaf
		if promote(src, d) == src {
			out.gradDType = src
		}
		e.record("Cast", out, []*Tensor{x}, nil, func(g *Tensor) []*Tensor {
			if leaf || g.dtype == src {
				// A leaf's gradient is added into its float32 Grad, which
				// reads any dtype exactly, and a gradient already summed in
				// x's dtype passes as it is: a cast would be a copy for nothing.
				return []*Tensor{e.alias(g, g.shape)}
			}
			return []*Tensor{castTo(g, src)}
		})
	}
	return out
}
