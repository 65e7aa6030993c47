package safetensors

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// DType is a tensor element type, spelled as the safetensors header spells
// it. It is a string rather than kernels.DType because files carry types the
// engine never computes in (integer token ids, boolean masks, F8 weights)
// and those must still be listed and reported by name.
type DType string

// The dtypes this package reads, converts and writes.
const (
	F64  DType = "F64"
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U8   DType = "U8"
	BOOL DType = "BOOL"
	U16  DType = "U16"
	U32  DType = "U32"
	U64  DType = "U64"
)

// Size is the byte width of one element, or 0 for a dtype this package does
// not know (such a file is rejected at Open with the dtype's name).
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, BOOL:
		return 1
	}
	return 0
}

// Kernel maps d to the engine's dtype; ok is false for dtypes the engine does
// not store (callers then convert through Float32 or Float64).
func (d DType) Kernel() (kd kernels.DType, ok bool) {
	switch d {
	case F32:
		return kernels.F32, true
	case BF16:
		return kernels.BF16, true
	case F16:
		return kernels.F16, true
	case F64:
		return kernels.F64, true
	case I32:
		return kernels.I32, true
	}
	return 0, false
}

// FromKernel is the safetensors name of an engine dtype.
func FromKernel(d kernels.DType) (DType, error) {
	switch d {
	case kernels.F32:
		return F32, nil
	case kernels.BF16:
		return BF16, nil
	case kernels.F16:
		return F16, nil
	case kernels.F64:
		return F64, nil
	case kernels.I32:
		return I32, nil
	}
	return "", fmt.Errorf("safetensors: engine dtype %v has no safetensors name", d)
}
