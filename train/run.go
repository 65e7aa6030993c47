package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// Options are the choices of one invocation that are not part of the
// config: whether to resume, and where messages go.
type Options struct {
	// Resume is "" (start fresh), "latest" (the newest complete state in
	// the output folder) or the path of a state folder.
	Resume string
	// Log receives the human-readable progress lines.
	Log io.Writer
	// Bar redraws a one-line progress bar with the ETA on Log after every
	// step (for a terminal: the CLI sets it when stderr is one).
	Bar bool
}

// ErrInterrupted is returned when the context was cancelled (Ctrl-C,
// SIGTERM) and the run saved a resumable state before stopping.
var ErrInterrupted = errors.New("training interrupted; a resumable state was saved")

// Result summarises a finished (or interrupted) run.
type Result struct {
	Steps     int
	LastLoss  float64
	FirstLoss float64
	// ValLoss is the last held-out loss (0 without validation).
	ValLoss float64
	// LoRAFiles are the adapter files of the last save; StateDir its state.
	LoRAFiles []string
	StateDir  string
}

// run is one training run's live objects.
type run struct {
	cfg      *configs.Config
	log      io.Writer
	b        kernels.Backend
	e        *ag.Engine
	model    *nextdit.Model
	set      *lora.Set
	opt      *optim.Optimizer
	loader   *data.Loader
	encoded  *data.Encoded // the training part of the encoded dataset
	held     *data.Encoded // the held-out part, nil without validation
	stepper  *Stepper
	sampler  TimestepSampler
	autocast kernels.DType
	baseHash string
	total    int
	step     int // optimizer steps done
	micro    uint64
	metrics  *metrics
	jsonl    *os.File
	bar      bool // a progress bar is drawn on log
	stopping bool // an interrupted run is saving: no previews
	barShown bool // the last thing written to log is the bar
	curve    []float64
}

// Run trains the LoRA the config describes until its last step, or until
// ctx is cancelled (then it saves a resumable state and returns
// ErrInterrupted).
func Run(ctx context.Context, cfg *configs.Config, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	r := &run{cfg: cfg, log: o.Log, bar: o.Bar}
	defer r.close()
	if err := r.setup(ctx, o.Resume); err != nil {
		return nil, err
	}
	return r.loop(ctx)
}

func (r *run) logf(format string, args ...any) {
	if r.barShown {
		fmt.Fprint(r.log, "\r\033[K") // clear the bar; it is redrawn after the next step
		r.barShown = false
	}
	fmt.Fprintf(r.log, format+"\n", args...)
}

// drawBar redraws the progress bar in place.
func (r *run) drawBar(loss, secPerStep float64, eta time.Duration) {
	const width = 30
	done := width * r.step / r.total
	fmt.Fprintf(r.log, "\r\033[K[%s%s] %d/%d  loss %.4f  %.2f s/step  ETA %s",
		strings.Repeat("#", done), strings.Repeat("-", width-done), r.step, r.total, loss, secPerStep, eta.Round(time.Second))
	r.barShown = true
}

// close releases what the run holds.
func (r *run) close() {
	if r.loader != nil {
		r.loader.Close()
	}
	if r.opt != nil {
		r.opt.Close()
	}
	if r.set != nil {
		r.set.Release()
	}
	if r.model != nil {
		r.model.Release()
	}
	if r.metrics != nil {
		r.metrics.close()
	}
	if r.jsonl != nil {
		r.jsonl.Close()
	}
}

// OpenBackend opens the backend a config's device asks for. "auto" falls
// back to the CPU backend when no GPU can be used and says why; "cuda" fails
// with the reason.
func OpenBackend(device string, gpu int, log io.Writer) (kernels.Backend, optim.Capability, error) {
	switch device {
	case "cpu":
		b, err := kernels.Open("cpu", 0)
		return b, optim.Capability{}, err
	case "cuda", "auto", "":
		b, err := kernels.Open("cuda", gpu)
		if err == nil {
			var c optim.Capability
			if a, ok := b.(interface{ Arch() int }); ok {
				c = optim.Capability{Major: a.Arch() / 10, Minor: a.Arch() % 10}
			}
			return b, c, nil
		}
		if device == "cuda" {
			return nil, optim.Capability{}, fmt.Errorf("device: cuda: %w", err)
		}
		fmt.Fprintf(log, "no usable GPU (%v); device: auto falls back to the CPU backend\n", err)
		b, err = kernels.Open("cpu", 0)
		return b, optim.Capability{}, err
	}
	return nil, optim.Capability{}, fmt.Errorf("device %q: want auto, cuda or cpu", device)
}

