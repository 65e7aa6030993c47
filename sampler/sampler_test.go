package sampler

import (
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
	grid := Timesteps(28, 6)
	for i := 1; i < len(grid); i++ {
		if !(grid[i] > grid[i-1]) {
			t.Fatalf("grid not increasing at %d: %v", i, grid)
		}
	}
	if grid[14] >= 0.5 {
		t.Errorf("shift 6 leaves the grid's middle at t=%v, want it near the noise", grid[14])
	}
}

// gaussianField is the exact flow-matching velocity for data x1 ~ N(mu,
// sigma²) and noise x0 ~ N(0, 1) with x_t = t·x1 + (1−t)·x0 (elementwise):
// E[x1 − x0 | x_t = x]. Its ODE carries noise z to mu + sigma·z.
func gaussianField(mu, sigma float64) Velocity {
	return func(x *ag.Tensor, ts []float64) (*ag.Tensor, error) {
		vals, err := x.Values()
		if err != nil {
			return nil, err
		}
		per := len(vals) / len(ts)
		out := make([]float64, len(vals))
		for i, xv := range vals {
			t := ts[i/per]
			den := t*t*sigma*sigma + (1-t)*(1-t)
			d := xv - t*mu
			e1 := mu + t*sigma*sigma/den*d
			e0 := (1 - t) / den * d
			out[i] = e1 - e0
		}
		return x.Engine().FromFloat64(x.DType(), x.Shape(), out), nil
	}
}

// TestSampleGaussian: both methods carry noise to the data distribution's
// quantile; midpoint converges at second order, Euler at first.
func TestSampleGaussian(t *testing.T) {
	const mu, sigma = 1.5, 0.4
	z := []float64{-1.7, -0.3, 0.2, 1.1, 2.4, 0.9}
	want := make([]float64, len(z))
	for i, v := range z {
		want[i] = mu + sigma*v
	}
	errAt := func(m Method, steps int, shift float64) float64 {
		e := ag.New(cpu.New())
		x0 := e.FromFloat64(kernels.F64, []int{2, 3}, z)
		x, err := Sample(x0, gaussianField(mu, sigma), Options{Steps: steps, Method: m, Shift: shift})
		if err != nil {
			t.Fatal(err)
		}
		got, err := x.Values()
		if err != nil {
			t.Fatal(err)
		}
		worst := 0.0
		for i := range got {
			worst = max(worst, math.Abs(got[i]-want[i]))
		}
		return worst
	}
	for _, shift := range []float64{1, 3} {
		e10, e20 := errAt(Midpoint, 10, shift), errAt(Midpoint, 20, shift)
		if !(e20 < 2e-3) || !(e10/e20 > 3) {
			t.Errorf("midpoint, shift %v: error %.3g at 10 steps, %.3g at 20 (want second order)", shift, e10, e20)
		}
		u10, u20 := errAt(Euler, 10, shift), errAt(Euler, 20, shift)
		if !(u10/u20 > 1.6 && u10/u20 < 2.6) {
			t.Errorf("euler, shift %v: error %.3g at 10 steps, %.3g at 20 (want first order)", shift, u10, u20)
		}
		if !(e20 < u20) {
			t.Errorf("shift %v: midpoint %.3g is not better than euler %.3g", shift, e20, u20)
		}
	}
}

// constant returns a field equal to v everywhere.
func constant(v []float64, calls *int) Velocity {
	return func(x *ag.Tensor, _ []float64) (*ag.Tensor, error) {
		*calls++
		return x.Engine().FromFloat64(x.DType(), x.Shape(), v), nil
	}
}

func TestGuided(t *testing.T) {
	e := ag.New(cpu.New())
	x := e.FromFloat64(kernels.F64, []int{2, 2}, []float64{0, 0, 0, 0})
	cond := []float64{1, 2, 3, 4}
	uncond := []float64{0, 1, 1, 1}
	var nc, nu int
	for _, c := range []struct {
		name string
		g    Guidance
		t    float64
		want []float64
	}{
		{"guided", Guidance{Scale: 4}, 0.3, []float64{4, 5, 9, 13}},
		{"after truncation", Guidance{Scale: 4, Trunc: 0.25}, 0.3, cond},
		{"scale 1", Guidance{Scale: 1}, 0.3, cond},
		// Sample 1: |(4,5)| = 6.40 > 1.5·|(1,2)| = 3.35 → scaled to that norm.
		// Sample 2: |(9,13)| = 15.81 > 1.5·|(3,4)| = 7.5 → scaled.
		{"renorm", Guidance{Scale: 4, Renorm: 1.5}, 0.3, []float64{
			4 * 1.5 * math.Sqrt(5) / math.Sqrt(41), 5 * 1.5 * math.Sqrt(5) / math.Sqrt(41),
			9 * 7.5 / math.Sqrt(250), 13 * 7.5 / math.Sqrt(250)}},
	} {
		v, err := Guided(constant(cond, &nc), constant(uncond, &nu), c.g)(x, []float64{c.t, c.t})
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
	if nu != 2 {
		t.Errorf("unconditional field evaluated %d times, want 2 (not after truncation or at scale 1)", nu)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{{Steps: 0}, {Steps: 4, Method: "heun"}, {Steps: 4, Shift: -1}} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v validated", o)
		}
	}
	if err := (Options{Steps: 28, Shift: 6}).Validate(); err != nil {
		t.Error(err)
	}
}
