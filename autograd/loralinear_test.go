package autograd_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// Awkward LoRA sizes: no power of two anywhere.
const (
	loraIn   = 13
	loraOut  = 7
	loraRank = 3
)

// fixed returns a constant tensor of deterministic values (a frozen
// operand inside a gradient check, whose inputs all get gradients).
func fixed(e *autograd.Engine, seed uint64, shape ...int) *autograd.Tensor {
	n := 1
	for _, s := range shape {
		n *= s
	}
	r := rand.New(rand.NewPCG(seed, 1))
	return e.FromFloat64(kernels.F64, shape, kerneltest.Randn(r, n, 0.7))
}

// TestLoRALinearGradients checks every gradient of LoRALinear against
// central differences in float64: h is x itself, a dropout of x, or an
// independent tensor; with and without bias; w, a and b trainable or frozen.
func TestLoRALinearGradients(t *testing.T) {
	const s = 0.75
	x3 := input{[]int{2, 5, loraIn}, nil}
	w := input{[]int{loraOut, loraIn}, nil}
	bias := input{[]int{loraOut}, nil}
	a := input{[]int{loraRank, loraIn}, nil}
	b := input{[]int{loraOut, loraRank}, nil}
	cases := []gradCase{
		{"SameInput/Bias/TrainableW", []input{x3, w, bias, a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			return autograd.LoRALinear(in[0], in[0], in[1], in[2], in[3], in[4], s)
		}},
		{"SameInput/NoBias/FrozenW", []input{x3, a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			w := fixed(in[0].Engine(), 1, loraOut, loraIn)
			return autograd.LoRALinear(in[0], in[0], w, nil, in[1], in[2], s)
		}},
		{"Dropout/Bias/FrozenW", []input{x3, bias, a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			w := fixed(in[0].Engine(), 2, loraOut, loraIn)
			return autograd.LoRALinear(in[0], autograd.Dropout(in[0], 0.3), w, in[1], in[2], in[3], s)
		}},
		{"Dropout/NoBias/TrainableW", []input{x3, w, a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			return autograd.LoRALinear(in[0], autograd.Dropout(in[0], 0.3), in[1], nil, in[2], in[3], s)
		}},
		{"SeparateH/Bias/TrainableW", []input{x3, x3, w, bias, a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			return autograd.LoRALinear(in[0], in[1], in[2], in[3], in[4], in[5], -1.5)
		}},
		// Only the input needs a gradient: du is still needed, for dx.
		{"SameInput/FrozenAll", []input{{[]int{4, loraIn}, nil}}, func(in []*autograd.Tensor) *autograd.Tensor {
			e := in[0].Engine()
			return autograd.LoRALinear(in[0], in[0], fixed(e, 3, loraOut, loraIn), fixed(e, 4, loraOut),
				fixed(e, 5, loraRank, loraIn), fixed(e, 6, loraOut, loraRank), s)
		}},
		// Only the adapter needs gradients: the input is a constant.
		{"ConstantInput/AdapterOnly", []input{a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			e := in[0].Engine()
			x := fixed(e, 7, 3, 2, loraIn)
			return autograd.LoRALinear(x, x, fixed(e, 8, loraOut, loraIn), nil, in[0], in[1], s)
		}},
		// The low-rank factor given: its gradient is scale·g·b.
		{"LowRank/Bias/TrainableW", []input{x3, w, bias, {[]int{2, 5, loraRank}, nil}, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			return autograd.LowRankLinear(in[0], in[1], in[2], in[3], in[4], s)
		}},
		{"LowRank/NoBias/FrozenW", []input{x3, {[]int{2, 5, loraRank}, nil}, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			w := fixed(in[0].Engine(), 9, loraOut, loraIn)
			return autograd.LowRankLinear(in[0], w, nil, in[1], in[2], -0.5)
		}},
		// The factor from a checkpointed dropout and down-projection, as the
		// model's feed-forward w2 makes it.
		{"LowRank/CheckpointedFactor", []input{x3, a, b}, func(in []*autograd.Tensor) *autograd.Tensor {
			w := fixed(in[0].Engine(), 10, loraOut, loraIn)
			u := autograd.Checkpoint(func(c []*autograd.Tensor) *autograd.Tensor {
				return autograd.Linear(autograd.Dropout(c[0], 0.3), in[1], nil)
			}, in[0])
			return autograd.LowRankLinear(in[0], w, nil, u, in[2], s)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { checkGradients(t, c) })
	}
}

// poisonBackend fills every buffer it allocates with NaN, so a result an op
// forgets to write, or a product accumulated (beta = 1) into a buffer not
// written yet, shows up as NaN.
type poisonBackend struct{ kernels.Backend }

func (p poisonBackend) Alloc(d kernels.DType, n int) (kernels.Buffer, error) {
	buf, err := p.Backend.Alloc(d, n)
	if err == nil && d.IsFloat() {
		p.Backend.Fill(buf, math.NaN())
	}
	return buf, err
}

// loraSetup describes one adapted layer for the comparison tests.
type loraSetup struct {
	dropout    bool // h = dropout(x) instead of x
	bias       bool
	trainableW bool
}

func (s loraSetup) String() string {
	return fmt.Sprintf("dropout=%v/bias=%v/trainableW=%v", s.dropout, s.bias, s.trainableW)
}

// loraResult is a forward output and the gradients of every leaf that
// takes one (by name), with the backend's peak allocation over the step.
type loraResult struct {
	out   []float64
	grads map[string][]float64
	peak  int64
}

// loraForm is how a test computes the adapted layer.
type loraForm int

const (
	composedForm loraForm = iota // Linear, ScaledLinear and Add, as the model did before
	fusedForm                    // LoRALinear
	lowRankForm                  // LowRankLinear on u = Linear(h, a)
	baseForm                     // Linear alone, no update: the benchmarks' floor
)

func (f loraForm) String() string {
	return [...]string{"composed", "LoRALinear", "LowRankLinear", "base"}[f]
}

// runLoRALayer runs one step of the adapted layer on fresh tensors in the
// given form and returns its output and gradients. Values come from r's
// seed, so two calls with equal seeds see equal inputs.
func runLoRALayer(t *testing.T, be kernels.Backend, master, cast kernels.DType, s loraSetup, form loraForm, seed uint64) loraResult {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 2))
	e := autograd.New(be)
	e.SeedRandom(3, 0)
	x := e.FromFloat64(master, []int{2, 5, loraIn}, kerneltest.Randn(r, 2*5*loraIn, 1)).Input()
	x.Name = "x"
	wv := kerneltest.Randn(r, loraOut*loraIn, 0.3)
	var w *autograd.Tensor
	if s.trainableW {
		w = e.Param("w", master, []int{loraOut, loraIn}, wv)
	} else {
		w = e.Constant("w", master, []int{loraOut, loraIn}, wv)
	}
	bv := kerneltest.Randn(r, loraOut, 0.1)
	var bias *autograd.Tensor
	if s.bias {
		bias = e.Param("bias", master, []int{loraOut}, bv)
	}
	a := e.Param("a", master, []int{loraRank, loraIn}, kerneltest.Randn(r, loraRank*loraIn, 0.3))
	b := e.Param("b", master, []int{loraOut, loraRank}, kerneltest.Randn(r, loraOut*loraRank, 0.3))
	wt := e.FromFloat64(master, []int{2, 5, loraOut}, kerneltest.Randn(r, 2*5*loraOut, 1))
	const scale = 1.25

	be.ResetPeak()
	e.SetAutocast(cast)
	h := x
	if s.dropout {
		h = autograd.Dropout(x, 0.3)
	}
	var y *autograd.Tensor
	switch form {
	case fusedForm:
		y = autograd.LoRALinear(x, h, w, bias, a, b, scale)
	case lowRankForm:
		y = autograd.LowRankLinear(x, w, bias, autograd.Linear(h, a, nil), b, scale)
	default:
		base := autograd.Linear(x, w, bias)
		delta := autograd.ScaledLinear(autograd.Linear(h, a, nil), b, scale)
		y = autograd.Add(base, delta)
	}
	if err := e.Backward(autograd.SumAll(autograd.Mul(y, wt))); err != nil {
		t.Fatal(err)
	}
	res := loraResult{grads: map[string][]float64{}, peak: be.MemStats().Peak}
	var err error
	if res.out, err = y.Values(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*autograd.Tensor{x, w, bias, a, b} {
		if p == nil || p.Grad() == nil {
			continue
		}
		g, err := p.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		res.grads[p.Name] = g
	}
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return res
}