func (r *run) setup(ctx context.Context, resume string) error {
	cfg := r.cfg
	b, capability, err := OpenBackend(cfg.Device, cfg.GPU, r.log)
	if err != nil {
		return err
	}
	r.b = b
	r.e = ag.New(b)
	r.logf("backend: %s", b.Name())

	if cfg.Model.Preset != "tiny" {
		// Checked before the weights load (tens of seconds for the full model).
		return errNoRealEncoders
	}
	if err := r.loadModel(capability); err != nil {
		return err
	}
	if err := r.loadData(ctx); err != nil {
		return err
	}
	r.total = cfg.TotalSteps(r.loader.BatchesPerEpoch())
	if r.total <= 0 {
		return fmt.Errorf("the run has no steps (max_steps %d, epochs %d, %d batches per epoch)", cfg.Train.MaxSteps, cfg.Train.Epochs, r.loader.BatchesPerEpoch())
	}
	ocfg, err := cfg.OptimConfig(capability, r.total)
	if err != nil {
		return err
	}
	r.opt, err = optim.New(b, []optim.Group{{Name: "lora", Params: OptimParams(r.set), Hyper: cfg.Hyper()}}, ocfg)
	if err != nil {
		return err
	}
	switch r.opt.Precision() {
	case optim.BF16:
		r.autocast = kernels.BF16
	case optim.FP16:
		r.autocast = kernels.F16
	}
	r.stepper = &Stepper{Model: r.model, LoRA: r.set, Opt: r.opt}
	r.sampler = TimestepSampler{Kind: TimestepSampling(cfg.Train.Timesteps.Sampling), Mean: cfg.Train.Timesteps.Mean, Std: cfg.Train.Timesteps.Std}
	if cfg.Train.Timesteps.Sampling == "lognorm_shift" && cfg.Train.Timesteps.Mean != 0 {
		return fmt.Errorf("train.timesteps.mean applies to logit_normal; lognorm_shift draws N(0, 1) as upstream")
	}
	if err := r.sampler.Validate(); err != nil {
		return err
	}
	r.e.SeedRandom(cfg.Train.Seed, 0)
	if resume != "" {
		if err := r.resume(resume); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.Save.Output, 0o755); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}
	r.jsonl, err = os.OpenFile(cfg.Logging.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	if cfg.Logging.MetricsAddr != "" {
		r.metrics, err = serveMetrics(cfg.Logging.MetricsAddr, r.logf)
		if err != nil {
			return err
		}
		r.logf("metrics: http://%s/metrics", r.metrics.addr)
	}
	if len(cfg.Sample.Prompts) > 0 {
		r.logf("previews: %d prompts, %d %s steps, cfg %g, time shift %g (decoded by the stand-in encoder's inverse: block colours, not pictures)",
			len(cfg.Sample.Prompts), cfg.Sample.Steps, cfg.Sample.Sampler, cfg.Sample.CFG, cfg.Sample.TimeShift)
	}
	r.logf("training %d steps: LoRA rank %d alpha %g on %d layers (%d parameters), precision %s, batch %d × %d accumulation",
		r.total, cfg.LoRA.Rank, cfg.LoRA.Alpha, len(r.set.Adapters()), r.loraParams(), r.opt.Precision(), cfg.Train.BatchSize, cfg.Train.GradientAccumulation)
	return nil
}

func (r *run) loraParams() int {
	n := 0
	for _, a := range r.set.Adapters() {
		n += a.A.Len() + a.B.Len()
	}
	return n
}

