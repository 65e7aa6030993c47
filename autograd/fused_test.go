package autograd_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestFusedGradients checks NormScale's and QKVNormRope's gradients against
// central differences in float64 (the norm weights frozen, as LoRA keeps
// them: the fused backwards give them none).
func TestFusedGradients(t *testing.T) {
	var cases []gradCase
	for _, mode := range []kernels.ScaleMode{kernels.ScaleAsIs, kernels.ScaleOnePlus, kernels.ScaleTanh} {
		cases = append(cases, gradCase{"NormScale/" + mode.String(), []input{{[]int{2, 3, 5}, nil}, {[]int{2, 15}, nil}, {[]int{2, 3, 5}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor {
				w := fixed(in[0].Engine(), 5, 5)
				return autograd.NormScale(in[0], w, 1e-3, autograd.NormScaleOptions{S: in[1], Chunk: 2, Chunks: 3, Mode: mode, Res: in[2]})
			}})
	}
	cases = append(cases, gradCase{"NormScale/residual only", []input{{[]int{4, 7}, nil}, {[]int{4, 7}, nil}},
		func(in []*autograd.Tensor) *autograd.Tensor {
			return autograd.NormScale(in[0], nil, 1e-3, autograd.NormScaleOptions{Res: in[1]})
		}})
	for _, il := range []bool{true, false} {
		cases = append(cases, gradCase{fmt.Sprintf("QKVNormRope/interleaved=%v", il), []input{{[]int{2, 3, 4 * 4}, nil}},
			func(in []*autograd.Tensor) *autograd.Tensor {
				e := in[0].Engine()
				cos, sin := ropeTables(e, 2, 3, 2)
				q, k, v := autograd.QKVNormRope(in[0], fixed(e, 3, 4), fixed(e, 4, 4), cos, sin, 2, 1, 1e-3, il)
				return autograd.Concat(2, q, autograd.Tanh(k), autograd.Square(v))
			}})
	}
	// Only some outputs reach the loss: the others' gradients are zero.
	cases = append(cases, gradCase{"QKVNormRope/k unused", []input{{[]int{1, 3, 3 * 6}, nil}},
		func(in []*autograd.Tensor) *autograd.Tensor {
			e := in[0].Engine()
			cos, sin := ropeTables(e, 1, 3, 3)
			q, _, v := autograd.QKVNormRope(in[0], fixed(e, 3, 6), fixed(e, 4, 6), cos, sin, 1, 1, 1e-3, true)
			return autograd.Mul(q, v)
		}})
	cases = append(cases, gradCase{"QKVNormRope/checkpointed", []input{{[]int{2, 2, 4 * 4}, nil}},
		func(in []*autograd.Tensor) *autograd.Tensor {
			e := in[0].Engine()
			cos, sin := ropeTables(e, 2, 2, 2)
			return autograd.Checkpoint(func(x []*autograd.Tensor) *autograd.Tensor {
				q, k, v := autograd.QKVNormRope(x[0], fixed(e, 3, 4), fixed(e, 4, 4), cos, sin, 2, 1, 1e-3, true)
				return autograd.Attention(q, k, v, autograd.AttentionOptions{})
			}, in[0])
		}})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { checkGradients(t, c) })
	}
}

// fusedSetup is one precision a fused op runs in: the dtype of the model's
// tensors, of the factor (an autocast linear's output is the autocast
// dtype) and the autocast setting.
type fusedSetup struct {
	model, factor, autocast kernels.DType
}

func (s fusedSetup) String() string {
	return fmt.Sprintf("model=%v/factor=%v/autocast=%v", s.model, s.factor, s.autocast)
}

var fusedSetups = []fusedSetup{
	{kernels.F64, kernels.F64, 0},
	{kernels.F32, kernels.F32, 0},
	{kernels.BF16, kernels.BF16, kernels.BF16}, // the bf16 model under autocast: the training path
	{kernels.F32, kernels.BF16, kernels.BF16},  // an f32 model under autocast
	{kernels.F16, kernels.F16, kernels.F16},
}

// fusedRun is the output and gradients of one run.
type fusedRun struct {
	out   []float64
	grads [][]float64
}

