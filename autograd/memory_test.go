package autograd_test

import (
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// blockModel is a stack of small pre-norm transformer-like blocks
// (attention + SwiGLU MLP) used by the memory and checkpointing tests.
type blockModel struct {
	e      *autograd.Engine
	blocks [][]*autograd.Tensor // norm, qkv, out, w1, w2 per block
}

const (
	bmDim   = 24
	bmHeads = 4
	bmHid   = 40
)

func newBlockModel(t *testing.T, e *autograd.Engine, depth int) *blockModel {
	r := kerneltest.Rng(t)
	m := &blockModel{e: e}
	for range depth {
		m.blocks = append(m.blocks, []*autograd.Tensor{
			e.Param("norm", kernels.F32, []int{bmDim}, kerneltest.Randn(r, bmDim, 1)),
			e.Param("qkv", kernels.F32, []int{3 * bmDim, bmDim}, kerneltest.Randn(r, 3*bmDim*bmDim, 0.2)),
			e.Param("out", kernels.F32, []int{bmDim, bmDim}, kerneltest.Randn(r, bmDim*bmDim, 0.2)),
			e.Param("w1", kernels.F32, []int{bmHid, bmDim}, kerneltest.Randn(r, bmHid*bmDim, 0.2)),
			e.Param("w2", kernels.F32, []int{bmDim, bmHid}, kerneltest.Randn(r, bmHid*bmDim, 0.2)),
		})
	}
	return m
}

func block(p []*autograd.Tensor, x *autograd.Tensor) *autograd.Tensor {
	b, s := x.Shape()[0], x.Shape()[1]
	h := autograd.RMSNorm(x, p[0], 1e-6)
	qkv := autograd.Linear(h, p[1], nil)
	q := autograd.Reshape(autograd.Slice(qkv, 2, 0, bmDim), []int{b, s, bmHeads, bmDim / bmHeads})
	k := autograd.Reshape(autograd.Slice(qkv, 2, bmDim, 2*bmDim), []int{b, s, bmHeads, bmDim / bmHeads})
	v := autograd.Reshape(autograd.Slice(qkv, 2, 2*bmDim, 3*bmDim), []int{b, s, bmHeads, bmDim / bmHeads})
	a := autograd.Reshape(autograd.Attention(q, k, v, autograd.AttentionOptions{}), []int{b, s, bmDim})
	x = autograd.Add(x, autograd.Linear(a, p[2], nil))
	f := autograd.Linear(autograd.SiLU(autograd.Linear(autograd.RMSNorm(x, p[0], 1e-6), p[3], nil)), p[4], nil)
	return autograd.Add(x, f)
}

// loss runs the model on x and returns the mean squared output.
func (m *blockModel) loss(x *autograd.Tensor, checkpoint bool) *autograd.Tensor {
	for _, p := range m.blocks {
		if checkpoint {
			x = autograd.Checkpoint(func(in []*autograd.Tensor) *autograd.Tensor { return block(p, in[0]) }, x)
		} else {
			x = block(p, x)
		}
	}
	return autograd.MeanAll(autograd.Square(x))
}

// TestNoLeakOver100Steps: after every step the backend holds exactly what it
// held after step 1 (parameters and their gradients), with and without
// checkpointing and autocast.
func TestNoLeakOver100Steps(t *testing.T) {
	for _, tc := range []struct {
		name       string
		checkpoint bool
		autocast   kernels.DType
	}{{"plain", false, 0}, {"checkpointed", true, 0}, {"bf16", false, kernels.BF16}, {"bf16-checkpointed", true, kernels.BF16}} {
		t.Run(tc.name, func(t *testing.T) {
			b := cpu.New()
			e := autograd.New(b)
			m := newBlockModel(t, e, 2)
			r := kerneltest.Rng(t)
			xs := kerneltest.Randn(r, 2*5*bmDim, 1)
			var after1 int64
			for step := 1; step <= 100; step++ {
				e.SetAutocast(tc.autocast)
				x := e.FromFloat64(kernels.F32, []int{2, 5, bmDim}, xs)
				if err := e.Backward(m.loss(x, tc.checkpoint)); err != nil {
					t.Fatal(err)
				}
				if err := e.EndStep(); err != nil {
					t.Fatal(err)
				}
				got := b.MemStats().Allocated
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

// TestCheckpointingSameGradientsLowerPeak: checkpointing every block gives
// bit-identical gradients on the CPU backend and a lower peak.
func TestCheckpointingSameGradientsLowerPeak(t *testing.T) {
	run := func(checkpoint bool) (map[int][]float64, int64) {
		b := cpu.New()
		e := autograd.New(b)
		m := newBlockModel(t, e, 4)
		r := kerneltest.Rng(t)
		x := e.FromFloat64(kernels.F32, []int{2, 9, bmDim}, kerneltest.Randn(r, 2*9*bmDim, 1))
		b.ResetPeak()
		if err := e.Backward(m.loss(x, checkpoint)); err != nil {
			t.Fatal(err)
		}
		peak := b.MemStats().Peak
		grads := map[int][]float64{}
		for i, blk := range m.blocks {
			for j, p := range blk {
				g, err := p.Grad().Values()
				if err != nil {
					t.Fatal(err)
				}
				grads[i*10+j] = g
			}
		}
		return grads, peak
	}
	plain, plainPeak := run(false)
	ckpt, ckptPeak := run(true)
	for k, want := range plain {
		got := ckpt[k]
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("parameter %d: checkpointed gradient %v differs from %v at %d", k, got[i], want[i], i)
			}
		}
	}
	if ckptPeak >= plainPeak {
		t.Errorf("peak with checkpointing %d bytes, without %d: checkpointing did not lower it", ckptPeak, plainPeak)
	}
	t.Logf("peak bytes: plain %d, checkpointed %d", plainPeak, ckptPeak)
}

// TestCastsDoNotOutliveTheirOp: in a forward without gradients, the casts
// autocast inserts are freed when their op is done, not at the end of the
// step; only the per-step weight cast stays.
func TestCastsDoNotOutliveTheirOp(t *testing.T) {
	b := cpu.New()
	e := autograd.New(b)
	r := kerneltest.Rng(t)
	w := e.Constant("w", kernels.F32, []int{16, 16}, kerneltest.Randn(r, 256, 0.3))
	x := e.FromFloat64(kernels.F32, []int{8, 16}, kerneltest.Randn(r, 128, 1))
	e.SetAutocast(kernels.BF16)
	base := b.MemStats().Allocated
	e.NoGrad(func() {
		for range 5 {
			y := autograd.RMSNorm(autograd.Linear(x, w, nil), nil, 1e-6)
			y.Release()
		}
	})
	// What may remain: the cached bf16 copy of w (16·16·2 bytes) and the
	// intermediate Linear outputs the loop did not release (5 × 8·16·2).
	if got, limit := b.MemStats().Allocated-base, int64(16*16*2+5*8*16*2); got > limit {
		t.Errorf("%d bytes still held after the loop, want at most %d: casts outlived their ops", got, limit)
	}
}

// TestKeepOutlivesEndStep: a kept step tensor survives EndStep (it had
// been freed with the rest: Keep set a flag nothing read) and is freed by
// its Release; an unkept one is freed by EndStep.
func TestKeepOutlivesEndStep(t *testing.T) {
	b := cpu.New()
	e := autograd.New(b)
	kept := autograd.Scale(e.Full(kernels.F32, []int{4}, 2), 3).Keep()
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	v, err := kept.Values()
	if err != nil || v[0] != 6 {
		t.Fatalf("kept tensor after EndStep: %v, %v", v, err)
	}
	if got := b.MemStats().Allocated; got != 16 {
		t.Errorf("%d bytes allocated after EndStep, want the kept tensor's 16", got)
	}
	kept.Release()
	if got := b.MemStats().Allocated; got != 0 {
		t.Errorf("%d bytes allocated after Release", got)
	}
}
