package train

import (
	"context"
	"math"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// tinyRun is how tinyLoRARun trains: base weights in fp8, adapters read
// through working copies (AttachWorkingCopies), and the backend.
type tinyRun struct {
	fp8, working, recomputeNorms bool
	recomputeFFNBlocks           int
	be                           kernels.Backend // nil: a CPU backend
}

// tinyLoRARun trains a LoRA on the tiny model with random bf16 weights — or
// the same weights stored in fp8 — for a few steps on fixed random batches
// under bf16 autocast, and returns the losses, the bytes the linear
// layers' frozen weights occupy and the adapters' final values.
func tinyLoRARun(t *testing.T, how tinyRun, steps int) (losses []float64, linearBytes int64, final [][]float64) {
	t.Helper()
	fp8 := how.fp8
	be := how.be
	if be == nil {
		be = cpu.New()
	}
	e := ag.New(be)
	cfg, _ := nextdit.Preset("tiny")
	model, err := nextdit.NewRandom(e, cfg, nextdit.Options{DType: kernels.BF16, FP8Base: fp8, RecomputeNorms: how.recomputeNorms,
		RecomputeFFNBlocks: how.recomputeFFNBlocks}, 21)
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	for _, l := range cfg.Linears() {
		w := model.Weight(l.Name + ".weight")
		linearBytes += int64(w.Len() * w.DType().Size())
		if s := w.FP8Scale(); s != nil {
			linearBytes += int64(s.Len() * s.DType().Size())
		}
	}
	set, err := lora.Attach(model, lora.Config{Rank: 8, Alpha: 8, Seed: 21, Master: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Release()
	opt, err := optim.New(be, []optim.Group{{Name: "lora", Params: OptimParams(set),
		Hyper: optim.Hyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}}},
		optim.Config{Precision: optim.BF16, Capability: optim.Capability{Major: 9}, MaxGradNorm: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Close()
	if how.working {
		if err := AttachWorkingCopies(set, opt, kernels.BF16); err != nil {
			t.Fatal(err)
		}
	}
	st := &Stepper{Model: model, LoRA: set, Opt: opt}
	sampler := TimestepSampler{Kind: LognormShift}
	e.SeedRandom(4, 0)
	for i := range steps {
		fb := FlowBatch{
			X1:         e.Normal(kernels.F32, []int{2, 16, 8, 8}),
			CapFeats:   e.Normal(kernels.F32, []int{2, 11, cfg.CapFeatDim}),
			CapLens:    []int{11, 7},
			ClipPooled: e.Normal(kernels.F32, []int{2, cfg.ClipTextDim}),
		}
		mb := MicroBatch{FlowBatch: fb, X0: e.Normal(kernels.F32, []int{2, 16, 8, 8}), T: sampler.Sample(4, i, 2, 16)}
		prev := e.SetAutocast(kernels.BF16)
		out, err := st.Step([]MicroBatch{mb})
		e.SetAutocast(prev)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		losses = append(losses, out.Loss)
	}
	for _, p := range loraTensors(set) {
		v, err := p.Values()
		if err != nil {
			t.Fatal(err)
		}
		final = append(final, v)
	}
	return losses, linearBytes, final
}

// TestFP8BaseAgainstBF16 measures what storing the frozen weights in fp8
// does to LoRA training on the tiny model: the same seeds, batches and
// steps with bf16 and with fp8 base weights. The linear weights take a
// little over half the bytes, and the losses stay within 1% of the bf16
// run's (docs/precision.md records the figures this test logs).
func TestFP8BaseAgainstBF16(t *testing.T) {
	const steps = 8
	bf, bfBytes, _ := tinyLoRARun(t, tinyRun{}, steps)
	f8, f8Bytes, _ := tinyLoRARun(t, tinyRun{fp8: true}, steps)
	worst := 0.0
	for i := range bf {
		worst = math.Max(worst, math.Abs(f8[i]-bf[i])/bf[i])
	}
	t.Logf("losses bf16 %.5f", bf)
	t.Logf("losses fp8  %.5f", f8)
	t.Logf("worst relative loss difference %.3g; linear weights %d bytes in bf16, %d in fp8 (%.3f)", worst, bfBytes, f8Bytes, float64(f8Bytes)/float64(bfBytes))
	if worst == 0 {
		t.Error("the fp8 run gave the bf16 run's losses exactly: the weights were not quantised")
	}
	if worst > 0.01 {
		t.Errorf("fp8 base weights moved the loss by %.3g relative (bar 1%%)", worst)
	}
	if r := float64(f8Bytes) / float64(bfBytes); r > 0.55 {
		t.Errorf("fp8 linear weights take %.3f of the bf16 bytes", r)
	}
}

// TestFP8BaseFromConfig: model.dtype fp8 in lora.yaml trains the demo with
// the linear layers' frozen weights in fp8 — the log says so, the losses
// are those of the same run in bf16 within 2% but not equal (the weights
// were quantised), and the adapter files written load back.
func TestFP8BaseFromConfig(t *testing.T) {
	run := func(dtype string) (*configs.Config, *Result, string) {
		cfg := demoConfig(t, t.TempDir(), 4, 0)
		cfg.Model.DType, cfg.Precision = dtype, "bf16"
		var log strings.Builder
		res, err := Run(context.Background(), cfg, Options{Log: &log})
		if err != nil {
			t.Fatalf("model.dtype %s: %v\n%s", dtype, err, log.String())
		}
		return cfg, res, log.String()
	}
	bfCfg, _, _ := run("bf16")
	f8Cfg, res, log := run("fp8")
	if !strings.Contains(log, "fp8 E4M3") {
		t.Errorf("the log does not say the base weights are in fp8:\n%s", log)
	}
	bf, f8 := losses(t, bfCfg.Logging.LogFile), losses(t, f8Cfg.Logging.LogFile)
	if len(f8) != 4 || len(bf) != 4 {
		t.Fatalf("logged %d fp8 and %d bf16 losses, want 4 each", len(f8), len(bf))
	}
	worst := 0.0
	for step, l := range bf {
		worst = math.Max(worst, math.Abs(f8[step]-l)/l)
	}
	t.Logf("losses bf16 %v, fp8 %v: worst relative difference %.3g", bf, f8, worst)
	if worst == 0 || worst > 0.02 {
		t.Errorf("fp8 base weights moved the loss by %.3g relative (want above 0, at most 2%%)", worst)
	}
	for _, f := range res.LoRAFiles {
		if _, _, err := checkpoints.ReadLoRA(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