// runFused runs f on fresh tensors of the setup's dtypes drawn from seed
// and back-propagates ⟨out, G⟩.
func runFused(t *testing.T, s fusedSetup, seed uint64, shapes [][]int, dtypes []kernels.DType,
	f func(e *autograd.Engine, in []*autograd.Tensor) *autograd.Tensor) fusedRun {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 9))
	e := autograd.New(cpu.New())
	ins := make([]*autograd.Tensor, len(shapes))
	for i, sh := range shapes {
		n := 1
		for _, v := range sh {
			n *= v
		}
		ins[i] = e.FromFloat64(dtypes[i], sh, kerneltest.Randn(r, n, 0.8)).Input()
	}
	e.SetAutocast(s.autocast)
	out := f(e, ins)
	g := e.FromFloat64(out.DType(), out.Shape(), kerneltest.Randn(r, out.Len(), 1))
	if err := e.Backward(autograd.SumAll(autograd.Mul(out, g))); err != nil {
		t.Fatal(err)
	}
	var res fusedRun
	var err error
	if res.out, err = out.Values(); err != nil {
		t.Fatal(err)
	}
	for _, in := range ins {
		v, err := in.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		res.grads = append(res.grads, v)
	}
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return res
}

// sameValues fails unless got and want hold equal values element by
// element (−0 equals +0: a sum of disjoint zeros may differ in sign only).
func sameValues(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s[%d] = %v, the separate ops give %v", what, i, got[i], want[i])
		}
	}
}

// TestFusedMatchesComposition: on the CPU backend the fused ops give the
// very values of the separate ops they replace — output and every
// gradient — in every precision the model runs in, so the golden parity of
// the model cannot move by fusing.
func TestFusedMatchesComposition(t *testing.T) {
	for si, s := range fusedSetups {
		for _, mode := range []kernels.ScaleMode{kernels.ScaleAsIs, kernels.ScaleOnePlus, kernels.ScaleTanh} {
			for _, withRes := range []bool{false, true} {
				t.Run(fmt.Sprintf("NormScale/%v/%v/res=%v", s, mode, withRes), func(t *testing.T) {
					shapes := [][]int{{2, 5, 24}, {2, 4 * 24}, {2, 5, 24}}
					dtypes := []kernels.DType{s.model, s.factor, s.model}
					run := func(norm func(x, w *autograd.Tensor, eps float64, o autograd.NormScaleOptions) *autograd.Tensor) fusedRun {
						return runFused(t, s, uint64(si+1), shapes, dtypes, func(e *autograd.Engine, in []*autograd.Tensor) *autograd.Tensor {
							w := e.Constant("w", s.model, []int{24}, kerneltest.Randn(rand.New(rand.NewPCG(4, 4)), 24, 0.3))
							o := autograd.NormScaleOptions{S: in[1], Chunk: 1, Chunks: 4, Mode: mode}
							if withRes {
								o.Res = in[2]
							}
							y := norm(in[0], w, 1e-5, o)
							return autograd.Add(y, autograd.Scale(in[2], 0.5))
						})
					}
					want, got := run(autograd.ComposeNormScale), run(autograd.NormScale)
					sameValues(t, "output", got.out, want.out)
					for i, name := range []string{"dx", "dS", "dres"} {
						sameValues(t, name, got.grads[i], want.grads[i])
					}
				})
			}
		}
		t.Run(fmt.Sprintf("SwiGLU/%v", s), func(t *testing.T) {
			run := func(gate func(a, b *autograd.Tensor) *autograd.Tensor) fusedRun {
				return runFused(t, s, uint64(si+21), [][]int{{3, 40}, {3, 40}}, []kernels.DType{s.model, s.model},
					func(e *autograd.Engine, in []*autograd.Tensor) *autograd.Tensor { return gate(in[0], in[1]) })
			}
			want := run(func(a, b *autograd.Tensor) *autograd.Tensor { return autograd.Mul(autograd.SiLU(a), b) })
			got := run(autograd.SwiGLU)
			sameValues(t, "output", got.out, want.out)
			sameValues(t, "da", got.grads[0], want.grads[0])
			sameValues(t, "db", got.grads[1], want.grads[1])
		})
		t.Run(fmt.Sprintf("QKVNormRope/%v", s), func(t *testing.T) {
			const b, sq, hq, hkv, d = 2, 5, 3, 1, 8
			run := func(split func(qkv, wq, wk, cos, sin *autograd.Tensor, hq, hkv int, eps float64, interleaved bool) (q, k, v *autograd.Tensor)) fusedRun {
				return runFused(t, s, uint64(si+11), [][]int{{b, sq, (hq + 2*hkv) * d}}, []kernels.DType{s.model},
					func(e *autograd.Engine, in []*autograd.Tensor) *autograd.Tensor {
						r := rand.New(rand.NewPCG(5, 5))
						wq := e.Constant("wq", s.model, []int{d}, kerneltest.Randn(r, d, 0.3))
						wk := e.Constant("wk", s.model, []int{d}, kerneltest.Randn(r, d, 0.3))
						cos, sin := ropeTables(e, b, sq, d/2)
						if s.model != kernels.F64 {
							cos, sin = autograd.Cast(cos, kernels.F32), autograd.Cast(sin, kernels.F32)
						}
						q, k, v := split(in[0], wq, wk, cos, sin, hq, hkv, 1e-6, true)
						o := autograd.Attention(q, k, v, autograd.AttentionOptions{})
						// The forward is done with them (the tape may drop
						// them now, with Recompute).
						q.Release()
						k.Release()
						v.Release()
						return o
					})
			}
			recomputed := func(qkv, wq, wk, cos, sin *autograd.Tensor, hq, hkv int, eps float64, il bool) (q, k, v *autograd.Tensor) {
				q, k, v = autograd.QKVNormRope(qkv, wq, wk, cos, sin, hq, hkv, eps, il)
				if !autograd.Recompute(k) { // q and v with it
					t.Fatal("Recompute refused QKVNormRope's k")
				}
				return q, k, v
			}
			want, got, redone := run(autograd.ComposeQKVNormRope), run(autograd.QKVNormRope), run(recomputed)
			sameValues(t, "output", got.out, want.out)
			sameValues(t, "dqkv", got.grads[0], want.grads[0])
			// q, k and v dropped after the forward and made again from qkv
			// for the attention's backward: the same bits.
			sameValues(t, "output, q/k/v recomputed", redone.out, got.out)
			sameValues(t, "dqkv, q/k/v recomputed", redone.grads[0], got.grads[0])
		})
	}
}

