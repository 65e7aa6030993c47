package optim

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// Precision is the dtype the forward and backward compute in. Masters,
// moments and gradients stay fp32 in every mode.
type Precision string

// The precision modes.
const (
	// Auto picks by device: bf16 on GPUs of compute capability ≥ 8 (Ampere
	// and later), fp16 on older GPUs, fp32 without a GPU.
	Auto Precision = "auto"
	// BF16 keeps fp32's exponent range, so it needs no loss scaling.
	BF16 Precision = "bf16"
	// FP16 has a 5-bit exponent: small gradients underflow without a loss
	// scaler, which is on (dynamic) by default.
	FP16 Precision = "fp16"
	// FP32 computes everything in float32.
	FP32 Precision = "fp32"
)

// ParsePrecision reads a precision as a config spells it.
func ParsePrecision(s string) (Precision, error) {
	switch p := Precision(s); p {
	case Auto, BF16, FP16, FP32:
		return p, nil
	}
	return "", fmt.Errorf("unknown precision %q (want auto, bf16, fp16 or fp32)", s)
}

// Capability is a GPU's compute capability; the zero value means no GPU (the
// CPU backend). The backend does not report it yet, so the caller passes it.
type Capability struct{ Major, Minor int }

// String formats the capability as "8.0", or "none".
func (c Capability) String() string {
	if c == (Capability{}) {
		return "none"
	}
	return fmt.Sprintf("%d.%d", c.Major, c.Minor)
}

// Resolve turns Auto into a concrete mode for the device and checks that an
// explicit mode can run there: bf16 needs compute capability ≥ 8 on a GPU
// (the CPU backend emulates it, so no GPU is fine).
func (p Precision) Resolve(c Capability) (Precision, error) {
	gpu := c != (Capability{})
	switch p {
	case Auto:
		switch {
		case !gpu:
			return FP32, nil
		case c.Major >= 8:
			return BF16, nil
		default:
			return FP16, nil
		}
	case BF16:
		if gpu && c.Major < 8 {
			return "", fmt.Errorf("precision bf16 needs compute capability ≥ 8.0, this GPU has %v: use fp16 or fp32", c)
		}
		return p, nil
	case FP16, FP32:
		return p, nil
	}
	return "", fmt.Errorf("unknown precision %q (want auto, bf16, fp16 or fp32)", string(p))
}

// ComputeDType is the dtype of the working copies and of autocast's matrix
// operands in this mode (Auto must be resolved first; it gives 0).
func (p Precision) ComputeDType() kernels.DType {
	switch p {
	case BF16:
		return kernels.BF16
	case FP16:
		return kernels.F16
	case FP32:
		return kernels.F32
	}
	return 0
}

// DefaultScalerMode is the loss scaling a mode gets unless configured:
// dynamic for fp16, off for bf16 and fp32 (the non-finite check and skip run
// in every mode regardless).
func (p Precision) DefaultScalerMode() ScalerMode {
	if p == FP16 {
		return ScaleDynamic
	}
	return ScaleOff
}
