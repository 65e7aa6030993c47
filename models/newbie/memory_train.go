package newbie

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// TrainShape is what a LoRA training step's memory depends on.
type TrainShape struct {
	// Batch samples of a latent LatentH × LatentW (the image's side / 8)
	// with CaptionTokens caption tokens each (the batch's longest, which
	// the others are padded to).
	Batch, LatentH, LatentW, CaptionTokens int
	// Rank and Targets are the adapters' (Targets empty: lora's defaults).
	Rank    int
	Targets []string
	// Checkpoint is activation checkpointing per transformer block;
	// CheckpointBlocks, when positive, checkpoints only that many of the
	// forward's blocks (nextdit.Options.CheckpointBlocks).
	Checkpoint       bool
	CheckpointBlocks int
	// RecomputeNorms drops the blocks' norm outputs from the tape
	// (nextdit.Options.RecomputeNorms); RecomputeFFNBlocks, when positive,
	// the feed-forward inputs of that many blocks
	// (nextdit.Options.RecomputeFFNBlocks).
	RecomputeNorms     bool
	RecomputeFFNBlocks int
	// DType is the frozen weights' storage dtype (BF16, F16 or F32);
	// Autocast the dtype the products run in (BF16 or F16: the estimate
	// covers mixed-precision training, the GPU's).
	DType, Autocast kernels.DType
	// FP8Base stores the linear layers' weights in fp8 with a float32
	// scale per output row (nextdit.Options.FP8Base); DType is then the
	// other weights'. Each product dequantises its weight into the
	// autocast dtype: one layer's widest weight more among the activations.
	FP8Base bool
}

// The train step's activation terms, per token (a caption or image token of
// the joint sequence), in bytes. Unlike the encoders' forwards, whose live
// sets are a few tensors of the code, a training step's peak comes from
// the whole tape and the backward's gradients; these coefficients were
// measured on the CPU backend — the slope of the peak in tokens over tiny
// Next-DiTs varied one width at a time (model width, SwiGLU width, q/k/v
// width, heads, head size, depth) under bf16 autocast with LoRA on the
// default targets — and TestEstimateTrain checks them on configurations
// outside that set (within 3 % per token). They also predict the
// full-size step measured on the H200 (docs/BENCHMARKS.md, 2026-11-28:
// 1024², 256 caption tokens, r32, batch 1): the step's own memory (above
// the weights and adapter state, the per-step casts included) 1.71 GiB
// with checkpointing (measured 1.64 GiB) and 13.43 GiB without (measured
// 13.84 GiB); with trainMargin, which covers that and the GPU's own
// scratch (the attention backward's float32 dQ), 1.87 and 14.76 GiB. The
// whole step, with 7.68 GiB of weights and adapter state before the
// allocator's rounding: 9.41 and 22.30 GiB (measured peaks 9.48 and
// 21.68 GiB, the weights rounded to the allocator's classes then holding
// 7.84 GiB).
const (
	// Per block a token goes through, what its tape keeps: the model
	// width's bf16 copies (the block's input, its norms' outputs, the
	// attention's output, …), the SwiGLU halves, q/k/v, a float32
	// log-sum-exp and RMSNorm rstd per head.
	trainBlockPerDim   = 15
	trainBlockPerFFN   = 4
	trainBlockPerQKV   = 3
	trainBlockPerHead  = 10
	trainBlockConstant = 40
	// Once, the backward's working set at its largest (the last block's
	// gradients in float32 beside their bf16 sources), and the loss's
	// latent-sized tensors. Per SwiGLU width 8 bytes since 2026-12-04 (12
	// before): the down projection and its update became one op
	// (autograd.SwiGLULoRALinear), whose backward holds one hidden-width
	// gradient where the composition held two, and that backward writes
	// h3's gradient over its dg; refitted on the same CPU measurements.
	trainBackPerDim   = 2
	trainBackPerFFN   = 8
	trainBackPerHeadD = 8
	trainBackConstant = 632
	// With checkpointing each block keeps only its bf16 input; the
	// recomputed block's tape and the gradient reaching its input (in
	// float32 and bf16) are alive once.
	trainCkptPerDim      = 2
	trainCkptInputPerDim = 6
	// With RecomputeNorms a kept block drops the norm outputs
	// recomputedNorms counts (bf16: 2 bytes each per model width) and the
	// backward holds one of them rebuilt;
	trainRecomputedPerDim = 2
	trainRebuiltPerDim    = 2
	// and q, k and v (bf16, together the qkv width).
	trainRecomputedPerQKV = 2
	// trainMargin is the allowance, as a fraction of the activations, for
	// what the CPU measurements do not show (see above).
	trainMargin = 0.10
)

