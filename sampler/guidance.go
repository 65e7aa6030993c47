package sampler

import (
	"fmt"
	"math"

	ag "github.com/newbie-train/newbie-train/autograd"
)

// Conditional evaluates a conditional model at x [B, …] and time t: the
// velocity under the prompts (cond) and, when withUncond is true, under the
// negative prompts (uncond) from the same evaluation — upstream batches
// [x; x] with the conditional captions first and the unconditional ones
// after. uncond is nil when withUncond is false. The caller owns both.
type Conditional func(x *ag.Tensor, t float64, withUncond bool) (cond, uncond *ag.Tensor, err error)

// Guidance configures classifier-free guidance as upstream's
// forward_with_cfg applies it.
type Guidance struct {
	// Scale is the guidance scale (upstream 4–5); 1 means none (the
	// unconditional side is then never evaluated).
	Scale float64
	// Trunc is upstream's cfg_trunc: an evaluation is guided when its own
	// t < Trunc (t = 1 data; a midpoint half step decides by its half-step
	// time), and uses the conditional velocity alone otherwise. 0 means no
	// truncation, the same as 1 (every evaluation of a run has t < 1).
	Trunc float64
	// Renorm is upstream's renorm_cfg: when > 0, each sample's guided
	// velocity is scaled down to Renorm·‖v_cond‖ (norms over the whole
	// sample) when its norm reaches that. 0 turns it off.
	Renorm float64
}

// Validate reports settings upstream would not run.
func (g Guidance) Validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"scale", g.Scale}, {"truncation", g.Trunc}, {"renorm", g.Renorm}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return fmt.Errorf("sampler: guidance %s %g is not a finite non-negative number", f.name, f.v)
		}
	}
	return nil
}

// Guides reports whether an evaluation at time t is guided.
func (g Guidance) Guides(t float64) bool {
	return g.Scale != 1 && (g.Trunc == 0 || t < g.Trunc)
}

// Guided is the velocity field that guidance makes of a conditional model:
// uncond + Scale·(cond − uncond), renormalised, while Guides(t), and cond
// alone otherwise.
func Guided(m Conditional, g Guidance) Velocity {
	return func(x *ag.Tensor, t float64) (*ag.Tensor, error) {
		if !g.Guides(t) {
			vc, _, err := m(x, t, false)
			return vc, err
		}
		vc, vu, err := m(x, t, true)
		if err != nil {
			return nil, err
		}
		diff := ag.Sub(vc, vu)
		scaled := ag.Scale(diff, g.Scale)
		out := ag.Add(vu, scaled)
		for _, r := range []*ag.Tensor{diff, scaled, vu} {
			r.Release()
		}
		if g.Renorm > 0 {
			capped, err := renorm(out, vc, g.Renorm)
			out.Release()
			if err != nil {
				vc.Release()
				return nil, err
			}
			out = capped
		}
		vc.Release()
		return out, nil
	}
}

// renorm scales each sample of v down to limit times the norm of the same
// sample of ref when its norm reaches that (upstream: new_norm ≥ max_norm).
func renorm(v, ref *ag.Tensor, limit float64) (*ag.Tensor, error) {
	shape := v.Shape()
	b := shape[0]
	n := v.Len() / b
	flat := func(t *ag.Tensor) *ag.Tensor { return ag.Reshape(t, []int{b, n}) }
	vv, rv := flat(v), flat(ref)
	vn, rn := ag.SumSquares(vv, 1, false), ag.SumSquares(rv, 1, false)
	both := ag.Concat(0, vn, rn) // one read of the 2B sums
	sums, err := both.Values()
	for _, t := range []*ag.Tensor{vv, rv, vn, rn, both} {
		t.Release()
	}
	if err != nil {
		return nil, err
	}
	factors := make([]float64, b)
	for i := range factors {
		factors[i] = 1
		newNorm, maxNorm := math.Sqrt(sums[i]), limit*math.Sqrt(sums[b+i])
		if newNorm >= maxNorm && newNorm > 0 {
			factors[i] = maxNorm / newNorm
		}
	}
	f := v.Engine().FromFloat64(v.DType(), append([]int{b}, ones(len(shape)-1)...), factors)
	out := ag.Mul(v, f)
	f.Release()
	return out, nil
}

func ones(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}
