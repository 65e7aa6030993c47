package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
)

// runSamplingParity is parity --sampling: upstream's reference sampling runs
// (../shared/golden/sampler/tiny.sample.golden.safetensors: midpoint, Euler
// and DPM-Solver++ over forward_with_cfg) replayed through our sampler,
// every trajectory point and final sample compared; exit 1 beyond the
// golden README's tolerance (fp64 1e-6, fp32 1e-5).
func runSamplingParity(o *parityOptions, stdout io.Writer) error {
	if o.weights == "" || o.golden != "" || o.trajectory != "" || o.lora != "" {
		return usageError{errors.New("parity --sampling G needs --weights and takes neither --golden, --trajectory nor --lora")}
	}
	dt, ok := map[string]kernels.DType{"fp64": kernels.F64, "fp32": kernels.F32}[o.precision]
	if !ok {
		return usageError{fmt.Errorf("--precision %q: --sampling replays in fp64 or fp32", o.precision)}
	}
	b, err := kernels.Open(o.backend, 0)
	if err != nil {
		return err
	}
	rs, err := pipeline.ReplayGolden(context.Background(), b, o.weights, o.sampling, dt)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "sampling parity on %s in %s: %s\n", b.Name(), o.precision, o.sampling)
	if err := rs.Write(stdout); err != nil {
		return err
	}
	if err := rs.Err(); err != nil {
		return fmt.Errorf("sampling parity failed in %s: %w", o.precision, err)
	}
	fmt.Fprintln(stdout, "PASS")
	return nil
}
