package golden

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// FrozenDType maps a parity precision (fp64, fp32, bf16) to the dtype a
// frozen model — an encoder — stores its weights and computes in.
func FrozenDType(precision string) (kernels.DType, error) {
	switch precision {
	case "fp64":
		return kernels.F64, nil
	case "fp32":
		return kernels.F32, nil
	case "bf16":
		return kernels.BF16, nil
	}
	return 0, fmt.Errorf("golden: precision %q: want fp64, fp32 or bf16", precision)
}

// Tolerances are a reference's bounds on the relative error, per precision.
type Tolerances struct{ F64, F32, BF16 float64 }

// For returns the bound for computing in dtype d (BF16's for anything
// narrower than float32).
func (t Tolerances) For(d kernels.DType) float64 {
	switch d {
	case kernels.F64:
		return t.F64
	case kernels.F32:
		return t.F32
	}
	return t.BF16
}