// TestNormScalePendingSink: in a Next-DiT block the block's input x is
// read twice, by the pre-norm (NormScale of x) and as the post-norm's
// residual. The residual path's gradient is made first in the backward;
// the pre-norm's backward then adds its dx into it inside NormScaleGrad
// (no add over x's size), and x's gradient is what it is when x's two
// readers read separate copies and the two gradients are summed.
func TestNormScalePendingSink(t *testing.T) {
	const rows, cols = 6, 8
	run := func(shared bool) (gx []float64, adds int) {
		be := &sizedAdds{Backend: cpu.New(), n: rows * cols}
		e := autograd.New(be)
		x0 := fixed(e, 41, 2, 3, cols)
		x0.Input()
		s := fixed(e, 42, 2, 2*cols)
		w1, w2 := fixed(e, 43, cols), fixed(e, 44, cols)
		xa := autograd.Scale(x0, 1.5) // the block's input, an intermediate
		xb := xa
		if !shared {
			xb = autograd.Scale(x0, 1.5) // the same values, a second tensor
		}
		h := autograd.NormScale(xa, w1, 1e-5, autograd.NormScaleOptions{S: s, Chunk: 0, Chunks: 2, Mode: kernels.ScaleOnePlus})
		a := autograd.Tanh(h) // stands for the attention
		y := autograd.NormScale(a, w2, 1e-5, autograd.NormScaleOptions{S: s, Chunk: 1, Chunks: 2, Mode: kernels.ScaleTanh, Res: xb})
		return be.backward(t, e, autograd.SumAll(autograd.Square(y)), x0)
	}
	sunk, adds := run(true)
	apart, addsApart := run(false)
	if adds != 0 {
		t.Errorf("%d adds over the block input's gradient; want the pre-norm's backward to add into the residual's", adds)
	}
	if addsApart == 0 {
		t.Errorf("no adds with two copies of the input: the counter sees nothing")
	}
	if err := kernels.RelErr(sunk, apart); !(err < 1e-12) {
		t.Errorf("the block input's gradient is %.3g from the two readers' gradients summed", err)
	}
}

