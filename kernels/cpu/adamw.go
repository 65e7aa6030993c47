package cpu

import (
	"math"
	"strconv"

	"github.com/newbie-train/newbie-train/kernels"
)

// adamwGrain is the fewest elements one goroutine updates: an element costs a
// few tens of flops, so smaller chunks would spend more on scheduling.
const adamwGrain = 1 << 14

// adamwScalars are the per-tensor factors of one update, computed once in
// float64 so that only the elementwise work runs at the parameters' precision
// (1−β2ᵗ in float32 would lose four digits at t=1).
type adamwScalars struct {
	// lrwd is lr·wd: the decay is applied as p − lrwd·p rather than as
	// p·(1 − lr·wd), because 1 − lr·wd rounded to float32 is off by up to
	// 3e−8 relative in the same direction every step, a bias that grows to
	// 1e−6 over 50 steps; lr·wd rounds just as finely but its error scales
	// with the decay, not with the weight.
	lrwd     float64
	stepSize float64 // lr / (1 − β1ᵗ)
	bc2Sqrt  float64 // √(1 − β2ᵗ)
}

// AdamW applies one fused AdamW step to every tensor of a (see
// kernels.AdamWArgs): float32 arithmetic for F32 parameters, float64 for F64.
// The work is split over all elements of all tensors together, so a model of
// many small tensors (LoRA) keeps every core busy.
func (c *Backend) AdamW(a kernels.AdamWArgs) {
	n := len(a.Params)
	if len(a.Grads) != n || len(a.M) != n || len(a.V) != n || len(a.LR) != n || len(a.WeightDecay) != n {
		c.fail("AdamW: %d params but %d grads, %d first moments, %d second moments, %d learning rates, %d weight decays",
			n, len(a.Grads), len(a.M), len(a.V), len(a.LR), len(a.WeightDecay))
		return
	}
	if a.Working != nil && len(a.Working) != n {
		c.fail("AdamW: %d params but %d working copies", n, len(a.Working))
		return
	}
	if a.Step < 1 {
		c.fail("AdamW: step %d (t counts from 1)", a.Step)
		return
	}
	if !(a.Beta1 >= 0 && a.Beta1 < 1 && a.Beta2 >= 0 && a.Beta2 < 1 && a.Eps >= 0) {
		c.fail("AdamW: betas (%g, %g) must lie in [0, 1) and eps %g must be ≥ 0", a.Beta1, a.Beta2, a.Eps)
		return
	}
	scale := 1.0
	if a.GradScale != nil {
		gs := c.buf("AdamW", "GradScale", a.GradScale)
		if gs == nil {
			return
		}
		if gs.n < 1 || !gs.dt.IsFloat() {
			c.fail("AdamW: operand GradScale is %v[%d], want one float element", gs.dt, gs.n)
			return
		}
		scale = gs.at(0)
	}
	if a.Skip != nil {
		sk := c.buf("AdamW", "Skip", a.Skip)
		if sk == nil {
			return
		}
		if sk.n < 1 {
			c.fail("AdamW: operand Skip is empty")
			return
		}
		// NaN counts as "skip": a corrupted flag must not let an update through.
		if v := sk.at(0); v != 0 {
			return
		}
	}

	ps := make([]*buffer, n)
	gs := make([]*buffer, n)
	ms := make([]*buffer, n)
	vs := make([]*buffer, n)
	sc := make([]adamwScalars, n)
	starts := make([]int, n+1) // starts[i]: first global index of tensor i
	bc1 := 1 - math.Pow(a.Beta1, float64(a.Step))
	bc2Sqrt := math.Sqrt(1 - math.Pow(a.Beta2, float64(a.Step)))
	for i := range n {
		ps[i] = c.buf("AdamW", opName("Params", i), a.Params[i])
		gs[i] = c.buf("AdamW", opName("Grads", i), a.Grads[i])
		ms[i] = c.buf("AdamW", opName("M", i), a.M[i])
		vs[i] = c.buf("AdamW", opName("V", i), a.V[i])
		if ps[i] == nil || gs[i] == nil || ms[i] == nil || vs[i] == nil {
			return
		}
		p := ps[i]
		if p.dt != kernels.F32 && p.dt != kernels.F64 {
			c.fail("AdamW: operand Params[%d] is %v, want F32 or F64", i, p.dt)
			return
		}
		if ms[i].dt != p.dt || vs[i].dt != p.dt {
			c.fail("AdamW: Params[%d] is %v but M[%d] is %v and V[%d] is %v (moments must match the parameter)", i, p.dt, i, ms[i].dt, i, vs[i].dt)
			return
		}
		if !gs[i].dt.IsFloat() {
			c.fail("AdamW: operand Grads[%d] is %v, want a float dtype", i, gs[i].dt)
			return
		}
		if gs[i].n != p.n || ms[i].n != p.n || vs[i].n != p.n {
			c.fail("AdamW: Params[%d] has %d elements but Grads %d, M %d, V %d", i, p.n, gs[i].n, ms[i].n, vs[i].n)
			return
		}
		lr, wd := a.LR[i], a.WeightDecay[i]
		if !(lr >= 0) || !(wd >= 0) || math.IsInf(lr, 0) || math.IsInf(wd, 0) {
			c.fail("AdamW: tensor %d has lr %g, weight decay %g (want finite and ≥ 0)", i, lr, wd)
			return
		}
		sc[i] = adamwScalars{lrwd: lr * wd, stepSize: lr / bc1, bc2Sqrt: bc2Sqrt}
		starts[i+1] = starts[i] + p.n
		if a.Working != nil && a.Working[i] != nil {
			w := c.buf("AdamW", opName("Working", i), a.Working[i])
			if w == nil {
				return
			}
			if w.n != p.n || !w.dt.IsFloat() {
				c.fail("AdamW: Params[%d] has %d elements but Working[%d] is %v[%d]", i, p.n, i, w.dt, w.n)
				return
			}
		}
	}

	total := starts[n]
	kernels.ParallelFor(total, adamwGrain, func(lo, hi int) {
		// Walk the tensors this chunk of the global index range overlaps.
		for i := range n {
			s, e := max(lo, starts[i]), min(hi, starts[i+1])
			if s >= e {
				continue
			}
			off, cnt := s-starts[i], e-s
			if ps[i].dt == kernels.F64 {
				adamwF64(ps[i].f64[off:off+cnt], gs[i].loadF64(off, cnt), ms[i].f64[off:off+cnt], vs[i].f64[off:off+cnt], a, scale, sc[i])
			} else {
				adamwF32(ps[i].f32[off:off+cnt], gs[i].loadF32(off, cnt), ms[i].f32[off:off+cnt], vs[i].f32[off:off+cnt], a, float32(scale), sc[i])
			}
		}
	})
	// The reference for the fused pass a GPU makes: the same Cast and Fill
	// a caller would run after the update.
	for i := range n {
		if a.Working != nil && a.Working[i] != nil {
			c.Cast(a.Working[i], a.Params[i])
		}
		if a.ZeroGrads {
			c.Fill(a.Grads[i], 0)
		}
	}
}