// allSetups lists every combination of dropout, bias and a trainable base.
func allSetups() []loraSetup {
	var out []loraSetup
	for _, d := range []bool{false, true} {
		for _, bias := range []bool{false, true} {
			for _, tw := range []bool{false, true} {
				out = append(out, loraSetup{d, bias, tw})
			}
		}
	}
	return out
}

// TestLoRALinearMatchesComposition: in float64 LoRALinear and LowRankLinear
// give the output and gradients of Linear + Dropout + Linear + ScaledLinear
// + Add to 1e-12 (they differ only in summation order), on a backend that
// poisons every new buffer; and neither peaks higher than the composition.
func TestLoRALinearMatchesComposition(t *testing.T) {
	for i, c := range allSetups() {
		for _, form := range []loraForm{fusedForm, lowRankForm} {
			t.Run(form.String()+"/"+c.String(), func(t *testing.T) { compareToComposition(t, c, form, uint64(100+i)) })
		}
	}
}

// compareToComposition runs one setup both ways in float64 and compares.
func compareToComposition(t *testing.T, s loraSetup, form loraForm, seed uint64) {
	want := runLoRALayer(t, poisonBackend{cpu.New()}, kernels.F64, 0, s, composedForm, seed)
	got := runLoRALayer(t, poisonBackend{cpu.New()}, kernels.F64, 0, s, form, seed)
	kerneltest.Check(t, "output", got.out, want.out, 1e-12)
	for _, name := range []string{"x", "w", "bias", "a", "b"} {
		wg, ok := want.grads[name]
		if gg := got.grads[name]; ok != (gg != nil) {
			t.Errorf("gradient of %s: %v has one %v, composition %v", name, form, gg != nil, ok)
			continue
		}
		if ok {
			kerneltest.Check(t, "gradient of "+name, got.grads[name], wg, 1e-12)
		}
	}
	if got.peak > want.peak {
		t.Errorf("peak %d bytes, composition %d", got.peak, want.peak)
	}
	t.Logf("peak bytes: %v %d, composition %d", form, got.peak, want.peak)
}

