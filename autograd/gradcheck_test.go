package autograd_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// input describes one differentiable input of a gradient check: its shape
// and how to draw its values (standard normal when draw is nil).
type input struct {
	shape []int
	draw  func(r *rand.Rand) float64
}

func normal(r *rand.Rand) float64   { return r.NormFloat64() }
func positive(r *rand.Rand) float64 { return 0.5 + 1.5*r.Float64() }
func awayFromZero(r *rand.Rand) float64 {
	v := 0.5 + r.Float64()
	if r.IntN(2) == 0 {
		return -v
	}
	return v
}

// gradCase is a function of float64 tensors whose gradients are checked.
type gradCase struct {
	name   string
	inputs []input
	f      func(in []*autograd.Tensor) *autograd.Tensor
}

// evalLoss runs f on fresh tensors holding vals and returns Σ f(x)⊙w for a
// fixed random w, and (when grad) the gradient of each input.
func evalLoss(t *testing.T, c gradCase, vals [][]float64, w []float64, grad bool) (float64, [][]float64) {
	t.Helper()
	e := autograd.New(cpu.New())
	e.SeedRandom(7, 0)
	ins := make([]*autograd.Tensor, len(vals))
	for i, v := range vals {
		ins[i] = e.FromFloat64(kernels.F64, c.inputs[i].shape, v)
		if grad {
			ins[i].Input()
		}
	}
	out := c.f(ins)
	if w == nil {
		return 0, nil
	}
	wt := e.FromFloat64(kernels.F64, out.Shape(), w)
	loss := autograd.SumAll(autograd.Mul(out, wt))
	var grads [][]float64
	if grad {
		if err := e.Backward(loss); err != nil {
			t.Fatalf("backward: %v", err)
		}
		for _, in := range ins {
			if in.Grad() == nil {
				grads = append(grads, make([]float64, in.Len()))
				continue
			}
			g, err := in.Grad().Values()
			if err != nil {
				t.Fatalf("read grad: %v", err)
			}
			grads = append(grads, g)
		}
	}
	v, err := loss.Item()
	if err != nil {
		t.Fatalf("forward: %v", err)
	}
	if err := e.EndStep(); err != nil {
		t.Fatalf("end step: %v", err)
	}
	return v, grads
}

// checkGradients compares Backward's gradients with central differences of
// the float64 forward.
func checkGradients(t *testing.T, c gradCase) {
	t.Helper()
	r := kerneltest.Rng(t)
	vals := make([][]float64, len(c.inputs))
	for i, in := range c.inputs {
		n := 1
		for _, s := range in.shape {
			n *= s
		}
		draw := in.draw
		if draw == nil {
			draw = normal
		}
		vals[i] = make([]float64, n)
		for j := range vals[i] {
			vals[i][j] = draw(r)
		}
	}
	// The output's shape: run once without gradients.
	e := autograd.New(cpu.New())
	e.SeedRandom(7, 0)
	probe := make([]*autograd.Tensor, len(vals))
	for i, v := range vals {
		probe[i] = e.FromFloat64(kernels.F64, c.inputs[i].shape, v)
	}
	out := c.f(probe)
	if err := e.Err(); err != nil {
		t.Fatalf("forward: %v", err)
	}
	w := kerneltest.Randn(r, out.Len(), 1)
	e.EndStep()

	_, grads := evalLoss(t, c, vals, w, true)
	const h = 1e-6
	for i := range vals {
		fd := make([]float64, len(vals[i]))
		for j := range vals[i] {
			orig := vals[i][j]
			vals[i][j] = orig + h
			up, _ := evalLoss(t, c, vals, w, false)
			vals[i][j] = orig - h
			down, _ := evalLoss(t, c, vals, w, false)
			vals[i][j] = orig
			fd[j] = (up - down) / (2 * h)
		}
		if e := kernels.RelErr(grads[i], fd); !(e < 1e-6) {
			t.Errorf("input %d: gradient differs from finite differences by %.3g (got %v want %v)", i, e, grads[i][:min(4, len(fd))], fd[:min(4, len(fd))])
		}
	}
}

