// Package sampler draws images from a flow-matching model by integrating its
// velocity field from noise (t = 0) to data (t = 1), exactly as NewBie-image's
// upstream inference code does (transport.Sampler.sample_ode and sample_dpm):
// a time grid bent toward the noisy end by a time shift; torchdiffeq's
// fixed-grid midpoint (upstream's default) or Euler method, or DPM-Solver++
// (second-order multistep, the flow-matching "time_uniform_flow" grid); and
// classifier-free guidance in one batched evaluation, applied while t is
// below a truncation point, with optional renormalisation of the guided
// velocity (upstream NextDiT.forward_with_cfg).
//
// The package works on any velocity function over autograd tensors, so the
// same code serves training previews, `newbie-train sample` and the replay
// of the upstream sampler's reference runs; it runs without recording a
// tape.
package sampler

import (
	"context"
	"fmt"
	"math"

	ag "github.com/newbie-train/newbie-train/autograd"
)

// Velocity returns the model's velocity at x [B, …] for time t (t = 1 is
// data), the same t for every sample. The caller owns the result.
type Velocity func(x *ag.Tensor, t float64) (*ag.Tensor, error)

// Method names an integration method.
type Method string

// The integration methods.
const (
	// Midpoint is torchdiffeq's fixed-grid explicit midpoint method: two
	// velocity evaluations a step, second order (upstream's default).
	Midpoint Method = "midpoint"
	// Euler is torchdiffeq's fixed-grid Euler method: one evaluation a step.
	Euler Method = "euler"
	// DPM is DPM-Solver++ (Lu et al. 2022), second-order multistep, over
	// upstream's NoiseScheduleFlow("discrete_flow") with the
	// "time_uniform_flow" grid: one evaluation a step, the last step first
	// order and landing on the data prediction.
	DPM Method = "dpm"
)

// Methods lists the methods in the order help texts name them.
var Methods = []Method{Midpoint, Euler, DPM}

// dpmStart is where DPM-Solver's grid starts in our time (its t_0 = 1/N of
// NoiseScheduleFlow's N = 1000 discrete steps, as noise level 1 − t).
const dpmStart = 1.0 / 1000

// Options configure a sampling run.
type Options struct {
	// Steps means what upstream's num_sampling_steps means, which differs by
	// method. Midpoint and Euler: the number of points of the time grid
	// (torch.linspace(0, 1, Steps)), so Steps−1 integration steps and
	// Steps ≥ 2. DPM: the number of solver steps (Steps+1 grid points,
	// Steps model evaluations), Steps ≥ 2.
	Steps int
	// Method is Midpoint (when empty), Euler or DPM.
	Method Method
	// Shift bends the time grid toward the noisy end (upstream: 6); 1 or 0
	// leaves it uniform. See Shifted.
	Shift float64
	// Observe, when set, is called after every integration step with the
	// step's number (from 1), the number of steps and the state at the
	// step's end (owned by the sampler: read it, do not release it). An
	// error it returns stops the run and is returned.
	Observe func(step, steps int, x *ag.Tensor) error
}

// method is o.Method with the default filled in.
func (o Options) method() Method {
	if o.Method == "" {
		return Midpoint
	}
	return o.Method
}

// Shifted applies the time shift s to t ∈ [0, 1] (t = 1 data): t/(t + s − s·t),
// the shift of the noise level σ = 1 − t to s·σ/(1 + (s−1)·σ) used by SD3,
// Lumina and DPM-Solver's "time_uniform_flow". With s > 1 more of the grid
// falls near the noise.
func Shifted(t, s float64) float64 {
	if s <= 0 || s == 1 {
		return t
	}
	return t / (t + s - s*t)
}

