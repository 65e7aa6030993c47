package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/train"
)

// trainOptions are the flags of `newbie-train train` (and of the root
// command, which trains when given --config).
type trainOptions struct {
	config      string
	resume      string
	fresh       bool
	sets        []string
	printConfig bool
	gpus        int
}

func (o *trainOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVarP(&o.config, "config", "c", "", "the run's lora.yaml")
	f.StringVar(&o.resume, "resume", "", `continue a run: "latest" (the newest complete state in save.output) or a state folder`)
	f.BoolVar(&o.fresh, "fresh", false, "start a new run in a save.output that holds another run, moving that run's files to save.output/old-runs/ (never deleting them)")
	addSetFlag(cmd, &o.sets)
	f.BoolVar(&o.printConfig, "print-config", false, "print the effective config (defaults and --set filled in) and exit")
	f.IntVar(&o.gpus, "gpus", 1, "train data-parallel on this many GPUs of this machine: one process per GPU, rank 0 logging and saving (several machines: start it with torchrun, see README; with device: cpu, that many CPU processes)")
}

// usageFailure reports whether a launched job failed on a usage or config
// error of its first failed rank or of rank 0.
func usageFailure(err error) bool {
	var failed *dist.RankExitError
	return errors.As(err, &failed) && (failed.Code == exitUsage || len(failed.Codes) > 0 && failed.Codes[0] == exitUsage)
}

// args is the command line of one rank of a --gpus job: these options
// less --gpus.
func (o *trainOptions) args() []string {
	a := []string{"train", "--config", o.config}
	if o.resume != "" {
		a = append(a, "--resume", o.resume)
	}
	if o.fresh {
		a = append(a, "--fresh")
	}
	for _, s := range o.sets {
		a = append(a, "--set", s)
	}
	return a
}

// addSetFlag adds the repeatable --set key=value flag.
func addSetFlag(cmd *cobra.Command, sets *[]string) {
	cmd.Flags().StringArrayVar(sets, "set", nil, "override a config key, checked like the file's own (repeatable): --set train.learning_rate=5e-4 --set data.folders[0].repeats=4")
}

func newTrainCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &trainOptions{}
	cmd := &cobra.Command{
		Use:   "train --config lora.yaml",
		Short: "Train a LoRA (the default command)",
		Long: `train reads the config, scans and validates the dataset, fills the encode
cache, and trains, logging progress and saving the LoRA and a resumable state
every save.every steps and at the end. Ctrl-C (or SIGTERM) saves a resumable
state and exits with code 130; --resume latest continues it. The output
folder belongs to one run: a second process on it is refused, and so is a
new run on a folder that holds another run's results (--fresh moves that
run aside).

--gpus N trains on N GPUs of this machine, one process each; under torchrun
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set) each process is
one rank of the job. Every step then takes N × gradient_accumulation
batches, and a run resumes on any number of GPUs.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTrain(cmd.Context(), o, stdout, stderr) },
	}
	o.addFlags(cmd)
	return cmd
}

// loadConfig reads and checks a config with its --set overrides; its
// problems are usage errors.
func loadConfig(path string, sets []string) (*configs.Config, error) {
	if path == "" {
		return nil, usageError{errors.New("no --config given")}
	}
	cfg, err := configs.Load(path, sets...)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

func runTrain(ctx context.Context, o *trainOptions, stdout, stderr io.Writer) error {
	if o.fresh && o.resume != "" {
		return usageError{errors.New("--fresh starts a new run and --resume continues one: give one of them")}
	}
	cfg, err := loadConfig(o.config, o.sets)
	if err != nil {
		return err
	}
	if o.printConfig {
		fmt.Fprint(stdout, cfg.String())
		return nil
	}
	if err := cfg.CheckPaths(); err != nil {
		return usageError{err}
	}
	env, err := dist.ParseEnv(os.Getenv)
	if err != nil {
		return usageError{fmt.Errorf("the data-parallel environment: %w", err)}
	}
	switch {
	case o.gpus < 1:
		return usageError{fmt.Errorf("--gpus %d: want 1 or more", o.gpus)}
	case o.gpus > 1 && env.Distributed():
		return usageError{fmt.Errorf("--gpus %d inside a job (%s): a launcher (torchrun) started this process already; leave --gpus out", o.gpus, env)}
	case o.gpus > 1:
		return launchRanks(ctx, o, stdout, stderr)
	}
	_, err = train.Run(ctx, cfg, train.Options{Resume: o.resume, Fresh: o.fresh, Log: stderr, Bar: isTerminal(stderr), Stage: stageFrom(ctx), Dist: env})
	again := "newbie-train --config " + o.config + setArgs(o.sets) + " --resume latest"
	if env.Distributed() {
		again = "the job's command with --resume latest (on any number of GPUs)"
	}
	return resumeHint(err, again)
}

// launchRanks runs a --gpus job: one process of this program per GPU, each
// training its rank of the job (dist.Launch). A rank that fails stops the
// others; the job's exit code is then 2 when that rank's error or rank 0's
// was a usage or config error (nothing ran: rank 0 checks the output folder
// and the state, and the others fail when it aborts), else 1. Ctrl-C
// reaches every rank: rank 0 saves a resumable state and says so, and the
// job exits 130.
func launchRanks(ctx context.Context, o *trainOptions, stdout, stderr io.Writer) error {
	err := dist.Launch{Ranks: o.gpus, Args: o.args(), Stdout: stdout, Stderr: stderr}.Run(ctx)
	if usageFailure(err) {
		return usageError{err}
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: all %d ranks stopped (rank 0 says above what it saved)", errInterrupted, o.gpus)
	}
	return err
}

// setArgs renders --set flags back for a command line to copy.
func setArgs(sets []string) string {
	var b strings.Builder
	for _, s := range sets {
		fmt.Fprintf(&b, " --set %q", s)
	}
	return b.String()
}

// resumeHint adds to an interruption that saved a state the command that
// continues it.
func resumeHint(err error, command string) error {
	var ie *train.InterruptedError
	if errors.As(err, &ie) && ie.State != "" {
		return fmt.Errorf("%w; continue with: %s", err, command)
	}
	return err
}

// isTerminal reports whether w is a terminal, where a progress bar can be
// redrawn in place (not a file or a pipe, where it would be noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