// TestLoRALinearAutocast: under bf16 autocast LoRALinear and LowRankLinear
// run on bf16 operands and their outputs and gradients are within bf16
// tolerance of the float32 run (and not equal to it: the low precision
// really ran).
func TestLoRALinearAutocast(t *testing.T) {
	for i, s := range allSetups() {
		for _, form := range []loraForm{fusedForm, lowRankForm} {
			t.Run(form.String()+"/"+s.String(), func(t *testing.T) { compareToFP32(t, s, form, uint64(200+i)) })
		}
	}
}

// compareToFP32 runs one setup in fp32 and under bf16 autocast.
func compareToFP32(t *testing.T, s loraSetup, form loraForm, seed uint64) {
	ref := runLoRALayer(t, cpu.New(), kernels.F32, 0, s, form, seed)
	got := runLoRALayer(t, cpu.New(), kernels.F32, kernels.BF16, s, form, seed)
	check := func(what string, g, w []float64) {
		err := kernels.RelErr(g, w)
		if !(err < 2e-2) {
			t.Errorf("%s differs from fp32 by %.3g", what, err)
		}
		if err == 0 {
			t.Errorf("%s equals fp32 exactly: autocast did not run", what)
		}
	}
	check("output", got.out, ref.out)
	for name, w := range ref.grads {
		check("gradient of "+name, got.grads[name], w)
	}
}

