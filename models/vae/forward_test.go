package vae

import (
	"math"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestClamp: values inside [lo, hi] pass bit for bit, values outside are
// bounded, and the gradient is 1 inside and 0 outside.
func TestClamp(t *testing.T) {
	cases := []struct {
		name     string
		lo, hi   float64
		in, want []float64
		grad     []float64
	}{
		{"logvar bounds", LogVarMin, LogVarMax,
			[]float64{-50, -30.5, -29.75, -1e-3, 1.2345678e-7, 5.3, 19.99, 25, 1e6},
			[]float64{-30, -30, -29.75, -1e-3, 1.2345678e-7, 5.3, 19.99, 20, 20},
			[]float64{0, 0, 1, 1, 1, 1, 1, 0, 0}},
		{"narrow", -0.5, 0.25,
			[]float64{-0.7, -0.3, 0.1, 0.3, 0.2},
			[]float64{-0.5, -0.3, 0.1, 0.25, 0.2},
			[]float64{0, 1, 1, 0, 1}},
	}
	for _, c := range cases {
		for _, d := range []kernels.DType{kernels.F64, kernels.F32} {
			t.Run(c.name+"/"+d.String(), func(t *testing.T) {
				e := newEngine()
				x := e.FromFloat64(d, []int{len(c.in)}, c.in).Input()
				y := clamp(x, c.lo, c.hi)
				got := values(t, y)
				for i := range got {
					want := kerneltest.Quantize(d, c.want[i:i+1])[0]
					if got[i] != want {
						t.Errorf("clamp(%v) = %v, want %v", c.in[i], got[i], want)
					}
				}
				if err := e.Backward(ag.SumAll(y)); err != nil {
					t.Fatal(err)
				}
				g := values(t, x.Grad())
				for i := range g {
					if g[i] != c.grad[i] {
						t.Errorf("d clamp/dx at %v = %v, want %v", c.in[i], g[i], c.grad[i])
					}
				}
			})
		}
	}
}

// inputGrad runs f on a fresh float64 input x (shape, values v), takes the
// backward of sum(f(x) ⊙ r) and returns the loss and x's gradient.
func inputGrad(t *testing.T, e *ag.Engine, f func(x *ag.Tensor) *ag.Tensor, shape []int, v, r []float64) (float64, []float64) {
	t.Helper()
	x := e.FromFloat64(kernels.F64, shape, v).Input()
	y := f(x)
	if y == nil {
		t.Fatal("forward failed")
	}
	rt := e.FromFloat64(kernels.F64, y.Shape(), r)
	loss := ag.SumAll(ag.Mul(y, rt))
	l, err := loss.Item()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Backward(loss); err != nil {
		t.Fatal(err)
	}
	g := values(t, x.Grad())
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return l, g
}

// TestInputGradients checks the backward through the whole encoder (to the
// latent) and the whole decoder in float64 against central differences
// along a random direction, and that per-resnet checkpointing gives the
// same gradients (recomputation is exact in float64 on the CPU).
func TestInputGradients(t *testing.T) {
	g := openGolden(t)
	e := newEngine()
	m, err := Load(e, g.weights, Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	rng := kerneltest.Rng(t)
	decode := func(z *ag.Tensor) *ag.Tensor {
		y, err := m.Decode(z)
		if err != nil {
			t.Fatal(err)
		}
		return y
	}
	cases := []struct {
		name  string
		shape []int
		outN  int
		run   func(x *ag.Tensor) *ag.Tensor
	}{
		{"encoder latent", []int{1, 3, 16, 24}, 16 * 2 * 3, func(x *ag.Tensor) *ag.Tensor {
			y, err := m.Latent(x)
			if err != nil {
				t.Fatal(err)
			}
			return y
		}},
		{"decoder", []int{1, 16, 3, 2}, 3 * 24 * 16, decode},
		{"decoder explicit attention", []int{1, 16, 3, 2}, 3 * 24 * 16, func(z *ag.Tensor) *ag.Tensor {
			m.testHeadLimit, m.testChunkRows = new(int), 4
			defer func() { m.testHeadLimit, m.testChunkRows = nil, 0 }()
			return decode(z)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := 1
			for _, d := range c.shape {
				n *= d
			}
			v := kerneltest.Randn(rng, n, 0.5)
			r := kerneltest.Randn(rng, c.outN, 1)
			dir := kerneltest.Randn(rng, n, 1)
			m.SetCheckpoint(false)
			_, grad := inputGrad(t, e, c.run, c.shape, v, r)
			m.SetCheckpoint(true)
			_, gradCk := inputGrad(t, e, c.run, c.shape, v, r)
			m.SetCheckpoint(false)
			kerneltest.Check(t, c.name+" gradient with checkpointing", gradCk, grad, 1e-12)

			const eps = 1e-5
			shifted := func(s float64) float64 {
				w := make([]float64, n)
				for i := range w {
					w[i] = v[i] + s*dir[i]
				}
				var l float64
				e.NoGrad(func() {
					x := e.FromFloat64(kernels.F64, c.shape, w)
					y := c.run(x)
					rt := e.FromFloat64(kernels.F64, y.Shape(), r)
					var err error
					if l, err = ag.SumAll(ag.Mul(y, rt)).Item(); err != nil {
						t.Fatal(err)
					}
				})
				if err := e.EndStep(); err != nil {
					t.Fatal(err)
				}
				return l
			}
			fd := (shifted(eps) - shifted(-eps)) / (2 * eps)
			var an float64
			for i := range grad {
				an += grad[i] * dir[i]
			}
			if rel := math.Abs(fd-an) / math.Max(math.Abs(fd), 1e-12); rel > 1e-6 {
				t.Fatalf("directional derivative: backward %.12g, central difference %.12g (rel %.3g)", an, fd, rel)
			}
		})
	}
}

// TestBadInputs: wrong shapes and a released VAE are errors, not panics.
func TestBadInputs(t *testing.T) {
	g := openGolden(t)
	e := newEngine()
	m, err := Load(e, g.weights, Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(shape ...int) *ag.Tensor { return e.Full(kernels.F32, shape, 0.25) }
	other := newEngine().Full(kernels.F32, []int{1, 3, 8, 8}, 0.25)
	cases := []struct {
		name string
		run  func() error
		want string
	}{
		{"encode side not /8", func() error { _, _, err := m.Encode(mk(1, 3, 12, 8)); return err }, "multiples of 8"},
		{"encode channels", func() error { _, _, err := m.Encode(mk(1, 4, 8, 8)); return err }, "[B, 3, H, W]"},
		{"encode rank", func() error { _, _, err := m.Encode(mk(3, 8, 8)); return err }, "[B, 3, H, W]"},
		{"encode nil", func() error { _, _, err := m.Encode(nil); return err }, "nil input"},
		{"encode other engine", func() error { _, _, err := m.Encode(other); return err }, "another engine"},
		{"latent", func() error { _, err := m.Latent(mk(1, 3, 7, 8)); return err }, "multiples of 8"},
		{"decode channels", func() error { _, err := m.Decode(mk(1, 4, 2, 2)); return err }, "[B, 16, H, W]"},
		{"released", func() error { m.Release(); _, err := m.Decode(mk(1, 16, 2, 2)); return err }, "released"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if err := e.EndStep(); err != nil {
		t.Fatalf("a refused input left an engine error: %v", err)
	}
}
