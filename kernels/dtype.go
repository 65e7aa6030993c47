package kernels

import "fmt"

// DType is the element type of a buffer.
type DType uint8

// The element types a Backend stores. F64 exists for gradient checks and
// references; training runs in F32 with BF16 or F16 operands.
const (
	F32 DType = iota + 1
	BF16
	F16
	F64
	I32
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
	}
	return 0
}

// IsFloat reports whether d holds floating-point values.
func (d DType) IsFloat() bool { return d == F32 || d == BF16 || d == F16 || d == F64 }

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
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// ParseDType reads a dtype name as written by String (case-sensitive,
// safetensors spelling).
func ParseDType(s string) (DType, error) {
	for _, d := range []DType{F32, BF16, F16, F64, I32} {
		if d.String() == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown dtype %q (want F32, BF16, F16, F64 or I32)", s)
}
