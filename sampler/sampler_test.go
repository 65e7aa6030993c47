package sampler

import (
	"context"
	"errors"
	"math"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

func TestShifted(t *testing.T) {
	for _, c := range []struct{ t, s, want float64 }{
		{0.5, 1, 0.5}, {0.5, 0, 0.5}, {0, 6, 0}, {1, 6, 1},
		{0.5, 6, 0.5 / 3.5}, {0.25, 3, 0.25 / (0.25 + 3 - 0.75)},
	} {
		if got := Shifted(c.t, c.s); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("Shifted(%v, %v) = %v, want %v", c.t, c.s, got, c.want)
		}
	}
}

// TestGrid: the grids have upstream's lengths and ends (num_steps grid
// points for the ODE methods, num_steps+1 for DPM from t = 1/1000), rise,
// and bend toward the noise.
func TestGrid(t *testing.T) {
	for _, c := range []struct {
		o            Options
		points       int
		first        float64
		steps, evals int
	}{
		{Options{Method: Midpoint, Steps: 28, Shift: 6}, 28, 0, 27, 54},
		{Options{Steps: 8, Shift: 6}, 8, 0, 7, 14},
		{Options{Method: Euler, Steps: 6, Shift: 3}, 6, 0, 5, 6},
		{Options{Method: DPM, Steps: 6, Shift: 6}, 7, Shifted(0.001, 6), 6, 6},
	} {
		g := c.o.Grid()
		if len(g) != c.points || g[0] != c.first || g[len(g)-1] != 1 || c.o.NumSteps() != c.steps || c.o.Evaluations() != c.evals {
			t.Errorf("%+v: grid %v (want %d points from %v to 1), %d steps, %d evaluations (want %d, %d)", c.o, g, c.points, c.first, c.o.NumSteps(), c.o.Evaluations(), c.steps, c.evals)
		}
		for i := 1; i < len(g); i++ {
			if !(g[i] > g[i-1]) {
				t.Fatalf("%+v: grid not increasing at %d: %v", c.o, i, g)
			}
		}
		if mid := g[len(g)/2]; c.o.Shift > 1 && mid >= 0.5 {
			t.Errorf("%+v: the grid's middle is at t=%v, want it near the noise", c.o, mid)
		}
	}
}

// gaussianField is the exact flow-matching velocity for data x1 ~ N(mu,
// sigma²) and noise x0 ~ N(0, 1) with x_t = t·x1 + (1−t)·x0 (elementwise):
// E[x1 − x0 | x_t = x]. Its ODE keeps the standardised value
// (x − t·mu)/√(t²σ² + (1−t)²), so it carries noise z at t = 0 to mu + σ·z.
func gaussianField(mu, sigma float64) Velocity {
	return func(x *ag.Tensor, t float64) (*ag.Tensor, error) {
		vals, err := x.Values()
		if err != nil {
			return nil, err
		}
		out := make([]float64, len(vals))
		den := t*t*sigma*sigma + (1-t)*(1-t)
		for i, xv := range vals {
			d := xv - t*mu
			out[i] = mu + t*sigma*sigma/den*d - (1-t)/den*d
		}
		return x.Engine().FromFloat64(x.DType(), x.Shape(), out), nil
	}
}

