// Package sampler draws images from a flow-matching model by integrating its
// velocity field from noise (t = 0) to data (t = 1), as NewBie-image's
// upstream sampler does: a fixed grid of timesteps bent toward the noisy end
// by a time shift, the explicit midpoint (second order, upstream's default)
// or Euler method, and classifier-free guidance applied while t is below a
// truncation point, with optional renormalisation of the guided velocity.
//
// The package works on any velocity function over autograd tensors, so the
// same code serves training previews and `newbie-train sample`; it runs
// without recording a tape.
package sampler

import (
	"fmt"
	"math"

	ag "github.com/newbie-train/newbie-train/autograd"
)

// Velocity returns the model's velocity at x [B, …] for per-sample times t
// (t = 1 is data). The caller owns the result.
type Velocity func(x *ag.Tensor, t []float64) (*ag.Tensor, error)

// Method names an integration method.
type Method string

// The integration methods.
const (
	Midpoint Method = "midpoint" // two velocity evaluations a step, second order
	Euler    Method = "euler"    // one evaluation a step, first order
)

// Options configure a sampling run.
type Options struct {
	// Steps is the number of integration steps (upstream uses 18–28).
	Steps int
	// Method is Midpoint (default) or Euler.
	Method Method
	// Shift bends the time grid toward the noisy end (upstream: 6); 1 or 0
	// leaves it uniform. See Shifted.
	Shift float64
}

// Shifted applies the time shift s to t ∈ [0, 1] (t = 1 data): t/(t + s − s·t),
// the shift of σ = 1 − t to s·σ/(1 + (s−1)·σ) used by SD3 and Lumina. With
// s > 1 more of the grid falls near the noise.
func Shifted(t, s float64) float64 {
	if s <= 0 || s == 1 {
		return t
	}
	return t / (t + s - s*t)
}

// Timesteps returns the steps+1 grid points from 0 to 1, shifted.
func Timesteps(steps int, shift float64) []float64 {
	ts := make([]float64, steps+1)
	for i := range ts {
		ts[i] = Shifted(float64(i)/float64(steps), shift)
	}
	return ts
}

// Validate reports options that cannot sample.
func (o Options) Validate() error {
	if o.Steps < 1 {
		return fmt.Errorf("sampler: %d steps", o.Steps)
	}
	switch o.Method {
	case "", Midpoint, Euler:
	default:
		return fmt.Errorf("sampler: unknown method %q (want midpoint or euler)", o.Method)
	}
	if o.Shift < 0 || math.IsNaN(o.Shift) {
		return fmt.Errorf("sampler: time shift %g is negative", o.Shift)
	}
	return nil
}

// Sample integrates v from the noise x0 (t = 0) to t = 1 and returns the
// result; x0 is left as it was.
func Sample(x0 *ag.Tensor, v Velocity, o Options) (*ag.Tensor, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	e := x0.Engine()
	var out *ag.Tensor
	var err error
	e.NoGrad(func() { out, err = integrate(x0, v, o) })
	return out, err
}

func integrate(x0 *ag.Tensor, v Velocity, o Options) (*ag.Tensor, error) {
	b := x0.Shape()[0]
	times := func(t float64) []float64 {
		ts := make([]float64, b)
		for i := range ts {
			ts[i] = t
		}
		return ts
	}
	grid := Timesteps(o.Steps, o.Shift)
	x := ag.Scale(x0, 1) // a copy the loop may release
	for i := 0; i < o.Steps; i++ {
		t, dt := grid[i], grid[i+1]-grid[i]
		k1, err := v(x, times(t))
		if err != nil {
			return nil, fmt.Errorf("sampler: step %d at t=%.4f: %w", i+1, t, err)
		}
		slope := k1
		if o.Method != Euler {
			half := ag.Scale(k1, dt/2)
			xm := ag.Add(x, half)
			half.Release()
			k2, err := v(xm, times(t+dt/2))
			xm.Release()
			if err != nil {
				return nil, fmt.Errorf("sampler: step %d at t=%.4f: %w", i+1, t+dt/2, err)
			}
			k1.Release()
			slope = k2
		}
		step := ag.Scale(slope, dt)
		next := ag.Add(x, step)
		step.Release()
		slope.Release()
		x.Release()
		x = next
		if err := x.Engine().Err(); err != nil {
			return nil, fmt.Errorf("sampler: step %d: %w", i+1, err)
		}
	}
	return x, nil
}

// Guidance configures classifier-free guidance.
type Guidance struct {
	// Scale is the guidance scale (upstream 4–5); 1 means none.
	Scale float64
	// Trunc stops guidance once t reaches it (t = 1 data): the last steps
	// use the conditional velocity alone. 0 or ≥ 1 guides every step.
	Trunc float64
	// Renorm, when > 0, caps each sample's guided velocity norm at Renorm
	// times its conditional velocity's norm (Lumina's renorm_cfg).
	Renorm float64
}

// Guided combines a conditional and an unconditional velocity into
// uncond + Scale·(cond − uncond) while t < Trunc, and cond alone after.
func Guided(cond, uncond Velocity, g Guidance) Velocity {
	return func(x *ag.Tensor, t []float64) (*ag.Tensor, error) {
		vc, err := cond(x, t)
		if err != nil {
			return nil, err
		}
		if g.Scale == 1 || (g.Trunc > 0 && g.Trunc < 1 && t[0] >= g.Trunc) {
			return vc, nil
		}
		vu, err := uncond(x, t)
		if err != nil {
			vc.Release()
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

// renorm scales each sample of v down so its norm is at most limit times
// the norm of the same sample of ref.
func renorm(v, ref *ag.Tensor, limit float64) (*ag.Tensor, error) {
	shape := v.Shape()
	b := shape[0]
	n := v.Len() / b
	flat := func(t *ag.Tensor) *ag.Tensor { return ag.Reshape(t, []int{b, n}) }
	vv, rv := flat(v), flat(ref)
	vn, rn := ag.SumSquares(vv, 1, false), ag.SumSquares(rv, 1, false)
	vs, err := vn.Values()
	if err != nil {
		return nil, err
	}
	rs, err := rn.Values()
	if err != nil {
		return nil, err
	}
	factors := make([]float64, b)
	for i := range factors {
		factors[i] = 1
		newNorm, maxNorm := math.Sqrt(vs[i]), limit*math.Sqrt(rs[i])
		if newNorm > maxNorm && newNorm > 0 {
			factors[i] = maxNorm / newNorm
		}
	}
	f := v.Engine().FromFloat64(v.DType(), append([]int{b}, ones(len(shape)-1)...), factors)
	out := ag.Mul(v, f)
	for _, t := range []*ag.Tensor{vv, rv, vn, rn, f} {
		t.Release()
	}
	return out, nil
}

func ones(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}
