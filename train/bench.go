package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// BenchOptions describe one throughput measurement of the training step.
// The zero value of every field takes the default noted beside it, which
// together are the benchmark: the full NewBie model at 1024², 256
// caption tokens, batch 1, LoRA r32 α32, with and without checkpointing.
type BenchOptions struct {
	// Preset is the model architecture by name (default "newbie-exp0.1").
	Preset string
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
	// Rank and Alpha of the LoRA (default 32 and 32), on lora.DefaultTargets.
	Rank  int
	Alpha float64
	// Seed draws the random weights, adapters, inputs and timesteps.
	Seed uint64
	// Profile adds two untimed steps per mode after the timed ones: one that
	// counts the backend ops a step issues and how long the host takes to
	// queue them, and one that waits for the device after every op to
	// attribute device time to op kinds. Neither changes the timed figures.
	Profile bool
	// Log receives progress lines (nil discards them).
	Log io.Writer
}

// vaeFactor is the FLUX autoencoder's spatial downsampling: a 1024² image
// is a 128² latent.
const vaeFactor = 8

// withDefaults fills the zero fields.
func (o BenchOptions) withDefaults() BenchOptions {
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

// Validate reports options that cannot be measured, before anything is
// built: an unknown preset or backend, the full model on the CPU, sizes
// that are not positive or do not split into patches.
func (o BenchOptions) Validate() error {
	o = o.withDefaults()
	cfg, err := nextdit.Preset(o.Preset)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	switch o.Backend {
	case "cuda":
	case "cpu":
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
	case !(o.Alpha > 0) || math.IsInf(o.Alpha, 0):
		return fmt.Errorf("bench: LoRA alpha %g: want a finite value > 0", o.Alpha)
	}
	return nil
}

// BenchResult is the outcome of Bench: what was measured and one BenchRun
// per checkpointing mode.
type BenchResult struct {
	Backend string // the backend's Name, e.g. "cuda:0 (NVIDIA H200)"
	Preset  string
	// Params is the frozen base model's size; LoRAParams the trainable
	// adapters' and LoRALayers how many linear layers carry one.
	Params     int64
	LoRAParams int64
	LoRALayers int
	Rank       int
	Alpha      float64
	Batch      int
	// Accum is the micro-batches per step on each of Ranks ranks.
	Accum      int
	Ranks      int
	Resolution int
	// Latent is the latent's [C, H, W]; ImageTokens the image tokens per
	// sample; CaptionTokens the caption tokens per sample.
	Latent        [3]int
	ImageTokens   int
	CaptionTokens int
	// FLOPs is the work of one step counted as the PyTorch anchor counts it
	// (see StepFLOPs), the numerator of every TFLOP/s figure.
	FLOPs float64
	// BuildSeconds is the time to build the random model and adapters.
	BuildSeconds float64
	// BaseBytes is the memory held before the first step: frozen weights,
	// adapters with their gradients and the optimizer's moments.
	BaseBytes int64
	Runs      []BenchRun
}

// BenchRun is the measurement of one checkpointing mode.
type BenchRun struct {
	Checkpointing bool
	// StepSeconds are the host-clock durations of the timed steps (each
	// Stepper.Step synchronises with the device once it has the loss).
	StepSeconds []float64
	// Median, Min and Max of StepSeconds.
	Median, Min, Max float64
	// SamplesPerSecond is Batch / Median; TFLOPs is FLOPs / Median / 1e12.
	SamplesPerSecond float64
	TFLOPs           float64
	// PeakBytes is the backend's peak allocated memory over the timed steps
	// (the peak counter is reset after the warm-up); ActivationBytes is
	// PeakBytes − BaseBytes, what the step itself adds at its highest.
	// ReservedBytes is what the backend holds from the device after the
	// timed steps (its cache included; cumulative across modes, since the
	// allocator keeps blocks for reuse).
	PeakBytes, ActivationBytes, ReservedBytes int64
	// Loss is the last timed step's loss, a sanity check (finite); Losses
	// are every timed step's.
	Loss   float64
	Losses []float64
	// Profile is filled when BenchOptions.Profile is set.
	Profile *StepProfile
	// Err is the failure of this mode (e.g. out of memory), empty on
	// success; a failed mode does not stop the others.
	Err string
}

// StepProfile is where one training step goes, by backend op kind.
type StepProfile struct {
	// Ops is the number of backend ops one step issues (each at least one
	// kernel launch on the GPU; cuBLAS may launch more than one per Gemm).
	Ops int
	// QueueSeconds is the host time from the step's start to its first
	// wait for the device (the forward and backward being queued); a value
	// near the step time means the step is bound by the host, not the GPU.
	QueueSeconds float64
	// SyncedSeconds is the step's time when every op is waited for: the sum
	// of the per-op times plus the host's own work.
	SyncedSeconds float64
	// Kinds are the per-kind counts and times, most time first.
	Kinds []OpKindStat
}

// OpKindStat is one kind of backend op within a profiled step.
type OpKindStat struct {
	Kind  string
	Count int
	// Seconds is the summed time from each op's call until the device has
	// finished it (measured with a wait after every op, so it includes one
	// launch and one wait per op: an upper bound on the device time).
	Seconds float64
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

// Bench builds the preset with random bf16 weights and LoRA adapters on the
// chosen backend and times the trainer's own step (Stepper.Step: flow loss
// under bf16 autocast, backward, non-finite check, clipping at 1.0, fused
// AdamW) on random inputs, for each checkpointing mode. A mode that fails
// (out of memory, say) records its error and the next mode still runs;
// Bench returns an error only when nothing could be measured at all.
func Bench(ctx context.Context, o BenchOptions) (res BenchResult, err error) {
	if err := o.Validate(); err != nil {
		return BenchResult{}, err
	}
	o = o.withDefaults()
	cfg, _ := nextdit.Preset(o.Preset) // Validate checked the name
	latent := o.Resolution / vaeFactor
	tokens := (latent / cfg.PatchSize) * (latent / cfg.PatchSize)
	res = BenchResult{
		Preset: o.Preset, Params: cfg.NumParams(), Rank: o.Rank, Alpha: o.Alpha,
		Batch: o.Batch, Accum: o.Accum, Ranks: 1, Resolution: o.Resolution, Latent: [3]int{cfg.InChannels, latent, latent},
		ImageTokens: tokens, CaptionTokens: o.CaptionTokens,
		FLOPs: StepFLOPs(cfg, o.Batch, o.CaptionTokens, tokens),
	}

	gpu := o.GPU
	if o.Dist.Distributed() {
		gpu = o.Dist.LocalRank
		if o.Dist.Rank != 0 {
			o.Log = io.Discard // rank 0 reports
		}
	}
	raw, capability, err := OpenBackend(o.Backend, gpu, o.Log)
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	if c, ok := raw.(interface{ Close() }); ok {
		defer c.Close()
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
	e := ag.New(be)
	fmt.Fprintf(o.Log, "bench: building %s (%d parameters) with random bf16 weights on %s\n", o.Preset, res.Params, res.Backend)

	start := time.Now()
	model, err := nextdit.NewRandom(e, cfg, nextdit.Options{DType: kernels.BF16}, o.Seed)
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
	opt, err := optim.New(be, []optim.Group{{Name: "lora", Params: OptimParams(set), Hyper: hyper}},
		optim.Config{Precision: optim.BF16, Capability: capability, MaxGradNorm: 1})
	if err != nil {
		return res, fmt.Errorf("bench: optimizer: %w", err)
	}
	defer opt.Close()
	if err := be.Sync(); err != nil {
		return res, fmt.Errorf("bench: building the model: %w", err)
	}
	res.BuildSeconds = time.Since(start).Seconds()
	res.BaseBytes = be.MemStats().Allocated
	fmt.Fprintf(o.Log, "bench: built in %.1f s; %s held by weights, adapters and optimizer state\n", res.BuildSeconds, BytesText(res.BaseBytes))

	st := &Stepper{Model: model, LoRA: set, Opt: opt}
	b := &benchStep{o: o, cfg: cfg, e: e, st: st, sampler: TimestepSampler{Kind: LognormShift}, latent: latent, tokens: tokens}
	if o.Dist.Distributed() {
		st.Comm = comm
		b.exchange = &exchange{b: raw, comm: comm}
		defer b.exchange.free()
	}
	ok := false
	for _, ckpt := range o.Checkpointing {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("bench: %w", err)
		}
		run := b.measure(ctx, be, ckpt, res)
		if run.Err == "" {
			ok = true
		}
		res.Runs = append(res.Runs, run)
	}
	if !ok {
		return res, fmt.Errorf("bench: every mode failed; first: %s", res.Runs[0].Err)
	}
	return res, nil
}

// benchStep holds what every measured step needs.
type benchStep struct {
	o       BenchOptions
	cfg     nextdit.Config
	e       *ag.Engine
	st      *Stepper
	sampler TimestepSampler
	latent  int
	tokens  int
	n       int // steps run so far
	// exchange agrees on the steps' losses in a data-parallel job.
	exchange *exchange
}

// batch draws micro-batch k of the run on the device: random inputs from
// the engine's stream at k × the draws of one micro-batch, so micro-batch
// k is the same whichever rank and step take it. The tensors are step
// tensors: Step's EndStep frees them.
func (b *benchStep) batch(k int) MicroBatch {
	o, c, e := b.o, b.cfg, b.e
	xshape := []int{o.Batch, c.InChannels, b.latent, b.latent}
	draws := 2*o.Batch*c.InChannels*b.latent*b.latent + o.Batch*o.CaptionTokens*c.CapFeatDim
	if c.ClipTextDim > 0 {
		draws += o.Batch * c.ClipTextDim
	}
	e.SeedRandom(o.Seed, uint64(k)*uint64(draws))
	fb := FlowBatch{
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
	return MicroBatch{FlowBatch: fb, X0: e.Normal(kernels.F32, xshape), T: b.sampler.Sample(o.Seed, k, o.Batch, b.tokens)}
}

// step runs one trainer step under bf16 autocast — this rank's Accum
// micro-batches of it — and returns its host-clock duration.
func (b *benchStep) step() (float64, StepOutcome, error) {
	world, rank := 1, 0
	if b.exchange != nil {
		world, rank = b.exchange.comm.WorldSize(), b.exchange.comm.Rank()
	}
	first := (b.n*world + rank) * b.o.Accum
	b.n++
	micro := make([]MicroBatch, b.o.Accum)
	for i := range micro {
		micro[i] = b.batch(first + i)
	}
	prev := b.e.SetAutocast(kernels.BF16)
	start := time.Now()
	out, err := b.st.Step(micro)
	if err == nil && b.exchange != nil {
		out.Loss, err = b.exchange.agreeLoss(out.Losses)
	}
	dt := time.Since(start).Seconds()
	b.e.SetAutocast(prev)
	return dt, out, err
}

// measure runs the warm-up, timed and (optionally) profiled steps of one
// checkpointing mode.
func (b *benchStep) measure(ctx context.Context, be *profiler, ckpt bool, res BenchResult) BenchRun {
	o := b.o
	run := BenchRun{Checkpointing: ckpt}
	b.st.Model.SetCheckpoint(ckpt)
	fail := func(phase string, i int, err error) BenchRun {
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
	run.ActivationBytes = ms.Peak - base
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
	fmt.Fprintf(o.Log, "bench: checkpointing %s: median %.3f s/step over %d steps, peak %s\n", onOff(ckpt), run.Median, o.Steps, BytesText(run.PeakBytes))
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
// the host's queueing time, one waiting after each op.
func (b *benchStep) profile(be *profiler) (*StepProfile, error) {
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
	p := &StepProfile{QueueSeconds: counted.queue, SyncedSeconds: dt}
	for kind, n := range counted.count {
		p.Ops += n
		p.Kinds = append(p.Kinds, OpKindStat{Kind: kind, Count: n, Seconds: timed.seconds[kind]})
	}
	sort.Slice(p.Kinds, func(i, j int) bool {
		if p.Kinds[i].Seconds != p.Kinds[j].Seconds {
			return p.Kinds[i].Seconds > p.Kinds[j].Seconds
		}
		return p.Kinds[i].Kind < p.Kinds[j].Kind
	})
	return p, nil
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// BytesText formats a byte count in GiB, MiB or KiB.
func BytesText(n int64) string { return bytesText(n) }

// Table formats the result as Markdown: a header of what was measured, one
// row per mode, then each mode's profile when there is one.
func (r BenchResult) Table() string {
	var sb strings.Builder
	gib := func(n int64) string { return fmt.Sprintf("%.2f", float64(n)/(1<<30)) }
	fmt.Fprintf(&sb, "backend: %s\n", r.Backend)
	fmt.Fprintf(&sb, "model: %s, %d frozen bf16 parameters; LoRA r%d α%g on %d layers (%d fp32 parameters); AdamW, clip 1.0, bf16 autocast\n",
		r.Preset, r.Params, r.Rank, r.Alpha, r.LoRALayers, r.LoRAParams)
	fmt.Fprintf(&sb, "input: batch %d, %d×%d image → latent %d×%d×%d (%d image tokens) + %d caption tokens\n",
		r.Batch, r.Resolution, r.Resolution, r.Latent[0], r.Latent[1], r.Latent[2], r.ImageTokens, r.CaptionTokens)
	if r.Accum > 1 || r.Ranks > 1 {
		fmt.Fprintf(&sb, "step: %d micro-batch(es) on each of %d rank(s); samples/s counts all %d samples of a step\n", r.Accum, r.Ranks, r.Batch*r.Accum*r.Ranks)
	}
	fmt.Fprintf(&sb, "work: %.4g TFLOP per step (the PyTorch anchor's count); model built in %.1f s; %s GiB held before the first step\n\n",
		r.FLOPs/1e12, r.BuildSeconds, gib(r.BaseBytes))
	sb.WriteString("| checkpointing | s/step (median) | min | max | samples/s | TFLOP/s | peak GiB | step's own GiB | reserved GiB | loss |\n")
	sb.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, run := range r.Runs {
		if run.Err != "" && run.Median == 0 {
			fmt.Fprintf(&sb, "| %s | failed: %s | | | | | | | | |\n", onOff(run.Checkpointing), run.Err)
			continue
		}
		fmt.Fprintf(&sb, "| %s | %.4f | %.4f | %.4f | %.3g | %.3g | %s | %s | %s | %.4f |\n",
			onOff(run.Checkpointing), run.Median, run.Min, run.Max, run.SamplesPerSecond, run.TFLOPs,
			gib(run.PeakBytes), gib(run.ActivationBytes), gib(run.ReservedBytes), run.Loss)
	}
	for _, run := range r.Runs {
		if len(run.Losses) > 0 {
			fmt.Fprintf(&sb, "\nlosses, checkpointing %s:", onOff(run.Checkpointing))
			for _, l := range run.Losses {
				fmt.Fprintf(&sb, " %.9g", l)
			}
			sb.WriteString("\n")
		}
	}
	for _, run := range r.Runs {
		if run.Err != "" && run.Median != 0 {
			fmt.Fprintf(&sb, "\ncheckpointing %s: %s\n", onOff(run.Checkpointing), run.Err)
		}
		p := run.Profile
		if p == nil {
			continue
		}
		var total float64
		for _, k := range p.Kinds {
			total += k.Seconds
		}
		fmt.Fprintf(&sb, "\nprofile, checkpointing %s: %d backend ops per step; host queues the forward and backward in %.3f s (step median %.3f s); waiting after every op the step takes %.3f s\n\n",
			onOff(run.Checkpointing), p.Ops, p.QueueSeconds, run.Median, p.SyncedSeconds)
		sb.WriteString("| op kind | count | time (s, op + wait) | share |\n| --- | --- | --- | --- |\n")
		for _, k := range p.Kinds {
			share := 0.0
			if total > 0 {
				share = k.Seconds / total
			}
			fmt.Fprintf(&sb, "| %s | %d | %.4f | %.1f%% |\n", k.Kind, k.Count, k.Seconds, 100*share)
		}
	}
	return sb.String()
}

// profiler wraps a backend to count the ops a step issues and, in timed
// mode, to wait for the device after each op so that its time can be
// attributed. Outside a begin/end window it only forwards calls.
type profiler struct {
	kernels.Backend
	// rank is the LoRA rank, which marks the adapters' products.
	rank      int
	on, timed bool
	start     time.Time
	queue     float64 // seconds from begin to the first wait for the device
	queued    bool
	count     map[string]int
	seconds   map[string]float64
	// err keeps the first failure that a wait of timed mode took from the
	// backend (Sync clears it there), to be returned by the next Sync or
	// Download as the backend would have.
	err error
}

// profileWindow is what one begin/end window recorded.
type profileWindow struct {
	count   map[string]int
	seconds map[string]float64
	queue   float64
}

func (p *profiler) begin(timed bool) {
	p.on, p.timed, p.queued = true, timed, false
	p.count, p.seconds = map[string]int{}, map[string]float64{}
	p.start = time.Now()
	p.queue = 0
}

func (p *profiler) end() profileWindow {
	p.on = false
	if !p.queued {
		p.queue = time.Since(p.start).Seconds()
	}
	return profileWindow{count: p.count, seconds: p.seconds, queue: p.queue}
}

// takeErr returns and clears a failure held from a timed wait.
func (p *profiler) takeErr() error {
	err := p.err
	p.err = nil
	return err
}

// op runs one backend call, counting it (and timing it with a wait in timed
// mode) while a window is open.
func (p *profiler) op(kind string, call func()) {
	if !p.on {
		call()
		return
	}
	p.count[kind]++
	if !p.timed {
		call()
		return
	}
	t := time.Now()
	call()
	if err := p.Backend.Sync(); err != nil && p.err == nil {
		p.err = err
	}
	p.seconds[kind] += time.Since(t).Seconds()
}

// waited marks the first wait for the device in a counting window.
func (p *profiler) waited() {
	if p.on && !p.queued {
		p.queued = true
		p.queue = time.Since(p.start).Seconds()
	}
}

// Sync waits for the device; a failure held from a timed wait comes first.
func (p *profiler) Sync() error {
	p.waited()
	err := p.Backend.Sync()
	if p.err != nil {
		err = errors.Join(p.takeErr(), err)
	}
	return err
}

// Download copies to the host; a failure held from a timed wait comes first.
func (p *profiler) Download(dst []byte, src kernels.Buffer, off int) error {
	p.waited()
	err := p.Backend.Download(dst, src, off)
	if p.err != nil {
		err = errors.Join(p.takeErr(), err)
	}
	return err
}

// Upload copies host bytes to the device (counted: it is a transfer queued
// on the stream like any op).
func (p *profiler) Upload(dst kernels.Buffer, off int, src []byte) {
	p.op("Upload", func() { p.Backend.Upload(dst, off, src) })
}

// Fill forwards with profiling.
func (p *profiler) Fill(dst kernels.Buffer, v float64) {
	p.op("Fill "+dtypeOf(dst), func() { p.Backend.Fill(dst, v) })
}

// Cast forwards with profiling.
func (p *profiler) Cast(dst, src kernels.Buffer) {
	p.op("Cast "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Cast(dst, src) })
}

// Copy2D forwards with profiling.
func (p *profiler) Copy2D(dst kernels.Buffer, dstOff, dstStride int, src kernels.Buffer, srcOff, srcStride int, rows, cols int) {
	p.op("Copy2D "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Copy2D(dst, dstOff, dstStride, src, srcOff, srcStride, rows, cols) })
}

// Permute forwards with profiling.
func (p *profiler) Permute(dst, src kernels.Buffer, shape []int, perm []int) {
	p.op("Permute", func() { p.Backend.Permute(dst, src, shape, perm) })
}

// Gemm forwards with profiling, telling the adapters' products (a side
// equal to the LoRA rank) from the others, which the frozen weights
// dominate.
func (p *profiler) Gemm(g kernels.GemmArgs) {
	kind := "Gemm"
	if r := p.rank; r > 0 && (g.M == r || g.N == r || g.K == r) {
		kind = "Gemm (LoRA)"
	}
	p.op(kind, func() { p.Backend.Gemm(g) })
}

// unaryNames name the unary ops in the profile.
var unaryNames = map[kernels.UnaryOp]string{
	kernels.Identity: "Identity", kernels.Neg: "Neg", kernels.Abs: "Abs", kernels.Exp: "Exp",
	kernels.Log: "Log", kernels.Sqrt: "Sqrt", kernels.Rsqrt: "Rsqrt", kernels.Recip: "Recip",
	kernels.Square: "Square", kernels.Tanh: "Tanh", kernels.Sigmoid: "Sigmoid", kernels.SiLU: "SiLU",
	kernels.GELUTanh: "GELUTanh", kernels.Affine: "Affine", kernels.PowScalar: "PowScalar",
	kernels.DropoutMask: "DropoutMask",
}

// binaryNames name the binary ops in the profile.
var binaryNames = map[kernels.BinaryOp]string{
	kernels.Add: "Add", kernels.Sub: "Sub", kernels.Mul: "Mul", kernels.Div: "Div",
	kernels.Maximum: "Maximum", kernels.Minimum: "Minimum",
}

// dtypeOf names a buffer's dtype for a profile kind ("-" for none).
func dtypeOf(b kernels.Buffer) string {
	if b == nil {
		return "-"
	}
	return b.DType().String()
}

// broadcastOf marks a binary op whose operands are not both full-size
// (a broadcast, e.g. a per-channel scale over every token).
func broadcastOf(dst, a, b []int) string {
	n := func(shape []int) int {
		k := 1
		for _, v := range shape {
			k *= v
		}
		return k
	}
	if n(a) != n(dst) || n(b) != n(dst) {
		return " (broadcast)"
	}
	return ""
}

// Unary forwards with profiling.
func (p *profiler) Unary(op kernels.UnaryOp, dst, src kernels.Buffer, up kernels.UnaryParams) {
	p.op("Unary "+unaryNames[op]+" "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Unary(op, dst, src, up) })
}

// UnaryGrad forwards with profiling.
func (p *profiler) UnaryGrad(op kernels.UnaryOp, dx, x, dy kernels.Buffer, up kernels.UnaryParams) {
	p.op("UnaryGrad "+unaryNames[op]+" "+dtypeOf(dy)+"→"+dtypeOf(dx), func() { p.Backend.UnaryGrad(op, dx, x, dy, up) })
}

// Binary forwards with profiling.
func (p *profiler) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	p.op("Binary "+binaryNames[op]+" "+dtypeOf(a)+","+dtypeOf(b)+"→"+dtypeOf(dst)+broadcastOf(dstShape, aShape, bShape), func() { p.Backend.Binary(op, dst, dstShape, a, aShape, b, bShape) })
}

// Reduce forwards with profiling.
func (p *profiler) Reduce(op kernels.ReduceOp, dst, src kernels.Buffer, outer, axis, inner int) {
	p.op("Reduce "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Reduce(op, dst, src, outer, axis, inner) })
}

// SumSquares forwards with profiling.
func (p *profiler) SumSquares(dst kernels.Buffer, srcs []kernels.Buffer) {
	p.op("SumSquares", func() { p.Backend.SumSquares(dst, srcs) })
}

// NonFinite forwards with profiling.
func (p *profiler) NonFinite(dst kernels.Buffer, srcs []kernels.Buffer) {
	p.op("NonFinite", func() { p.Backend.NonFinite(dst, srcs) })
}

// Softmax forwards with profiling.
func (p *profiler) Softmax(dst, src kernels.Buffer, rows, cols int) {
	p.op("Softmax", func() { p.Backend.Softmax(dst, src, rows, cols) })
}

// SoftmaxGrad forwards with profiling.
func (p *profiler) SoftmaxGrad(dx, y, dy kernels.Buffer, rows, cols int) {
	p.op("SoftmaxGrad", func() { p.Backend.SoftmaxGrad(dx, y, dy, rows, cols) })
}

// RMSNorm forwards with profiling.
func (p *profiler) RMSNorm(y, rstd, x, w kernels.Buffer, rows, cols int, eps float64) {
	p.op("RMSNorm "+dtypeOf(x)+"→"+dtypeOf(y), func() { p.Backend.RMSNorm(y, rstd, x, w, rows, cols, eps) })
}

// RMSNormGrad forwards with profiling.
func (p *profiler) RMSNormGrad(dx, dw, dy, x, w, rstd kernels.Buffer, rows, cols int) {
	p.op("RMSNormGrad "+dtypeOf(dy)+"→"+dtypeOf(dx), func() { p.Backend.RMSNormGrad(dx, dw, dy, x, w, rstd, rows, cols) })
}

// LayerNorm forwards with profiling.
func (p *profiler) LayerNorm(y, mean, rstd, x, w, b kernels.Buffer, rows, cols int, eps float64) {
	p.op("LayerNorm", func() { p.Backend.LayerNorm(y, mean, rstd, x, w, b, rows, cols, eps) })
}

// LayerNormGrad forwards with profiling.
func (p *profiler) LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, rows, cols int) {
	p.op("LayerNormGrad", func() { p.Backend.LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd, rows, cols) })
}