func TestGradients(t *testing.T) {
	unaryCases := []struct {
		name string
		f    func(*autograd.Tensor) *autograd.Tensor
		draw func(*rand.Rand) float64
	}{
		{"Neg", autograd.Neg, nil},
		{"Abs", autograd.Abs, awayFromZero},
		{"Exp", autograd.Exp, nil},
		{"Log", autograd.Log, positive},
		{"Sqrt", autograd.Sqrt, positive},
		{"Rsqrt", autograd.Rsqrt, positive},
		{"Recip", autograd.Recip, awayFromZero},
		{"Square", autograd.Square, nil},
		{"Pow", func(x *autograd.Tensor) *autograd.Tensor { return autograd.Pow(x, 2.5) }, positive},
		{"Tanh", autograd.Tanh, nil},
		{"Sigmoid", autograd.Sigmoid, nil},
		{"SiLU", autograd.SiLU, nil},
		{"GELUTanh", autograd.GELUTanh, nil},
		{"GELU", autograd.GELU, nil},
		{"Affine", func(x *autograd.Tensor) *autograd.Tensor { return autograd.Affine(x, -1.5, 0.25) }, nil},
	}
	var cases []gradCase
	for _, u := range unaryCases {
		cases = append(cases, gradCase{u.name, []input{{[]int{3, 7}, u.draw}}, func(in []*autograd.Tensor) *autograd.Tensor { return u.f(in[0]) }})
	}
	binary := []struct {
		name string
		f    func(a, b *autograd.Tensor) *autograd.Tensor
	}{{"Add", autograd.Add}, {"Sub", autograd.Sub}, {"Mul", autograd.Mul}, {"Div", autograd.Div}}
	for _, bop := range binary {
		for _, shapes := range [][2][]int{{{3, 5}, {3, 5}}, {{2, 3, 5}, {5}}, {{3, 1, 5}, {1, 4, 1}}, {{4, 1}, {2, 1, 3}}} {
			cases = append(cases, gradCase{bop.name, []input{{shapes[0], nil}, {shapes[1], awayFromZero}},
				func(in []*autograd.Tensor) *autograd.Tensor { return bop.f(in[0], in[1]) }})
		}
	}
	for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
		ta, tb := tr[0], tr[1]
		as, bs := []int{2, 5, 3}, []int{2, 3, 4}
		if ta {
			as = []int{2, 3, 5}
		}
		if tb {
			bs = []int{2, 4, 3}
		}
		cases = append(cases, gradCase{"MatMulBatched", []input{{as, nil}, {bs, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.MatMul(in[0], in[1], ta, tb) }})
		cases = append(cases, gradCase{"MatMulShared", []input{{as, nil}, {bs[1:], nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.MatMul(in[0], in[1], ta, tb) }})
	}
	cases = append(cases,
		gradCase{"Linear", []input{{[]int{2, 3, 5}, nil}, {[]int{4, 5}, nil}, {[]int{4}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Linear(in[0], in[1], in[2]) }},
		// Add hands both operands the same gradient; a later contribution to
		// one must not change the other's (copy-on-write in accumulation).
		gradCase{"SharedGradients", []input{{[]int{3, 4}, nil}, {[]int{3, 4}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor {
				a, b := autograd.Exp(in[0]), autograd.Tanh(in[1])
				s := autograd.Scale(a, 2)
				t := autograd.Add(a, b)
				return autograd.Concat(0, autograd.Mul(s, s), autograd.Mul(t, t))
			}},
		gradCase{"ScaledLinear", []input{{[]int{2, 3, 5}, nil}, {[]int{4, 5}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.ScaledLinear(in[0], in[1], -2.5) }},
		gradCase{"Sum", []input{{[]int{3, 4, 5}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Sum(in[0], 1, false) }},
		gradCase{"Mean", []input{{[]int{3, 4, 5}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Mean(in[0], -1, true) }},
		gradCase{"SumSquares", []input{{[]int{3, 4, 5}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.SumSquares(in[0], 0, false) }},
		gradCase{"MeanAll", []input{{[]int{3, 7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.MeanAll(in[0]) }},
		gradCase{"MSE", []input{{[]int{3, 7}, nil}, {[]int{3, 7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.MSE(in[0], in[1]) }},
		gradCase{"Reshape", []input{{[]int{3, 4}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor {
				return autograd.Mul(autograd.Reshape(in[0], []int{2, -1}), autograd.Reshape(in[0], []int{2, 6}))
			}},
		gradCase{"Permute", []input{{[]int{2, 3, 4, 5}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Permute(in[0], 2, 0, 3, 1) }},
		gradCase{"Slice", []input{{[]int{3, 7, 2}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Slice(in[0], 1, 2, 6) }},
		gradCase{"Concat", []input{{[]int{3, 2, 2}, nil}, {[]int{3, 5, 2}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Concat(1, in[0], in[1], in[0]) }},
		gradCase{"RMSNorm", []input{{[]int{3, 2, 7}, nil}, {[]int{7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.RMSNorm(in[0], in[1], 1e-6) }},
		gradCase{"RMSNormNoWeight", []input{{[]int{5, 7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.RMSNorm(in[0], nil, 1e-5) }},
		gradCase{"LayerNorm", []input{{[]int{3, 2, 7}, nil}, {[]int{7}, nil}, {[]int{7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.LayerNorm(in[0], in[1], in[2], 1e-6) }},
		gradCase{"LayerNormNoAffine", []input{{[]int{5, 7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.LayerNorm(in[0], nil, nil, 1e-6) }},
		gradCase{"GroupNorm", []input{{[]int{2, 6, 3, 2}, nil}, {[]int{6}, nil}, {[]int{6}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.GroupNorm(in[0], 3, in[1], in[2], 1e-6) }},
		gradCase{"Softmax", []input{{[]int{3, 2, 7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Softmax(in[0]) }},
		gradCase{"Upsample2x", []input{{[]int{2, 3, 3, 2}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Upsample2x(in[0]) }},
		gradCase{"SwiGLU", []input{{[]int{3, 7}, nil}, {[]int{3, 7}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.SwiGLU(in[0], in[1]) }},
		gradCase{"Dropout", []input{{[]int{4, 9}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Dropout(in[0], 0.3) }},
	)
	for _, conv := range []struct{ k, stride, pad int }{{3, 1, 1}, {3, 2, 1}, {1, 1, 0}, {3, 2, 0}} {
		cases = append(cases, gradCase{"Conv2D", []input{{[]int{2, 3, 7, 6}, nil}, {[]int{4, 3, conv.k, conv.k}, nil}, {[]int{4}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor {
				return autograd.Conv2D(in[0], in[1], in[2], conv.stride, conv.pad)
			}})
	}
	attn := []autograd.AttentionOptions{
		{},
		{KeyLens: []int32{5, 3}},
		{Causal: true},
		{Causal: true, Window: 2, Scale: 0.7},
	}
	for _, o := range attn {
		cases = append(cases, gradCase{"Attention", []input{{[]int{2, 5, 4, 6}, nil}, {[]int{2, 5, 2, 6}, nil}, {[]int{2, 5, 2, 6}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor { return autograd.Attention(in[0], in[1], in[2], o) }})
	}
	for _, interleaved := range []bool{true, false} {
		cases = append(cases, gradCase{"Rope", []input{{[]int{2, 3, 2, 8}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor {
				e := in[0].Engine()
				cos, sin := ropeTables(e, 2, 3, 4)
				return autograd.Rope(in[0], cos, sin, interleaved)
			}})
	}
	cases = append(cases, gradCase{"Embedding", []input{{[]int{5, 3}, nil}},
		func(in []*autograd.Tensor) *autograd.Tensor {
			ids := in[0].Engine().FromInt32([]int{2, 3}, []int32{4, 0, 4, 2, 1, 4})
			return autograd.Embedding(in[0], ids)
		}})
	cases = append(cases, gradCase{"Checkpoint", []input{{[]int{3, 5}, nil}, {[]int{5, 5}, nil}, {[]int{5}, nil}},
		func(in []*autograd.Tensor) *autograd.Tensor {
			outer := autograd.Tanh(in[2]) // read inside without being an input
			return autograd.Checkpoint(func(x []*autograd.Tensor) *autograd.Tensor {
				h := autograd.SiLU(autograd.Linear(x[0], x[1], outer))
				return autograd.Dropout(autograd.Mul(h, h), 0.25)
			}, in[0], in[1])
		}})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { checkGradients(t, c) })
	}
}

// ropeTables returns cos/sin tables [b, s, half] of arbitrary angles.
func ropeTables(e *autograd.Engine, b, s, half int) (*autograd.Tensor, *autograd.Tensor) {
	cos := make([]float64, b*s*half)
	sin := make([]float64, b*s*half)
	for i := range cos {
		a := 0.37*float64(i) + 0.1
		cos[i], sin[i] = math.Cos(a), math.Sin(a)
	}
	return e.FromFloat64(kernels.F64, []int{b, s, half}, cos), e.FromFloat64(kernels.F64, []int{b, s, half}, sin)
}

// TestNormalResumes: draws continue identically from a saved RandomState.
func TestNormalResumes(t *testing.T) {
	e := autograd.New(cpu.New())
	e.SeedRandom(11, 0)
	first, _ := e.Normal(kernels.F32, []int{5}).Values()
	seed, off := e.RandomState()
	second, _ := e.Normal(kernels.F32, []int{7}).Values()

	f := autograd.New(cpu.New())
	f.SeedRandom(seed, off)
	again, _ := f.Normal(kernels.F32, []int{7}).Values()
	for i := range second {
		if again[i] != second[i] {
			t.Fatalf("draw %d after resume: %v, want %v", i, again[i], second[i])
		}
	}
	if first[0] == second[0] {
		t.Error("consecutive draws repeat")
	}
}