// loadModel builds the base model and attaches the adapters.
func (r *run) loadModel(capability optim.Capability) error {
	cfg := r.cfg
	st, err := kernels.ParseDType(map[string]string{"bf16": "BF16", "f16": "F16", "f32": "F32"}[cfg.Model.DType])
	if err != nil {
		return fmt.Errorf("model.dtype %q: %w", cfg.Model.DType, err)
	}
	if prec, err := cfg.Precision.Resolve(capability); err == nil && prec == optim.FP16 && st == kernels.BF16 {
		// fp16 compute over bf16 storage would cast every weight to fp16
		// each step and keep the casts: the weights' memory twice over.
		if cfg.IsSet("model.dtype") {
			r.logf("warning: model.dtype bf16 with fp16 precision keeps an fp16 copy of every weight during each step; model.dtype: f16 avoids it")
		} else {
			st = kernels.F16
			r.logf("model: fp16 precision on this GPU, so the base weights are stored in f16 (model.dtype was the default bf16)")
		}
	}
	opts := nextdit.Options{DType: st, Checkpoint: cfg.Train.ActivationCheckpointing}
	if cfg.Model.Weights == "" {
		if cfg.Model.Preset != "tiny" {
			return fmt.Errorf("model.weights is required for preset %s", cfg.Model.Preset)
		}
		mc, err := nextdit.Preset("tiny")
		if err != nil {
			return err
		}
		r.model, err = nextdit.NewRandom(r.e, mc, opts, cfg.Train.Seed)
		if err != nil {
			return err
		}
		r.baseHash = "random-tiny-seed-" + strconv.FormatUint(cfg.Train.Seed, 10)
		r.logf("model: tiny preset with random base weights (demo)")
	} else {
		preset, err := nextdit.Preset(cfg.Model.Preset)
		if err != nil {
			return err
		}
		start := time.Now()
		r.model, err = nextdit.LoadWithConfig(r.e, cfg.Model.Weights, &preset, opts)
		if err != nil {
			return err
		}
		r.baseHash, err = weightsHash(cfg.Model.Weights)
		if err != nil {
			return err
		}
		r.logf("model: %s (%d parameters) loaded in %.1fs", cfg.Model.Weights, r.model.Config().NumParams(), time.Since(start).Seconds())
	}
	init := lora.InitPEFT
	if cfg.LoRA.Init == "gaussian" {
		init = lora.InitGaussian
	}
	r.set, err = lora.Attach(r.model, lora.Config{
		Rank: cfg.LoRA.Rank, Alpha: cfg.LoRA.Alpha, Dropout: cfg.LoRA.Dropout,
		Targets: cfg.LoRA.Targets, Init: init, Seed: cfg.Train.Seed, Master: kernels.F32,
	})
	return err
}

// weightsHash identifies base weights by content: the SHA-256 of a file,
// or of the names and SHA-256s of every .safetensors file under a folder
// (diffusers layouts, shards), so a resume can refuse other weights.
func weightsHash(p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("model.weights: %w", err)
	}
	if !fi.IsDir() {
		return checkpoints.FileSHA256(p)
	}
	var files []string
	err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".safetensors") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("model.weights: %w", err)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		sum, err := checkpoints.FileSHA256(f)
		if err != nil {
			return "", err
		}
		rel, _ := filepath.Rel(p, f)
		fmt.Fprintf(h, "%s %s\n", rel, sum)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// loadData scans the dataset, fills the encode cache and opens the loader.
func (r *run) loadData(ctx context.Context) error {
	encoded, err := BuildCache(ctx, r.cfg, r.model.Config(), r.log)
	if err != nil {
		return err
	}
	if split := r.cfg.Train.Validation.Split; split > 0 {
		if encoded, r.held, err = SplitHeldOut(encoded, split); err != nil {
			return err
		}
		r.logf("validation: %d images held out, %d for training; loss at t = %v every %d steps", len(r.held.Items), len(encoded.Items), ValidationTimesteps, r.cfg.Train.Validation.Every)
	}
	r.loader, err = data.NewLoader(encoded, data.Cursor{})
	if err != nil {
		return err
	}
	r.encoded = encoded
	return nil
}

// BuildCache scans and validates the config's dataset (printing the summary
// table) and encodes whatever the cache lacks for a model of architecture
// mc, with progress and an ETA: the whole of `newbie-train cache`, and the
// first part of a training run.
func BuildCache(ctx context.Context, cfg *configs.Config, mc nextdit.Config, log io.Writer) (*data.Encoded, error) {
	ds, report, err := data.Scan(cfg.DataOptions())
	if report != nil {
		fmt.Fprint(log, report.Table())
	}
	if err != nil {
		return nil, err
	}
	enc := standInEncoders(mc, log)
	last := time.Time{}
	builder := data.CacheBuilder{
		VAE: enc.vae, Text: enc.text,
		Progress: func(p data.Progress) {
			if time.Since(last) > 2*time.Second || p.Done == p.Total {
				last = time.Now()
				fmt.Fprintln(log, p)
			}
		},
		Warn: func(s string) { fmt.Fprintln(log, "warning:", s) },
	}
	encoded, stats, err := builder.Build(ctx, ds)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "encode cache %s: %d latents encoded, %d reused; %d texts encoded, %d reused; %d damaged entries re-encoded\n",
		cfg.Data.Cache, stats.LatentsEncoded, stats.LatentsReused, stats.TextsEncoded, stats.TextsReused, len(stats.Damaged))
	return encoded, nil
}

