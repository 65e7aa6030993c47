package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
	"github.com/newbie-train/newbie-train/train"
)

// Options describe one throughput measurement of the training step.
// The zero value of every field takes the default noted beside it, which
// together are the benchmark: the full NewBie model at 1024², 256
// caption tokens, batch 1, LoRA r32 α32, with and without checkpointing.
type Options struct {
	// Preset is the model architecture by name (default "newbie-exp0.1").
	Preset string
	// Layers, when positive, replaces the preset's count of main
	// transformer layers. The backend ops a step issues depend on the
	// blocks, not on their width, so the tiny preset with 36 layers issues
	// exactly the ops of the full model's step: that is how the CPU
	// counts them.
	Layers int
	// Backend is "cuda" (default) or "cpu". The CPU backend takes only the
	// tiny preset: one step of the full model would take hours there.
	Backend string
	// GPU is the device index for the CUDA backend.
	GPU int
	// Batch is the number of samples per micro-batch (default 1); Accum
	// the micro-batches per step on each rank (default 1).
	Batch, Accum int
	// Dist is the data-parallel job this process is a rank of (the zero
	// value: one process). Each rank then drives the GPU of its local rank
	// and takes its share of every step's micro-batches, the gradients
	// summed over the ranks; rank 0 reports. Micro-batch k of the run gets
	// the same random inputs whatever the number of ranks, so N ranks × 1
	// micro-batch compare with one GPU × N.
	Dist dist.Env
	// Steps are the timed steps per mode (default 10); Warmup the untimed
	// steps before them (default 3; negative means none), which absorb
	// kernel compilation and the allocator's first requests.
	Steps, Warmup int
	// Checkpointing lists the activation-checkpointing modes to measure, in
	// order (default: off, then on).
	Checkpointing []bool
	// Resolution is the image side in pixels (default 1024); the latent is
	// Resolution/8 a side (the FLUX VAE's factor) and must split into whole
	// patches, so Resolution must be a multiple of 8·patch size.
	Resolution int
	// CaptionTokens is the caption length, every token real (default 256).
	CaptionTokens int
	// FP8Base stores the frozen linear weights in fp8 (nextdit.Options).
	FP8Base bool
	// CheckpointBlocks, when positive, is how many blocks the checkpointing
	// mode checkpoints (nextdit.Options.CheckpointBlocks; train.checkpoint_blocks).
	CheckpointBlocks int
	// RecomputeNorms recomputes the blocks' norms in the backward rather
	// than keeping them (nextdit.Options.RecomputeNorms); RecomputeFFNBlocks
	// the feed-forward inputs of that many blocks
	// (nextdit.Options.RecomputeFFNBlocks).
	RecomputeNorms     bool
	RecomputeFFNBlocks int
	// MemoryBudgetGiB, when positive, replaces the checkpointing modes and
	// the levers above with what the trainer's checkpoint_blocks auto picks
	// for that budget (the first rung of newbie.LeverLadder whose plan
	// fits): the step a person with that much memory gets.
	MemoryBudgetGiB float64

	plan string // what MemoryBudgetGiB's plan picked (withPlan)
	// CompareOff, when set, measures every checkpointing mode once per
	// entry, each a list of the backend's optional paths to turn off
	// (kernels.Switchable.SetOff: "" all on, "graphs", "fused,graphs", …),
	// on the one model: the paths' effect side by side in one process.
	CompareOff []string
	// Rank and Alpha of the LoRA (default 32 and 32), on lora.DefaultTargets.
	Rank  int
	Alpha float64
	// Seed draws the random weights, adapters, inputs and timesteps.
	Seed uint64
	// Profile adds two untimed steps per mode after the timed ones: one that
	// counts the backend ops a step issues and how long the host takes to
	// queue them, and one that attributes device time to op kinds — by
	// device events around every op where the backend has a device timer
	// (CUDA), by waiting for the device after every op elsewhere. Neither
	// changes the timed figures.
	Profile bool
	// Log receives progress lines (nil discards them).
	Log io.Writer
}

// vaeFactor is the FLUX autoencoder's spatial downsampling: a 1024² image
// is a 128² latent.
const vaeFactor = 8