// TestNormScaleRecompute: a pre-norm whose output only a LoRA product reads
// in the backward (for lora_A's gradient) is dropped after the forward and
// rebuilt before that product's backward, so the tape holds one tensor of
// the norm's size less between the passes, and every gradient is the one
// kept norm gives, bit for bit (bf16 under autocast, as training runs; and
// float64).
func TestNormScaleRecompute(t *testing.T) {
	const rows, cols, out, rank = 12, 16, 24, 4
	for _, d := range []kernels.DType{kernels.BF16, kernels.F64} {
		run := func(recompute bool) (grads [][]float64, held int64) {
			be := cpu.New()
			e := autograd.New(be)
			master := kernels.F32
			if d == kernels.F64 {
				master = kernels.F64
			}
			r := rand.New(rand.NewPCG(51, 52))
			x0 := e.FromFloat64(master, []int{2, rows / 2, cols}, kerneltest.Randn(r, rows*cols, 1))
			x0.Input()
			s := e.Param("s", master, []int{2, 2 * cols}, kerneltest.Randn(r, 4*cols, 0.3))
			wn := e.Constant("wn", d, []int{cols}, kerneltest.Randn(r, cols, 0.2))
			w := e.Constant("w", d, []int{out, cols}, kerneltest.Randn(r, out*cols, 0.3))
			a := e.Param("a", master, []int{rank, cols}, kerneltest.Randn(r, rank*cols, 0.3))
			b := e.Param("b", master, []int{out, rank}, kerneltest.Randn(r, out*rank, 0.3))
			if d == kernels.BF16 {
				e.SetAutocast(kernels.BF16)
			}
			x := autograd.Cast(autograd.Scale(x0, 1.5), d) // the block's input, an intermediate
			sd := autograd.Cast(s, d)
			h := autograd.NormScale(x, wn, 1e-5, autograd.NormScaleOptions{S: sd, Chunk: 0, Chunks: 2, Mode: kernels.ScaleOnePlus})
			if recompute && !autograd.Recompute(h) {
				t.Fatal("Recompute refused NormScale's output")
			}
			y := autograd.LoRALinear(h, h, w, nil, a, b, 2)
			h.Release() // the forward is done with it, as the model's blocks release theirs
			held = be.MemStats().Allocated
			loss := autograd.SumAll(autograd.Square(autograd.Cast(y, master)))
			if err := e.Backward(loss); err != nil {
				t.Fatal(err)
			}
			for _, p := range []*autograd.Tensor{x0, s, a, b} {
				g, err := p.Grad().Values()
				if err != nil {
					t.Fatal(err)
				}
				grads = append(grads, g)
			}
			return grads, held
		}
		t.Run(d.String(), func(t *testing.T) {
			kept, heldKept := run(false)
			redone, heldRedone := run(true)
			if want := int64(rows * cols * d.Size()); heldKept-heldRedone != want {
				t.Errorf("between the passes %d bytes held with the norm kept, %d with it recomputed; want %d fewer", heldKept, heldRedone, want)
			}
			for i := range kept {
				for j := range kept[i] {
					if math.Float64bits(kept[i][j]) != math.Float64bits(redone[i][j]) {
						t.Fatalf("gradient %d[%d]: %v with the norm kept, %v recomputed", i, j, kept[i][j], redone[i][j])
					}
				}
			}
		})
	}
}

// TestNormScaleRecomputeResidual: a post-norm with a residual (a block's
// x1 = x + tanh(g)·norm(a)) that only the next norm keeps is dropped and
// rebuilt from a and x, which the op then keeps: one tensor less held
// between the passes, the same gradients bit for bit.
func TestNormScaleRecomputeResidual(t *testing.T) {
	const rows, cols = 12, 16
	run := func(recompute bool) (grads [][]float64, held int64) {
		be := cpu.New()
		e := autograd.New(be)
		r := rand.New(rand.NewPCG(61, 62))
		x0 := e.FromFloat64(kernels.F64, []int{2, rows / 2, cols}, kerneltest.Randn(r, rows*cols, 1))
		x0.Input()
		s := e.Param("s", kernels.F64, []int{2, 3 * cols}, kerneltest.Randn(r, 6*cols, 0.3))
		w1 := e.Constant("w1", kernels.F64, []int{cols}, kerneltest.Randn(r, cols, 0.2))
		w2 := e.Constant("w2", kernels.F64, []int{cols}, kerneltest.Randn(r, cols, 0.2))
		x := autograd.Scale(x0, 1.5)
		a := autograd.Tanh(x) // stands for the attention's projection
		x1 := autograd.NormScale(a, w1, 1e-5, autograd.NormScaleOptions{S: s, Chunk: 1, Chunks: 3, Mode: kernels.ScaleTanh, Res: x})
		if recompute && !autograd.Recompute(x1) {
			t.Fatal("Recompute refused NormScale's output")
		}
		hf := autograd.NormScale(x1, w2, 1e-5, autograd.NormScaleOptions{S: s, Chunk: 2, Chunks: 3, Mode: kernels.ScaleOnePlus})
		x1.Release()
		held = be.MemStats().Allocated
		if err := e.Backward(autograd.SumAll(autograd.Square(hf))); err != nil {
			t.Fatal(err)
		}
		for _, p := range []*autograd.Tensor{x0, s} {
			g, err := p.Grad().Values()
			if err != nil {
				t.Fatal(err)
			}
			grads = append(grads, g)
		}
		return grads, held
	}
	kept, heldKept := run(false)
	redone, heldRedone := run(true)
	if want := int64(rows * cols * 8); heldKept-heldRedone != want {
		t.Errorf("between the passes %d bytes held with x1 kept, %d recomputed; want %d fewer", heldKept, heldRedone, want)
	}
	for i := range kept {
		sameValues(t, fmt.Sprintf("gradient %d, x1 recomputed", i), redone[i], kept[i])
	}
}
