package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/newbie"
)

// newDevCmd is the hidden group of commands for development and the device
// scripts; they are not part of the program's documented interface.
func newDevCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:    "dev",
		Short:  "Development tools for tests and device runs",
		Hidden: true,
		Args:   noArgs,
	}
	cmd.AddCommand(newWriteRandomModelCmd(stdout, stderr), newEncodePhasesCmd(stdout, stderr), newWriteDatasetCmd(stdout))
	return cmd
}

// newWriteDatasetCmd is `newbie-train dev write-dataset`: the demo's
// generated images and XML captions at any size and count, for device runs
// of the whole job.
func newWriteDatasetCmd(stdout io.Writer) *cobra.Command {
	var out string
	var n, side int
	cmd := &cobra.Command{
		Use:   "write-dataset --out DIR [--images N] [--resolution SIDE]",
		Short: "Write the demo's generated images and captions at any size",
		Args:  noArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if out == "" || n < 1 || side < 8 {
				return usageError{fmt.Errorf("write-dataset needs --out DIR, --images ≥ 1 and --resolution ≥ 8 (got %q, %d, %d)", out, n, side)}
			}
			if err := data.WriteDemoDataset(out, n, side); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: %d images of %d² with XML captions\n", out, n, side)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "folder to write (required)")
	f.IntVar(&n, "images", 32, "images to write")
	f.IntVar(&side, "resolution", 1024, "image side in pixels")
	return cmd
}

// writeRandomOptions are the flags of `newbie-train dev write-random-model`.
type writeRandomOptions struct {
	layout, size, out string
	seed              uint64
}

func newWriteRandomModelCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &writeRandomOptions{}
	cmd := &cobra.Command{
		Use:   "write-random-model --layout hf|diffusers --size tiny|full --out DIR",
		Short: "Write a NewBie-image-Exp0.1 model folder with random weights",
		Long: `write-random-model writes a complete model folder — transformer, FLUX VAE,
Gemma 3 and Jina CLIP v2 with generated tokenizers, every config.json — with
random weights in the real file layouts: the official Hugging Face
repository's (hf) or the diffusers port's. tiny is the demo-sized model
(under 5 MB), full the real architecture (about 16 GB, bf16, written in
parallel). It prints every file and the total size.`,
		Args: noArgs,
		RunE: func(_ *cobra.Command, _ []string) error { return runWriteRandom(o, stdout, stderr) },
	}
	f := cmd.Flags()
	f.StringVar(&o.layout, "layout", "hf", "folder layout: hf or diffusers")
	f.StringVar(&o.size, "size", "tiny", "tiny or full")
	f.StringVar(&o.out, "out", "", "folder to write (required)")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the weights")
	return cmd
}

func runWriteRandom(o *writeRandomOptions, stdout, stderr io.Writer) error {
	if o.out == "" {
		return usageError{fmt.Errorf("write-random-model needs --out DIR")}
	}
	layout, size := newbie.Layout(o.layout), newbie.Size(o.size)
	if layout != newbie.LayoutHF && layout != newbie.LayoutDiffusers {
		return usageError{fmt.Errorf("--layout %q: want hf or diffusers", o.layout)}
	}
	if size != newbie.SizeTiny && size != newbie.SizeFull {
		return usageError{fmt.Errorf("--size %q: want tiny or full", o.size)}
	}
	rep, err := newbie.WriteRandom(o.out, newbie.RandomOptions{Layout: layout, Size: size, Seed: o.seed, Log: stderr})
	if err != nil {
		return err
	}
	for _, f := range rep.Files {
		fmt.Fprintf(stdout, "%14d  %s\n", f.Bytes, f.Path)
	}
	fmt.Fprintf(stdout, "%s: %d files, %d bytes (%.2f GiB) in %.1fs\n", rep.Dir, len(rep.Files), rep.Bytes, float64(rep.Bytes)/(1<<30), rep.Elapsed.Seconds())
	return nil
}