// TestLoRALinearAutocastPolicy traces the dtypes LoRALinear runs in under
// bf16 autocast: every operand bf16, one cast per operand, and float32
// gradients on the masters.
func TestLoRALinearAutocastPolicy(t *testing.T) {
	e := autograd.New(cpu.New())
	var ran []string
	e.Trace = func(op string, in []kernels.DType, out kernels.DType) {
		ran = append(ran, fmt.Sprintf("%s%v→%v", op, in, out))
	}
	r := kerneltest.Rng(t)
	x := e.FromFloat64(kernels.F32, []int{5, loraIn}, kerneltest.Randn(r, 5*loraIn, 1)).Input()
	w := e.Constant("w", kernels.BF16, []int{loraOut, loraIn}, kerneltest.Randn(r, loraOut*loraIn, 0.3))
	a := e.Param("a", kernels.F32, []int{loraRank, loraIn}, kerneltest.Randn(r, loraRank*loraIn, 0.3))
	b := e.Param("b", kernels.F32, []int{loraOut, loraRank}, kerneltest.Randn(r, loraOut*loraRank, 0.3))
	e.SetAutocast(kernels.BF16)
	y := autograd.LoRALinear(x, x, w, nil, a, b, 2)
	if err := e.Backward(autograd.SumAll(y)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Cast[F32]→BF16", // x, once for the base product and the update
		"Cast[F32]→BF16", // a
		"Cast[F32]→BF16", // b
		"LoRALinear[BF16 BF16 BF16 BF16]→BF16",
		"Cast[BF16]→F32", // reductions run in float32
		"Sum[F32]→F32",
	}
	if got := strings.Join(ran, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("ops ran as\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	for _, p := range []*autograd.Tensor{x, a, b} {
		if p.Grad() == nil || p.Grad().DType() != kernels.F32 {
			t.Errorf("%v: gradient %v, want F32", p, p.Grad())
		}
	}
}

// TestLoRALinearNoLeak: after every step the backend holds exactly what it
// held after the first (parameters and their gradients), with and without
// dropout, autocast and checkpointing.
func TestLoRALinearNoLeak(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dropout    bool
		autocast   kernels.DType
		checkpoint bool
		lowRank    bool // LowRankLinear on a checkpointed factor, as the model's w2
	}{
		{"plain", false, 0, false, false},
		{"dropout", true, 0, false, false},
		{"bf16", false, kernels.BF16, false, false},
		{"bf16-dropout", true, kernels.BF16, false, false},
		{"bf16-checkpointed", true, kernels.BF16, true, false},
		{"lowrank", true, 0, false, true},
		{"bf16-lowrank", true, kernels.BF16, false, true},
		{"bf16-lowrank-checkpointed", true, kernels.BF16, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := cpu.New()
			e := autograd.New(be)
			r := kerneltest.Rng(t)
			w := e.Constant("w", kernels.BF16, []int{loraOut, loraIn}, kerneltest.Randn(r, loraOut*loraIn, 0.3))
			bias := e.Param("bias", kernels.F32, []int{loraOut}, kerneltest.Randn(r, loraOut, 0.1))
			a := e.Param("a", kernels.F32, []int{loraRank, loraIn}, kerneltest.Randn(r, loraRank*loraIn, 0.3))
			b := e.Param("b", kernels.F32, []int{loraOut, loraRank}, kerneltest.Randn(r, loraOut*loraRank, 0.3))
			xs := kerneltest.Randn(r, 3*4*loraIn, 1)
			layer := func(in []*autograd.Tensor) *autograd.Tensor {
				if tc.lowRank {
					u := autograd.Checkpoint(func(c []*autograd.Tensor) *autograd.Tensor {
						h := autograd.Dropout(c[0], 0.2)
						defer h.Release()
						return autograd.Linear(h, a, nil)
					}, in[0])
					defer u.Release()
					return autograd.LowRankLinear(in[0], w, bias, u, b, 0.5)
				}
				h := in[0]
				if tc.dropout {
					h = autograd.Dropout(in[0], 0.2)
				}
				y := autograd.LoRALinear(in[0], h, w, bias, a, b, 0.5)
				if h != in[0] {
					h.Release()
				}
				return y
			}
			var after1 int64
			for step := 1; step <= 6; step++ {
				e.SetAutocast(tc.autocast)
				x := e.FromFloat64(kernels.F32, []int{3, 4, loraIn}, xs).Input()
				s := autograd.SiLU(x) // an intermediate input, as in the model
				var y *autograd.Tensor
				if tc.checkpoint {
					y = autograd.Checkpoint(layer, s)
				} else {
					y = layer([]*autograd.Tensor{s})
				}
				if err := e.Backward(autograd.MeanAll(autograd.Square(y))); err != nil {
					t.Fatal(err)
				}
				if err := e.EndStep(); err != nil {
					t.Fatal(err)
				}
				got := be.MemStats().Allocated
				if step == 1 {
					after1 = got
					continue
				}
				if got != after1 {
					t.Fatalf("step %d: %d bytes allocated, %d after step 1", step, got, after1)
				}
			}
		})
	}
}

// TestLoRALinearBadShapes: operands that do not fit record an error naming
// the op and the operand instead of panicking. A case with u set calls
// LowRankLinear, otherwise LoRALinear.
func TestLoRALinearBadShapes(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		x, h, w, bias, a, u, b []int
		want                   string
	}{
		{"input width", []int{4, 12}, []int{4, 12}, []int{7, 13}, nil, []int{3, 13}, nil, []int{7, 3}, "input"},
		{"h shape", []int{4, 13}, []int{5, 13}, []int{7, 13}, nil, []int{3, 13}, nil, []int{7, 3}, "update input"},
		{"weight rank", []int{4, 13}, nil, []int{7, 13, 1}, nil, []int{3, 13}, nil, []int{7, 3}, "weight"},
		{"bias", []int{4, 13}, nil, []int{7, 13}, []int{6}, []int{3, 13}, nil, []int{7, 3}, "bias"},
		{"lora_A", []int{4, 13}, nil, []int{7, 13}, nil, []int{3, 12}, nil, []int{7, 3}, "lora_A"},
		{"no lora_A", []int{4, 13}, nil, []int{7, 13}, nil, nil, nil, []int{7, 3}, "needs"},
		{"lora_B rank", []int{4, 13}, nil, []int{7, 13}, nil, []int{3, 13}, nil, []int{7, 2}, "lora_B"},
		{"lora_B out", []int{4, 13}, nil, []int{7, 13}, nil, []int{3, 13}, nil, []int{6, 3}, "lora_B"},
		{"factor axes", []int{2, 4, 13}, nil, []int{7, 13}, nil, nil, []int{2, 5, 3}, []int{7, 3}, "low-rank factor"},
		{"factor rank", []int{2, 4, 13}, nil, []int{7, 13}, nil, nil, []int{8, 3}, []int{7, 3}, "low-rank factor"},
		{"factor width", []int{2, 4, 13}, nil, []int{7, 13}, []int{7}, nil, []int{2, 4, 2}, []int{7, 3}, "lora_B"},
		{"low-rank bias", []int{2, 4, 13}, nil, []int{7, 13}, []int{8}, nil, []int{2, 4, 3}, []int{7, 3}, "bias"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := autograd.New(cpu.New())
			r := kerneltest.Rng(t)
			mk := func(shape []int) *autograd.Tensor {
				if shape == nil {
					return nil
				}
				n := 1
				for _, s := range shape {
					n *= s
				}
				return e.FromFloat64(kernels.F32, shape, kerneltest.Randn(r, n, 1))
			}
			x := mk(tc.x)
			op := "LoRALinear"
			if tc.u != nil {
				op = "LowRankLinear"
				autograd.LowRankLinear(x, mk(tc.w), mk(tc.bias), mk(tc.u), mk(tc.b), 1)
			} else {
				h := x
				if tc.h != nil {
					h = mk(tc.h)
				}
				autograd.LoRALinear(x, h, mk(tc.w), mk(tc.bias), mk(tc.a), mk(tc.b), 1)
			}
			err := e.Err()
			if err == nil || !strings.Contains(err.Error(), op) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one naming %s and %q", err, op, tc.want)
			}
		})
	}
}

