package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/train"
)

// demoOptions are the flags of `newbie-train demo`.
type demoOptions struct {
	dir    string
	steps  int
	images int
}

func newDemoCmd(stderr io.Writer) *cobra.Command {
	o := &demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Train the tiny model on a generated dataset, on the CPU (about a minute)",
		Long: `demo writes configs/demo.yaml and a small generated dataset (PNG images with
NewBie XML captions) into --dir, then trains the tiny Next-DiT on the CPU
backend with stand-in encoders (not the real FLUX VAE, Gemma 3 and Jina CLIP).
The loss falls and LoRA files appear in <dir>/demo-out.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd.Context(), o, stderr) },
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "newbie-demo", "folder for the demo's config, data and outputs")
	f.IntVar(&o.steps, "steps", 0, "override train.max_steps (0 keeps the demo's)")
	f.IntVar(&o.images, "images", 24, "number of generated images")
	return cmd
}

func runDemo(ctx context.Context, o *demoOptions, stderr io.Writer) error {
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	cfgPath := filepath.Join(o.dir, "demo.yaml")
	if _, err := os.Stat(cfgPath); os.IsNotExist(err) {
		if _, err := configs.WriteExample("demo.yaml", o.dir); err != nil {
			return err
		}
	}
	cfg, err := configs.Load(cfgPath)
	if err != nil {
		return usageError{err}
	}
	if len(cfg.Data.Folders) != 1 {
		return fmt.Errorf("%s: the demo expects one data folder", cfgPath)
	}
	if err := data.WriteDemoDataset(cfg.Data.Folders[0].Path, o.images, cfg.Data.Resolution); err != nil {
		return err
	}
	if o.steps > 0 {
		cfg.Train.MaxSteps = o.steps
		// A shortened demo keeps its warmup shorter than the run.
		cfg.Train.WarmupSteps = min(cfg.Train.WarmupSteps, o.steps/5)
	}
	fmt.Fprintf(stderr, "demo: config %s, %d generated images in %s\n", cfgPath, o.images, cfg.Data.Folders[0].Path)
	_, err = train.Run(ctx, cfg, train.Options{Log: stderr, Bar: isTerminal(stderr)})
	if err == train.ErrInterrupted {
		return fmt.Errorf("%w: continue with newbie-train --config %s --resume latest", errInterrupted, cfgPath)
	}
	return err
}