// Grid returns the times the state visits, from the noise end to t = 1:
// upstream's ODE grid linspace(0, 1, Steps) shifted, or DPM-Solver's
// linspace(1/1000, 1, Steps+1) shifted (its time_uniform_flow grid in noise
// levels, 1 − t, flipped).
func (o Options) Grid() []float64 {
	start, n := 0.0, o.Steps
	if o.method() == DPM {
		start, n = dpmStart, o.Steps+1
	}
	ts := make([]float64, n)
	for i := range ts {
		ts[i] = Shifted(start+(1-start)*float64(i)/float64(n-1), o.Shift)
	}
	ts[n-1] = 1 // exact, whatever the rounding of the line above
	return ts
}

// NumSteps is the number of integration steps (Observe calls).
func (o Options) NumSteps() int {
	if o.method() == DPM {
		return o.Steps
	}
	return o.Steps - 1
}

// Evaluations is the number of velocity evaluations a run makes.
func (o Options) Evaluations() int {
	if o.method() == Midpoint {
		return 2 * (o.Steps - 1)
	}
	return o.Steps
}

// Validate reports options that cannot sample.
func (o Options) Validate() error {
	switch o.method() {
	case Midpoint, Euler, DPM:
	default:
		return fmt.Errorf("sampler: unknown method %q (want midpoint, euler or dpm)", o.Method)
	}
	if o.Steps < 2 {
		what := "grid points (steps − 1 integration steps)"
		if o.method() == DPM {
			what = "solver steps (second order needs two)"
		}
		return fmt.Errorf("sampler: %s needs steps ≥ 2 %s, got %d", o.method(), what, o.Steps)
	}
	if o.Shift < 0 || math.IsNaN(o.Shift) || math.IsInf(o.Shift, 0) {
		return fmt.Errorf("sampler: time shift %g is not a finite non-negative number", o.Shift)
	}
	return nil
}

// Sample integrates v from the noise x0 (t = 0) to t = 1 and returns the
// result; x0 is left as it was. ctx is checked before every evaluation, so a
// cancelled run stops within one model evaluation and returns ctx's error.
func Sample(ctx context.Context, x0 *ag.Tensor, v Velocity, o Options) (*ag.Tensor, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	eval := func(x *ag.Tensor, t float64, step int) (*ag.Tensor, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		out, err := v(x, t)
		if err != nil {
			return nil, fmt.Errorf("sampler: step %d of %d at t=%.4f: %w", step, o.NumSteps(), t, err)
		}
		return out, nil
	}
	var out *ag.Tensor
	var err error
	x0.Engine().NoGrad(func() {
		if o.method() == DPM {
			out, err = dpmSolve(x0, eval, o)
		} else {
			out, err = odeSolve(x0, eval, o)
		}
	})
	return out, err
}

// evalFunc is a velocity evaluation that knows which step it serves.
type evalFunc func(x *ag.Tensor, t float64, step int) (*ag.Tensor, error)

// finish ends step i: it checks the engine and tells the observer.
func finish(x *ag.Tensor, i int, o Options) error {
	if err := x.Engine().Err(); err != nil {
		return fmt.Errorf("sampler: step %d of %d: %w", i, o.NumSteps(), err)
	}
	if o.Observe != nil {
		return o.Observe(i, o.NumSteps(), x)
	}
	return nil
}

// odeSolve is torchdiffeq's fixed-grid integration over the grid: per step
// dt = t1 − t0, Euler dy = dt·v(t0, y0); midpoint y_mid = y0 + v(t0, y0)·dt/2
// and dy = dt·v(t0 + dt/2, y_mid); then y1 = y0 + dy.
func odeSolve(x0 *ag.Tensor, eval evalFunc, o Options) (*ag.Tensor, error) {
	grid := o.Grid()
	x := ag.Scale(x0, 1) // a copy the loop may release
	fail := func(err error) (*ag.Tensor, error) {
		x.Release()
		return nil, err
	}
	for i := 1; i < len(grid); i++ {
		t, dt := grid[i-1], grid[i]-grid[i-1]
		slope, err := eval(x, t, i)
		if err != nil {
			return fail(err)
		}
		if o.method() == Midpoint {
			half := ag.Scale(slope, dt/2)
			xm := ag.Add(x, half)
			half.Release()
			slope.Release()
			slope, err = eval(xm, t+dt/2, i)
			xm.Release()
			if err != nil {
				return fail(err)
			}
		}
		step := ag.Scale(slope, dt)
		next := ag.Add(x, step)
		step.Release()
		slope.Release()
		x.Release()
		x = next
		if err := finish(x, i, o); err != nil {
			return fail(err)
		}
	}
	return x, nil
}

