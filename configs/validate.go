package configs

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"

	"github.com/newbie-train/newbie-train/optim"
)

// checker checks a completed config, adding a problem per bad value to the
// decoder's list. A value that failed to decode is not checked again.
type checker struct {
	c *Config
	d *decoder
}

// add records a problem at path. A value the file does not set is a
// default (or derived from other settings): the message says so, and the
// line is its section's.
func (k *checker) add(path, format string, args ...any) {
	if k.d.bad[path] {
		return
	}
	if src, ok := derivedFrom[path]; ok && !k.c.IsSet(path) && k.d.bad[src] {
		// A value derived from a bad one: the source's message says it.
		return
	}
	k.d.bad[path] = true
	msg := fmt.Sprintf(format, args...)
	if !k.d.fromCode && !k.c.IsSet(path) && !strings.HasSuffix(path, "]") {
		msg += " (not set in the file: this is the default)"
	}
	k.d.problem(k.c.lineOf(path), path, "%s", msg)
}

// derivedFrom names, for each derived default, the setting it follows.
var derivedFrom = map[string]string{
	"lora.alpha":           "lora.rank",
	"data.bucket.min_side": "data.resolution",
	"data.bucket.max_side": "data.resolution",
	"data.min_side":        "data.resolution",
	"sample.resolution":    "data.resolution",
}

// addPlain records a problem without the default note (for problems about
// a missing setting).
func (k *checker) addPlain(path, format string, args ...any) {
	if k.d.bad[path] {
		return
	}
	k.d.bad[path] = true
	k.d.problem(k.c.lineOf(path), path, format, args...)
}

// oneOf checks that v is one of the allowed words, suggesting the nearest.
func (k *checker) oneOf(path, what, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	hint := ""
	if s := nearest(v, allowed); s != "" {
		hint = "did you mean " + s + "? "
	}
	k.add(path, "unknown %s %q; %swant %s", what, v, hint, orList(allowed))
}

