package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/train"

	// The CPU backend is always built in; the CUDA backend registers
	// itself too and is chosen by the config's device.
	_ "github.com/newbie-train/newbie-train/kernels/cpu"
	_ "github.com/newbie-train/newbie-train/kernels/cuda"
)

// Exit codes (README.md lists the same): 0 success, 1 a failure while
// running (a crash included: a panic is reported as one), 2 a usage or
// config error (nothing was run), 130 a signal (Ctrl-C, SIGTERM) ended the
// command (a training run saves a resumable state first, once training has
// begun).
const (
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// usageError marks errors in how the program was called.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// errInterrupted is returned by commands stopped by Ctrl-C or SIGTERM after
// they saved what they had.
var errInterrupted = errors.New("interrupted")

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		// A bug must not exit with Go's panic status 2, which reads as
		// "usage error, nothing ran".
		if p := recover(); p != nil {
			fmt.Fprintf(stderr, "newbie-train: internal error (a bug: please report it with this trace): %v\n%s", p, debug.Stack())
			code = exitFailure
		}
	}()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "newbie-train:", err)
	return exitCode(ctx, err)
}

// exitCode maps a command's error to the exit code: 130 when an interrupt
// stopped it, 2 for usage and config errors found before anything ran —
// even when a signal came as well (a data-parallel rank that found the
// error is stopped by the launcher once another rank gives up over it, and
// the job must still exit 2) —, 130 for any other error under a signal
// (whatever the cancellation surfaced as), else 1.
func exitCode(ctx context.Context, err error) int {
	switch {
	case errors.Is(err, errInterrupted) || errors.Is(err, train.ErrInterrupted):
		return exitInterrupted
	case (errors.As(err, new(usageError)) || errors.As(err, new(*train.ConfigError))) && !errors.Is(err, context.Canceled):
		return exitUsage
	case ctx.Err() != nil:
		return exitInterrupted
	}
	return exitFailure
}

// newRootCmd builds the command tree. The root command with --config is
// the train command.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	trainOpts := &trainOptions{}
	root := &cobra.Command{
		Use:           "newbie-train --config lora.yaml",
		Short:         "Fine-tune NewBie-image-Exp0.1 with LoRA",
		Long:          "newbie-train trains a LoRA for the NewBie-image-Exp0.1 anime model (a 3.5B Next-DiT) on your own images and captions.\nWith --config it trains (the same as `newbie-train train`).",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if trainOpts.config == "" {
				return usageError{errors.New("no --config given: run `newbie-train --config lora.yaml`, or `newbie-train --help`")}
			}
			return runTrain(cmd.Context(), trainOpts, stdout, stderr)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	trainOpts.addFlags(root)
	root.AddCommand(
		newTrainCmd(stdout, stderr),
		newCacheCmd(stderr),
		newDemoCmd(stderr),
		newParityCmd(stdout),
		newInspectCmd(stdout),
		newExportCmd(stdout),
		newMergeCmd(stdout, stderr),
		newTokenizeCmd(stdout),
		newSampleCmd(stdout, stderr),
		newBenchCmd(stdout, stderr),
		newVersionCmd(stdout),
		newDevCmd(stdout, stderr),
	)
	return root
}

// noArgs refuses positional arguments as a usage error (exit 2), as every
// other mistake in how the program is called.
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return usageError{err}
	}
	return nil
}
