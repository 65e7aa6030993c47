package train

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// The training step's and the previews' memory is planned before anything
// is encoded, so a run that cannot fit says so (which phase, by how much)
// at its start and not after the cache step; each real encoder is checked
// again by the encoder pipeline just before it loads. The plan covers the
// GPU's mixed-precision runs (the estimates are for bf16 or fp16
// autocast); on the CPU there is nothing to plan.

// trainEstimate predicts the training step's peak for the run's largest
// bucket. Caption tokens are taken at the feature encoder's limit (512 for
// Gemma 3, 64 for the stand-in): the longest caption is not known before
// it is encoded, and at 1024² the caption is a small part of the joint
// sequence, so the bound costs a few percent of the activations.
// The autocast dtype is returned beside it; 0 when the run's precision is
// fp32 (nothing planned).
func (r *run) trainEstimate(storage kernels.DType) (newbie.Estimate, kernels.DType, error) {
	return r.trainEstimateWith(storage, r.levers)
}

// trainEstimateWith is trainEstimate with levers m.
func (r *run) trainEstimateWith(storage kernels.DType, m newbie.MemoryLevers) (newbie.Estimate, kernels.DType, error) {
	cfg := r.cfg
	prec, err := cfg.Precision.Resolve(r.capab)
	if err != nil {
		return newbie.Estimate{}, 0, nil // reported where the optimizer is built
	}
	_, autocast, err := pipeline.DTypes(prec)
	if err != nil || autocast == 0 {
		return newbie.Estimate{}, 0, nil
	}
	b := largestBucket(r.ds)
	tokens := 64
	if r.found != nil {
		tokens = tokenizers.GemmaBatch.MaxLength
	}
	est, err := newbie.EstimateTrain(r.mc, m.On(newbie.TrainShape{
		Batch: cfg.Train.BatchSize, LatentH: b.H / 8, LatentW: b.W / 8, CaptionTokens: tokens,
		Rank: cfg.LoRA.Rank, Targets: cfg.LoRA.Targets, DType: storage, Autocast: autocast, FP8Base: r.fp8Base(),
	}), newbie.RounderOf(r.b))
	if err != nil {
		return newbie.Estimate{}, 0, err
	}
	return est, autocast, nil
}

// previewEstimate predicts the previews' peak: the training state stays
// resident while they render, the FLUX VAE is loaded to decode them, and
// the decode runs after the sampling's activations are freed. The
// sampling itself (no tape, a batch of two for guidance) stays below the
// training step's activations, which the train phase already covers.
// What else is alive at the decode (the finished latents, the prompts'
// conditioning, the allocator's rounding of tensors freed around it) is
// covered by previewMargin of the decode's activations: on the H200 at
// full size the first end-to-end run (docs/BENCHMARKS.md) measured 11.03
// GiB against 10.91 GiB without it.
func (r *run) previewEstimate(train newbie.Estimate, autocast kernels.DType) newbie.Estimate {
	side := r.cfg.Sample.Resolution
	dec := newbie.EstimateVAEDecode(r.found.VAE.Arch, kernels.F32, autocast, 1, side, side, newbie.RounderOf(r.b))
	margin := int64(previewMargin * float64(dec.Activations))
	return newbie.Estimate{
		Phase: "preview", Weights: train.Weights + dec.Weights, Activations: dec.Activations + margin, Slack: dec.Slack,
		Total: train.Weights + dec.Total + margin, Basis: "the training state + " + dec.Basis,
	}
}

// previewMargin is the previews' allowance beyond the decode's activations
// (see previewEstimate).
const previewMargin = 0.15

// planMemory checks the training step and the previews against the
// budget (memory_budget_gib) or the device's free memory, and logs the
// plan. Both are checked, so one message names every phase that does not
// fit.
func (r *run) planMemory(storage kernels.DType) error {
	if err := r.chooseCheckpointing(storage); err != nil {
		return err
	}
	train, autocast, err := r.trainEstimate(storage)
	if err != nil || autocast == 0 {
		return err
	}
	ests := []newbie.Estimate{train}
	if r.found != nil && len(r.cfg.Sample.Prompts) > 0 {
		ests = append(ests, r.previewEstimate(train, autocast))
	}
	budget := MemoryBudget(r.cfg)
	var errs []error
	for _, e := range ests {
		if err := newbie.Check(r.b, budget, e); err != nil {
			errs = append(errs, err)
			continue
		}
		r.logf("memory plan: %s %s", e.Phase, e)
		r.planned[e.Phase] = e.Total
	}
	if len(errs) > 0 {
		var pe *newbie.PhaseError
		if errors.As(errs[0], &pe) && budget > 0 {
			errs = append(errs, fmt.Errorf("memory_budget_gib is %g; train.activation_checkpointing, a smaller train.batch_size or data.resolution lower the step's need", r.cfg.MemoryBudgetGiB))
		}
		return configErr(errors.Join(errs...))
	}
	return nil
}

// chooseCheckpointing sets r.levers: how many of the transformer
// blocks run under a checkpoint (0: none; r.mc.Blocks(): all), from
// train.activation_checkpointing and train.checkpoint_blocks. With "auto"
// it takes the fewest whose training step and previews the memory plan
// fits (the budget, or the device's free memory): each block not
// recomputed saves its forward in the backward. Before checkpointing a
// first block it tries the cheaper levers, recomputing the norms and
// feed-forward inputs, in newbie.LeverLadder's order. Without a plan (an fp32
// run) auto checkpoints every block; when even that does not fit,
// planMemory reports it.
func (r *run) chooseCheckpointing(storage kernels.DType) error {
	t := r.cfg.Train
	total := r.mc.Blocks()
	n, numeric := strconv.Atoi(t.CheckpointBlocks)
	switch {
	case !t.ActivationCheckpointing:
		r.levers = newbie.MemoryLevers{}
		return nil
	case numeric == nil:
		r.levers = newbie.MemoryLevers{CheckpointBlocks: min(n, total)}
		r.logf("activation checkpointing: %d of %d blocks", r.levers.CheckpointBlocks, total)
		return nil
	case t.CheckpointBlocks != "auto":
		r.levers = newbie.MemoryLevers{CheckpointBlocks: total}
		return nil
	}
	r.levers = newbie.MemoryLevers{CheckpointBlocks: total}
	budget := MemoryBudget(r.cfg)
	for _, ch := range newbie.LeverLadder(total) {
		train, autocast, err := r.trainEstimateWith(storage, ch)
		if err != nil {
			return err
		}
		if autocast == 0 {
			r.logf("activation checkpointing: all %d blocks (checkpoint_blocks auto: an fp32 run has no memory plan)", total)
			return nil
		}
		ests := []newbie.Estimate{train}
		if r.found != nil && len(r.cfg.Sample.Prompts) > 0 {
			ests = append(ests, r.previewEstimate(train, autocast))
		}
		fits := true
		for _, e := range ests {
			if err := newbie.Check(r.b, budget, e); err != nil {
				var pe *newbie.PhaseError
				if !errors.As(err, &pe) {
					return err
				}
				fits = false
				break
			}
		}
		if fits {
			r.levers = ch
			r.logf("activation checkpointing: %s (checkpoint_blocks auto: the fewest the memory plan fits)", ch.Describe(total))
			return nil
		}
	}
	return nil // all blocks: planMemory says what does not fit
}
