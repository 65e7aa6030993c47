package kernels

import "fmt"

// DType is the element type of a buffer.
type DType uint8

// The element types a Backend stores. F64 exists for gradient checks and
// references; training runs in F32 with BF16 or F16 operands. F8E4M3 (OCP
// FP8 E4M3, "e4m3fn": no infinities, one NaN code per sign, largest finite
// 448) is a storage type for frozen weights: ops read it like any float,
// and a value stored to it rounds to nearest even and saturates at ±448
// (see F8E4M3FromF32); products take it only after a conversion.
const (
	F32 DType = iota + 1
	BF16
	F16
	F64
	I32
	F8E4M3
)

// Size is the number of bytes one element of d occupies.
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case BF16, F16:
		return 2
	case F64:
		return 8
	case F8E4M3:
		return 1
	}
	return 0
}

// IsFloat reports whether d holds floating-point values.
func (d DType) IsFloat() bool { return d == F32 || d == BF16 || d == F16 || d == F64 || d == F8E4M3 }

// String returns the dtype's name as safetensors spells it.
func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	case F16:
		return "F16"
	case F64:
		return "F64"
	case I32:
		return "I32"
	case F8E4M3:
		return "F8_E4M3"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// ParseDType reads a dtype name as written by String (case-sensitive,
// safetensors spelling).
func ParseDType(s string) (DType, error) {
	for _, d := range []DType{F32, BF16, F16, F64, I32, F8E4M3} {
		if d.String() == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown dtype %q (want F32, BF16, F16, F64, I32 or F8_E4M3)", s)
}