// EstimateTrain predicts the peak of a LoRA training step on the Next-DiT
// c (the trainer's step: flow-matching loss, backward, the optimizer's
// update): the frozen weights in their dtype; each adapter's float32 A
// and B with their gradients and AdamW's two moments, and autocast's
// per-step low-precision cast of them; the step's inputs (clean latents,
// noise, caption features, pooled vector, in float32); and the
// activations (the terms above, times the tokens of the joint sequence,
// plus trainMargin).
func EstimateTrain(c nextdit.Config, s TrainShape, r Rounder) (Estimate, error) {
	if s.Autocast != kernels.BF16 && s.Autocast != kernels.F16 {
		return Estimate{}, fmt.Errorf("newbie: the train step's estimate covers bf16 or fp16 autocast, not %v", s.Autocast)
	}
	if s.Batch < 1 || s.LatentH < c.PatchSize || s.LatentW < c.PatchSize || s.CaptionTokens < 1 || s.Rank < 1 {
		return Estimate{}, fmt.Errorf("newbie: train estimate for batch %d of %d×%d latents, %d caption tokens, rank %d: want positive sizes", s.Batch, s.LatentW, s.LatentH, s.CaptionTokens, s.Rank)
	}
	mode := "no checkpointing"
	switch {
	case s.Checkpoint && s.CheckpointBlocks > 0 && s.CheckpointBlocks < c.Blocks():
		mode = fmt.Sprintf("checkpointing %d of %d blocks", s.CheckpointBlocks, c.Blocks())
	case s.Checkpoint:
		mode = "checkpointing"
	}
	if !s.Checkpoint || (s.CheckpointBlocks > 0 && s.CheckpointBlocks < c.Blocks()) {
		if s.RecomputeNorms {
			mode += ", norms recomputed"
		}
		if f := s.RecomputeFFNBlocks; f > 0 {
			mode += fmt.Sprintf(", feed-forward inputs of %d blocks recomputed", min(f, c.Blocks()))
		}
	}
	weights := s.DType.String()
	if s.FP8Base {
		weights = "fp8 linear / " + weights + " other"
	}
	e := Estimate{Phase: "train", Basis: fmt.Sprintf("batch %d of %d×%d latents, %d caption tokens, LoRA r%d, %s, %s weights, %v autocast",
		s.Batch, s.LatentW, s.LatentH, s.CaptionTokens, s.Rank, mode, weights, s.Autocast)}
	fp8 := map[string]bool{}
	var widest int64
	if s.FP8Base {
		fp8 = c.LinearWeights()
		for _, l := range c.Linears() {
			widest = max(widest, int64(l.Out*l.In))
		}
	}
	for _, p := range c.Params() {
		if fp8[p.Name] {
			// The codes and the row scales are ordinary buffers (fp8
			// weights are not packed: see nextdit's reserve).
			e.Weights += r.bytes(shapeElems(p.Shape), 1) + r.bytes(int64(p.Shape[0]), 4)
			continue
		}
		e.Weights += r.weightBytes(shapeElems(p.Shape), s.DType.Size())
	}
	targets := s.Targets
	if len(targets) == 0 {
		targets = lora.DefaultTargets
	}
	var loraParams int64
	for _, l := range c.Linears() {
		for _, t := range targets {
			if lora.Matches(l.Name, t) {
				a, b := int64(s.Rank*l.In), int64(l.Out*s.Rank)
				// master and gradient (float32), AdamW's m and v (float32),
				// and the per-step cast, for A and for B
				for _, n := range []int64{a, b} {
					e.Weights += 4*r.bytes(n, 4) + r.bytes(n, s.Autocast.Size())
				}
				loraParams += a + b
				break
			}
		}
	}
	// the optimizer's scalars: the non-finite flag, the squared norm, the
	// gradient scale (float32)
	e.Weights += 3 * r.bytes(1, 4)
	inputs, tokens, perToken := trainActivations(c, s)
	act := tokens * perToken
	e.Activations = inputs + act + int64(trainMargin*float64(act)) + r.bytes(widest, s.Autocast.Size())
	return e.finish(r), nil
}

// recomputedNorms is how many of a block's norm outputs RecomputeNorms
// takes off its tape: the attention branch's output (the feed-forward
// pre-norm's input), and the pre-norm outputs an adapter keeps (for
// lora_A's gradient): the attention's when the qkv has one, the
// feed-forward's when w1 or w3 has. A frozen product keeps no input.
func recomputedNorms(s TrainShape) int64 {
	if !s.RecomputeNorms {
		return 0
	}
	return 1 + adapted(s, "attention.qkv") + adapted(s, "feed_forward.w1", "feed_forward.w3")
}

