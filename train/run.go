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
	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
)

// Options are the choices of one invocation that are not part of the
// config: whether to resume or start over, and where messages go.
type Options struct {
	// Resume is "" (start a new run), "latest" (the newest complete state
	// in the output folder) or the path of a state folder.
	Resume string
	// Fresh lets a new run start in an output folder that holds another
	// run's results, by moving that run's files into old-runs/<its id>/
	// first (never deleting them). Without it such a folder is refused.
	Fresh bool
	// Log receives the human-readable progress lines.
	Log io.Writer
	// Bar redraws a one-line progress bar with the ETA on Log after every
	// step (for a terminal: the CLI sets it when stderr is one).
	Bar bool
	// Stage, when set, is told what an interrupt would do now, as the end
	// of a sentence starting "stopping after" ("step 12, then saving a
	// resumable state"), each time that changes: the CLI's signal handler
	// prints the latest one the moment Ctrl-C arrives.
	Stage func(string)
	// Dist is this process's place in a data-parallel job, as torchrun or
	// `--gpus N` describe it in the environment (dist.ParseEnv); the zero
	// value is a plain run of one process. In a job every rank trains its
	// share of each step's batches on the GPU of its local rank, and rank 0
	// alone holds the output folder, logs, saves, validates and renders
	// previews, the others waiting for it.
	Dist dist.Env
	// Comm and Backend, when set, replace the communicator Dist would open
	// and the backend the config's device would: tests run the ranks of a
	// job as goroutines of one process (dist.NewInProcess), each on a CPU
	// backend of its own. The run does not close either.
	Comm    dist.Communicator
	Backend kernels.Backend
}

// ErrInterrupted is matched (errors.Is) by every *InterruptedError: the
// context was cancelled (Ctrl-C, SIGTERM) and the run stopped.
var ErrInterrupted = errors.New("interrupted")

// InterruptedError says where a cancelled run stopped and what it kept.
type InterruptedError struct {
	// Stage is what the run was doing ("step 12", "encoding the dataset").
	Stage string
	// State is the resumable state saved on the way out (or the one the
	// run had resumed from and not yet passed); "" when there is none.
	State string
	// Kept says what else survives ("the 12 cache entries encoded so far").
	Kept string
}

func (e *InterruptedError) Error() string {
	s := "interrupted during " + e.Stage
	if e.State != "" {
		s += "; a resumable state is saved in " + e.State
	} else {
		s += "; no training state was saved (training had not begun)"
	}
	if e.Kept != "" {
		s += "; " + e.Kept
	}
	return s
}

// Is makes errors.Is(err, ErrInterrupted) hold.
func (e *InterruptedError) Is(target error) bool { return target == ErrInterrupted }

// ConfigError marks a failure found before anything ran that the config
// (or the command line) must change to fix: an empty dataset, a validation
// split or batch size the dataset cannot give, a resume whose state is
// missing or does not fit, an output folder holding another run. The CLI
// exits 2 on it.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

// configErr wraps err as a ConfigError (nil stays nil).
func configErr(err error) error {
	if err == nil {
		return nil
	}
	return &ConfigError{Err: err}
}

// Result summarises a finished (or interrupted) run.
type Result struct {
	Steps     int
	LastLoss  float64
	FirstLoss float64
	// ValLoss is the last held-out loss (0 without validation).
	ValLoss float64
	// Phases are the run's phases with their times and peak memory: the
	// real encoders' (when they encoded anything), the training steps and
	// the previews.
	Phases []Phase
	// LoRAFiles are the adapter files of the last save; StateDir its state.
	LoRAFiles []string
	StateDir  string
}

