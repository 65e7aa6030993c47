package newbie

import (
	"fmt"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// trainStep is the trainer's step as train.Stepper runs it, written here
// (this package sits below train): x_t = t·x1 + (1−t)·x0, the model's
// velocity at x_t, MSE against x1 − x0, the backward, AdamW. It returns the
// step's peak above what was held before it.
func trainStep(t *testing.T, be *cpu.Backend, e *ag.Engine, m *nextdit.Model, opt *optim.Optimizer, s TrainShape) int64 {
	t.Helper()
	c := m.Config()
	held := be.MemStats().Allocated
	be.ResetPeak()
	prev := e.SetAutocast(s.Autocast)
	defer e.SetAutocast(prev)
	shape := []int{s.Batch, c.InChannels, s.LatentH, s.LatentW}
	x1, x0 := e.Normal(kernels.F32, shape), e.Normal(kernels.F32, shape)
	capf := e.Normal(kernels.F32, []int{s.Batch, s.CaptionTokens, c.CapFeatDim})
	clip := e.Normal(kernels.F32, []int{s.Batch, c.ClipTextDim})
	ts, omt, lens := make([]float64, s.Batch), make([]float64, s.Batch), make([]int, s.Batch)
	for i := range ts {
		ts[i], omt[i], lens[i] = 0.3+0.1*float64(i), 0.7-0.1*float64(i), s.CaptionTokens
	}
	bs := []int{s.Batch, 1, 1, 1}
	tt, ot := e.FromFloat64(kernels.F32, bs, ts), e.FromFloat64(kernels.F32, bs, omt)
	a, b := ag.Mul(tt, x1), ag.Mul(ot, x0)
	xt := ag.Add(a, b)
	target := ag.Sub(x1, x0)
	for _, r := range []*ag.Tensor{tt, ot, a, b} {
		r.Release()
	}
	pred, err := m.Forward(nextdit.Inputs{X: xt, T: ts, CapFeats: capf, CapLens: lens, ClipPooled: clip})
	if err != nil {
		t.Fatal(err)
	}
	loss := ag.MSE(pred, target)
	pred.Release()
	target.Release()
	xt.Release()
	if err := e.Backward(loss); err != nil {
		t.Fatal(err)
	}
	opt.AddMicroBatch()
	if _, err := opt.Step(); err != nil {
		t.Fatal(err)
	}
	peak := be.MemStats().Peak - held
	opt.ZeroGrad()
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return peak
}

// TestEstimateTrain: the train step's estimate against the step measured
// on the CPU backend, on Next-DiTs outside the set its coefficients were
// measured on (other widths, depths, heads, ranks, batches, non-square
// latents, other targets), with and without checkpointing: the weights and
// adapter state exactly; the activations' growth per token — what the
// coefficients claim, and all that matters at full size, where a tiny
// model's fixed costs vanish — within 6 % of the measured growth between
// two latent sizes; and the whole step never under the measured peak
// (above it by the margin, and by the per-token terms the tiny model's
// fixed costs do not follow, at most 60 %: with checkpointing the smallest
// case's peak sits 30 % below its per-token line, since the backward's
// working set there is a few tensors of a few tokens).
func TestEstimateTrain(t *testing.T) {
	tiny, _ := nextdit.Preset("tiny")
	mult := 1.5
	wide := tiny
	wide.Dim, wide.NHeads, wide.NKVHeads, wide.NLayers, wide.FFNDimMultiplier = 144, 3, 1, 3, &mult
	heads := tiny
	heads.NHeads, heads.NKVHeads, heads.AxesDims = 4, 2, []int{8, 8, 8}
	for _, c := range []struct {
		name string
		cfg  nextdit.Config
		s    TrainShape
	}{
		{"wide r4 batch 2", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4}},
		{"four heads r16", heads, TrainShape{Batch: 1, LatentH: 12, LatentW: 16, CaptionTokens: 20, Rank: 16, Targets: []string{"attention.qkv", "feed_forward.w2"}}},
		{"wide r4 fp8 base", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4, FP8Base: true}},
		{"wide r4 some blocks", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4, CheckpointBlocks: 4}},
		{"wide r4 norms recomputed", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4, RecomputeNorms: true}},
		{"four heads r16 norms recomputed", heads, TrainShape{Batch: 1, LatentH: 12, LatentW: 16, CaptionTokens: 20, Rank: 16,
			Targets: []string{"attention.qkv", "feed_forward.w2"}, RecomputeNorms: true}},
		{"wide r4 some blocks norms recomputed", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4,
			CheckpointBlocks: 4, RecomputeNorms: true}},
		{"wide r4 norms and 5 feed-forwards recomputed", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4,
			RecomputeNorms: true, RecomputeFFNBlocks: 5}},
		// Sets that overlap in part: of the 5 feed-forwards chosen, 3 are
		// in checkpointed blocks (which do not count them again).
		{"wide r4 some blocks, 5 feed-forwards recomputed", wide, TrainShape{Batch: 2, LatentH: 8, LatentW: 12, CaptionTokens: 10, Rank: 4,
			CheckpointBlocks: 4, RecomputeNorms: true, RecomputeFFNBlocks: 5}},
	} {
		for _, ckpt := range []bool{false, true} {
			if c.s.CheckpointBlocks > 0 && !ckpt {
				continue
			}
			t.Run(fmt.Sprintf("%s ckpt %v", c.name, ckpt), func(t *testing.T) {
				if err := c.cfg.Validate(); err != nil {
					t.Fatal(err)
				}
				be := cpu.New()
				e := ag.New(be)
				m, err := nextdit.NewRandom(e, c.cfg, nextdit.Options{DType: kernels.BF16, Checkpoint: ckpt, CheckpointBlocks: c.s.CheckpointBlocks, FP8Base: c.s.FP8Base,
					RecomputeNorms: c.s.RecomputeNorms, RecomputeFFNBlocks: c.s.RecomputeFFNBlocks}, 3)
				if err != nil {
					t.Fatal(err)
				}
				set, err := lora.Attach(m, lora.Config{Rank: c.s.Rank, Alpha: float64(c.s.Rank), Targets: c.s.Targets})
				if err != nil {
					t.Fatal(err)
				}
				var params []optim.Param
				var n int64
				for _, a := range set.Adapters() {
					for _, p := range []*ag.Tensor{a.A, a.B} {
						params = append(params, optim.Param{Name: p.Name, Master: p.Buffer(), Grad: p.Grad().Buffer()})
						n += int64(p.Len())
					}
				}
				opt, err := optim.New(be, []optim.Group{{Name: "lora", Params: params, Hyper: optim.DefaultHyper()}}, optim.Config{Precision: optim.BF16, MaxGradNorm: 1})
				if err != nil {
					t.Fatal(err)
				}
				held := be.MemStats().Allocated
				cast := 2 * n // autocast's per-step copy of A and B
				var measured, tokens, slopes [2]int64
				for k, h := range []int{c.s.LatentH, 2 * c.s.LatentH} {
					s := c.s
					s.LatentH, s.Checkpoint, s.DType, s.Autocast = h, ckpt, kernels.BF16, kernels.BF16
					est, err := EstimateTrain(c.cfg, s, nil)
					if err != nil {
						t.Fatal(err)
					}
					if est.Weights != held+cast {
						t.Errorf("weights and adapter state estimated %d, held %d + casts %d", est.Weights, held, cast)
					}
					measured[k] = trainStep(t, be, e, m, opt, s) - cast
					var per int64
					_, tokens[k], per = trainActivations(c.cfg, s)
					slopes[k] = per
					ratio := float64(est.Activations) / float64(measured[k])
					t.Logf("%s: activations estimated %d, measured %d (×%.3f)", est.Basis, est.Activations, measured[k], ratio)
					if ratio < 1 || ratio > 1.6 {
						t.Errorf("%s: activations estimated %d for a measured %d (×%.3f)", est.Basis, est.Activations, measured[k], ratio)
					}
				}
				got := float64(measured[1]-measured[0]) / float64(tokens[1]-tokens[0])
				t.Logf("per token: estimated %d B, measured %.0f B (×%.3f)", slopes[0], got, float64(slopes[0])/got)
				if r := float64(slopes[0]) / got; r < 0.94 || r > 1.06 {
					t.Errorf("per token: estimated %d B, measured %.0f B (×%.3f)", slopes[0], got, r)
				}
			})
		}
	}
}