// openCUDA opens the GPU backend, or skips where there is none.
func openCUDA(t testing.TB) kernels.Backend {
	t.Helper()
	b, err := kernels.Open("cuda", 0)
	if err != nil {
		t.Skipf("no CUDA device, GPU test skipped: %v", err)
	}
	return b
}

// TestLoRALinearCUDA: on the GPU backend LoRALinear and LowRankLinear give
// the CPU backend's outputs and gradients, fp32 within 1e-5 and bf16
// autocast within 1e-2.
func TestLoRALinearCUDA(t *testing.T) {
	openCUDA(t) // skip early where there is no GPU
	for i, s := range allSetups() {
		for _, form := range []loraForm{fusedForm, lowRankForm} {
			for _, c := range []struct {
				cast kernels.DType
				tol  float64
			}{{0, 1e-5}, {kernels.BF16, 1e-2}} {
				t.Run(fmt.Sprintf("%v/%v/autocast=%v", form, s, c.cast), func(t *testing.T) {
					seed := uint64(300 + i)
					want := runLoRALayer(t, cpu.New(), kernels.F32, c.cast, s, form, seed)
					got := runLoRALayer(t, openCUDA(t), kernels.F32, c.cast, s, form, seed)
					kerneltest.Check(t, "output", got.out, want.out, c.tol)
					for name, w := range want.grads {
						kerneltest.Check(t, "gradient of "+name, got.grads[name], w, c.tol)
					}
				})
			}
		}
	}
}

// BenchmarkLoRALinear times the forward and backward of one adapted layer
// under bf16 autocast (frozen bf16 weight, fp32 adapter masters, an input
// that needs its gradient), fused against the composition the model used
// before (Linear + Linear + ScaledLinear + Add), with the layer without
// its update as the floor. On the GPU it uses NewBie's shapes for 4096
// tokens; on the CPU the same layers shrunk 8×.
func BenchmarkLoRALinear(b *testing.B) {
	type layer struct {
		name    string
		in, out int
	}
	newbie := []layer{{"qkv", 2304, 3840}, {"w1", 2304, 9216}, {"w2", 9216, 2304}}
	type target struct {
		name   string
		open   func() (kernels.Backend, error)
		rows   int
		shrink int
	}
	targets := []target{
		{"cpu", func() (kernels.Backend, error) { return cpu.New(), nil }, 512, 8},
		{"cuda", func() (kernels.Backend, error) { return kernels.Open("cuda", 0) }, 4096, 1},
	}
	for _, tg := range targets {
		for _, ly := range newbie {
			for _, rank := range []int{16, 64} {
				for _, dropout := range []float64{0, 0.05} {
					for _, form := range []loraForm{baseForm, composedForm, fusedForm} {
						if form == baseForm && (rank != 16 || dropout != 0) {
							continue // the floor once per layer
						}
						name := fmt.Sprintf("%s/%s/rank=%d/dropout=%g/%v", tg.name, ly.name, rank, dropout, form)
						b.Run(name, func(b *testing.B) {
							be, err := tg.open()
							if err != nil {
								b.Skipf("no %s backend: %v", tg.name, err)
							}
							in, out := ly.in/tg.shrink, ly.out/tg.shrink
							benchLoRALayer(b, be, tg.rows, in, out, rank, dropout, form)
						})
					}
				}
			}
		}
	}
}

