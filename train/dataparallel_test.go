package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/internal/fixtures"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// dpConfig is the demo config for the data-parallel tests: 5 images in
// batches of 2, so an epoch ends in a partial batch and the ranks' batches
// differ in size (their noise offsets must still be the one-process
// run's), with activation checkpointing on (the adapters' gradients are
// reported ready from inside checkpointed blocks).
func dpConfig(t *testing.T, steps, saveEvery, accum int) *configs.Config {
	t.Helper()
	cfg := demoConfigN(t, t.TempDir(), steps, saveEvery, 5)
	cfg.Train.BatchSize = 2
	cfg.Train.GradientAccumulation = accum
	cfg.Train.ActivationCheckpointing = true
	return cfg
}

// runRanks runs a job of len(cfgs) ranks as goroutines over the in-process
// communicator, rank r training cfgs[r] on a CPU backend of its own, and
// returns each rank's result and error. log, when set, is rank 0's log.
func runRanks(ctx context.Context, cfgs []*configs.Config, resume string, log io.Writer) ([]*Result, []error) {
	world := len(cfgs)
	bs := make([]kernels.Backend, world)
	for r := range bs {
		bs[r] = cpu.New()
	}
	comms := dist.NewInProcess(bs, time.Minute)
	res := make([]*Result, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer comms[r].Close()
			o := Options{Resume: resume, Comm: comms[r], Backend: bs[r], Log: io.Discard}
			if r == 0 && log != nil {
				o.Log = log
			}
			res[r], errs[r] = Run(ctx, cfgs[r], o)
		}()
	}
	wg.Wait()
	return res, errs
}

// sameRanks is a job's configs: cfg on every rank.
func sameRanks(cfg *configs.Config, world int) []*configs.Config {
	out := make([]*configs.Config, world)
	for r := range out {
		out[r] = cfg
	}
	return out
}