// run is one training run's live objects.
type run struct {
	cfg   *configs.Config
	opts  Options
	log   io.Writer
	out   *output
	b     kernels.Backend
	capab optim.Capability
	e     *ag.Engine
	mc    nextdit.Config // the architecture, known before the weights load
	found *newbie.Model  // the real model's parts (nil: the stand-ins)
	// previewText answers sample.prompts' texts, encoded by the real
	// encoders before the DiT loaded (nil Features: the stand-ins).
	previewText data.TextEncoders
	// phases collects the phase table; planned the estimates by phase;
	// trainPeak and previewPeak the allocator's peaks of the two phases
	// that interleave, trainTime and previewTime their times.
	phases  []Phase
	planned map[string]int64
	// levers is how many blocks run under a checkpoint and what the others
	// recompute (chooseCheckpointing, before the model loads).
	levers                 newbie.MemoryLevers
	trainPeak, previewPeak int64
	previewTime, stepTime  time.Duration
	previewItems           int
	model                  *nextdit.Model
	set                    *lora.Set
	opt                    *optim.Optimizer
	ds                     *data.Dataset
	heldOut                map[string]bool // content hashes of the held-out images
	batches                int             // batches per epoch of the training part
	loader                 *data.Loader
	encoded                *data.Encoded // the training part of the encoded dataset
	held                   *data.Encoded // the held-out part, nil without validation
	stepper                *Stepper
	sampler                TimestepSampler
	autocast               kernels.DType
	baseHash               string
	total                  int
	step                   int // optimizer steps done
	micro                  uint64
	metrics                *metrics
	jsonl                  *os.File
	bar                    bool // a progress bar is drawn on log
	stopping               bool // an interrupted run is saving: no previews
	barShown               bool // the last thing written to log is the bar
	curve                  []float64
	resumed                *checkpoints.State // the state a resume starts from
	resumeDir              string
	initFrom               *checkpoints.LoRA // lora.init_from, checked
	startStep              int               // the step this invocation started at
	savedStep              int               // the step of the last save (−1: none)
	savedDir               string            // its state folder
	// nonFinite counts the consecutive steps whose loss was not finite.
	nonFinite int

	// comm joins the ranks of a data-parallel job (the one-rank
	// communicator of a plain run); parallel is set in a job, of any size,
	// and for a test's communicator: the steps then run the data-parallel
	// path. stopAgreed: every rank stops here on the same agreed numbers,
	// so they leave the job in good order rather than aborting it.
	comm       dist.Communicator
	parallel   bool
	stopAgreed bool
	// loaderStart is the batch position (r.micro) the loader started at.
	loaderStart uint64
	// resumedInfo is the trainer's part of the state a resume starts from.
	resumedInfo resumeInfo
	// exchange carries the per-step agreements (nil in a plain run).
	exchange *Exchange
}

// Run trains the LoRA the config describes until its last step, or until
// ctx is cancelled (then it saves a resumable state and returns an
// *InterruptedError). Every check that needs no model — the output
// folder's owner, the dataset, the validation split, the batch size, the
// state to resume and its config — runs before anything is encoded; their
// failures are *ConfigError.
func Run(ctx context.Context, cfg *configs.Config, o Options) (res *Result, err error) {
	if o.Log == nil || o.rank() != 0 {
		o.Log, o.Bar = io.Discard, false // rank 0 speaks for the job
	}
	r := &run{cfg: cfg, opts: o, log: o.Log, bar: o.Bar, savedStep: -1, planned: map[string]int64{}}
	defer func() { r.close(err) }()
	if err := r.setup(ctx); err != nil {
		return nil, r.cancelled(ctx, err, "")
	}
	return r.loop(ctx)
}

// stageNow records what an interrupt would do now (see Options.Stage).
func (r *run) stageNow(format string, args ...any) {
	if r.opts.Stage != nil {
		r.opts.Stage(fmt.Sprintf(format, args...))
	}
}

// cancelled turns an error that a cancellation caused into an
// *InterruptedError naming the stage; other errors pass unchanged.
func (r *run) cancelled(ctx context.Context, err error, kept string) error {
	if ctx.Err() == nil || errors.Is(err, ErrInterrupted) {
		return err
	}
	stage := "setup"
	switch {
	case r.ds == nil:
		stage = "the dataset scan"
	case r.encoded == nil:
		stage = "encoding the dataset"
		kept = "the cache keeps every entry encoded so far; the next run reuses them"
	case r.model == nil || r.opt == nil:
		stage = "loading the model"
	}
	return &InterruptedError{Stage: stage, State: r.resumeDir, Kept: kept}
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
	fmt.Fprintf(r.log, "\r\033[K[%s%s] %d/%d  step loss %.4f  %.2f s/step  ETA %s",
		strings.Repeat("#", done), strings.Repeat("-", width-done), r.step, r.total, loss, secPerStep, eta.Round(time.Second))
	r.barShown = true
}