// benchValues caches the benchmark's random host values: NewBie-sized
// draws take long enough on the host to slow the sweep down.
var benchValues = map[[2]int][]float64{}

func benchFill(n, seed int) []float64 {
	k := [2]int{n, seed}
	if v, ok := benchValues[k]; ok {
		return v
	}
	v := make([]float64, n)
	for i := range v {
		v[i] = kernels.NormalAt(uint64(seed), uint64(i), 0, 1)
	}
	benchValues[k] = v
	return v
}

// benchLoRALayer times steps of one adapted layer. The input is a bf16
// leaf uploaded once (a per-step upload would time the host), so its
// gradient is accumulated into an fp32 Grad each step, in both forms.
func benchLoRALayer(b *testing.B, be kernels.Backend, rows, in, out, rank int, dropout float64, form loraForm) {
	e := autograd.New(be)
	w := e.Constant("w", kernels.BF16, []int{out, in}, benchFill(out*in, 1))
	a := e.Param("a", kernels.F32, []int{rank, in}, benchFill(rank*in, 2))
	bb := e.Param("b", kernels.F32, []int{out, rank}, benchFill(out*rank, 3))
	x := e.Param("x", kernels.BF16, []int{rows, in}, benchFill(rows*in, 4))
	scale := 1 / float64(in) // keeps the sums of unit draws small
	step := func() {
		e.SetAutocast(kernels.BF16)
		h := x
		if dropout > 0 && form != baseForm {
			h = autograd.Dropout(x, dropout)
		}
		var y *autograd.Tensor
		switch form {
		case baseForm:
			y = autograd.Linear(x, w, nil)
		case fusedForm:
			y = autograd.LoRALinear(x, h, w, nil, a, bb, scale)
		default:
			y = autograd.Add(autograd.Linear(x, w, nil), autograd.ScaledLinear(autograd.Linear(h, a, nil), bb, scale))
		}
		e.SetAutocast(0)
		// A loss on one row: a full-size gradient still reaches y (Slice's
		// backward), without timing a reduction over all of y.
		if err := e.Backward(autograd.SumAll(autograd.Slice(y, 0, 0, 1))); err != nil {
			b.Fatal(err)
		}
		if err := e.EndStep(); err != nil {
			b.Fatal(err)
		}
	}
	step() // warm: kernels compiled, casts and pools settled
	be.ResetPeak()
	b.ResetTimer()
	for range b.N {
		step()
	}
	b.StopTimer()
	b.ReportMetric(float64(be.MemStats().Peak)/(1<<20), "peakMiB")
	for _, t := range []*autograd.Tensor{w, a, bb, x} {
		t.Release()
	}
}

// smallLoRALayer makes a layer's operands on e from seed: the input x
// [6, loraIn] and frozen weight w in dtype d, trainable adapter matrices a
// and b in dtype master.
func smallLoRALayer(e *autograd.Engine, seed uint64, d, master kernels.DType) (x, w, a, b *autograd.Tensor) {
	r := rand.New(rand.NewPCG(seed, seed+1))
	x = e.FromFloat64(d, []int{6, loraIn}, kerneltest.Randn(r, 6*loraIn, 1))
	w = e.Constant("w", d, []int{loraOut, loraIn}, kerneltest.Randn(r, loraOut*loraIn, 0.3))
	a = e.Param("a", master, []int{loraRank, loraIn}, kerneltest.Randn(r, loraRank*loraIn, 0.3))
	b = e.Param("b", master, []int{loraOut, loraRank}, kerneltest.Randn(r, loraOut*loraRank, 0.3))
	return x, w, a, b
}

// addCounter is a CPU backend that counts the adds into float32 buffers
// (gradient accumulation into the masters' gradients).
type addCounter struct {
	*cpu.Backend
	adds int
}

func (c *addCounter) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	if op == kernels.Add && dst.DType() == kernels.F32 {
		c.adds++
	}
	c.Backend.Binary(op, dst, dstShape, a, aShape, b, bShape)
}