// GroupNorm forwards with profiling.
func (p *profiler) GroupNorm(y, mean, rstd, x, w, b kernels.Buffer, n, c, hw, groups int, eps float64) {
	p.op("GroupNorm", func() { p.Backend.GroupNorm(y, mean, rstd, x, w, b, n, c, hw, groups, eps) })
}

// GroupNormGrad forwards with profiling.
func (p *profiler) GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, n, c, hw, groups int) {
	p.op("GroupNormGrad", func() { p.Backend.GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd, n, c, hw, groups) })
}

// Attention forwards with profiling.
func (p *profiler) Attention(a kernels.AttentionArgs, o, lse kernels.Buffer) {
	p.op("Attention", func() { p.Backend.Attention(a, o, lse) })
}

// AttentionGrad forwards with profiling.
func (p *profiler) AttentionGrad(a kernels.AttentionArgs, o, lse, dO, dQ, dK, dV kernels.Buffer) {
	p.op("AttentionGrad", func() { p.Backend.AttentionGrad(a, o, lse, dO, dQ, dK, dV) })
}

// Rope forwards with profiling.
func (p *profiler) Rope(dst, x, cos, sin kernels.Buffer, b, s, h, d int, interleaved, inverse bool) {
	p.op("Rope", func() { p.Backend.Rope(dst, x, cos, sin, b, s, h, d, interleaved, inverse) })
}

