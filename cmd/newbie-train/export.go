package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// exportOptions are the flags of `newbie-train export`.
type exportOptions struct {
	format string
	dtype  string
}

func newExportCmd(stdout io.Writer) *cobra.Command {
	o := &exportOptions{}
	cmd := &cobra.Command{
		Use:   "export IN OUT --format comfyui|peft|kohya",
		Short: "Convert a LoRA between the PEFT, ComfyUI and kohya formats",
		Long: `export reads a LoRA in any of the three formats (a PEFT folder with
adapter_model.safetensors and adapter_config.json, a ComfyUI/diffusion-pipe
file with diffusion_model.*.lora_A/lora_B + .alpha keys, or a kohya file with
lora_unet_*.lora_down/lora_up + .alpha) and writes it in --format: a folder
for peft, a .safetensors file otherwise. Rank, alpha, targets and metadata
(steps, base model hash, training config) are kept. The output is written
atomically.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("export takes IN and OUT, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error { return runExport(o, args[0], args[1], stdout) },
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "", "output format: comfyui, peft or kohya (required)")
	f.StringVar(&o.dtype, "dtype", "f32", "dtype of the written matrices: f32, bf16 or f16")
	return cmd
}

// parseTensorDType maps a --dtype flag to a file dtype, from the allowed
// set.
func parseTensorDType(s string, allowed ...string) (safetensors.DType, error) {
	for _, a := range allowed {
		if s == a {
			switch s {
			case "f32":
				return safetensors.F32, nil
			case "bf16":
				return safetensors.BF16, nil
			case "f16":
				return safetensors.F16, nil
			}
		}
	}
	return "", usageError{fmt.Errorf("--dtype %q: want %s", s, strings.Join(allowed, ", "))}
}

func runExport(o *exportOptions, in, out string, stdout io.Writer) error {
	if o.format == "" {
		return usageError{fmt.Errorf("export needs --format comfyui, peft or kohya")}
	}
	format, err := checkpoints.ParseFormat(o.format)
	if err != nil {
		return usageError{err}
	}
	dt, err := parseTensorDType(o.dtype, "f32", "bf16", "f16")
	if err != nil {
		return err
	}
	if filepath.Clean(in) == filepath.Clean(out) {
		return usageError{fmt.Errorf("export: IN and OUT are the same path %s", in)}
	}
	l, from, err := checkpoints.ReadLoRA(in)
	if err != nil {
		return err
	}
	if err := checkpoints.WriteLoRA(out, l, format, checkpoints.ExportOptions{DType: dt}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s LoRA %s from %s %s: %d layers, rank %d, alpha %g, %s\n", format, out, from, in, len(l.Layers), l.Rank, l.Alpha, dt)
	return nil
}