// close releases what the run holds, the output folder's lock last. A
// run that failed aborts its data-parallel job, so the other ranks stop at
// once with its reason instead of waiting for it.
func (r *run) close(err error) {
	r.leaveJob(err)
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
	r.out.release()
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
			return b, capabilityOf(b), nil
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

// capabilityOf is a GPU backend's compute capability (zero for the CPU).
func capabilityOf(b kernels.Backend) optim.Capability {
	if a, ok := b.(interface{ Arch() int }); ok {
		return optim.Capability{Major: a.Arch() / 10, Minor: a.Arch() % 10}
	}
	return optim.Capability{}
}

// setup runs everything before the first step, cheapest and most likely
// to fail first: the checks that need no encoder or model (preflight),
// then the encoding, then the model, optimizer and resumed state.
func (r *run) setup(ctx context.Context) error {
	cfg := r.cfg
	if err := r.openDevice(ctx); err != nil {
		return err
	}
	b := r.b
	r.e = ag.New(b)
	r.logf("backend: %s", b.Name())
	if r.parallel {
		r.logf("data parallel: %d ranks; each step takes %d ranks × %d micro-batches of %d samples",
			r.comm.WorldSize(), r.comm.WorldSize(), max(cfg.Train.GradientAccumulation, 1), cfg.Train.BatchSize)
	}
	if err := r.preflight(ctx); err != nil {
		return err
	}
	storage, err := r.storageDType(false)
	if err != nil {
		return err
	}
	if err := r.planMemory(storage); err != nil {
		return err
	}

	r.stageNow("the image being encoded (the cache keeps what is encoded)")
	// Rank 0 fills the cache; the others wait for it, as long as it takes
	// (rank 0 shows the progress; a rank that dies is noticed at once),
	// then read it.
	var encoded *data.Encoded
	encode := func() error {
		step := cacheStep{cfg: cfg, ds: r.ds, mc: r.mc, found: r.found, e: r.e, log: r.log}
		if r.rank0() && r.found != nil && len(cfg.Sample.Prompts) > 0 {
			imgs, err := pipeline.ConfigImages(cfg)
			if err != nil {
				return err
			}
			step.previews, step.system = imgs, pipeline.ConfigSettings(cfg).SystemPrompt
		}
		res, err := step.run(ctx)
		if err != nil {
			return err
		}
		encoded, r.previewText = res.encoded, res.previewText
		r.phases = append(r.phases, encoderPhases(res.phases)...)
		return nil
	}
	if err := r.rank0Only("rank 0 filling the encode cache", -1, encode); err != nil {
		return err
	}
	if !r.rank0() {
		if err := encode(); err != nil {
			return err
		}
	}
	if err := r.splitEncoded(encoded); err != nil {
		return err
	}
	if err := r.startLoader(data.Cursor{}); err != nil {
		return err
	}
	if n := r.loader.BatchesPerEpoch(); n != r.batches {
		// Images that passed the scan but failed to decode (only without
		// data.deep_validate) were left out.
		r.batches, r.total = n, r.runLength(n)
		r.logf("after encoding: %d batches per epoch, %d steps", n, r.total)
	}

	r.stageNow("loading the model")
	if err := r.loadModel(); err != nil {
		return err
	}
	ocfg, err := cfg.OptimConfig(r.capab, r.total)
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
	if r.parallel {
		r.stepper.Comm = r.comm
	}
	r.e.SeedRandom(cfg.Train.Seed, 0)
	if r.resumed != nil {
		if err := r.restore(); err != nil {
			return err
		}
	} else if r.initFrom != nil {
		if err := r.applyInitFrom(); err != nil {
			return err
		}
	}
	// Once resuming or lora.init_from has written the masters.
	if err := AttachWorkingCopies(r.set, r.opt, r.autocast); err != nil {
		return err
	}
	r.startStep = r.step
	if err := r.checkAgreement(); err != nil {
		return err
	}
	if !r.rank0() {
		return nil
	}
	if err := r.openLog(); err != nil {
		return err
	}
	if cfg.Logging.MetricsAddr != "" {
		r.metrics, err = serveMetrics(cfg.Logging.MetricsAddr, r.logf)
		if err != nil {
			return err
		}
		r.logf("metrics: http://%s/metrics", r.metrics.addr)
	}
	if len(cfg.Sample.Prompts) > 0 {
		how := "decoded by the stand-in encoder's inverse: block colours, not pictures"
		if r.found != nil {
			how = "through Gemma 3, Jina CLIP and the FLUX VAE"
		}
		r.logf("previews: %d prompts, %d %s steps, cfg %g, time shift %g (%s)",
			len(cfg.Sample.Prompts), cfg.Sample.Steps, cfg.Sample.Sampler, cfg.Sample.CFG, cfg.Sample.TimeShift, how)
	}
	r.logf("training %d steps: LoRA rank %d alpha %g on %d layers (%d parameters), precision %s, batch %d × %d accumulation%s",
		r.total, cfg.LoRA.Rank, cfg.LoRA.Alpha, len(r.set.Adapters()), r.loraParams(), r.opt.Precision(), cfg.Train.BatchSize, cfg.Train.GradientAccumulation, r.ranksText())
	return nil
}

// preflight runs every check that needs neither an encoder nor the model:
// the architecture, the base model's identity, the output folder's owner
// and lock, the dataset scan, the validation split, the batch size against
// the dataset, the run's length, the state to resume and lora.init_from.
func (r *run) preflight(ctx context.Context) error {
	cfg := r.cfg
	var err error
	r.sampler = TimestepSampler{Kind: TimestepSampling(cfg.Train.Timesteps.Sampling), Mean: cfg.Train.Timesteps.Mean, Std: cfg.Train.Timesteps.Std}
	if err := r.sampler.Validate(); err != nil {
		return configErr(fmt.Errorf("train.timesteps: %w", err))
	}
	if r.found, err = findModel(cfg); err != nil {
		return err
	}
	if r.mc, err = modelConfig(cfg, r.found); err != nil {
		return err
	}
	if r.found != nil {
		if err := checkArchitectures(r.found, r.mc); err != nil {
			return err
		}
	}
	if r.baseHash, err = baseModelHash(cfg, r.found); err != nil {
		return err
	}
	r.stageNow("checking the output folder")
	r.out = &output{dir: cfg.Save.Output}
	err = r.rank0Only("rank 0 taking the output folder", 0, func() error {
		var err error
		if r.out, err = lockOutput(cfg, "training "+cfg.Save.Name, r.logf); err != nil {
			return err
		}
		return r.out.claim(cfg, r.baseHash, r.opts.Resume, r.opts.Fresh, r.logf)
	})
	if err != nil {
		return err
	}
	if r.opts.Resume != "" {
		// Found and verified before the scan: a missing state must not
		// cost a scan.
		if err := r.findResume(r.opts.Resume); err != nil {
			return err
		}
	}
	r.stageNow("the image being checked (the dataset scan stops there)")
	if r.ds, err = scanDataset(ctx, cfg, r.log); err != nil {
		return err
	}
	if err := r.planSplit(); err != nil {
		return err
	}
	if r.resumed != nil {
		if err := r.checkResume(); err != nil {
			return err
		}
		// The run may be longer now: record what it is.
		id := &r.out.id
		id.ConfigHash, id.Config, id.LogFile = cfg.Hash(), cfg.String(), cfg.Logging.LogFile
		if r.rank0() {
			if err := r.out.writeIdentity(); err != nil {
				return err
			}
		}
	} else if cfg.LoRA.InitFrom != "" {
		if r.initFrom, err = checkInitFrom(cfg, r.mc, r.baseHash, r.logf); err != nil {
			return err
		}
	}
	return nil
}

// modelConfig is the architecture the run trains: the found transformer's
// (its config.json or metadata, checked against its tensors by Discover),
// the preset, or what the weights file's metadata says (read without
// loading the weights).
func modelConfig(cfg *configs.Config, found *newbie.Model) (nextdit.Config, error) {
	if found != nil {
		return found.DiT.Arch, nil
	}
	preset, err := nextdit.Preset(cfg.Model.Preset)
	if err != nil {
		return nextdit.Config{}, err
	}
	if cfg.Model.Weights == "" {
		return preset, nil
	}
	w, err := checkpoints.OpenWeights(cfg.Model.Weights)
	if err != nil {
		return nextdit.Config{}, fmt.Errorf("model.weights: %w", err)
	}
	defer w.Close()
	mc, err := nextdit.ResolveConfig(w, &preset)
	if err != nil {
		return nextdit.Config{}, fmt.Errorf("model.weights %s: %w", cfg.Model.Weights, err)
	}
	return mc, nil
}

// ditPath is the transformer's weights: the found one's, else model.weights.
func ditPath(cfg *configs.Config, found *newbie.Model) string {
	if found != nil {
		return found.DiT.Path
	}
	return cfg.Model.Weights
}

// baseModelHash identifies the base model: its weights' content hash, or
// for random demo weights the seed they come from.
func baseModelHash(cfg *configs.Config, found *newbie.Model) (string, error) {
	p := ditPath(cfg, found)
	if p == "" {
		return "random-tiny-seed-" + strconv.FormatUint(cfg.Train.Seed, 10), nil
	}
	return weightsHash(p)
}

func (r *run) loraParams() int {
	n := 0
	for _, a := range r.set.Adapters() {
		n += a.A.Len() + a.B.Len()
	}
	return n
}

// storageDType is the dtype the frozen base weights are stored in:
// model.dtype, except that fp16 precision over the default bf16 stores
// them in f16 (fp16 compute over bf16 storage would cast every weight to
// fp16 each step and keep the casts: the weights' memory twice over).
// With model.dtype fp8 it is the dtype of the weights that stay out of fp8
// (norms, biases, embeddings): bf16, f16 under fp16 precision. With say
// set, the choice is logged.
func (r *run) storageDType(say bool) (kernels.DType, error) {
	cfg := r.cfg
	st, err := kernels.ParseDType(map[string]string{"bf16": "BF16", "f16": "F16", "f32": "F32", "fp8": "BF16"}[cfg.Model.DType])
	if err != nil {
		return 0, configErr(fmt.Errorf("model.dtype %q: %w", cfg.Model.DType, err))
	}
	if prec, err := cfg.Precision.Resolve(r.capab); err == nil && prec == optim.FP16 && st == kernels.BF16 {
		if r.fp8Base() {
			st = kernels.F16
		} else if cfg.IsSet("model.dtype") {
			if say {
				r.logf("warning: model.dtype bf16 with fp16 precision keeps an fp16 copy of every weight during each step; model.dtype: f16 avoids it")
			}
		} else {
			st = kernels.F16
			if say {
				r.logf("model: fp16 precision on this GPU, so the base weights are stored in f16 (model.dtype was the default bf16)")
			}
		}
	}
	return st, nil
}

// fp8Base reports whether model.dtype asks for fp8 base weights.
func (r *run) fp8Base() bool { return r.cfg.Model.DType == "fp8" }

// loadModel builds the base model and attaches the adapters.
func (r *run) loadModel() error {
	cfg := r.cfg
	st, err := r.storageDType(true)
	if err != nil {
		return err
	}
	opts := nextdit.Options{DType: st, Checkpoint: r.levers.CheckpointBlocks > 0, CheckpointBlocks: r.levers.CheckpointBlocks,
		FP8Base: r.fp8Base(), RecomputeNorms: r.levers.RecomputeNorms, RecomputeFFNBlocks: r.levers.RecomputeFFNBlocks}
	weights := ditPath(cfg, r.found)
	if weights == "" {
		r.model, err = nextdit.NewRandom(r.e, r.mc, opts, cfg.Train.Seed)
		if err != nil {
			return err
		}
		r.logf("model: tiny preset with random base weights (demo)")
	} else {
		start := time.Now()
		mc := r.mc
		r.model, err = nextdit.LoadWithConfig(r.e, weights, &mc, opts)
		if err != nil {
			return err
		}
		r.logf("model: %s (%d parameters) loaded in %.1fs", weights, r.model.Config().NumParams(), time.Since(start).Seconds())
	}
	if opts.FP8Base {
		r.logf("model: the linear layers' frozen weights in fp8 E4M3 with a scale per row (model.dtype fp8), the rest in %v", st)
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

// scanDataset scans and validates the config's dataset and prints the
// summary table. An empty dataset (or a strict-mode problem) is a
// ConfigError: nothing ran, and the data must change.
func scanDataset(ctx context.Context, cfg *configs.Config, log io.Writer) (*data.Dataset, error) {
	ds, report, err := data.Scan(ctx, cfg.DataOptions())
	if report != nil {
		fmt.Fprint(log, report.Table())
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, configErr(err)
	}
	return ds, nil
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

// ErrNonFinite is returned (wrapped) when the loss stayed NaN or infinite
// for train.nonfinite_limit consecutive steps.
var ErrNonFinite = errors.New("the loss is not finite")

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// loop runs the optimizer steps.
func (r *run) loop(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	res := &Result{}
	accum := max(cfg.Train.GradientAccumulation, 1)
	start := time.Now()
	r.e.Backend().ResetPeak() // the train phase's peak starts with the model loaded
	var intervalLoss float64
	var intervalN, intervalFinite int
	for r.step < r.total {
		if !r.parallel && ctx.Err() != nil {
			return r.interrupt(ctx, res)
		}
		r.stageNow("step %d, then saving a resumable state", r.step+1)
		stepStart := time.Now()
		var out StepOutcome
		var samples int
		if r.parallel {
			// The ranks agree on stopping here, so they all stop at the
			// same step.
			var stop bool
			var err error
			out, samples, stop, err = r.stepShare(ctx, accum)
			if err != nil {
				return nil, fmt.Errorf("step %d: %w", r.step+1, err)
			}
			if stop {
				r.stopAgreed = true
				return r.interrupt(ctx, res)
			}
		} else {
			micro := make([]MicroBatch, 0, accum)
			for range accum {
				b, err := r.loader.Next()
				if err != nil {
					return nil, err
				}
				fb := r.uploadBatch(b)
				shape := fb.X1.Shape()
				micro = append(micro, MicroBatch{
					FlowBatch: fb,
					X0:        r.e.Normal(kernels.F32, shape),
					T:         r.sampler.Sample(cfg.Train.Seed, int(r.micro), shape[0], r.imageTokens(shape)),
				})
				r.micro++
				samples += shape[0]
			}
			var err error
			if out, err = r.runStep(micro); err != nil {
				return nil, fmt.Errorf("step %d: %w", r.step+1, err)
			}
		}
		r.step++
		if r.step == r.startStep+1 {
			res.FirstLoss = out.Loss
		}
		res.LastLoss = out.Loss
		res.Steps = r.step
		r.curve = append(r.curve, out.Loss)
		intervalN++
		if finite(out.Loss) {
			intervalLoss += out.Loss
			intervalFinite++
			r.nonFinite = 0
		} else {
			r.nonFinite++
		}
		dt := time.Since(stepStart).Seconds()
		r.stepTime += time.Since(stepStart)
		mem := r.b.MemStats()
		rec := logRecord{
			Step: r.step, Loss: jsonFloat(out.Loss), LR: jsonFloat(out.LR), GradNorm: jsonFloat(out.GradNorm), LossScale: jsonFloat(out.LossScale),
			Skipped: r.opt.Scaler().Skipped(), Applied: out.Applied, SecondsPerStep: jsonFloat(dt),
			SamplesPerSecond: jsonFloat(float64(samples) / dt), MemAllocated: mem.Allocated, MemPeak: mem.Peak,
		}
		if r.held != nil && (r.step%max(cfg.Train.Validation.Every, 1) == 0 || r.step == r.total) {
			err := r.rank0Only(fmt.Sprintf("rank 0's validation at step %d", r.step), 0, func() error {
				v, err := r.validationLoss()
				if err != nil {
					return fmt.Errorf("validation at step %d: %w", r.step, err)
				}
				jv := jsonFloat(v)
				rec.ValLoss = &jv
				res.ValLoss = v
				r.logf("step %d/%d  validation loss %.5f (%d held-out images, %d timesteps)", r.step, r.total, v, len(r.held.Items), len(ValidationTimesteps))
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		if err := r.writeRecord(rec); err != nil {
			return nil, err
		}
		r.metrics.observe(rec)
		previews := cfg.Sample.Every > 0 && r.step%cfg.Sample.Every == 0
		if previews {
			// Said before the step's log line, which a reader of the log
			// may answer with Ctrl-C at once.
			r.stageNow("the previews of step %d, then saving a resumable state", r.step)
		}
		done := r.step - r.startStep
		eta := time.Duration(float64(time.Since(start)) / float64(done) * float64(r.total-r.step))
		if r.step%max(cfg.Logging.Every, 1) == 0 || r.step == r.total || r.step == r.startStep+1 {
			r.logf("step %d/%d  loss %s  lr %.3g  grad norm %.3g  scale %g  skipped %d  %.2f samples/s  %.3f s/step  mem %s (peak %s)  ETA %s",
				r.step, r.total, meanText(intervalLoss, intervalFinite, intervalN), out.LR, out.GradNorm, out.LossScale, rec.Skipped,
				float64(rec.SamplesPerSecond), dt, bytesText(mem.Allocated), bytesText(mem.Peak), eta.Round(time.Second))
			intervalLoss, intervalN, intervalFinite = 0, 0, 0
		}
		if r.bar {
			r.drawBar(out.Loss, dt, eta)
		}
		if limit := cfg.Train.NonFiniteLimit; limit > 0 && r.nonFinite >= limit {
			r.stopAgreed = true // every rank counts the same agreed losses
			return nil, r.nonFiniteStop()
		}
		if previews {
			err := r.rank0Only(fmt.Sprintf("rank 0's previews of step %d", r.step), 0, func() error { return r.renderPreviews(ctx) })
			if err != nil {
				return nil, err
			}
		}
		if cfg.Save.Every > 0 && r.step%cfg.Save.Every == 0 && r.step != r.total {
			if err := r.save(ctx, res); err != nil {
				return nil, err
			}
		}
	}
	if r.savedStep != r.step {
		if err := r.save(ctx, res); err != nil {
			return nil, err
		}
	}
	r.logf("done: %d steps, loss %.5f → %.5f; LoRA: %v", res.Steps, res.FirstLoss, res.LastLoss, res.LoRAFiles)
	res.Phases = r.phaseTable()
	if r.rank0() {
		fmt.Fprint(r.log, PhaseTable(res.Phases))
	}
	return res, nil
}

// phaseTable is the run's phases: the encoders', the training steps (their
// time, without saves and previews) and the previews.
func (r *run) phaseTable() []Phase {
	ps := append([]Phase(nil), r.phases...)
	peak := max(r.trainPeak, r.e.Backend().MemStats().Peak)
	ps = append(ps, Phase{Name: "train", Items: r.step - r.startStep, Time: r.stepTime, Peak: peak, Estimate: r.planned["train"]})
	if r.previewItems > 0 {
		ps = append(ps, Phase{Name: "preview", Items: r.previewItems, Time: r.previewTime, Peak: r.previewPeak, Estimate: r.planned["preview"]})
	}
	return ps
}

// meanText is the logged loss: the mean over the steps since the last log
// line, saying over how many (and how many were not finite).
func meanText(sum float64, nFinite, n int) string {
	switch {
	case nFinite == 0:
		return fmt.Sprintf("NaN (all %d steps since the last line non-finite)", n)
	case n == 1:
		return fmt.Sprintf("%.5f (this step)", sum)
	case nFinite < n:
		return fmt.Sprintf("%.5f (mean of %d steps; %d more non-finite)", sum/float64(nFinite), nFinite, n-nFinite)
	}
	return fmt.Sprintf("%.5f (mean of %d steps)", sum/float64(n), n)
}

// nonFiniteStop ends a run whose loss stayed non-finite: every such step
// was skipped, so the weights are those of the last finite step, and the
// last saved state is kept as it is (no new one is written).
func (r *run) nonFiniteStop() error {
	kept := "no state had been saved yet"
	if r.savedDir != "" {
		kept = "the last saved state, " + r.savedDir + ", is kept"
	} else if r.resumeDir != "" {
		kept = "the state it resumed from, " + r.resumeDir + ", is kept"
	}
	return fmt.Errorf("%w: NaN or infinite for %d consecutive steps (%d–%d, train.nonfinite_limit %d); every one was skipped, so nothing was being learned. Training stopped; %s. Check the base weights (model.weights: a damaged file reads as NaN), the learning rate and the precision",
		ErrNonFinite, r.nonFinite, r.step-r.nonFinite+1, r.step, r.cfg.Train.NonFiniteLimit, kept)
}

// interrupt saves a resumable state after a cancellation (unless the last
// save or the resumed state is already at this step).
func (r *run) interrupt(ctx context.Context, res *Result) (*Result, error) {
	r.stopping = true
	if r.step == r.startStep {
		r.logf("interrupted at step %d, before any step of this run: nothing new to save", r.step)
		return res, &InterruptedError{Stage: fmt.Sprintf("step %d", r.step+1), State: r.resumeDir}
	}
	if r.savedStep != r.step {
		r.logf("interrupted at step %d: saving a resumable state", r.step)
		if err := r.save(ctx, res); err != nil {
			return nil, fmt.Errorf("interrupted, and the save failed: %w", err)
		}
	}
	return res, &InterruptedError{Stage: fmt.Sprintf("step %d", r.step+1), State: r.savedDir}
}

// logRecord is one line of the JSONL log. Every float goes through
// jsonFloat: a value that is not finite is written as null, never as a
// line JSON cannot read.
type logRecord struct {
	Step             int       `json:"step"`
	Loss             jsonFloat `json:"loss"`
	LR               jsonFloat `json:"lr"`
	GradNorm         jsonFloat `json:"grad_norm"`
	LossScale        jsonFloat `json:"loss_scale"`
	Skipped          int64     `json:"skipped_steps"`
	Applied          bool      `json:"applied"`
	SecondsPerStep   jsonFloat `json:"s_per_step"`
	SamplesPerSecond jsonFloat `json:"samples_per_s"`
	MemAllocated     int64     `json:"mem_allocated_bytes"`
	MemPeak          int64     `json:"mem_peak_bytes"`
	// ValLoss is the held-out loss, on the steps that measure it.
	ValLoss *jsonFloat `json:"val_loss,omitempty"`
}

func (r *run) writeRecord(rec logRecord) error {
	if r.jsonl == nil {
		return nil // not rank 0
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("log record: %w", err)
	}
	_, err = r.jsonl.Write(append(line, '\n'))
	return err
}

// jsonFloat is a float64 that JSON writes as null when it is not finite (a
// skipped step's gradient norm is +Inf or NaN, which JSON cannot hold), and
// reads null back as NaN.
type jsonFloat float64

// MarshalJSON implements json.Marshaler.
func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if !finite(v) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *jsonFloat) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = jsonFloat(math.NaN())
		return nil
	}
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("not a number: %s", b)
	}
	*f = jsonFloat(v)
	return nil
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
// `newbie-train cache` command), without loading the model's weights. It
// holds the output folder's lock while it writes, as a run does.
func Cache(ctx context.Context, cfg *configs.Config, log io.Writer, stage func(string)) error {
	found, err := findModel(cfg)
	if err != nil {
		return err
	}
	mc, err := modelConfig(cfg, found)
	if err != nil {
		return err
	}
	var e *ag.Engine
	if found != nil {
		if err := checkArchitectures(found, mc); err != nil {
			return err
		}
		b, _, err := OpenBackend(cfg.Device, cfg.GPU, log)
		if err != nil {
			return err
		}
		e = ag.New(b)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(log, format+"\n", args...) }
	out, err := lockOutput(cfg, "filling the encode cache", logf)
	if err != nil {
		return err
	}
	defer out.release()
	if stage != nil {
		stage("the image being checked (the dataset scan stops there)")
	}
	ds, err := scanDataset(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return &InterruptedError{Stage: "the dataset scan"}
		}
		return err
	}
	if stage != nil {
		stage("the image being encoded (the cache keeps what is encoded)")
	}
	res, err := cacheStep{cfg: cfg, ds: ds, mc: mc, found: found, e: e, log: log}.run(ctx)
	if err == nil && len(res.phases) > 0 {
		fmt.Fprint(log, PhaseTable(encoderPhases(res.phases)))
	}
	if err != nil {
		if ctx.Err() != nil {
			return &InterruptedError{Stage: "encoding the dataset", Kept: "the cache keeps every entry encoded so far"}
		}
		return err
	}
	return nil
}