// TestLoRALinearGradSink: once the adapter masters have gradients, further
// passes add into them inside the products (no bf16 gradient, no add), and
// the sums are the passes' gradients added up: under bf16 autocast within
// bf16's rounding, in float64 to the last bits.
func TestLoRALinearGradSink(t *testing.T) {
	for _, c := range []struct {
		name     string
		dt, cast kernels.DType
		tol      float64
	}{{"bf16 autocast", kernels.F32, kernels.BF16, 1e-2}, {"fp64", kernels.F64, 0, 1e-12}} {
		t.Run(c.name, func(t *testing.T) {
			// run makes the layer afresh and runs one pass per scale; it
			// returns the masters' gradients and the adds into float32
			// buffers after the first pass.
			run := func(scales ...float64) (ga, gb []float64, adds int) {
				be := &addCounter{Backend: cpu.New()}
				e := autograd.New(be)
				x, w, a, b := smallLoRALayer(e, 5, c.dt, c.dt)
				e.SetAutocast(c.cast)
				for i, scale := range scales {
					if i == 1 {
						be.adds = 0
					}
					y := autograd.LoRALinear(x, x, w, nil, a, b, scale)
					if err := e.Backward(autograd.SumAll(autograd.Mul(y, y))); err != nil {
						t.Fatal(err)
					}
				}
				var err error
				if ga, err = a.Grad().Values(); err != nil {
					t.Fatal(err)
				}
				if gb, err = b.Grad().Values(); err != nil {
					t.Fatal(err)
				}
				if len(scales) == 1 {
					be.adds = 0
				}
				return ga, gb, be.adds
			}
			ga, gb, adds := run(2, 0.5)
			ga1, gb1, _ := run(2)
			ga2, gb2, _ := run(0.5)
			if adds != 0 {
				t.Errorf("the second pass added into float32 buffers %d times; want the products to accumulate", adds)
			}
			for _, g := range []struct {
				name            string
				got, one, other []float64
			}{{"lora_A", ga, ga1, ga2}, {"lora_B", gb, gb1, gb2}} {
				want := make([]float64, len(g.one))
				for i := range want {
					want[i] = g.one[i] + g.other[i]
				}
				if err := kernels.RelErr(g.got, want); !(err <= c.tol) {
					t.Errorf("%s's gradient after two passes is %.3g from the sum of the passes' own", g.name, err)
				}
			}
		})
	}
}

// castCounter is a CPU backend that counts Cast calls.
type castCounter struct {
	*cpu.Backend
	casts int
}

func (c *castCounter) Cast(dst, src kernels.Buffer) { c.casts++; c.Backend.Cast(dst, src) }

// TestWorkingCopy: with a working copy set, autocast's cast of a master
// reads it (no conversion runs), the layer computes exactly what it does
// without one, and the masters' gradients are the same.
func TestWorkingCopy(t *testing.T) {
	run := func(working bool) (out, ga []float64, casts int) {
		be := &castCounter{Backend: cpu.New()}
		e := autograd.New(be)
		x, w, a, b := smallLoRALayer(e, 8, kernels.BF16, kernels.F32)
		if working {
			for _, p := range []*autograd.Tensor{a, b} {
				c := e.Zeros(kernels.BF16, p.Shape()).Keep()
				be.Backend.Cast(c.Buffer(), p.Buffer()) // what the optimizer keeps it equal to
				if err := p.SetWorking(c); err != nil {
					t.Fatal(err)
				}
			}
		}
		e.SetAutocast(kernels.BF16)
		be.casts = 0
		y := autograd.LoRALinear(x, x, w, nil, a, b, 2)
		if err := e.Backward(autograd.SumAll(autograd.Mul(y, y))); err != nil {
			t.Fatal(err)
		}
		var err error
		if out, err = y.Values(); err != nil {
			t.Fatal(err)
		}
		if ga, err = a.Grad().Values(); err != nil {
			t.Fatal(err)
		}
		return out, ga, be.casts
	}
	out0, ga0, casts0 := run(false)
	out1, ga1, casts1 := run(true)
	if casts1 != casts0-2 {
		t.Errorf("%d casts with working copies, %d without; want the two masters' casts gone", casts1, casts0)
	}
	for i := range out0 {
		if out0[i] != out1[i] {
			t.Fatalf("output[%d] = %v with working copies, %v without", i, out1[i], out0[i])
		}
	}
	for i := range ga0 {
		if ga0[i] != ga1[i] {
			t.Fatalf("lora_A's gradient[%d] = %v with working copies, %v without", i, ga1[i], ga0[i])
		}
	}
	e := autograd.New(cpu.New())
	p := e.Param("p", kernels.F32, []int{2}, []float64{1, 2})
	for _, bad := range []*autograd.Tensor{e.Zeros(kernels.BF16, []int{3}), e.Zeros(kernels.F32, []int{2}), e.Zeros(kernels.I32, []int{2})} {
		if err := p.SetWorking(bad); err == nil {
			t.Errorf("SetWorking accepted %v", bad)
		}
	}
}

// sizedAdds is a CPU backend that counts the adds into buffers of n
// elements.
type sizedAdds struct {
	*cpu.Backend
	n, adds int
}