// TestSampleGaussian: every method carries noise to the data distribution's
// quantile (DPM from its own start, t = Grid()[0]). Midpoint converges at
// second order, Euler at first. DPM-Solver++ is second order in the middle
// of its grid (t ≈ 0.5, the same grid point for both step counts); its
// uniform-in-t grid takes steps of λ = log(t/(1−t)) that do not shrink near
// the data, and its last step (upstream's lower_order_final step to σ = 0)
// lands on the model's data prediction, so the final error falls at first
// order only. Observe sees every step.
func TestSampleGaussian(t *testing.T) {
	const mu, sigma = 1.5, 0.4
	z := []float64{-1.7, -0.3, 0.2, 1.1, 2.4, 0.9}
	// errAt returns the worst error at the end and at the middle grid
	// point.
	errAt := func(m Method, steps int, shift float64) (final, middle float64) {
		e := ag.New(cpu.New())
		x0 := e.FromFloat64(kernels.F64, []int{2, 3}, z)
		o := Options{Steps: steps, Method: m, Shift: shift}
		grid := o.Grid()
		exact := func(i int, tt float64) float64 {
			s := func(t float64) float64 { return math.Sqrt(t*t*sigma*sigma + (1-t)*(1-t)) }
			return tt*mu + s(tt)*(z[i]-grid[0]*mu)/s(grid[0])
		}
		worst := func(x *ag.Tensor, tt float64) float64 {
			got, err := x.Values()
			if err != nil {
				t.Fatal(err)
			}
			w := 0.0
			for i := range got {
				w = max(w, math.Abs(got[i]-exact(i, tt)))
			}
			return w
		}
		seen := 0
		o.Observe = func(step, n int, x *ag.Tensor) error {
			seen++
			if step != seen || n != o.NumSteps() {
				t.Fatalf("%s: observed step %d of %d after %d", m, step, n, seen-1)
			}
			if step == n/2 {
				middle = worst(x, grid[step])
			}
			return nil
		}
		x, err := Sample(context.Background(), x0, gaussianField(mu, sigma), o)
		if err != nil {
			t.Fatal(err)
		}
		if seen != o.NumSteps() {
			t.Fatalf("%s: %d steps observed, want %d", m, seen, o.NumSteps())
		}
		return worst(x, 1), middle
	}
	for _, shift := range []float64{1, 3} {
		e10, _ := errAt(Midpoint, 11, shift)
		e20, _ := errAt(Midpoint, 21, shift)
		if !(e20 < 2e-3) || !(e10/e20 > 3) {
			t.Errorf("midpoint, shift %v: error %.3g at 10 steps, %.3g at 20 (want second order)", shift, e10, e20)
		}
		u10, _ := errAt(Euler, 11, shift)
		u20, _ := errAt(Euler, 21, shift)
		if !(u10/u20 > 1.6 && u10/u20 < 2.6) {
			t.Errorf("euler, shift %v: error %.3g at 10 steps, %.3g at 20 (want first order)", shift, u10, u20)
		}
		d10, b10 := errAt(DPM, 10, shift)
		d20, b20 := errAt(DPM, 20, shift)
		if !(b20 < 5e-3) || !(b10/b20 > 3) {
			t.Errorf("dpm, shift %v: error at t=%.3g %.3g at 10 steps, %.3g at 20 (want second order)", shift, (Options{Method: DPM, Steps: 10, Shift: shift}).Grid()[5], b10, b20)
		}
		if !(d10/d20 > 1.6) || !(d20 < u20) {
			t.Errorf("dpm, shift %v: final error %.3g at 10 steps, %.3g at 20 (want at least first order, and below euler's %.3g)", shift, d10, d20, u20)
		}
		if !(e20 < u20) {
			t.Errorf("shift %v: midpoint %.3g is not better than euler %.3g", shift, e20, u20)
		}
		t.Logf("shift %v: errors at 10/20 steps: midpoint %.3g/%.3g, euler %.3g/%.3g, dpm %.3g/%.3g (mid-grid %.3g/%.3g)", shift, e10, e20, u10, u20, d10, d20, b10, b20)
	}
}

// TestSampleCancel: a cancelled context stops the run before the next
// evaluation, and an observer's error stops it too.
func TestSampleCancel(t *testing.T) {
	e := ag.New(cpu.New())
	x0 := e.FromFloat64(kernels.F64, []int{1, 2}, []float64{0, 1})
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	v := func(x *ag.Tensor, _ float64) (*ag.Tensor, error) {
		calls++
		if calls == 3 {
			cancel()
		}
		return ag.Scale(x, 1), nil
	}
	if _, err := Sample(ctx, x0, v, Options{Steps: 20}); !errors.Is(err, context.Canceled) || calls != 3 {
		t.Errorf("cancelled run: %v after %d calls, want context.Canceled after 3", err, calls)
	}
	stop := errors.New("stop")
	o := Options{Method: DPM, Steps: 10, Observe: func(step, _ int, _ *ag.Tensor) error {
		if step == 2 {
			return stop
		}
		return nil
	}}
	if _, err := Sample(context.Background(), x0, v, o); !errors.Is(err, stop) {
		t.Errorf("observer's error: got %v", err)
	}
}