// errNoRealEncoders says plainly what stops a real run today.
var errNoRealEncoders = errors.New("the real encoders (FLUX VAE, Gemma 3 4B, Jina CLIP v2) are not built yet, so only the tiny preset (the demo, on stand-in encoders) can train now; `newbie-train bench` measures the full model's training step")

// encoders are the image and text encoders a run uses.
type encoders struct {
	vae  data.ImageEncoder
	text data.TextEncoders
}

// standInEncoders returns the deterministic stand-in encoders sized for a
// model, and says so: the real FLUX VAE, Gemma 3 and Jina CLIP are not wired
// in yet (errNoRealEncoders stops other presets before this).
func standInEncoders(c nextdit.Config, log io.Writer) encoders {
	fmt.Fprintln(log, "encoders: stand-ins (NOT the real FLUX VAE, Gemma 3 and Jina CLIP): deterministic random projections sized for this model")
	text := data.NewStandInTextEncoder(c.CapFeatDim, c.ClipTextDim, 64)
	return encoders{vae: &data.StandInVAE{}, text: data.TextEncoders{Features: text, Pooled: text}}
}

// uploadBatch puts a host batch on the device in fp32.
func (r *run) uploadBatch(b *data.Batch) FlowBatch {
	bs := len(b.Samples)
	f64 := func(v []float32) []float64 {
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	fb := FlowBatch{
		X1:       r.e.FromFloat64(kernels.F32, []int{bs, b.C, b.LH, b.LW}, f64(b.Latents)),
		CapFeats: r.e.FromFloat64(kernels.F32, []int{bs, b.Tokens, b.Dim}, f64(b.Features)),
		CapLens:  make([]int, bs),
	}
	for i := range bs {
		for j := range b.Tokens {
			if b.Mask[i*b.Tokens+j] != 0 {
				fb.CapLens[i] = j + 1
			}
		}
	}
	if b.PooledDim > 0 && r.model.Config().ClipTextDim > 0 {
		fb.ClipPooled = r.e.FromFloat64(kernels.F32, []int{bs, b.PooledDim}, f64(b.Pooled))
	}
	return fb
}

// loop runs the optimizer steps.
func (r *run) loop(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	res := &Result{}
	accum := max(cfg.Train.GradientAccumulation, 1)
	start := time.Now()
	firstStep := r.step
	var intervalLoss float64
	var intervalN int
	for r.step < r.total {
		if ctx.Err() != nil {
			return r.interrupt(res)
		}
		stepStart := time.Now()
		micro := make([]MicroBatch, 0, accum)
		samples := 0
		for range accum {
			b, err := r.loader.Next()
			if err != nil {
				return nil, err
			}
			fb := r.uploadBatch(b)
			shape := fb.X1.Shape()
			tokens := (shape[2] / r.model.Config().PatchSize) * (shape[3] / r.model.Config().PatchSize)
			micro = append(micro, MicroBatch{
				FlowBatch: fb,
				X0:        r.e.Normal(kernels.F32, shape),
				T:         r.sampler.Sample(cfg.Train.Seed, int(r.micro), shape[0], tokens),
			})
			r.micro++
			samples += shape[0]
		}
		prev := r.e.SetAutocast(r.autocast)
		out, err := r.stepper.Step(micro)
		r.e.SetAutocast(prev)
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", r.step+1, err)
		}
		r.step++
		if r.step == firstStep+1 {
			res.FirstLoss = out.Loss
		}
		res.LastLoss = out.Loss
		res.Steps = r.step
		r.curve = append(r.curve, out.Loss)
		intervalLoss += out.Loss
		intervalN++
		dt := time.Since(stepStart).Seconds()
		mem := r.b.MemStats()
		rec := logRecord{
			Step: r.step, Loss: jsonFloat(out.Loss), LR: out.LR, GradNorm: jsonFloat(out.GradNorm), LossScale: out.LossScale,
			Skipped: r.opt.Scaler().Skipped(), Applied: out.Applied, SecondsPerStep: dt,
			SamplesPerSecond: float64(samples) / dt, MemAllocated: mem.Allocated, MemPeak: mem.Peak,
		}
		if r.held != nil && (r.step%max(cfg.Train.Validation.Every, 1) == 0 || r.step == r.total) {
			v, err := r.validationLoss()
			if err != nil {
				return nil, fmt.Errorf("validation at step %d: %w", r.step, err)
			}
			rec.ValLoss = &v
			res.ValLoss = v
			r.logf("step %d/%d  validation loss %.5f (%d held-out images, %d timesteps)", r.step, r.total, v, len(r.held.Items), len(ValidationTimesteps))
		}
		if err := r.writeRecord(rec); err != nil {
			return nil, err
		}
		r.metrics.observe(rec)
		done := r.step - firstStep
		eta := time.Duration(float64(time.Since(start)) / float64(done) * float64(r.total-r.step))
		if r.step%max(cfg.Logging.Every, 1) == 0 || r.step == r.total || r.step == firstStep+1 {
			r.logf("step %d/%d  loss %.5f  lr %.3g  grad norm %.3g  scale %g  skipped %d  %.2f samples/s  %.3f s/step  mem %s (peak %s)  ETA %s",
				r.step, r.total, intervalLoss/float64(intervalN), out.LR, out.GradNorm, out.LossScale, rec.Skipped,
				rec.SamplesPerSecond, dt, bytesText(mem.Allocated), bytesText(mem.Peak), eta.Round(time.Second))
			intervalLoss, intervalN = 0, 0
		}
		if r.bar {
			r.drawBar(out.Loss, dt, eta)
		}
		if cfg.Sample.Every > 0 && r.step%cfg.Sample.Every == 0 {
			if err := r.renderPreviews(); err != nil {
				return nil, err
			}
		}
		if cfg.Save.Every > 0 && r.step%cfg.Save.Every == 0 && r.step != r.total {
			if err := r.save(res); err != nil {
				return nil, err
			}
		}
	}
	if err := r.save(res); err != nil {
		return nil, err
	}
	r.logf("done: %d steps, loss %.5f → %.5f; LoRA: %v", res.Steps, res.FirstLoss, res.LastLoss, res.LoRAFiles)
	return res, nil
}