// encodePhasesOptions are the flags of `newbie-train dev encode-phases`.
type encodePhasesOptions struct {
	model, backend                   string
	gpu, images, resolution          int
	textBatch, imageBatch            int
	budgetGiB                        float64
	textDType, vaeDType, vaeAutocast string
}

func newEncodePhasesCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &encodePhasesOptions{}
	cmd := &cobra.Command{
		Use:   "encode-phases --model DIR",
		Short: "Time the cache step's encoder phases on generated images and captions",
		Long: `encode-phases discovers the model folder, then runs the cache step's phases
one after the other on generated images and XML captions — the VAE, Gemma 3
(behind NewBie's system prompt), Jina CLIP — each loaded, run and freed
before the next, and prints each phase's load and encode time, its memory
estimate (made before it started) and its measured peak.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runEncodePhases(cmd.Context(), o, stdout, stderr) },
	}
	f := cmd.Flags()
	f.StringVar(&o.model, "model", "", "model folder (required)")
	f.StringVar(&o.backend, "backend", "cuda", "backend: cuda or cpu")
	f.IntVar(&o.gpu, "gpu", 0, "GPU index")
	f.IntVar(&o.images, "images", 32, "images and captions to encode")
	f.IntVar(&o.resolution, "resolution", 1024, "image side in pixels")
	f.IntVar(&o.textBatch, "text-batch", 8, "texts per forward pass")
	f.IntVar(&o.imageBatch, "image-batch", 1, "images per forward pass")
	f.Float64Var(&o.budgetGiB, "budget-gib", 0, "refuse phases above this many GiB (0: the device's free memory)")
	f.StringVar(&o.textDType, "text-dtype", "bf16", "text encoders' dtype: bf16, f32")
	f.StringVar(&o.vaeDType, "vae-dtype", "f32", "VAE weights' dtype: f32, bf16")
	f.StringVar(&o.vaeAutocast, "vae-autocast", "bf16", "VAE compute dtype: bf16, f32 (off)")
	return cmd
}

// dtypeFlag parses a dtype flag ("bf16", "f32", …: kernels.ParseDType's
// names in any case).
func dtypeFlag(name, v string) (kernels.DType, error) {
	d, err := kernels.ParseDType(strings.ToUpper(v))
	if err != nil || !d.IsFloat() {
		return 0, usageError{fmt.Errorf("--%s %q: want bf16, f32 or f64", name, v)}
	}
	return d, nil
}

func runEncodePhases(ctx context.Context, o *encodePhasesOptions, stdout, stderr io.Writer) error {
	if o.model == "" {
		return usageError{fmt.Errorf("encode-phases needs --model DIR")}
	}
	if o.images < 1 || o.resolution < 8 || o.resolution%8 != 0 {
		return usageError{fmt.Errorf("--images %d and --resolution %d: want at least one image and a side that is a multiple of 8", o.images, o.resolution)}
	}
	var opts newbie.Options
	var err error
	if opts.TextDType, err = dtypeFlag("text-dtype", o.textDType); err != nil {
		return err
	}
	if opts.VAEDType, err = dtypeFlag("vae-dtype", o.vaeDType); err != nil {
		return err
	}
	if opts.VAEAutocast, err = dtypeFlag("vae-autocast", o.vaeAutocast); err != nil {
		return err
	}
	opts.TextBatch, opts.ImageBatch, opts.Log = o.textBatch, o.imageBatch, stderr
	opts.Budget = int64(o.budgetGiB * (1 << 30))
	m, err := newbie.Discover(o.model, newbie.Sources{})
	if err != nil {
		return err
	}
	be, err := kernels.Open(o.backend, o.gpu)
	if err != nil {
		return err
	}
	phases, trunc, err := newbie.EncodePhases(ctx, ag.New(be), m, opts, o.images, o.resolution)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s, %s: %d images of %d² and their captions\n", be.Name(), o.model, o.images, o.resolution)
	if err := newbie.WritePhaseTable(stdout, phases); err != nil {
		return err
	}
	for _, t := range trunc {
		if w := t.Warning(); w != "" {
			fmt.Fprintln(stdout, "warning:", w)
		}
	}
	return nil
}
