package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	// The CPU backend is always built in; the CUDA backend registers
	// itself too and is chosen by the config's device.
	_ "github.com/newbie-train/newbie-train/kernels/cpu"
	_ "github.com/newbie-train/newbie-train/kernels/cuda"
)

// Exit codes: 0 success, 1 a failure while running, 2 a usage or config
// error (nothing was run), 130 interrupted (a resumable state was saved).
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
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errInterrupted):
		fmt.Fprintln(stderr, "newbie-train:", err)
		return exitInterrupted
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, "newbie-train:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "newbie-train:", err)
		return exitFailure
	}
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
