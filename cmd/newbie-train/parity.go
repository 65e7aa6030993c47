package main

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/train"
)

// parityOptions are the flags of `newbie-train parity`.
type parityOptions struct {
	weights    string
	trajectory string
	backend    string
	precision  string
}

// parityTolerances are the golden README's limits per precision: step
// losses, then final LoRA tensors.
var parityTolerances = map[string][2]float64{
	"fp64": {1e-6, 1e-5},
	"fp32": {1e-5, 1e-4},
	"bf16": {2e-2, 5e-2},
}

func newParityCmd(stdout io.Writer) *cobra.Command {
	o := &parityOptions{}
	cmd := &cobra.Command{
		Use:   "parity --weights W --trajectory T",
		Short: "Check our model and training step against reference numbers",
		Long: `parity replays a recorded reference LoRA training run (--trajectory, e.g.
../shared/golden/nextdit/tiny.train.golden.safetensors) through the trainer's
own step — model, LoRA, loss, clipping, AdamW — and prints the relative error
of every step's loss and of the final LoRA tensors. It exits 1 when an error
is beyond the tolerance of the precision.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runParity(o, stdout) },
	}
	f := cmd.Flags()
	f.StringVar(&o.weights, "weights", "", "model weights (safetensors, upstream key names)")
	f.StringVar(&o.trajectory, "trajectory", "", "recorded training run to replay")
	f.StringVar(&o.backend, "backend", "cpu", "backend: cpu or cuda")
	f.StringVar(&o.precision, "precision", "fp64", "fp64, fp32 or bf16 (bf16 autocast over fp32 masters)")
	return cmd
}

func runParity(o *parityOptions, stdout io.Writer) error {
	if o.weights == "" || o.trajectory == "" {
		return usageError{errors.New("parity needs --weights and --trajectory")}
	}
	tol, ok := parityTolerances[o.precision]
	if !ok {
		return usageError{fmt.Errorf("--precision %q: want fp64, fp32 or bf16", o.precision)}
	}
	dt, autocast := kernels.F64, kernels.DType(0)
	switch o.precision {
	case "fp32":
		dt = kernels.F32
	case "bf16":
		dt, autocast = kernels.F32, kernels.BF16
	}
	b, err := kernels.Open(o.backend, 0)
	if err != nil {
		return err
	}
	rep, err := train.Replay(b, o.weights, o.trajectory, dt, autocast)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "replayed %d steps on %s in %s\n", len(rep.Losses), b.Name(), o.precision)
	fmt.Fprintf(stdout, "%5s %14s %14s %10s\n", "step", "loss", "reference", "rel. err")
	for i := range rep.Losses {
		fmt.Fprintf(stdout, "%5d %14.9f %14.9f %10.2e\n", i+1, rep.Losses[i], rep.RefLosses[i], relDiff(rep.Losses[i], rep.RefLosses[i]))
	}
	names := make([]string, 0, len(rep.FinalErr))
	for n := range rep.FinalErr {
		names = append(names, n)
	}
	sort.Strings(names)
	worst := ""
	for _, n := range names {
		if worst == "" || rep.FinalErr[n] > rep.FinalErr[worst] {
			worst = n
		}
	}
	fmt.Fprintf(stdout, "gradient norm before clipping: worst rel. err %.2e\n", rep.GradNormErr)
	fmt.Fprintf(stdout, "final LoRA: %d tensors, worst rel. err %.2e (%s)\n", len(names), rep.MaxFinalErr, worst)
	if !(rep.LossErr <= tol[0]) || !(rep.MaxFinalErr <= tol[1]) {
		return fmt.Errorf("parity failed in %s: loss error %.2e (limit %.0e), final LoRA error %.2e (limit %.0e)", o.precision, rep.LossErr, tol[0], rep.MaxFinalErr, tol[1])
	}
	fmt.Fprintf(stdout, "PASS (limits: loss %.0e, final LoRA %.0e)\n", tol[0], tol[1])
	return nil
}

func relDiff(a, b float64) float64 {
	if b == 0 {
		return a
	}
	d := (a - b) / b
	if d < 0 {
		return -d
	}
	return d
}