// orList formats ["a","b","c"] as "a, b or c".
func orList(xs []string) string {
	if len(xs) == 1 {
		return xs[0]
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " or " + xs[len(xs)-1]
}

func (k *checker) atLeast(path string, v, lo int) {
	if v < lo {
		k.add(path, "%d must be at least %d", v, lo)
	}
}

func (k *checker) between(path string, v, lo, hi int) {
	if v < lo || v > hi {
		k.add(path, "%d must be in [%d, %d]", v, lo, hi)
	}
}

// fraction checks 0 ≤ v < 1 (or ≤ 1 when closed).
func (k *checker) fraction(path string, v float64, closed bool) {
	if closed && (v < 0 || v > 1) {
		k.add(path, "%s must be in [0, 1]", fmtFloat(v))
	} else if !closed && (v < 0 || v >= 1) {
		k.add(path, "%s must be in [0, 1)", fmtFloat(v))
	}
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// check runs every range and consistency check of the schema.
func (k *checker) check() {
	c := k.c

	k.oneOf("model.preset", "preset", c.Model.Preset, Presets...)
	k.oneOf("model.dtype", "storage dtype", c.Model.DType, "bf16", "f16", "f32", "fp8")
	if c.Model.Weights == "" && c.Model.Path == "" && c.Model.Preset != "tiny" {
		k.addPlain("model.path", "required: a NewBie-image-Exp0.1 model folder, or model.weights with model.vae, model.gemma and model.jina (only the tiny preset may start from random weights)")
	}
	if !(c.MemoryBudgetGiB >= 0) || math.IsInf(c.MemoryBudgetGiB, 0) {
		k.add("memory_budget_gib", "%s must be 0 (the device's free memory) or a positive number of GiB", fmtFloat(c.MemoryBudgetGiB))
	}

	k.oneOf("device", "device", c.Device, "auto", "cuda", "cpu")
	k.atLeast("gpu", c.GPU, 0)
	if c.Device == "cpu" && c.GPU != 0 {
		k.add("gpu", "device is cpu: a GPU index applies to cuda or auto")
	}
	k.oneOf("precision", "precision", string(c.Precision), "auto", "bf16", "fp16", "fp32")

	ls := c.LossScale
	k.oneOf("loss_scale.mode", "loss scale mode", ls.Mode, "default", "dynamic", "static", "off")
	if !(ls.Init > 0) || ls.Init > math.MaxFloat32 {
		k.add("loss_scale.init", "%s must be a positive float32 value", fmtFloat(ls.Init))
	}
	k.atLeast("loss_scale.growth_interval", ls.GrowthInterval, 1)

	l := c.LoRA
	k.atLeast("lora.rank", l.Rank, 1)
	if !(l.Alpha > 0) {
		k.add("lora.alpha", "%s must be positive (the update is scaled by alpha/rank)", fmtFloat(l.Alpha))
	}
	k.fraction("lora.dropout", l.Dropout, false)
	k.names("lora.targets", "target", l.Targets)
	k.oneOf("lora.init", "init", l.Init, "peft", "gaussian")

	k.checkData()
	k.checkTrain()

	s := c.Save
	k.atLeast("save.every", s.Every, 0)
	k.atLeast("save.keep_last", s.KeepLast, 0)
	k.atLeast("save.keep_last_loras", s.KeepLastLoRAs, 0)
	k.names("save.formats", "format", s.Formats)
	for i, f := range s.Formats {
		k.oneOf(fmt.Sprintf("save.formats[%d]", i), "format", f, "comfyui", "peft", "kohya")
	}
	if s.Output == "" {
		k.add("save.output", "must not be empty")
	}
	switch {
	case s.Name == "" || s.Name == "." || s.Name == "..":
		k.add("save.name", "%q is not a file name", s.Name)
	case strings.ContainsAny(s.Name, `/\`):
		k.add("save.name", "%q must be a file name, not a path (save.output is the folder)", s.Name)
	}

	sm := c.Sample
	k.atLeast("sample.every", sm.Every, 0)
	if sm.Every > 0 && len(sm.Prompts) == 0 {
		k.add("sample.every", "%d, but sample.prompts is empty: nothing to render", sm.Every)
	}
	k.between("sample.steps", sm.Steps, 1, 1000)
	if sm.Steps == 1 && sm.Sampler != "dpm" {
		k.add("sample.steps", "1 grid point gives %s no step to take: steps counts grid points (upstream's num_sampling_steps), so at least 2", sm.Sampler)
	}
	if !(sm.CFGTrunc > 0 && sm.CFGTrunc <= 1) {
		k.add("sample.cfg_trunc", "%s must be in (0, 1] (1 guides every step)", fmtFloat(sm.CFGTrunc))
	}
	if !(sm.Renorm >= 0) {
		k.add("sample.renorm", "%s must not be negative (0 turns it off)", fmtFloat(sm.Renorm))
	}
	if sm.CFG < 0 {
		k.add("sample.cfg", "%s must not be negative (1 turns guidance off)", fmtFloat(sm.CFG))
	}
	k.oneOf("sample.sampler", "sampler", sm.Sampler, "midpoint", "euler", "dpm")
	if !(sm.TimeShift > 0) {
		k.add("sample.time_shift", "%s must be positive", fmtFloat(sm.TimeShift))
	}
	k.multipleOf16("sample.resolution", sm.Resolution)

	k.atLeast("dist.timeout", c.Dist.Timeout, 1)

	lg := c.Logging
	k.atLeast("logging.every", lg.Every, 1)
	if lg.MetricsAddr != "" {
		if err := checkHostPort(lg.MetricsAddr); err != nil {
			k.add("logging.metrics_addr", "%q: %v", lg.MetricsAddr, err)
		}
	}
}

// names checks a list of names: not empty, no empty item, no repeats.
func (k *checker) names(path, what string, xs []string) {
	if len(xs) == 0 {
		k.add(path, "needs at least one %s", what)
		return
	}
	seen := map[string]int{}
	for i, x := range xs {
		p := fmt.Sprintf("%s[%d]", path, i)
		if strings.TrimSpace(x) == "" {
			k.add(p, "empty %s", what)
			continue
		}
		if j, dup := seen[x]; dup {
			k.add(p, "%q is already %s[%d]", x, path, j)
		}
		seen[x] = i
	}
}

func (k *checker) multipleOf16(path string, v int) {
	if v < 16 || v%16 != 0 {
		k.add(path, "%d must be a positive multiple of 16 (the VAE divides by 8 and the transformer patches by 2)", v)
	}
}

func (k *checker) checkData() {
	d := k.c.Data
	if len(d.Folders) == 0 {
		k.addPlain("data.folders", "required: at least one dataset folder (data: {folders: [{path: my-images, repeats: 1}]})")
	}
	for i, f := range d.Folders {
		p := fmt.Sprintf("data.folders[%d]", i)
		if f.Path == "" {
			k.addPlain(p+".path", "required: the folder's path")
		}
		k.atLeast(p+".repeats", f.Repeats, 0)
	}
	k.multipleOf16("data.resolution", d.Resolution)
	b := d.Bucket
	if b.Step < 16 || b.Step%16 != 0 {
		k.add("data.bucket.step", "%d must be a positive multiple of 16", b.Step)
	}
	if b.MinSide < b.Step {
		k.add("data.bucket.min_side", "%d must be at least bucket.step %d", b.MinSide, b.Step)
	} else if b.MinSide > d.Resolution {
		k.add("data.bucket.min_side", "%d must not exceed resolution %d (buckets approach resolution² from below)", b.MinSide, d.Resolution)
	}
	if b.MaxSide < b.MinSide {
		k.add("data.bucket.max_side", "%d must be at least bucket.min_side %d", b.MaxSide, b.MinSide)
	}
	k.oneOf("data.crop", "crop", d.Crop, "center", "random")
	k.between("data.crop_variants", d.CropVariants, 1, 64)
	k.atLeast("data.min_side", d.MinSide, 1)
	if d.MaxPixels < d.MinSide*d.MinSide {
		k.add("data.max_pixels", "%d must be at least data.min_side² (%d)", d.MaxPixels, d.MinSide*d.MinSide)
	}
	k.oneOf("data.transparency", "transparency policy", d.Transparency, "white", "black", "reject")
	k.oneOf("data.cmyk", "cmyk policy", d.CMYK, "convert", "reject")
	k.oneOf("data.high_bit_depth", "high bit depth policy", d.HighBitDepth, "convert", "reject")
	k.atLeast("data.workers", d.Workers, 0)
	k.atLeast("data.prefetch", d.Prefetch, 1)

	cp := d.Caption
	if cp.Extension == "" || cp.Extension == "." {
		k.add("data.caption.extension", "%q is not a file extension", cp.Extension)
	}
	if cp.Default != "" && !cp.AllowMissing {
		k.add("data.caption.default", "is set but data.caption.allow_missing is false, so it would never be used")
	}
	k.oneOf("data.caption.format", "caption format", cp.Format, "auto", "xml", "tags", "text")
	k.atLeast("data.caption.keep_tokens", cp.KeepTokens, 0)
	k.fraction("data.caption.tag_dropout", cp.TagDropout, false)
	k.fraction("data.caption.caption_dropout", cp.CaptionDropout, false)
	k.oneOf("data.caption.dropout_blanks", "caption dropout mode", cp.DropoutBlanks, "gemma", "both")
	k.between("data.caption.variants", cp.Variants, 1, 64)
}

func (k *checker) checkTrain() {
	t := k.c.Train
	k.atLeast("train.max_steps", t.MaxSteps, 0)
	k.atLeast("train.epochs", t.Epochs, 0)
	if !k.d.bad["train.max_steps"] && !k.d.bad["train.epochs"] {
		switch {
		case t.MaxSteps == 0 && t.Epochs == 0:
			k.addPlain("train.max_steps", "the run has no length: give train.max_steps or train.epochs")
		case t.MaxSteps > 0 && t.Epochs > 0:
			k.addPlain("train.epochs", "give train.max_steps or train.epochs, not both")
		}
	}
	k.atLeast("train.batch_size", t.BatchSize, 1)
	k.atLeast("train.gradient_accumulation", t.GradientAccumulation, 1)
	if !(t.LearningRate > 0) {
		k.add("train.learning_rate", "%s must be positive", fmtFloat(t.LearningRate))
	}
	k.oneOf("train.schedule", "schedule", t.Schedule, "cosine", "linear", "constant")
	if n, err := strconv.Atoi(t.CheckpointBlocks); err == nil {
		if n < 1 {
			k.add("train.checkpoint_blocks", "%d blocks: want at least 1 (train.activation_checkpointing: false checkpoints none)", n)
		}
	} else {
		k.oneOf("train.checkpoint_blocks", "block count", t.CheckpointBlocks, "all", "auto")
	}
	k.atLeast("train.warmup_steps", t.WarmupSteps, 0)
	k.fraction("train.warmup_ratio", t.WarmupRatio, false)
	if t.WarmupSteps > 0 && t.WarmupRatio > 0 {
		k.addPlain("train.warmup_ratio", "give warmup_steps or warmup_ratio, not both")
	} else if t.MaxSteps > 0 && t.WarmupSteps >= t.MaxSteps {
		k.add("train.warmup_steps", "%d is not shorter than the run's %d steps", t.WarmupSteps, t.MaxSteps)
	}
	k.fraction("train.min_lr_ratio", t.MinLRRatio, true)
	k.atLeast("train.cycles", t.Cycles, 0)
	if t.Cycles > 1 && t.Schedule != "cosine" {
		k.add("train.cycles", "%d: restarts apply to the cosine schedule only", t.Cycles)
	}

	o := t.Optimizer
	if len(o.Betas) != 2 {
		k.add("train.optimizer.betas", "want two numbers [beta1, beta2], got %d", len(o.Betas))
	}
	for i, b := range o.Betas {
		if b < 0 || b >= 1 {
			k.add(fmt.Sprintf("train.optimizer.betas[%d]", i), "%s must be in [0, 1)", fmtFloat(b))
		}
	}
	if !(o.Eps > 0) {
		k.add("train.optimizer.eps", "%s must be positive", fmtFloat(o.Eps))
	}
	if o.WeightDecay < 0 {
		k.add("train.optimizer.weight_decay", "%s must not be negative", fmtFloat(o.WeightDecay))
	} else if t.LearningRate*o.WeightDecay >= 1 {
		k.add("train.optimizer.weight_decay", "%s times learning_rate %s must stay below 1 (the decay factor 1 − lr·wd must stay positive)",
			fmtFloat(o.WeightDecay), fmtFloat(t.LearningRate))
	}
	if t.GradClip < 0 {
		k.add("train.grad_clip", "%s must not be negative (0 disables clipping)", fmtFloat(t.GradClip))
	}

	ts := t.Timesteps
	k.oneOf("train.timesteps.sampling", "timestep sampling", ts.Sampling, "lognorm_shift", "logit_normal", "uniform")
	if !(ts.Std > 0) {
		k.add("train.timesteps.std", "%s must be positive", fmtFloat(ts.Std))
	}
	if ts.Sampling != "logit_normal" {
		// lognorm_shift draws from N(0, 1) as upstream does; a different
		// mean or std there would silently do nothing.
		why := ""
		if ts.Sampling == "lognorm_shift" {
			why = " (lognorm_shift draws from N(0, 1))"
		}
		if ts.Mean != 0 {
			k.add("train.timesteps.mean", "%s: only logit_normal sampling takes a mean%s", fmtFloat(ts.Mean), why)
		}
		if ts.Std != 1 {
			k.add("train.timesteps.std", "%s: only logit_normal sampling takes a std%s", fmtFloat(ts.Std), why)
		}
	}
	k.atLeast("train.nonfinite_limit", t.NonFiniteLimit, 1)
	k.fraction("train.validation.split", t.Validation.Split, false)
	k.atLeast("train.validation.every", t.Validation.Every, 1)
}

// checkHostPort checks a listen address: host (may be empty, meaning all
// interfaces) and a numeric port.
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port (e.g. 127.0.0.1:9090 or :9090)")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q must be a number in [0, 65535]", port)
	}
	return nil
}

// crossCheck runs the option types' own validation on the mapped options
// once the file's own checks pass, so that this package and the packages
// it feeds cannot drift apart silently: a failure here names the section.
func (k *checker) crossCheck() {
	c := k.c
	if err := c.DataOptions().Validate(); err != nil {
		k.addPlain("data", "%v", err)
	}
	if err := c.Hyper().Validate(); err != nil {
		k.addPlain("train.optimizer", "%v", err)
	}
	if c.Train.MaxSteps > 0 {
		if err := c.Schedule(c.Train.MaxSteps).Validate(); err != nil {
			k.addPlain("train.schedule", "%v", err)
		}
	}
	sc := c.ScalerConfig(optim.FP16)
	if err := sc.Validate(); err != nil {
		k.addPlain("loss_scale", "%v", err)
	}
}