// withDefaults fills the zero fields.
func (o Options) withDefaults() Options {
	if o.Preset == "" {
		o.Preset = "newbie-exp0.1"
	}
	if o.Backend == "" {
		o.Backend = "cuda"
	}
	if o.Batch == 0 {
		o.Batch = 1
	}
	if o.Accum == 0 {
		o.Accum = 1
	}
	if o.Steps == 0 {
		o.Steps = 10
	}
	switch {
	case o.Warmup == 0:
		o.Warmup = 3
	case o.Warmup < 0:
		o.Warmup = 0
	}
	if len(o.Checkpointing) == 0 {
		o.Checkpointing = []bool{false, true}
	}
	if o.Resolution == 0 {
		o.Resolution = 1024
	}
	if o.CaptionTokens == 0 {
		o.CaptionTokens = 256
	}
	if o.Rank == 0 {
		o.Rank = 32
	}
	if o.Alpha == 0 {
		o.Alpha = 32
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o
}

// config is the preset with the layer count replaced when asked.
func (o Options) config() (nextdit.Config, error) {
	cfg, err := nextdit.Preset(o.Preset)
	if err != nil {
		return cfg, fmt.Errorf("bench: %w", err)
	}
	switch {
	case o.Layers < 0:
		return cfg, fmt.Errorf("bench: layers %d: want ≥ 1 (or 0 for the preset's %d)", o.Layers, cfg.NLayers)
	case o.Layers > 0:
		cfg.NLayers = o.Layers
	}
	return cfg, nil
}

// Validate reports options that cannot be measured, before anything is
// built: an unknown preset or backend, the full model on the CPU, sizes
// that are not positive or do not split into patches.
func (o Options) Validate() error {
	o = o.withDefaults()
	cfg, err := o.config()
	if err != nil {
		return err
	}
	switch o.Backend {
	case "cuda":
	case "cpu":
		if len(o.CompareOff) > 0 {
			return fmt.Errorf("bench: --compare-off: the cpu backend has no optional paths to switch")
		}
		if o.Preset != "tiny" {
			return fmt.Errorf("bench: the CPU backend would take hours per step of the %s preset (%d parameters); use --preset tiny on the CPU, or --backend cuda", o.Preset, cfg.NumParams())
		}
	default:
		return fmt.Errorf("bench: backend %q: want cuda or cpu", o.Backend)
	}
	side := vaeFactor * cfg.PatchSize
	switch {
	case o.Batch < 1:
		return fmt.Errorf("bench: batch %d: want ≥ 1", o.Batch)
	case o.Accum < 1:
		return fmt.Errorf("bench: accumulation %d: want ≥ 1", o.Accum)
	case o.Steps < 1:
		return fmt.Errorf("bench: steps %d: want ≥ 1", o.Steps)
	case o.Resolution < side || o.Resolution%side != 0:
		return fmt.Errorf("bench: resolution %d: want a positive multiple of %d (VAE factor %d × patch %d)", o.Resolution, side, vaeFactor, cfg.PatchSize)
	case o.CaptionTokens < 1:
		return fmt.Errorf("bench: caption length %d: want ≥ 1", o.CaptionTokens)
	case o.Rank < 1:
		return fmt.Errorf("bench: LoRA rank %d: want ≥ 1", o.Rank)
	case !(o.MemoryBudgetGiB >= 0) || math.IsInf(o.MemoryBudgetGiB, 0):
		return fmt.Errorf("bench: memory budget %g GiB: want ≥ 0 (0: none)", o.MemoryBudgetGiB)
	case !(o.Alpha > 0) || math.IsInf(o.Alpha, 0):
		return fmt.Errorf("bench: LoRA alpha %g: want a finite value > 0", o.Alpha)
	}
	return nil
}

// StepFLOPs is the floating-point work of one LoRA training step as the
// PyTorch anchor (shared/anchors/torch_nextdit_lora.py) counts it, so that
// both programs' TFLOP/s divide the same number:
//
//	lin  = 2 · P · B · S                (every frozen weight once per token)
//	attn = 4 · S² · dim · L · B         (QKᵀ and PV, L = layers + 2·refiners)
//	FLOPs = (lin + attn) + (lin + 2·attn)
//
// forward plus a backward that computes input gradients only (the frozen
// weights need none; the LoRA matrices' own products are left out), with
// P the frozen parameters and S = caption + image tokens. Like the anchor
// it charges every block the joint sequence, though the refiners see only
// the caption or the image tokens, and it does not count the recompute of
// activation checkpointing: the figure is useful work per second.
func StepFLOPs(cfg nextdit.Config, batch, captionTokens, imageTokens int) float64 {
	s := float64(captionTokens + imageTokens)
	b := float64(batch)
	layers := float64(cfg.NLayers + 2*cfg.NRefinerLayers)
	lin := 2 * float64(cfg.NumParams()) * b * s
	attn := 4 * s * s * float64(cfg.Dim) * layers * b
	return (lin + attn) + (lin + 2*attn)
}

// Run builds the preset with random bf16 weights and LoRA adapters on the
// chosen backend and times the trainer's own step (Stepper.Step: flow loss
// under bf16 autocast, backward, non-finite check, clipping at 1.0, fused
// AdamW) on random inputs, for each checkpointing mode. A mode that fails
// (out of memory, say) records its error and the next mode still runs;
// Run returns an error only when nothing could be measured at all.
func Run(ctx context.Context, o Options) (res Result, err error) {
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	o = o.withDefaults()
	cfg, _ := o.config() // Validate checked it
	latent := o.Resolution / vaeFactor
	tokens := (latent / cfg.PatchSize) * (latent / cfg.PatchSize)
	res = Result{
		Preset: o.Preset, Layers: cfg.NLayers, FP8Base: o.FP8Base, Params: cfg.NumParams(), Rank: o.Rank, Alpha: o.Alpha,
		CheckpointBlocks: o.CheckpointBlocks, Blocks: cfg.Blocks(), RecomputeNorms: o.RecomputeNorms,
		RecomputeFFNBlocks: o.RecomputeFFNBlocks,
		Batch:              o.Batch, Accum: o.Accum, Ranks: 1, Resolution: o.Resolution, Latent: [3]int{cfg.InChannels, latent, latent},
		ImageTokens: tokens, CaptionTokens: o.CaptionTokens,
		FLOPs: StepFLOPs(cfg, o.Batch*o.Accum, o.CaptionTokens, tokens),
	}

	gpu := o.GPU
	if o.Dist.Distributed() {
		gpu = o.Dist.LocalRank
		if o.Dist.Rank != 0 {
			o.Log = io.Discard // rank 0 reports
		}
	}
	raw, capability, err := train.OpenBackend(o.Backend, gpu, o.Log)
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	if c, ok := raw.(interface{ Close() }); ok {
		defer c.Close()
	}
	if o.MemoryBudgetGiB > 0 {
		if o, err = o.withPlan(cfg, raw); err != nil {
			return res, err
		}
		res.CheckpointBlocks, res.RecomputeNorms, res.RecomputeFFNBlocks = o.CheckpointBlocks, o.RecomputeNorms, o.RecomputeFFNBlocks
		res.Plan = o.plan
	}
	comm, err := dist.Open(ctx, raw, o.Dist, dist.Options{})
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	res.Ranks = comm.WorldSize()
	// A rank that fails stops the others at once; the ranks' last sums
	// are done before any of them leaves.
	defer func() {
		if err != nil {
			comm.Abort(err)
		}
		comm.Close()
	}()
	be := &profiler{Backend: raw, rank: o.Rank}
	res.Backend = raw.Name()
	if st, ok := raw.(kernels.Switchable); ok {
		res.Switches = st.Switches()
	}
	e := ag.New(be)
	fmt.Fprintf(o.Log, "bench: building %s (%d parameters) with random bf16 weights on %s\n", o.Preset, res.Params, res.Backend)

	start := time.Now()
	model, err := nextdit.NewRandom(e, cfg, nextdit.Options{DType: kernels.BF16, FP8Base: o.FP8Base, RecomputeNorms: o.RecomputeNorms,
		RecomputeFFNBlocks: o.RecomputeFFNBlocks}, o.Seed)
	if err != nil {
		return res, fmt.Errorf("bench: model: %w", err)
	}
	defer model.Release()
	set, err := lora.Attach(model, lora.Config{Rank: o.Rank, Alpha: o.Alpha, Seed: o.Seed, Master: kernels.F32})
	if err != nil {
		return res, fmt.Errorf("bench: LoRA: %w", err)
	}
	defer set.Release()
	for _, a := range set.Adapters() {
		res.LoRALayers++
		res.LoRAParams += int64(a.A.Len() + a.B.Len())
	}
	// The anchor's optimizer: torch.optim.AdamW(lr=1e-4) with its default
	// betas, eps and weight decay; clipping at 1.0 as the trainer's default.
	hyper := optim.Hyper{LR: 1e-4, WeightDecay: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
	opt, err := optim.New(be, []optim.Group{{Name: "lora", Params: train.OptimParams(set), Hyper: hyper}},
		optim.Config{Precision: optim.BF16, Capability: capability, MaxGradNorm: 1})
	if err != nil {
		return res, fmt.Errorf("bench: optimizer: %w", err)
	}
	defer opt.Close()
	// As the trainer runs: the adapters' bf16 working copies, kept by the
	// optimizer, are what the forward reads.
	if err := train.AttachWorkingCopies(set, opt, kernels.BF16); err != nil {
		return res, fmt.Errorf("bench: working copies: %w", err)
	}
	if err := be.Sync(); err != nil {
		return res, fmt.Errorf("bench: building the model: %w", err)
	}
	res.BuildSeconds = time.Since(start).Seconds()
	res.BaseBytes = be.MemStats().Allocated
	fmt.Fprintf(o.Log, "bench: built in %.1f s; %s held by weights, adapters and optimizer state\n", res.BuildSeconds, train.BytesText(res.BaseBytes))

	st := &train.Stepper{Model: model, LoRA: set, Opt: opt}
	b := &benchStep{o: o, cfg: cfg, e: e, st: st, sampler: train.TimestepSampler{Kind: train.LognormShift}, latent: latent, tokens: tokens}
	if o.Dist.Distributed() {
		st.Comm = comm
		b.exchange = train.NewExchange(raw, comm)
		defer b.exchange.Free()
	}
	ok := false
	configs := o.CompareOff
	if len(configs) == 0 {
		configs = []string{""}
	} else {
		res.Compared = true
	}
	for _, paths := range configs {
		if res.Compared {
			sw, isSw := raw.(kernels.Switchable)
			if !isSw {
				return res, fmt.Errorf("bench: --compare-off: the %s backend has no optional paths to switch", raw.Name())
			}
			if err := sw.SetOff(paths); err != nil {
				return res, fmt.Errorf("bench: --compare-off: %w", err)
			}
			fmt.Fprintf(o.Log, "bench: %s\n", pathsLabel(paths))
		}
		for _, ckpt := range o.Checkpointing {
			if err := ctx.Err(); err != nil {
				return res, fmt.Errorf("bench: %w", err)
			}
			run := b.measure(ctx, be, ckpt, res)
			run.Paths = paths
			if run.Err == "" {
				ok = true
			}
			res.Modes = append(res.Modes, run)
		}
	}
	if !ok {
		return res, fmt.Errorf("bench: every mode failed; first: %s", res.Modes[0].Err)
	}
	return res, nil
}

// benchStep holds what every measured step needs.
type benchStep struct {
	o       Options
	cfg     nextdit.Config
	e       *ag.Engine
	st      *train.Stepper
	sampler train.TimestepSampler
	latent  int
	tokens  int
	n       int // steps run so far
	// exchange agrees on the steps' losses in a data-parallel job.
	exchange *train.Exchange
}

// batch draws micro-batch k of the run on the device: random inputs from
// the engine's stream at k × the draws of one micro-batch, so micro-batch
// k is the same whichever rank and step take it. The tensors are step
// tensors: Step's EndStep frees them.
func (b *benchStep) batch(k int) train.MicroBatch {
	o, c, e := b.o, b.cfg, b.e
	xshape := []int{o.Batch, c.InChannels, b.latent, b.latent}
	draws := 2*o.Batch*c.InChannels*b.latent*b.latent + o.Batch*o.CaptionTokens*c.CapFeatDim
	if c.ClipTextDim > 0 {
		draws += o.Batch * c.ClipTextDim
	}
	e.SeedRandom(o.Seed, uint64(k)*uint64(draws))
	fb := train.FlowBatch{
		X1:       e.Normal(kernels.F32, xshape),
		CapFeats: e.Normal(kernels.F32, []int{o.Batch, o.CaptionTokens, c.CapFeatDim}),
		CapLens:  make([]int, o.Batch),
	}
	for i := range fb.CapLens {
		fb.CapLens[i] = o.CaptionTokens
	}
	if c.ClipTextDim > 0 {
		fb.ClipPooled = e.Normal(kernels.F32, []int{o.Batch, c.ClipTextDim})
	}
	return train.MicroBatch{FlowBatch: fb, X0: e.Normal(kernels.F32, xshape), T: b.sampler.Sample(o.Seed, k, o.Batch, b.tokens)}
}

// step runs one trainer step under bf16 autocast — this rank's Accum
// micro-batches of it — and returns its host-clock duration.
func (b *benchStep) step() (float64, train.StepOutcome, error) {
	world, rank := 1, 0
	if b.exchange != nil {
		world, rank = b.o.Dist.WorldSize, b.o.Dist.Rank
	}
	first := (b.n*world + rank) * b.o.Accum
	b.n++
	micro := make([]train.MicroBatch, b.o.Accum)
	for i := range micro {
		micro[i] = b.batch(first + i)
	}
	prev := b.e.SetAutocast(kernels.BF16)
	start := time.Now()
	out, err := b.st.Step(micro)
	if err == nil && b.exchange != nil {
		out.Loss, err = b.exchange.AgreeLoss(out.Losses)
	}
	dt := time.Since(start).Seconds()
	b.e.SetAutocast(prev)
	return dt, out, err
}

// measure runs the warm-up, timed and (optionally) profiled steps of one
// checkpointing mode.
func (b *benchStep) measure(ctx context.Context, be *profiler, ckpt bool, res Result) Mode {
	o := b.o
	run := Mode{Checkpointing: ckpt}
	b.st.Model.SetCheckpoint(ckpt)
	if ckpt && o.CheckpointBlocks > 0 {
		b.st.Model.SetCheckpointBlocks(o.CheckpointBlocks)
	}
	fail := func(phase string, i int, err error) Mode {
		run.Err = fmt.Sprintf("%s step %d: %v", phase, i+1, err)
		fmt.Fprintf(o.Log, "bench: checkpointing %s: %s\n", onOff(ckpt), run.Err)
		// Leave the backend and the gradients clean for the next mode.
		_ = be.Sync()
		b.st.Opt.ZeroGrad()
		_ = be.Sync()
		return run
	}
	for i := range o.Warmup {
		dt, _, err := b.step()
		if err != nil {
			return fail("warm-up", i, err)
		}
		fmt.Fprintf(o.Log, "bench: checkpointing %s: warm-up step %d: %.3f s\n", onOff(ckpt), i+1, dt)
		if ctx.Err() != nil {
			return fail("warm-up", i, ctx.Err())
		}
	}
	if err := be.Sync(); err != nil {
		return fail("warm-up", o.Warmup-1, err)
	}
	base := be.MemStats().Allocated
	be.ResetPeak()
	graphs := be.GraphStats()
	for i := range o.Steps {
		dt, out, err := b.step()
		if err != nil {
			return fail("timed", i, err)
		}
		run.StepSeconds = append(run.StepSeconds, dt)
		run.Loss = out.Loss
		run.Losses = append(run.Losses, out.Loss)
		if ctx.Err() != nil {
			return fail("timed", i, ctx.Err())
		}
	}
	if err := be.Sync(); err != nil {
		return fail("timed", o.Steps-1, err)
	}
	ms := be.MemStats()
	run.PeakBytes, run.ReservedBytes = ms.Peak, ms.Reserved
	run.Graphs = be.GraphStats().Sub(graphs)
	run.ActivationBytes = ms.Peak - base
	// What the trainer's memory plan predicts for this mode, beside it.
	levers := newbie.MemoryLevers{RecomputeNorms: o.RecomputeNorms, RecomputeFFNBlocks: o.RecomputeFFNBlocks}
	if ckpt {
		levers.CheckpointBlocks = b.st.Model.Config().Blocks()
		if o.CheckpointBlocks > 0 {
			levers.CheckpointBlocks = o.CheckpointBlocks
		}
	}
	if est, err := newbie.EstimateTrain(b.st.Model.Config(), levers.On(o.trainShape()), newbie.RounderOf(be.Backend)); err == nil {
		run.EstimatedBytes = est.Total
	}
	sorted := append([]float64(nil), run.StepSeconds...)
	sort.Float64s(sorted)
	run.Min, run.Max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		run.Median = sorted[n/2]
	} else {
		run.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	run.SamplesPerSecond = float64(o.Batch*o.Accum*res.Ranks) / run.Median
	run.TFLOPs = res.FLOPs / run.Median / 1e12
	fmt.Fprintf(o.Log, "bench: checkpointing %s: median %.3f s/step over %d steps, peak %s\n", onOff(ckpt), run.Median, o.Steps, train.BytesText(run.PeakBytes))
	if math.IsNaN(run.Loss) || math.IsInf(run.Loss, 0) {
		run.Err = fmt.Sprintf("the loss is %g: the step computed garbage", run.Loss)
		return run
	}
	if o.Profile {
		p, err := b.profile(be)
		if err != nil {
			run.Err = fmt.Sprintf("profile step: %v", err)
			_ = be.Sync()
			b.st.Opt.ZeroGrad()
			return run
		}
		run.Profile = p
	}
	return run
}

// profile runs two more steps through the profiler: one counting ops and
// the host's queueing time, one timing each op.
func (b *benchStep) profile(be *profiler) (*Profile, error) {
	be.begin(false)
	_, _, err := b.step()
	counted := be.end()
	if err != nil {
		return nil, err
	}
	be.begin(true)
	dt, _, err := b.step()
	timed := be.end()
	if err != nil {
		return nil, err
	}
	if berr := be.takeErr(); berr != nil {
		return nil, berr
	}
	return newProfile(counted, timed, dt), nil
}

// newProfile is a Profile from a counting window, a timed one and the
// timed run's seconds, the kinds most time first.
func newProfile(counted, timed profileWindow, synced float64) *Profile {
	p := &Profile{QueueSeconds: counted.queue, SyncedSeconds: synced, DeviceClock: timed.device, DeviceSeconds: timed.span}
	for kind, n := range counted.count {
		p.Ops += n
		p.Kinds = append(p.Kinds, OpKind{Kind: kind, Count: n, Seconds: timed.seconds[kind]})
	}
	sort.Slice(p.Kinds, func(i, j int) bool {
		if p.Kinds[i].Seconds != p.Kinds[j].Seconds {
			return p.Kinds[i].Seconds > p.Kinds[j].Seconds
		}
		return p.Kinds[i].Kind < p.Kinds[j].Kind
	})
	return p
}

// pathsLabel names a CompareOff entry.
func pathsLabel(off string) string {
	if off == "" {
		return "all on"
	}
	return "off: " + off
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// withPlan returns o with the checkpointing and recompute levers that
// checkpoint_blocks auto picks under o.MemoryBudgetGiB for o's step: the
// first rung of newbie.LeverLadder whose estimate fits, and one
// checkpointing mode, on when it checkpoints blocks.
func (o Options) withPlan(cfg nextdit.Config, be kernels.Backend) (Options, error) {
	budget := int64(o.MemoryBudgetGiB * (1 << 30))
	for _, l := range newbie.LeverLadder(cfg.Blocks()) {
		est, err := newbie.EstimateTrain(cfg, l.On(o.trainShape()), newbie.RounderOf(be))
		if err != nil {
			return o, fmt.Errorf("bench: --memory-budget: %w", err)
		}
		if est.Total <= budget {
			o.CheckpointBlocks, o.RecomputeNorms, o.RecomputeFFNBlocks = l.CheckpointBlocks, l.RecomputeNorms, l.RecomputeFFNBlocks
			o.Checkpointing = []bool{l.CheckpointBlocks > 0}
			o.plan = fmt.Sprintf("memory budget %g GiB: %s (the plan: %s)", o.MemoryBudgetGiB, l.Describe(cfg.Blocks()), train.BytesText(est.Total))
			fmt.Fprintf(o.Log, "bench: %s\n", o.plan)
			return o, nil
		}
	}
	return o, fmt.Errorf("bench: --memory-budget %g GiB: even every block checkpointed is planned above it", o.MemoryBudgetGiB)
}

// trainShape is the step o measures as the memory plan describes it, with
// no memory levers set (newbie.MemoryLevers.On adds them).
func (o Options) trainShape() newbie.TrainShape {
	latent := o.Resolution / vaeFactor
	return newbie.TrainShape{Batch: o.Batch, LatentH: latent, LatentW: latent, CaptionTokens: o.CaptionTokens, Rank: o.Rank,
		DType: kernels.BF16, Autocast: kernels.BF16, FP8Base: o.FP8Base}
}
