package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/train"
)

// benchOptions are the flags of `newbie-train bench`.
type benchOptions struct {
	preset        string
	backend       string
	gpu           int
	batch         int
	accum         int
	gpus          int
	steps         int
	warmup        int
	checkpointing string
	resolution    int
	caption       int
	profile       bool
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
	f.StringVar(&o.backend, "backend", "cuda", "backend: cuda or cpu")
	f.IntVar(&o.gpu, "gpu", 0, "GPU index for the cuda backend")
	f.IntVar(&o.batch, "batch", 1, "samples per micro-batch")
	f.IntVar(&o.accum, "accum", 1, "micro-batches per step on each GPU")
	f.IntVar(&o.gpus, "gpus", 1, "GPUs of this machine to run data-parallel on (one process each)")
	f.IntVar(&o.steps, "steps", 10, "timed steps per checkpointing mode")
	f.IntVar(&o.warmup, "warmup", 3, "untimed warm-up steps per mode (kernel compilation, allocator)")
	f.StringVar(&o.checkpointing, "checkpointing", "both", "activation checkpointing: both, on or off")
	f.IntVar(&o.resolution, "resolution", 1024, "image side in pixels (latent = resolution/8)")
	f.IntVar(&o.caption, "caption", 256, "caption tokens per sample (all real)")
	f.BoolVar(&o.profile, "profile", false, "add a per-op profile of one extra step per mode")
	return cmd
}

func runBench(ctx context.Context, o *benchOptions, stdout, stderr io.Writer) error {
	modes := map[string][]bool{"both": {false, true}, "off": {false}, "on": {true}}[o.checkpointing]
	if modes == nil {
		return usageError{fmt.Errorf("--checkpointing %q: want both, on or off", o.checkpointing)}
	}
	// Zero means "default" to train.BenchOptions, so values the user typed
	// as 0 or below are refused here rather than silently replaced.
	for _, v := range []struct {
		name string
		val  int
	}{{"--batch", o.batch}, {"--accum", o.accum}, {"--gpus", o.gpus}, {"--steps", o.steps}, {"--resolution", o.resolution}, {"--caption", o.caption}} {
		if v.val < 1 {
			return usageError{fmt.Errorf("%s %d: want ≥ 1", v.name, v.val)}
		}
	}
	if o.warmup < 0 {
		return usageError{fmt.Errorf("--warmup %d: want ≥ 0", o.warmup)}
	}
	warmup := o.warmup
	if warmup == 0 {
		warmup = -1 // BenchOptions: negative means no warm-up
	}
	env, err := dist.ParseEnv(os.Getenv)
	if err != nil {
		return usageError{fmt.Errorf("the data-parallel environment: %w", err)}
	}
	opts := train.BenchOptions{
		Preset: o.preset, Backend: o.backend, GPU: o.gpu, Batch: o.batch, Accum: o.accum,
		Steps: o.steps, Warmup: warmup, Checkpointing: modes,
		Resolution: o.resolution, CaptionTokens: o.caption, Profile: o.profile, Log: stderr, Dist: env,
	}
	if err := opts.Validate(); err != nil {
		return usageError{err}
	}
	if o.gpus > 1 {
		if env.Distributed() {
			return usageError{fmt.Errorf("--gpus %d inside a job (%s): leave --gpus out", o.gpus, env)}
		}
		err := dist.Launch{Ranks: o.gpus, Args: o.args(), Stdout: stdout, Stderr: stderr}.Run(ctx)
		if usageFailure(err) {
			return usageError{err}
		}
		return err
	}
	res, err := train.Bench(ctx, opts)
	if len(res.Runs) > 0 && env.Rank == 0 {
		fmt.Fprint(stdout, res.Table())
	}
	return err
}

// args is the command line of one rank of a --gpus bench: these options
// less --gpus.
func (o *benchOptions) args() []string {
	a := []string{"bench", "--preset", o.preset, "--backend", o.backend, "--batch", strconv.Itoa(o.batch),
		"--accum", strconv.Itoa(o.accum), "--steps", strconv.Itoa(o.steps), "--warmup", strconv.Itoa(o.warmup),
		"--checkpointing", o.checkpointing, "--resolution", strconv.Itoa(o.resolution), "--caption", strconv.Itoa(o.caption)}
	if o.profile {
		a = append(a, "--profile")
	}
	return a
}