func noRankErrors(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// sameLosses compares two runs' JSONL losses step by step, bit for bit.
func sameLosses(t *testing.T, what string, got, want *configs.Config, from, to int) {
	t.Helper()
	g, w := losses(t, got.Logging.LogFile), losses(t, want.Logging.LogFile)
	for step := from; step <= to; step++ {
		if _, ok := w[step]; !ok {
			t.Fatalf("%s: the reference logged no step %d", what, step)
		}
		if math.Float64bits(g[step]) != math.Float64bits(w[step]) {
			t.Errorf("%s: step %d loss %v, the one-process run's %v", what, step, g[step], w[step])
		}
	}
}

// sameLoRA compares two runs' final LoRA files bit for bit.
func sameLoRA(t *testing.T, what string, got, want *configs.Config) {
	t.Helper()
	read := func(cfg *configs.Config) *checkpoints.LoRA {
		l, _, err := checkpoints.ReadLoRA(filepath.Join(cfg.Save.Output, "demo_lora.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := read(want), read(got)
	for name, layer := range a.Layers {
		for i := range layer.A {
			if math.Float32bits(b.Layers[name].A[i]) != math.Float32bits(layer.A[i]) {
				t.Fatalf("%s: final %s.A[%d] %v, the one-process run's %v", what, name, i, b.Layers[name].A[i], layer.A[i])
			}
		}
		for i := range layer.B {
			if math.Float32bits(b.Layers[name].B[i]) != math.Float32bits(layer.B[i]) {
				t.Fatalf("%s: final %s.B[%d] %v, the one-process run's %v", what, name, i, b.Layers[name].B[i], layer.B[i])
			}
		}
	}
}

// TestDataParallelEqualsAccumulation: two ranks of the CPU backend, one
// micro-batch each per step, train the same LoRA as one process
// accumulating two micro-batches — every step's loss and every final
// weight equal bit for bit — and so does a resume across world sizes that
// keeps the batches per step: two ranks stopped by a cancellation (agreed
// at a step boundary, rank 0 saving) resumed on one process with
// gradient_accumulation 2, and one process resumed on two ranks.
func TestDataParallelEqualsAccumulation(t *testing.T) {
	const steps = 4
	ref := dpConfig(t, steps, 0, 2)
	if _, err := Run(context.Background(), ref, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}

	two := dpConfig(t, steps, 0, 1)
	res, errs := runRanks(context.Background(), sameRanks(two, 2), "", nil)
	noRankErrors(t, errs)
	if res[0].LastLoss != res[1].LastLoss || res[1].Steps != steps {
		t.Errorf("the ranks disagree: rank 0 %+v, rank 1 %+v", res[0], res[1])
	}
	sameLosses(t, "2 ranks", two, ref, 1, steps)
	sameLoRA(t, "2 ranks", two, ref)

	// 2 ranks → 1 process.
	half := dpConfig(t, steps, 0, 1)
	ctx, cancel := context.WithCancel(context.Background())
	_, errs = runRanks(ctx, sameRanks(half, 2), "", &stopAfter{steps: 2, cancel: cancel})
	for r, err := range errs {
		var ie *InterruptedError
		if !errors.As(err, &ie) || ie.Stage != "step 3" || !strings.HasSuffix(ie.State, "state-00000002") {
			t.Fatalf("rank %d of the interrupted job: %v, want an interruption before step 3 naming rank 0's state", r, err)
		}
	}
	one := *half
	one.Train.GradientAccumulation = 2
	if _, err := Run(context.Background(), &one, Options{Resume: "latest", Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	sameLosses(t, "2 ranks resumed on 1", half, ref, 1, steps)
	sameLoRA(t, "2 ranks resumed on 1", half, ref)

	// 1 process → 2 ranks.
	other := dpConfig(t, steps, 0, 2)
	ctx, cancel = context.WithCancel(context.Background())
	if _, err := Run(ctx, other, Options{Log: &stopAfter{steps: 2, cancel: cancel}}); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	onTwo := *other
	onTwo.Train.GradientAccumulation = 1
	_, errs = runRanks(context.Background(), sameRanks(&onTwo, 2), "latest", nil)
	noRankErrors(t, errs)
	sameLosses(t, "1 process resumed on 2 ranks", other, ref, 1, steps)
	sameLoRA(t, "1 process resumed on 2 ranks", other, ref)
}

// TestResumeOnOtherBatchesPerStep: a state of two ranks resumes on one
// process with the same config — each step then takes half the batches —
// continuing the batch sequence where the ranks left it, and says so.
func TestResumeOnOtherBatchesPerStep(t *testing.T) {
	cfg := dpConfig(t, 4, 2, 1)
	ctx, cancel := context.WithCancel(context.Background())
	runRanks(ctx, sameRanks(cfg, 2), "", &stopAfter{steps: 2, cancel: cancel})
	var log strings.Builder
	res, err := Run(context.Background(), cfg, Options{Resume: "latest", Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 4 || !strings.Contains(log.String(), "the state was trained on 2 rank(s) with 2 batches per step; this run takes 1 per step from step 3 on; --set train.gradient_accumulation=2 keeps 2") {
		t.Fatalf("resumed %d steps; log:\n%s", res.Steps, log.String())
	}
	st, err := checkpoints.LoadState(res.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	var info resumeInfo
	if err := json.Unmarshal(st.JSON["trainer"], &info); err != nil {
		t.Fatal(err)
	}
	// Steps 1–2 took 2 batches each, steps 3–4 one each (3 per epoch).
	if info.Micro != 6 || info.WorldSize != 1 || info.Cursor.Epoch*3+info.Cursor.Batch != 6 {
		t.Errorf("final state: %+v, want 6 batches taken, one rank", info)
	}
}

// TestRanksMustAgree: a rank set up differently from rank 0 (here another
// learning rate) fails the job before the first step, naming what
// differs, and rank 0 fails too instead of waiting for it.
func TestRanksMustAgree(t *testing.T) {
	cfg := dpConfig(t, 3, 0, 1)
	other := *cfg
	other.Train.LearningRate *= 2
	start := time.Now()
	_, errs := runRanks(context.Background(), []*configs.Config{cfg, &other}, "", nil)
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "rank 1 differs from rank 0 in [the config]") {
		t.Errorf("rank 1: %v", errs[1])
	}
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 1 aborted") {
		t.Errorf("rank 0: %v", errs[0])
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the job took %v to fail", d)
	}
}

// TestOneRankJobEqualsPlainRun: a job of one process (`torchrun
// --nproc-per-node 1`), which runs the data-parallel path through its
// communicator, trains exactly as a plain run — with adapter dropout and
// two micro-batches per step, whose draws continue one stream as a plain
// run's do.
func TestOneRankJobEqualsPlainRun(t *testing.T) {
	env, err := dist.ParseEnv(func(k string) string { return map[string]string{"RANK": "0", "WORLD_SIZE": "1"}[k] })
	if err != nil || !env.Distributed() {
		t.Fatalf("env %v: %v", env, err)
	}
	plain := dpConfig(t, 3, 0, 2)
	plain.LoRA.Dropout = 0.1
	job := dpConfig(t, 3, 0, 2)
	job.LoRA.Dropout = 0.1
	if _, err := Run(context.Background(), plain, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	if _, err := Run(context.Background(), job, Options{Log: &log, Dist: env}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "data parallel: 1 ranks") {
		t.Errorf("the job of one did not take the data-parallel path:\n%s", log.String())
	}
	sameLosses(t, "a job of one", job, plain, 1, 3)
	sameLoRA(t, "a job of one", job, plain)
}

// TestDropoutOnRanks: with adapter dropout, two ranks draw each batch's
// masks from a stream keyed by its position: a rerun gives the same
// losses, and a resume continues them.
func TestDropoutOnRanks(t *testing.T) {
	var cfgs []*configs.Config
	for range 2 {
		cfg := dpConfig(t, 3, 1, 1)
		cfg.LoRA.Dropout = 0.2
		cfgs = append(cfgs, cfg)
	}
	_, errs := runRanks(context.Background(), sameRanks(cfgs[0], 2), "", nil)
	noRankErrors(t, errs)
	ctx, cancel := context.WithCancel(context.Background())
	runRanks(ctx, sameRanks(cfgs[1], 2), "", &stopAfter{steps: 1, cancel: cancel})
	_, errs = runRanks(context.Background(), sameRanks(cfgs[1], 2), "latest", nil)
	noRankErrors(t, errs)
	sameLosses(t, "2 ranks with dropout, rerun and resumed", cfgs[1], cfgs[0], 1, 3)
}

// TestRank0Work: in a job rank 0 validates, renders previews and saves
// while the other rank waits for it, and that changes nothing of the
// training: the losses equal one process accumulating two micro-batches.
// On NaN base weights both ranks count the same non-finite steps and stop
// together, keeping rank 0's last save.
func TestRank0Work(t *testing.T) {
	ref := dpConfig(t, 3, 0, 2)
	cfg := dpConfig(t, 3, 1, 1)
	for _, c := range []*configs.Config{ref, cfg} {
		c.Train.Validation.Split, c.Train.Validation.Every = 0.2, 2
	}
	cfg.Sample.Prompts, cfg.Sample.Every, cfg.Sample.Steps = []string{"blue background"}, 2, 2
	if _, err := Run(context.Background(), ref, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	res, errs := runRanks(context.Background(), sameRanks(cfg, 2), "", nil)
	noRankErrors(t, errs)
	sameLosses(t, "2 ranks with validation, previews and saves", cfg, ref, 1, 3)
	if res[0].ValLoss == 0 || len(res[0].LoRAFiles) == 0 {
		t.Errorf("rank 0's result %+v: no validation loss or LoRA files", res[0])
	}
	previews, _ := filepath.Glob(filepath.Join(cfg.Save.Output, "demo_lora-previews", "*.png"))
	states, _ := filepath.Glob(filepath.Join(cfg.Save.Output, "states", "state-*"))
	if len(previews) != 1 || len(states) != 2 {
		t.Errorf("previews %v, states %v: want one preview (step 2) and save.keep_last 2 states", previews, states)
	}

	nan := dpConfig(t, 50, 3, 1)
	nan.Model.Weights = fixtures.NaNWeights(t)
	nan.Train.NonFiniteLimit = 4
	_, errs = runRanks(context.Background(), sameRanks(nan, 2), "", nil)
	for r, err := range errs {
		if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "4 consecutive steps (1–4") {
			t.Errorf("rank %d on NaN weights: %v", r, err)
		}
	}
}

// sumWatcher counts the gradient sums that reach the communicator while
// the gradient the backward finishes last is still all zero: those sums
// run during the backward.
type sumWatcher struct {
	dist.Communicator
	last        *ag.Tensor
	sums, early int
}

func (w *sumWatcher) AllReduceSum(bufs ...kernels.Buffer) error {
	w.sums++
	if w.last == nil {
		return w.Communicator.AllReduceSum(bufs...)
	}
	v, err := w.last.Grad().Values()
	if err != nil {
		return err
	}
	zero := true
	for _, x := range v {
		zero = zero && x == 0
	}
	if zero {
		w.early++
	}
	return w.Communicator.AllReduceSum(bufs...)
}

// TestStepperSumsDuringTheBackward: with buckets smaller than the LoRA,
// once the first step has shown the backward's order the buckets are
// summed while the backward still runs — all but those of the block the
// backward finishes last, whose gradients a checkpointed block's recompute
// completes together — and the ranks take identical steps.
func TestStepperSumsDuringTheBackward(t *testing.T) {
	const world = 2
	bs := []kernels.Backend{cpu.New(), cpu.New()}
	comms := dist.NewInProcess(bs, time.Minute)
	watchers := make([]*sumWatcher, world)
	norms := make([][]float64, world)
	var wg sync.WaitGroup
	errs := make([]error, world)
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := tinyStepper(bs[r])
			if err != nil {
				errs[r] = err
				return
			}
			watchers[r] = &sumWatcher{Communicator: comms[r]}
			st.Comm, st.bucketBytes = watchers[r], 4<<10
			for step := range 2 {
				if step > 0 {
					order := st.reducer.Order()
					*watchers[r] = sumWatcher{Communicator: comms[r], last: loraTensors(st.LoRA)[order[len(order)-1]]}
				}
				out, err := st.Step([]MicroBatch{tinyBatch(st, r, step)})
				if err != nil {
					errs[r] = err
					return
				}
				norms[r] = append(norms[r], out.GradNorm)
			}
		}()
	}
	wg.Wait()
	noRankErrors(t, errs)
	for r, w := range watchers {
		if w.sums < 4 || 4*w.early < 3*w.sums {
			t.Errorf("rank %d, second step: %d gradient sums, %d of them during the backward; want three quarters or more", r, w.sums, w.early)
		}
	}
	if fmt.Sprint(norms[0]) != fmt.Sprint(norms[1]) {
		t.Errorf("the ranks' gradient norms differ: %v", norms)
	}
	t.Logf("second step: %d buckets, %d summed during the backward", watchers[0].sums, watchers[0].early)
}

// tinyStepper builds the tiny model with random weights, checkpointed, a
// LoRA and its optimizer on b.
func tinyStepper(b kernels.Backend) (*Stepper, error) {
	e := ag.New(b)
	mc, err := nextdit.Preset("tiny")
	if err != nil {
		return nil, err
	}
	m, err := nextdit.NewRandom(e, mc, nextdit.Options{DType: kernels.F32, Checkpoint: true}, 3)
	if err != nil {
		return nil, err
	}
	set, err := lora.Attach(m, lora.Config{Rank: 4, Alpha: 4, Seed: 3, Master: kernels.F32})
	if err != nil {
		return nil, err
	}
	opt, err := optim.New(b, []optim.Group{{Name: "lora", Params: OptimParams(set), Hyper: optim.DefaultHyper()}}, optim.Config{Precision: optim.FP32, MaxGradNorm: 1})
	if err != nil {
		return nil, err
	}
	return &Stepper{Model: m, LoRA: set, Opt: opt}, nil
}

// tinyBatch is a micro-batch of random inputs for the tiny model, one per
// (rank, step).
func tinyBatch(st *Stepper, rank, step int) MicroBatch {
	e, mc := st.Model.Engine(), st.Model.Config()
	e.SeedRandom(11, uint64(2*step+rank)<<20)
	x := []int{2, mc.InChannels, 8, 8}
	fb := FlowBatch{X1: e.Normal(kernels.F32, x), CapFeats: e.Normal(kernels.F32, []int{2, 5, mc.CapFeatDim}), CapLens: []int{5, 3}}
	if mc.ClipTextDim > 0 {
		fb.ClipPooled = e.Normal(kernels.F32, []int{2, mc.ClipTextDim})
	}
	return MicroBatch{FlowBatch: fb, X0: e.Normal(kernels.F32, x), T: []float64{0.3, 0.8}}
}

// TestGPUOfTheLocalRank: in a job each rank drives the GPU of its
// LOCAL_RANK; a config that names another gpu explicitly is refused before
// anything runs.
func TestGPUOfTheLocalRank(t *testing.T) {
	env, err := dist.ParseEnv(func(k string) string {
		return map[string]string{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	demoConfigN(t, dir, 2, 0, 2)
	cfg, err := configs.Load(filepath.Join(dir, "demo.yaml"), "device=auto", "gpu=0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), cfg, Options{Log: io.Discard, Dist: env})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "gpu: 0, but this process is local rank 1 of a job, which drives GPU 1") {
		t.Fatalf("gpu 0 on local rank 1: %v", err)
	}
}
