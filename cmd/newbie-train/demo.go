package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/train"
)

// demoOptions are the flags of `newbie-train demo`.
type demoOptions struct {
	dir     string
	steps   int
	images  int
	sets    []string
	resume  string
	standIn bool
}

func newDemoCmd(stderr io.Writer) *cobra.Command {
	o := &demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Train the tiny model on a generated dataset, on the CPU (about a minute)",
		Long: `demo writes the demo config (demo.yaml, the one built into the program as
configs/demo.yaml), a small generated dataset (PNG images with NewBie XML
captions) and a tiny NewBie model folder (demo-model/: the official layout,
with a tiny Next-DiT, a tiny FLUX VAE, Gemma 3 and Jina CLIP v2 of the real
architectures at tiny widths and generated tokenizers in the real file formats,
every weight random from a fixed seed) into --dir, then trains on the CPU
backend through every real code path: the VAE encodes the images, Gemma 3 and
Jina CLIP the captions, one after the other, and the previews are sampled and
decoded by the VAE. Random weights make noise of the previews; --stand-in trains
on the deterministic stand-in encoders instead, whose previews show the
latents' block colours. The loss falls and LoRA files appear in <dir>/demo-out.
An existing <dir>/demo.yaml or <dir>/demo-model is used as it is.

Each demo starts a new run: a previous demo run in <dir>/demo-out is moved
to <dir>/demo-out/old-runs/ (as --fresh does for train). --resume latest
continues an interrupted demo instead; give it the same --steps, --images
and --set flags.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd.Context(), o, stderr) },
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "newbie-demo", "folder for the demo's config, data and outputs")
	f.IntVar(&o.steps, "steps", 0, "override train.max_steps (0 keeps the demo's; the warmup shrinks to a fifth of a shorter run)")
	f.IntVar(&o.images, "images", 24, "number of generated images")
	f.StringVar(&o.resume, "resume", "", `continue an interrupted demo: "latest" or a state folder`)
	f.BoolVar(&o.standIn, "stand-in", false, "train on the stand-in encoders (not Gemma 3, Jina CLIP and the FLUX VAE), for legible previews")
	addSetFlag(cmd, &o.sets)
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
	sets := o.sets
	if o.standIn {
		sets = append([]string{"model.path="}, sets...)
	}
	if o.steps > 0 {
		// --steps is shorthand for overrides, so the run's config is the
		// file plus --set flags (what a resume compares against).
		base, err := configs.Load(cfgPath)
		if err != nil {
			return usageError{err}
		}
		sets = append([]string{"train.max_steps=" + strconv.Itoa(o.steps),
			"train.warmup_steps=" + strconv.Itoa(min(base.Train.WarmupSteps, o.steps/5))}, sets...)
	}
	cfg, err := configs.Load(cfgPath, sets...)
	if err != nil {
		return usageError{err}
	}
	if len(cfg.Data.Folders) != 1 {
		return usageError{fmt.Errorf("%s: the demo expects one data folder", cfgPath)}
	}
	if err := data.WriteDemoDataset(cfg.Data.Folders[0].Path, o.images, cfg.Data.Resolution); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "demo: config %s, %d generated images in %s\n", cfgPath, o.images, cfg.Data.Folders[0].Path)
	if p := cfg.Model.Path; p != "" {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			rep, err := newbie.WriteDemoModel(p)
			if err != nil {
				return fmt.Errorf("demo: writing the tiny model folder: %w", err)
			}
			fmt.Fprintf(stderr, "demo: a tiny NewBie model folder with random weights (%d files, %d KiB) in %s\n", len(rep.Files), rep.Bytes>>10, p)
		}
	}
	_, err = train.Run(ctx, cfg, train.Options{Resume: o.resume, Fresh: o.resume == "", Log: stderr, Bar: isTerminal(stderr), Stage: stageFrom(ctx)})
	again := fmt.Sprintf("newbie-train demo --dir %s --images %d", o.dir, o.images)
	if o.standIn {
		again += " --stand-in"
	}
	if o.steps > 0 {
		again += fmt.Sprintf(" --steps %d", o.steps)
	}
	return resumeHint(err, again+setArgs(o.sets)+" --resume latest")
}