// adapted is 1 when an adapter of s's targets sits on one of a block's
// layers (named as in a joint block, "attention.qkv"), else 0.
func adapted(s TrainShape, layers ...string) int64 {
	targets := s.Targets
	if len(targets) == 0 {
		targets = lora.DefaultTargets
	}
	for _, l := range layers {
		for _, t := range targets {
			if lora.Matches("layers.0."+l, t) {
				return 1
			}
		}
	}
	return 0
}

// trainActivations is the step's inputs in bytes, its tokens, and the
// activations' bytes per token, without the margin.
func trainActivations(c nextdit.Config, s TrainShape) (inputs, tokens, perToken int64) {
	b := int64(s.Batch)
	latent := b * int64(c.InChannels*s.LatentH*s.LatentW)
	inputs = 4 * (2*latent + b*int64(s.CaptionTokens*c.CapFeatDim) + b*int64(c.ClipTextDim))
	tokens = b * int64(s.CaptionTokens+(s.LatentH/c.PatchSize)*(s.LatentW/c.PatchSize))
	dim, ffn, heads := int64(c.Dim), int64(c.FFNHidden()), int64(c.NHeads)
	qkv := int64((c.NHeads + 2*c.NKVHeads) * c.HeadDim())
	blocks := int64(c.NLayers + c.NRefinerLayers) // each token: its refiner, then every joint layer
	block := trainBlockPerDim*dim + trainBlockPerFFN*ffn + trainBlockPerQKV*qkv + trainBlockPerHead*heads + trainBlockConstant
	back := trainBackPerDim*dim + trainBackPerFFN*ffn + trainBackPerHeadD*int64(c.HeadDim()) + trainBackConstant
	// A block that keeps its tape; with RecomputeNorms, the pre-norm
	// outputs adapters keep and q/k/v fewer, and the backward holds one of
	// each rebuilt at a time. A checkpointed block's recompute keeps them.
	keptBlock, rebuilt := block, int64(0)
	if s.RecomputeNorms {
		keptBlock -= recomputedNorms(s)*trainRecomputedPerDim*dim + trainRecomputedPerQKV*qkv
		rebuilt = trainRebuiltPerDim*dim + trainRecomputedPerQKV*qkv
	}
	// A caption token runs the context refiners and the layers, an image
	// token the noise refiners and the layers: each counts, on its own
	// path, the blocks that keep their tape (not checkpointed:
	// nextdit.Config.CheckpointedBlock) and, of those, the ones whose
	// feed-forward inputs are recomputed (RecomputeFFNBlocks, which saves
	// the SwiGLU halves an adapted w1 or w3 makes: 2 bytes each per SwiGLU
	// width).
	ckpt := func(i int) bool { return s.Checkpoint && c.CheckpointedBlock(i, s.CheckpointBlocks) }
	count := func(ranges ...[2]int) (kept, ffnRedone int64) {
		for _, rg := range ranges {
			for i := rg[0]; i < rg[1]; i++ {
				if ckpt(i) {
					continue
				}
				kept++
				if c.RecomputedFFNBlock(i, s.RecomputeFFNBlocks) {
					ffnRedone++
				}
			}
		}
		return kept, ffnRedone
	}
	r, n := c.NRefinerLayers, c.Blocks()
	capKept, capFFN := count([2]int{0, r}, [2]int{2 * r, n})
	imgKept, imgFFN := count([2]int{r, 2 * r}, [2]int{2 * r, n})
	capTok, imgTok := int64(s.CaptionTokens), int64((s.LatentH/c.PatchSize)*(s.LatentW/c.PatchSize))
	// The tokens' means: of the blocks kept rounded up, of the blocks whose
	// inputs are recomputed rounded down (both on the side of more memory).
	kept := (capTok*capKept + imgTok*imgKept + capTok + imgTok - 1) / (capTok + imgTok)
	ffnRedone := (capTok*capFFN + imgTok*imgFFN) / (capTok + imgTok)
	halves := 2 * (adapted(s, "feed_forward.w1") + adapted(s, "feed_forward.w3")) * ffn
	ffnSaved := ffnRedone * halves
	if last := n - 1; !ckpt(last) && c.RecomputedFFNBlock(last, s.RecomputeFFNBlocks) {
		// The step's peak is in the first backward's SwiGLU, the last
		// block's: its halves are there, rebuilt (a checkpointed last
		// block's are in its recomputed tape, block below).
		back += halves
	}
	if !s.Checkpoint {
		return inputs, tokens, blocks*keptBlock - ffnSaved + back + rebuilt
	}
	// Checkpointed blocks keep their input, the others their whole tape.
	if kept == 0 {
		rebuilt = 0 // every block checkpointed: nothing is rebuilt
	}
	return inputs, tokens, (blocks-kept)*trainCkptPerDim*dim + kept*keptBlock - ffnSaved + block + back + rebuilt + trainCkptInputPerDim*dim
}
