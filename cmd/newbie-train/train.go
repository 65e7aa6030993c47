package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/train"
)

// trainOptions are the flags of `newbie-train train` (and of the root
// command, which trains when given --config).
type trainOptions struct {
	config      string
	resume      string
	printConfig bool
}

func (o *trainOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVarP(&o.config, "config", "c", "", "the run's lora.yaml")
	f.StringVar(&o.resume, "resume", "", `continue a run: "latest" (the newest complete state in save.output) or a state folder`)
	f.BoolVar(&o.printConfig, "print-config", false, "print the effective config (defaults filled in) and exit")
}

func newTrainCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &trainOptions{}
	cmd := &cobra.Command{
		Use:   "train --config lora.yaml",
		Short: "Train a LoRA (the default command)",
		Long: `train reads the config, scans and validates the dataset, fills the encode
cache, and trains, logging progress and saving the LoRA and a resumable state
every save.every steps and at the end. Ctrl-C (or SIGTERM) saves a resumable
state and exits with code 130; --resume latest continues it.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTrain(cmd.Context(), o, stdout, stderr) },
	}
	o.addFlags(cmd)
	return cmd
}

// loadConfig reads and checks a config; its problems are usage errors.
func loadConfig(path string) (*configs.Config, error) {
	if path == "" {
		return nil, usageError{errors.New("no --config given")}
	}
	cfg, err := configs.Load(path)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

func runTrain(ctx context.Context, o *trainOptions, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(o.config)
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
	_, err = train.Run(ctx, cfg, train.Options{Resume: o.resume, Log: stderr, Bar: isTerminal(stderr)})
	if errors.Is(err, train.ErrInterrupted) {
		return fmt.Errorf("%w: continue with --resume latest", errInterrupted)
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