// interrupt saves a resumable state after a cancellation.
func (r *run) interrupt(res *Result) (*Result, error) {
	r.logf("interrupted at step %d: saving a resumable state", r.step)
	r.stopping = true
	if err := r.save(res); err != nil {
		return nil, fmt.Errorf("interrupted, and the save failed: %w", err)
	}
	return res, ErrInterrupted
}

// logRecord is one line of the JSONL log.
type logRecord struct {
	Step             int       `json:"step"`
	Loss             jsonFloat `json:"loss"`
	LR               float64   `json:"lr"`
	GradNorm         jsonFloat `json:"grad_norm"`
	LossScale        float64   `json:"loss_scale"`
	Skipped          int64     `json:"skipped_steps"`
	Applied          bool      `json:"applied"`
	SecondsPerStep   float64   `json:"s_per_step"`
	SamplesPerSecond float64   `json:"samples_per_s"`
	MemAllocated     int64     `json:"mem_allocated_bytes"`
	MemPeak          int64     `json:"mem_peak_bytes"`
	// ValLoss is the held-out loss, on the steps that measure it.
	ValLoss *float64 `json:"val_loss,omitempty"`
}

func (r *run) writeRecord(rec logRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("log record: %w", err)
	}
	_, err = r.jsonl.Write(append(line, '\n'))
	return err
}

// jsonFloat is a float64 that JSON writes as null when it is not finite (a
// skipped step's gradient norm is +Inf or NaN, which JSON cannot hold).
type jsonFloat float64

// MarshalJSON implements json.Marshaler.
func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// Cache runs only the dataset scan and the encode cache of a config (the
// `newbie-train cache` command), without loading the model's weights.
func Cache(ctx context.Context, cfg *configs.Config, log io.Writer) error {
	mc, err := nextdit.Preset(cfg.Model.Preset)
	if err != nil {
		return err
	}
	if cfg.Model.Preset != "tiny" {
		return errNoRealEncoders
	}
	_, err = BuildCache(ctx, cfg, mc, log)
	return err
}