// dpmSolve is upstream DPM_Solver.sample with algorithm_type "dpmsolver++",
// method "multistep", order 2, solver_type "dpmsolver", lower_order_final
// and no denoise_to_zero, over NoiseScheduleFlow: at noise level σ = 1 − t,
// α = t and λ = log(α/σ). The model's data prediction is x + σ·v (upstream
// builds the noise x − (1−σ)·v and then (x − σ·noise)/α, the same
// algebraically). Step k goes from grid point k−1 to k: first order
// x_k = (σ_k/σ_{k−1})·x − α_k·φ·D_{k−1} with φ = expm1(−h), h = λ_k − λ_{k−1};
// second order (every step but the first and the last) adds the
// multistep correction −α_k·φ·(D_{k−1} − D_{k−2})/(2·r), r = h_{k−1}/h. The
// last grid point is σ = 0 (λ = ∞, φ = −1), so the last step returns the
// data prediction itself; no model value is computed there.
func dpmSolve(x0 *ag.Tensor, eval evalFunc, o Options) (*ag.Tensor, error) {
	grid := o.Grid()
	n := o.Steps
	lambda := func(k int) float64 { return math.Log(grid[k]) - math.Log(1-grid[k]) }
	var prev, last *ag.Tensor // data predictions at grid points k−2 and k−1
	x := ag.Scale(x0, 1)
	release := func() {
		for _, t := range []*ag.Tensor{x, prev, last} {
			if t != nil {
				t.Release()
			}
		}
	}
	predict := func(k, step int) (*ag.Tensor, error) {
		v, err := eval(x, grid[k], step)
		if err != nil {
			return nil, err
		}
		sv := ag.Scale(v, 1-grid[k])
		v.Release()
		d := ag.Add(x, sv)
		sv.Release()
		return d, nil
	}
	var err error
	if last, err = predict(0, 1); err != nil {
		release()
		return nil, err
	}
	for k := 1; k <= n; k++ {
		sigma, sigma0, alpha := 1-grid[k], 1-grid[k-1], grid[k]
		h := lambda(k) - lambda(k-1)
		phi := math.Expm1(-h)
		terms := []term{{sigma / sigma0, x}, {-alpha * phi, last}}
		if k > 1 && k < n { // second order; the first and the last step are first order
			r := (lambda(k-1) - lambda(k-2)) / h
			terms[1].c *= 1 + 0.5/r
			terms = append(terms, term{alpha * phi * 0.5 / r, prev})
		}
		next := combine(terms)
		x.Release()
		x = next
		if err := finish(x, k, o); err != nil {
			release()
			return nil, err
		}
		if k == n {
			break
		}
		if prev != nil {
			prev.Release()
		}
		prev = last
		if last, err = predict(k, k+1); err != nil {
			last = nil
			release()
			return nil, err
		}
	}
	for _, t := range []*ag.Tensor{prev, last} {
		if t != nil {
			t.Release()
		}
	}
	return x, nil
}

// term is one coefficient·tensor of a linear combination.
type term struct {
	c float64
	t *ag.Tensor
}

// combine returns Σ c·t over the terms with c ≠ 0 (at least one).
func combine(terms []term) *ag.Tensor {
	var sum *ag.Tensor
	for _, tm := range terms {
		if tm.c == 0 {
			continue
		}
		s := ag.Scale(tm.t, tm.c)
		if sum == nil {
			sum = s
			continue
		}
		next := ag.Add(sum, s)
		sum.Release()
		s.Release()
		sum = next
	}
	return sum
}