// backward runs e's backward from loss and returns x's gradient and the
// adds of the counted size the backward made.
func (c *sizedAdds) backward(t *testing.T, e *autograd.Engine, loss, x *autograd.Tensor) ([]float64, int) {
	t.Helper()
	c.adds = 0
	if err := e.Backward(loss); err != nil {
		t.Fatal(err)
	}
	g, err := x.Grad().Values()
	if err != nil {
		t.Fatal(err)
	}
	return g, c.adds
}

func (c *sizedAdds) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	if op == kernels.Add && dst.Len() == c.n {
		c.adds++
	}
	c.Backend.Binary(op, dst, dstShape, a, aShape, b, bShape)
}

// TestLoRALinearPendingSink: when two layers read one intermediate (a
// SwiGLU feed-forward's w1 and w3), the second backward adds its input
// gradient into the first's inside its products — no add over the input —
// and the input's gradient is the two layers' own gradients summed.
func TestLoRALinearPendingSink(t *testing.T) {
	run := func(first, second bool) (gx []float64, adds int) {
		be := &sizedAdds{Backend: cpu.New(), n: 6 * loraIn}
		e := autograd.New(be)
		x0, w1, a1, b1 := smallLoRALayer(e, 31, kernels.F64, kernels.F64)
		x0.Input()
		_, w3, a3, b3 := smallLoRALayer(e, 33, kernels.F64, kernels.F64)
		x := autograd.Scale(x0, 1.5) // an intermediate both layers read
		var loss *autograd.Tensor
		if first {
			y1 := autograd.LoRALinear(x, x, w1, nil, a1, b1, 2)
			loss = autograd.SumAll(autograd.Mul(y1, y1))
		}
		if second {
			y3 := autograd.LoRALinear(x, x, w3, nil, a3, b3, 0.5)
			l3 := autograd.SumAll(autograd.Mul(y3, y3))
			if loss == nil {
				loss = l3
			} else {
				loss = autograd.Add(loss, l3)
			}
		}
		return be.backward(t, e, loss, x0)
	}
	both, adds := run(true, true)
	g1, _ := run(true, false)
	g3, _ := run(false, true)
	if adds != 0 {
		t.Errorf("%d adds over the shared input's gradient; want the second layer's products to accumulate", adds)
	}
	want := make([]float64, len(g1))
	for i := range want {
		want[i] = g1[i] + g3[i]
	}
	if err := kernels.RelErr(both, want); !(err < 1e-12) {
		t.Errorf("the shared input's gradient is %.3g from the sum of the layers' own", err)
	}
}

// TestLoRALinearRecompute: Recompute on a LoRA product's output lets the
// tape drop it between the passes and run the two products again for its
// reader's backward: one output less held, the same gradients bit for bit
// (fp64, and bf16 under autocast with an fp8 base weight's dequantisation
// redone too).
func TestLoRALinearRecompute(t *testing.T) {
	for _, c := range []struct {
		name string
		d    kernels.DType
		fp8  bool
	}{{"F64", kernels.F64, false}, {"BF16", kernels.BF16, false}, {"BF16/fp8 base", kernels.BF16, true}} {
		run := func(recompute bool) (grads [][]float64, held int64) {
			be := cpu.New()
			e := autograd.New(be)
			master := kernels.F32
			if c.d == kernels.F64 {
				master = kernels.F64
			}
			x0, w, a, b := smallLoRALayer(e, 71, c.d, master)
			x0.Input()
			if c.fp8 {
				q, err := autograd.QuantizeFP8(w)
				if err != nil {
					t.Fatal(err)
				}
				w = q
			}
			if c.d == kernels.BF16 {
				e.SetAutocast(kernels.BF16)
			}
			x := autograd.Scale(x0, 1.5)
			y := autograd.LoRALinear(x, x, w, nil, a, b, 2)
			if recompute && !autograd.Recompute(y) {
				t.Fatal("Recompute refused a LoRA product's output")
			}
			z := autograd.Square(y)
			y.Release()
			held = be.MemStats().Allocated
			if err := e.Backward(autograd.SumAll(z)); err != nil {
				t.Fatal(err)
			}
			for _, p := range []*autograd.Tensor{x0, a, b} {
				g, err := p.Grad().Values()
				if err != nil {
					t.Fatal(err)
				}
				grads = append(grads, g)
			}
			return grads, held
		}
		t.Run(c.name, func(t *testing.T) {
			kept, heldKept := run(false)
			redone, heldRedone := run(true)
			if want := int64(6 * loraOut * c.d.Size()); heldKept-heldRedone != want {
				t.Errorf("between the passes %d bytes held with the output kept, %d recomputed; want %d fewer", heldKept, heldRedone, want)
			}
			for i := range kept {
				sameValues(t, fmt.Sprintf("gradient %d, output recomputed", i), redone[i], kept[i])
			}
		})
	}
}
