package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/bench"
	"github.com/newbie-train/newbie-train/dist"
)

// benchOptions are the flags of `newbie-train bench`.
type benchOptions struct {
	preset           string
	layers           int
	backend          string
	gpu              int
	batch            int
	accum            int
	gpus             int
	steps            int
	warmup           int
	checkpointing    string
	checkpointBlocks int
	resolution       int
	caption          int
	profile          bool
	fp8Base          bool
	recomputeNorms   bool
	recomputeFFN     int
	memoryBudget     float64
	infer            int
	compareOff       string
}

func newBenchCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Time the LoRA training step of the full model on random weights",
		Long: `bench builds a Next-DiT preset (by default the full NewBie-image-Exp0.1,
3.49B parameters) with random bf16 weights, attaches LoRA r32 α32 on the
default targets, and times the trainer's own step — flow-matching loss under
bf16 autocast, backward, clipping, AdamW — on random 1024² latents with 256
caption tokens. It prints s/step (median of the timed steps), samples/s,
effective TFLOP/s (counted as the PyTorch anchor counts them) and peak memory,
with and without activation checkpointing. --profile adds a per-op breakdown
of one extra step (not part of the timings).

--gpus N runs it data-parallel on N GPUs (one process each, the gradients
summed through NCCL), --accum the micro-batches per step on each: micro-batch
k gets the same random inputs in every layout, so --gpus 2 and --accum 2 on
one GPU print the same losses (within the rounding of the sum's order), and
samples/s compares their throughput.

The CPU backend takes only --preset tiny: the full model would need hours per
step there.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd.Context(), o, stdout, stderr) },
	}
	f := cmd.Flags()
	f.StringVar(&o.preset, "preset", "newbie-exp0.1", "model preset (newbie-exp0.1, lumina2, tiny)")
	f.IntVar(&o.layers, "layers", 0, "replace the preset's main layer count (0: the preset's); --preset tiny --layers 36 issues the full model's ops, for counting them on the CPU")
	f.StringVar(&o.backend, "backend", "cuda", "backend: cuda or cpu")
	f.IntVar(&o.gpu, "gpu", 0, "GPU index for the cuda backend")
	f.IntVar(&o.batch, "batch", 1, "samples per micro-batch")
	f.IntVar(&o.accum, "accum", 1, "micro-batches per step on each GPU")
	f.IntVar(&o.gpus, "gpus", 1, "GPUs of this machine to run data-parallel on (one process each)")
	f.IntVar(&o.steps, "steps", 10, "timed steps per checkpointing mode")
	f.IntVar(&o.warmup, "warmup", 3, "untimed warm-up steps per mode (kernel compilation, allocator)")
	f.StringVar(&o.checkpointing, "checkpointing", "both", "activation checkpointing: both, on or off")
	f.IntVar(&o.checkpointBlocks, "checkpoint-blocks", 0, "with checkpointing on: checkpoint only this many of the blocks, spread evenly (0: all; train.checkpoint_blocks)")
	f.IntVar(&o.resolution, "res", 1024, "image side in pixels (latent = res/8), e.g. 512, 768 or 1024; the anchor's --res")
	f.IntVar(&o.resolution, "resolution", 1024, "the same as --res")
	_ = f.MarkDeprecated("resolution", "use --res, as the PyTorch anchor spells it")
	f.IntVar(&o.caption, "caption", 256, "caption tokens per sample (all real)")
	f.BoolVar(&o.profile, "profile", false, "add a per-op profile of one extra step per mode (with --infer: of one extra evaluation)")
	f.StringVar(&o.compareOff, "compare-off", "", "measure every mode once per ';'-separated entry, each a NEWBIE_TRAIN_CUDA_OFF list of paths to turn off (an empty entry: all on), e.g. ';graphs;fused,graphs'")
	f.IntVar(&o.infer, "infer", 0, "instead of training steps, time this many guided model evaluations (batch 2, no LoRA, no gradients), as the anchor's --infer")
	f.BoolVar(&o.fp8Base, "fp8-base", false, "store the frozen linear weights in fp8 E4M3 with per-row scales (kohya's --fp8_base)")
	f.BoolVar(&o.recomputeNorms, "recompute-norms", false, "recompute the blocks' norms in the backward instead of keeping them (what checkpoint_blocks auto tries first)")
	f.Float64Var(&o.memoryBudget, "memory-budget", 0, "GiB: measure the step the trainer's checkpoint_blocks auto picks for this budget (replaces --checkpointing and the recompute flags)")
	f.IntVar(&o.recomputeFFN, "recompute-ffn-blocks", 0, "recompute the feed-forward inputs (w1 and w3 again) of this many blocks in the backward (checkpoint_blocks auto's second lever)")
	return cmd
}

func runBench(ctx context.Context, o *benchOptions, stdout, stderr io.Writer) error {
	if !(o.memoryBudget >= 0) || math.IsInf(o.memoryBudget, 0) {
		return usageError{fmt.Errorf("--memory-budget %g: want GiB ≥ 0 (0: none)", o.memoryBudget)}
	}
	modes := map[string][]bool{"both": {false, true}, "off": {false}, "on": {true}}[o.checkpointing]
	if modes == nil {
		return usageError{fmt.Errorf("--checkpointing %q: want both, on or off", o.checkpointing)}
	}
	// Zero means "default" to bench.Options, so values the user typed
	// as 0 or below are refused here rather than silently replaced.
	for _, v := range []struct {
		name string
		val  int
	}{{"--batch", o.batch}, {"--accum", o.accum}, {"--gpus", o.gpus}, {"--steps", o.steps}, {"--res", o.resolution}, {"--caption", o.caption}} {
		if v.val < 1 {
			return usageError{fmt.Errorf("%s %d: want ≥ 1", v.name, v.val)}
		}
	}
	if o.warmup < 0 {
		return usageError{fmt.Errorf("--warmup %d: want ≥ 0", o.warmup)}
	}
	warmup := o.warmup
	if warmup == 0 {
		warmup = -1 // bench.Options: negative means no warm-up
	}
	env, err := dist.ParseEnv(os.Getenv)
	if err != nil {
		return usageError{fmt.Errorf("the data-parallel environment: %w", err)}
	}
	opts := bench.Options{
		Preset: o.preset, Layers: o.layers, Backend: o.backend, GPU: o.gpu, Batch: o.batch, Accum: o.accum,
		Steps: o.steps, Warmup: warmup, Checkpointing: modes,
		Resolution: o.resolution, CaptionTokens: o.caption, Profile: o.profile, FP8Base: o.fp8Base, Log: stderr, Dist: env,
		CheckpointBlocks: o.checkpointBlocks, RecomputeNorms: o.recomputeNorms, RecomputeFFNBlocks: o.recomputeFFN,
		MemoryBudgetGiB: o.memoryBudget,
	}
	if o.compareOff != "" {
		opts.CompareOff = strings.Split(o.compareOff, ";")
	}
	if err := opts.Validate(); err != nil {
		return usageError{err}
	}
	switch {
	case o.infer < 0:
		return usageError{fmt.Errorf("--infer %d: want ≥ 1 evaluations (or 0 to time training steps)", o.infer)}
	case o.infer > 0 && (o.gpus > 1 || env.Distributed()):
		return usageError{fmt.Errorf("--infer times one GPU's model evaluations: leave --gpus (and the job's environment) out")}
	case o.infer > 0:
		opts.Steps = o.infer
		res, err := bench.Infer(ctx, opts)
		if len(res.Rows) > 0 {
			fmt.Fprint(stdout, res.Table())
		}
		return err
	case o.gpus > 1 && env.Distributed():
		return usageError{fmt.Errorf("--gpus %d inside a job (%s): leave --gpus out", o.gpus, env)}
	case o.gpus > 1:
		err := dist.Launch{Ranks: o.gpus, Args: o.args(), Stdout: stdout, Stderr: stderr}.Run(ctx)
		if usageFailure(err) {
			return usageError{err}
		}
		return err
	}
	res, err := bench.Run(ctx, opts)
	if len(res.Modes) > 0 && env.Rank == 0 {
		fmt.Fprint(stdout, res.Table())
	}
	return err
}

// args is the command line of one rank of a --gpus bench: these options
// less --gpus.
func (o *benchOptions) args() []string {
	a := []string{"bench", "--preset", o.preset, "--layers", strconv.Itoa(o.layers), "--backend", o.backend,
		"--batch", strconv.Itoa(o.batch), "--accum", strconv.Itoa(o.accum), "--steps", strconv.Itoa(o.steps),
		"--warmup", strconv.Itoa(o.warmup), "--checkpointing", o.checkpointing, "--res", strconv.Itoa(o.resolution),
		"--caption", strconv.Itoa(o.caption)}
	if o.compareOff != "" {
		a = append(a, "--compare-off", o.compareOff)
	}
	if o.profile {
		a = append(a, "--profile")
	}
	if o.fp8Base {
		a = append(a, "--fp8-base")
	}
	if o.recomputeNorms {
		a = append(a, "--recompute-norms")
	}
	if o.recomputeFFN > 0 {
		a = append(a, "--recompute-ffn-blocks", strconv.Itoa(o.recomputeFFN))
	}
	if o.memoryBudget > 0 {
		a = append(a, "--memory-budget", strconv.FormatFloat(o.memoryBudget, 'g', -1, 64))
	}
	if o.checkpointBlocks > 0 {
		a = append(a, "--checkpoint-blocks", strconv.Itoa(o.checkpointBlocks))
	}
	return a
}