// Conv2D forwards with profiling.
func (p *profiler) Conv2D(y, x, w, bias kernels.Buffer, c kernels.ConvArgs) {
	p.op("Conv2D", func() { p.Backend.Conv2D(y, x, w, bias, c) })
}

// Conv2DGrad forwards with profiling.
func (p *profiler) Conv2DGrad(dx, dw, dbias, dy, x, w kernels.Buffer, c kernels.ConvArgs) {
	p.op("Conv2DGrad", func() { p.Backend.Conv2DGrad(dx, dw, dbias, dy, x, w, c) })
}

// Upsample2x forwards with profiling.
func (p *profiler) Upsample2x(y, x kernels.Buffer, n, c, h, w int) {
	p.op("Upsample2x", func() { p.Backend.Upsample2x(y, x, n, c, h, w) })
}

// Upsample2xGrad forwards with profiling.
func (p *profiler) Upsample2xGrad(dx, dy kernels.Buffer, n, c, h, w int) {
	p.op("Upsample2xGrad", func() { p.Backend.Upsample2xGrad(dx, dy, n, c, h, w) })
}

// Gather forwards with profiling.
func (p *profiler) Gather(dst, table, ids kernels.Buffer, dim int) {
	p.op("Gather", func() { p.Backend.Gather(dst, table, ids, dim) })
}

// ScatterAdd forwards with profiling.
func (p *profiler) ScatterAdd(dst, src, ids kernels.Buffer, dim int) {
	p.op("ScatterAdd", func() { p.Backend.ScatterAdd(dst, src, ids, dim) })
}

// RandNormal forwards with profiling.
func (p *profiler) RandNormal(dst kernels.Buffer, seed, offset uint64, mean, std float64) {
	p.op("RandNormal", func() { p.Backend.RandNormal(dst, seed, offset, mean, std) })
}

// RandUniform forwards with profiling.
func (p *profiler) RandUniform(dst kernels.Buffer, seed, offset uint64, lo, hi float64) {
	p.op("RandUniform", func() { p.Backend.RandUniform(dst, seed, offset, lo, hi) })
}

// AdamW forwards with profiling.
func (p *profiler) AdamW(a kernels.AdamWArgs) { p.op("AdamW", func() { p.Backend.AdamW(a) }) }
