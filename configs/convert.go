package configs

import (
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/optim"
)

// DataOptions maps the data section (with train.batch_size and train.seed)
// onto the data pipeline's options. Every field is set explicitly, so the
// data package's own defaults are not relied on.
func (c *Config) DataOptions() data.Options {
	d := c.Data
	folders := make([]data.Folder, len(d.Folders))
	for i, f := range d.Folders {
		folders[i] = data.Folder{Path: f.Path, Repeats: f.Repeats}
	}
	cp := d.Caption
	return data.Options{
		Folders:          folders,
		MinSide:          d.MinSide,
		MaxPixels:        d.MaxPixels,
		CMYK:             data.Policy(d.CMYK),
		HighBitDepth:     data.Policy(d.HighBitDepth),
		Alpha:            data.Policy(d.Transparency),
		Strict:           d.Strict,
		SkipDeepValidate: !d.DeepValidate,
		Workers:          d.Workers,
		Seed:             c.Train.Seed,
		Caption: data.CaptionOptions{
			Extension:      cp.Extension,
			Format:         data.CaptionFormat(cp.Format),
			AllowMissing:   cp.AllowMissing,
			Default:        cp.Default,
			TriggerWord:    cp.TriggerWord,
			ShuffleTags:    cp.Shuffle,
			KeepTokens:     cp.KeepTokens,
			TagDropout:     cp.TagDropout,
			CaptionDropout: cp.CaptionDropout,
			DropoutBlanks:  cp.DropoutBlanks,
			FixedElements:  append([]string{}, cp.FixedElements...),
			Variants:       cp.Variants,
			SystemPrompt:   cp.SystemPrompt,
		},
		Buckets: data.BucketOptions{
			TargetArea:   d.Resolution * d.Resolution,
			Step:         d.Bucket.Step,
			MinSide:      d.Bucket.MinSide,
			MaxSide:      d.Bucket.MaxSide,
			NoUpscale:    d.NoUpscale,
			RandomCrop:   d.Crop == "random",
			CropVariants: d.CropVariants,
		},
		Loader: data.LoaderOptions{
			BatchSize: c.Train.BatchSize,
			DropLast:  d.DropLast,
			Prefetch:  d.Prefetch,
		},
		CacheDir:  d.Cache,
		CacheBF16: d.CacheBF16,
		Flip:      d.Flip,
	}
}

// Hyper is AdamW's hyperparameters of the (single) parameter group.
func (c *Config) Hyper() optim.Hyper {
	o := c.Train.Optimizer
	h := optim.Hyper{LR: c.Train.LearningRate, WeightDecay: o.WeightDecay, Eps: o.Eps}
	if len(o.Betas) == 2 {
		h.Beta1, h.Beta2 = o.Betas[0], o.Betas[1]
	}
	return h
}

// TotalSteps is the run's length in optimizer steps on ranks data-parallel
// processes (1 on one GPU): train.max_steps, or train.epochs ×
// ⌈batchesPerEpoch / (ranks × gradient_accumulation)⌉, each step taking
// gradient_accumulation batches on every rank (the loader knows
// batchesPerEpoch once the dataset is scanned and bucketed).
func (c *Config) TotalSteps(batchesPerEpoch, ranks int) int {
	if c.Train.MaxSteps > 0 {
		return c.Train.MaxSteps
	}
	perStep := max(c.Train.GradientAccumulation, 1) * max(ranks, 1)
	return c.Train.Epochs * ((batchesPerEpoch + perStep - 1) / perStep)
}

// Schedule is the learning-rate schedule of a run of totalSteps optimizer
// steps (see TotalSteps).
func (c *Config) Schedule(totalSteps int) optim.Schedule {
	t := c.Train
	return optim.Schedule{
		Kind:        optim.ScheduleKind(t.Schedule),
		TotalSteps:  totalSteps,
		WarmupSteps: t.WarmupSteps,
		WarmupRatio: t.WarmupRatio,
		MinRatio:    t.MinLRRatio,
		Cycles:      t.Cycles,
	}
}

// ScalerConfig is the loss scaler's config for a run whose precision has
// been resolved to prec: mode "default" becomes the precision's default
// (dynamic for fp16, off otherwise), with GradScaler's growth and backoff
// factors.
func (c *Config) ScalerConfig(prec optim.Precision) optim.ScalerConfig {
	mode, err := optim.ParseScalerMode(c.LossScale.Mode)
	if err != nil || mode == optim.ScaleDefault {
		// Parse has rejected unknown modes; the fallback keeps this total.
		mode = prec.DefaultScalerMode()
	}
	sc := optim.DefaultScalerConfig(mode)
	sc.InitScale = c.LossScale.Init
	sc.GrowthInterval = c.LossScale.GrowthInterval
	return sc
}

// OptimConfig is the optimizer's config for a run on a device of the given
// compute capability (the zero value: the CPU backend) lasting totalSteps
// optimizer steps. The precision is resolved for the device; an explicit
// precision the device cannot run (bf16 on a GPU older than Ampere) is an
// error.
func (c *Config) OptimConfig(capability optim.Capability, totalSteps int) (optim.Config, error) {
	prec, err := c.Precision.Resolve(capability)
	if err != nil {
		return optim.Config{}, &Error{File: c.file, Problems: []Problem{{Line: c.lineOf("precision"), Path: "precision", Msg: err.Error()}}}
	}
	return optim.Config{
		Precision:   prec,
		Capability:  capability,
		Scaler:      c.ScalerConfig(prec),
		MaxGradNorm: c.Train.GradClip,
		AccumSteps:  c.Train.GradientAccumulation,
		Schedule:    c.Schedule(totalSteps),
	}, nil
}