// constant is a conditional model whose velocities are fixed.
func constant(cond, uncond []float64, calls, withUncond *int) Conditional {
	return func(x *ag.Tensor, _ float64, wu bool) (*ag.Tensor, *ag.Tensor, error) {
		*calls++
		c := x.Engine().FromFloat64(x.DType(), x.Shape(), cond)
		if !wu {
			return c, nil, nil
		}
		*withUncond++
		return c, x.Engine().FromFloat64(x.DType(), x.Shape(), uncond), nil
	}
}

func TestGuided(t *testing.T) {
	e := ag.New(cpu.New())
	x := e.FromFloat64(kernels.F64, []int{2, 2}, []float64{0, 0, 0, 0})
	cond := []float64{1, 2, 3, 4}
	uncond := []float64{0, 1, 1, 1}
	var calls, nu int
	for _, c := range []struct {
		name string
		g    Guidance
		t    float64
		want []float64
	}{
		{"guided", Guidance{Scale: 4}, 0.3, []float64{4, 5, 9, 13}},
		{"before truncation", Guidance{Scale: 4, Trunc: 0.6}, 0.3, []float64{4, 5, 9, 13}},
		{"after truncation", Guidance{Scale: 4, Trunc: 0.25}, 0.3, cond},
		{"at truncation", Guidance{Scale: 4, Trunc: 0.3}, 0.3, cond},
		{"scale 1", Guidance{Scale: 1}, 0.3, cond},
		// Sample 1: |(4,5)| = 6.40 > 1.5·|(1,2)| = 3.35 → scaled to that norm.
		// Sample 2: |(9,13)| = 15.81 > 1.5·|(3,4)| = 7.5 → scaled.
		{"renorm", Guidance{Scale: 4, Renorm: 1.5}, 0.3, []float64{
			4 * 1.5 * math.Sqrt(5) / math.Sqrt(41), 5 * 1.5 * math.Sqrt(5) / math.Sqrt(41),
			9 * 7.5 / math.Sqrt(250), 13 * 7.5 / math.Sqrt(250)}},
		// |(4,5)| < 3·|(1,2)| = 6.7: left alone; |(9,13)| = 15.8 ≥ 3·5 = 15: scaled.
		{"renorm of one sample", Guidance{Scale: 4, Renorm: 3}, 0.3, []float64{
			4, 5, 9 * 15 / math.Sqrt(250), 13 * 15 / math.Sqrt(250)}},
	} {
		v, err := Guided(constant(cond, uncond, &calls, &nu), c.g)(x, c.t)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := v.Values()
		for i := range got {
			if math.Abs(got[i]-c.want[i]) > 1e-12 {
				t.Errorf("%s: got %v, want %v", c.name, got, c.want)
				break
			}
		}
	}
	if calls != 7 || nu != 4 {
		t.Errorf("%d evaluations, %d with the unconditional side; want 7 and 4 (none after truncation or at scale 1)", calls, nu)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{{Steps: 1}, {Steps: 1, Method: DPM}, {Steps: 4, Method: "heun"}, {Steps: 4, Shift: -1}, {Steps: 4, Shift: math.NaN()}} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v validated", o)
		}
	}
	for _, o := range []Options{{Steps: 28, Shift: 6}, {Steps: 2, Method: Euler}, {Steps: 2, Method: DPM}} {
		if err := o.Validate(); err != nil {
			t.Error(err)
		}
	}
	for _, g := range []Guidance{{Scale: -1}, {Scale: 4, Trunc: math.Inf(1)}, {Scale: 4, Renorm: math.NaN()}} {
		if err := g.Validate(); err == nil {
			t.Errorf("%+v validated", g)
		}
	}
}
