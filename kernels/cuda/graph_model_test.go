package cuda_test

import (
	"math"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cuda"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
	"github.com/newbie-train/newbie-train/train"
)

// trainTiny runs steps LoRA training steps of the tiny model on a fresh
// CUDA backend (bf16 weights and autocast, as training runs) and returns
// the losses, the LoRA masters after the last step and the backend's graph
// counters.
func trainTiny(t *testing.T, steps int, checkpoint bool) ([]float64, [][]float64, kernels.GraphStats) {
	t.Helper()
	be, err := cuda.New(0)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	e := ag.New(be)
	cfg, _ := nextdit.Preset("tiny")
	model, err := nextdit.NewRandom(e, cfg, nextdit.Options{DType: kernels.BF16, Checkpoint: checkpoint}, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	set, err := lora.Attach(model, lora.Config{Rank: 8, Alpha: 8, Seed: 5, Master: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Release()
	opt, err := optim.New(be, []optim.Group{{Name: "lora", Params: train.OptimParams(set),
		Hyper: optim.Hyper{LR: 1e-3, WeightDecay: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}}},
		optim.Config{Precision: optim.BF16, Capability: optim.Capability{Major: be.Arch() / 10, Minor: be.Arch() % 10}, MaxGradNorm: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Close()
	st := &train.Stepper{Model: model, LoRA: set, Opt: opt}
	sampler := train.TimestepSampler{Kind: train.LognormShift}
	e.SeedRandom(9, 0)
	var losses []float64
	for i := range steps {
		fb := train.FlowBatch{
			X1:         e.Normal(kernels.F32, []int{2, 16, 8, 8}),
			CapFeats:   e.Normal(kernels.F32, []int{2, 13, cfg.CapFeatDim}),
			CapLens:    []int{13, 9},
			ClipPooled: e.Normal(kernels.F32, []int{2, cfg.ClipTextDim}),
		}
		mb := train.MicroBatch{FlowBatch: fb, X0: e.Normal(kernels.F32, []int{2, 16, 8, 8}), T: sampler.Sample(9, i, 2, 16)}
		prev := e.SetAutocast(kernels.BF16)
		out, err := st.Step([]train.MicroBatch{mb})
		e.SetAutocast(prev)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		losses = append(losses, out.Loss)
	}
	var masters [][]float64
	for _, a := range set.Adapters() {
		for _, p := range []*ag.Tensor{a.A, a.B} {
			v, err := p.Values()
			if err != nil {
				t.Fatal(err)
			}
			masters = append(masters, v)
		}
	}
	return losses, masters, be.GraphStats()
}

// TestGraphsTrainSameBits trains the tiny model for a few steps with graph
// replay and without (NEWBIE_TRAIN_CUDA_OFF=graphs), with and without
// checkpointing, and requires the same losses and LoRA weights bit for bit,
// and that the run with graphs really replayed most of its ops.
func TestGraphsTrainSameBits(t *testing.T) {
	if err := cuda.Available(); err != nil {
		t.Skipf("no GPU here: %v", err)
	}
	for _, ckpt := range []bool{false, true} {
		t.Run(map[bool]string{false: "checkpointing off", true: "checkpointing on"}[ckpt], func(t *testing.T) {
			const steps = 6
			lossOn, wOn, stOn := trainTiny(t, steps, ckpt)
			t.Setenv("NEWBIE_TRAIN_CUDA_OFF", "graphs")
			lossOff, wOff, stOff := trainTiny(t, steps, ckpt)
			t.Logf("with graphs: %v", stOn)
			t.Logf("without: %v", stOff)
			if stOn.Off != "" || stOff.Off == "" {
				t.Fatalf("graphs on: %q, off: %q", stOn.Off, stOff.Off)
			}
			for i := range lossOff {
				if math.Float64bits(lossOn[i]) != math.Float64bits(lossOff[i]) {
					t.Errorf("step %d: loss %v with graphs, %v without", i, lossOn[i], lossOff[i])
				}
			}
			for k := range wOff {
				for i := range wOff[k] {
					if math.Float64bits(wOn[k][i]) != math.Float64bits(wOff[k][i]) {
						t.Fatalf("LoRA tensor %d[%d]: %v with graphs, %v without", k, i, wOn[k][i], wOff[k][i])
					}
				}
			}
			if stOn.Failed != 0 || stOn.Replayed == 0 || stOn.OpsGraphed < stOn.OpsPlain {
				t.Errorf("graphs: %v; want replays of most ops and no failures", stOn)
			}
		})
	}
}
