package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// mergeOptions are the flags of `newbie-train merge`.
type mergeOptions struct {
	weights, lora, out string
	dtype              string
	preset             string
}

func newMergeCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &mergeOptions{}
	cmd := &cobra.Command{
		Use:   "merge --weights W --lora L --out OUT",
		Short: "Bake a LoRA into base weights",
		Long: `merge adds a LoRA's update, (alpha/rank)·B·A, to every weight it adapts and
writes a complete model: one safetensors file with upstream key names and
the architecture in its metadata, written atomically. The base may be in any
layout (upstream, ComfyUI, diffusers, sharded) and the LoRA in any format.
The sum is computed on the host in float64 and rounded once to --dtype
(default: each tensor's dtype in the base). A LoRA naming layers the base
does not have, or whose shapes differ from the base's, is refused with every
such layer named.`,
		Args: noArgs,
		RunE: func(_ *cobra.Command, _ []string) error { return runMerge(o, stdout, stderr) },
	}
	f := cmd.Flags()
	f.StringVar(&o.weights, "weights", "", "base weights: a file, a sharded index or a diffusers folder")
	f.StringVar(&o.lora, "lora", "", "the LoRA: a PEFT folder, a ComfyUI or a kohya file")
	f.StringVar(&o.out, "out", "", "the merged safetensors file to write")
	f.StringVar(&o.dtype, "dtype", "", "dtype of the merged weights: bf16 or f32 (default: as in the base)")
	f.StringVar(&o.preset, "preset", "", "architecture when the base has no config metadata (newbie-exp0.1, lumina2, tiny); inferred from the shapes when omitted")
	return cmd
}

func runMerge(o *mergeOptions, stdout, stderr io.Writer) error {
	if o.weights == "" || o.lora == "" || o.out == "" {
		return usageError{fmt.Errorf("merge needs --weights, --lora and --out")}
	}
	var outDT safetensors.DType
	if o.dtype != "" {
		dt, err := parseTensorDType(o.dtype, "bf16", "f32")
		if err != nil {
			return err
		}
		outDT = dt
	}
	if o.preset != "" {
		if _, err := nextdit.Preset(o.preset); err != nil {
			return usageError{err}
		}
	}
	if same, _ := samePath(o.out, o.weights); same {
		return usageError{fmt.Errorf("merge: --out %s would overwrite the base weights", o.out)}
	}
	w, err := checkpoints.OpenWeights(o.weights)
	if err != nil {
		return err
	}
	defer w.Close()
	cfg, err := nextdit.ConfigFor(w, o.preset)
	if err != nil {
		return err
	}
	if err := nextdit.CheckKeys(w, cfg); err != nil {
		if ke, ok := nextdit.IsKeyError(err); ok {
			ke.Path = o.weights
		}
		return fmt.Errorf("merge: the base is not a whole model: %w", err)
	}
	l, format, err := checkpoints.ReadLoRA(o.lora)
	if err != nil {
		return err
	}
	if err := lora.CheckBase(l, w); err != nil {
		return fmt.Errorf("merge: %s: %w", o.lora, err)
	}
	if h := l.Meta[checkpoints.MetaBaseModelHash]; h != "" {
		if st, err := os.Stat(o.weights); err == nil && !st.IsDir() {
			if got, err := checkpoints.FileSHA256(o.weights); err == nil && got != h {
				fmt.Fprintf(stderr, "newbie-train: warning: the LoRA was trained on base %s, but %s hashes to %s\n", h, o.weights, got)
			}
		}
	}

	ts, err := lora.MergedTensors(w, cfg, l, outDT)
	if err != nil {
		return err
	}
	meta := map[string]string{}
	for k, v := range w.Metadata() {
		meta[k] = v
	}
	meta["format"] = "pt"
	meta["config"] = cfg.JSON()
	meta["merged_lora"] = filepath.Base(filepath.Clean(o.lora))
	meta["merged_lora_format"] = string(format)
	meta["merged_lora_scale"] = fmt.Sprint(l.Alpha / float64(l.Rank))
	if err := safetensors.Write(o.out, ts, meta); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "merged %d layers of %s LoRA %s (rank %d, alpha %g) into %s, wrote %s\n", len(l.Layers), format, o.lora, l.Rank, l.Alpha, o.weights, o.out)
	return nil
}

// samePath reports whether two paths name the same existing file.
func samePath(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}