// opName spells an element of a slice operand for failure messages.
func opName(slice string, i int) string {
	return slice + "[" + strconv.Itoa(i) + "]"
}

// adamwF32 updates one contiguous run of a float32 tensor. Scalars are
// rounded to float32 once, as a GPU kernel receiving them as arguments would.
func adamwF32(p, g, m, v []float32, a kernels.AdamWArgs, scale float32, s adamwScalars) {
	b1, b2 := float32(a.Beta1), float32(a.Beta2)
	ob1, ob2 := float32(1-a.Beta1), float32(1-a.Beta2)
	lrwd, step, bc2, eps := float32(s.lrwd), float32(s.stepSize), float32(s.bc2Sqrt), float32(a.Eps)
	// The explicit conversions round every product before it is added, so
	// the compiler may not fuse them into FMAs (arm64 would): results are the
	// same bits on every machine.
	for j := range p {
		gj := g[j] * scale
		pj := p[j] - float32(lrwd*p[j])
		mj := float32(b1*m[j]) + float32(ob1*gj)
		vj := float32(b2*v[j]) + float32(ob2*float32(gj*gj))
		denom := float32(math.Sqrt(float64(vj)))/bc2 + eps
		p[j] = pj - float32(step*(mj/denom))
		m[j], v[j] = mj, vj
	}
}

// adamwF64 is adamwF32 in float64, for gradient checks and references.
func adamwF64(p, g, m, v []float64, a kernels.AdamWArgs, scale float64, s adamwScalars) {
	b1, b2 := a.Beta1, a.Beta2
	ob1, ob2 := 1-a.Beta1, 1-a.Beta2
	for j := range p {
		gj := g[j] * scale
		pj := p[j] - float64(s.lrwd*p[j])
		mj := float64(b1*m[j]) + float64(ob1*gj)
		vj := float64(b2*v[j]) + float64(ob2*float64(gj*gj))
		denom := math.Sqrt(vj)/s.bc2Sqrt + a.Eps
		p[j] = pj - float64(s.stepSize*(mj/denom))
		m[j], v[j] = mj, vj
	}
}
