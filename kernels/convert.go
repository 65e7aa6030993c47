package kernels

import (
	"encoding/binary"
	"math"

	"github.com/x448/float16"
)

// BF16FromF32 rounds f to bfloat16 with round-to-nearest-even, as the GPU's
// __float2bfloat16_rn does: NaN stays NaN (quieted), values past the largest
// bf16 round to ±Inf, and subnormals round like any other value.
func BF16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep the sign, force a quiet payload
		return uint16(b>>16) | 0x0040
	}
	// Add 0x7fff plus the lowest kept bit: ties go to the even neighbour.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F32FromBF16 widens a bfloat16 bit pattern to float32 exactly.
func F32FromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F16FromF32 rounds f to IEEE half precision with round-to-nearest-even,
// including subnormals, overflow to ±Inf and NaN preserved.
func F16FromF32(f float32) uint16 { return uint16(float16.Fromfloat32(f)) }

// F32FromF16 widens an IEEE half-precision bit pattern to float32 exactly.
func F32FromF16(h uint16) float32 { return float16.Frombits(h).Float32() }

// RoundBF16 returns f rounded to the nearest bfloat16 value, as float32.
func RoundBF16(f float32) float32 { return F32FromBF16(BF16FromF32(f)) }

// RoundF16 returns f rounded to the nearest half-precision value, as float32.
func RoundF16(f float32) float32 { return F32FromF16(F16FromF32(f)) }

// F8E4M3Max is the largest finite F8E4M3 value, 1.75·2⁸.
const F8E4M3Max = 448

// F8E4M3FromF32 rounds f to FP8 E4M3 (1 sign, 4 exponent bits of bias 7, 3
// mantissa bits, subnormals down to 2⁻⁹) with round-to-nearest-even,
// saturating: anything of magnitude 448 or more, infinities included,
// becomes ±448 (the format has no infinity); NaN becomes the NaN code of
// its sign (0x7f, 0xff). This is the conversion CUDA's cvt.rn.satfinite
// performs; PyTorch's float8_e4m3fn cast differs only past ±448 (NaN).
func F8E4M3FromF32(f float32) uint8 {
	b := math.Float32bits(f)
	sign := uint8(b>>24) & 0x80
	a := b & 0x7fffffff
	switch {
	case a > 0x7f800000: // NaN
		return sign | 0x7f
	case a >= 0x43e00000: // |f| ≥ 448, ±Inf included
		return sign | 0x7e
	case a < 0x3c800000: // |f| < 2⁻⁶: a multiple of 2⁻⁹ (0 to 8, 8 being 2⁻⁶)
		q := math.RoundToEven(float64(math.Float32frombits(a)) * 512)
		return sign | uint8(q)
	}
	// Normal: rebias the exponent (127 → 7) and round the 23-bit mantissa
	// to 3 bits at bit 20, ties to even; a carry moves into the exponent,
	// which stays within range because |f| < 448.
	v := a - (127-7)<<23
	v += 0x7ffff + (v>>20)&1
	return sign | uint8(v>>20)
}

// F32FromF8E4M3 widens an FP8 E4M3 bit pattern to float32 exactly.
func F32FromF8E4M3(h uint8) float32 {
	e, m := int(h>>3)&0xf, int(h&7)
	var v float32
	switch {
	case e == 15 && m == 7:
		v = float32(math.NaN())
	case e == 0:
		v = float32(m) / 512
	default:
		v = float32(math.Ldexp(1+float64(m)/8, e-7))
	}
	if h&0x80 != 0 {
		v = -v
	}
	return v
}

// RoundF8E4M3 returns f rounded to the nearest FP8 E4M3 value (saturating),
// as float32.
func RoundF8E4M3(f float32) float32 { return F32FromF8E4M3(F8E4M3FromF32(f)) }

// EncodeF64 converts host float64 values to the little-endian bytes of a
// buffer of dtype d (rounding once, from float64 for F32 and through float32
// for BF16/F16, as the device would store a float32 result).
func EncodeF64(d DType, v []float64) []byte {
	out := make([]byte, len(v)*d.Size())
	ParallelFor(len(v), convertGrain, func(lo, hi int) { EncodeInto(d, v[lo:hi], out[lo*d.Size():hi*d.Size()]) })
	return out
}

// convertGrain is the fewest values a goroutine of a whole-tensor
// conversion takes: below it, starting one costs more than it saves.
const convertGrain = 1 << 16

// EncodeInto is EncodeF64 into out (len(v)·d.Size() bytes), on the
// calling goroutine: for callers converting a tensor piece by piece.
func EncodeInto(d DType, v []float64, out []byte) {
	for i, x := range v {
		switch d {
		case F64:
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(x))
		case F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(x)))
		case BF16:
			binary.LittleEndian.PutUint16(out[2*i:], BF16FromF32(float32(x)))
		case F16:
			binary.LittleEndian.PutUint16(out[2*i:], F16FromF32(float32(x)))
		case I32:
			binary.LittleEndian.PutUint32(out[4*i:], uint32(int32(x)))
		case F8E4M3:
			out[i] = F8E4M3FromF32(float32(x))
		}
	}
}

// DecodeF64 converts the little-endian bytes of a buffer of dtype d to
// float64 values, exactly.
func DecodeF64(d DType, b []byte) []float64 {
	n := len(b) / d.Size()
	out := make([]float64, n)
	ParallelFor(n, convertGrain, func(lo, hi int) { DecodeInto(d, b[lo*d.Size():hi*d.Size()], out[lo:hi]) })
	return out
}

// DecodeInto is DecodeF64 into out (len(b)/d.Size() values), on the
// calling goroutine: for callers converting a tensor piece by piece.
func DecodeInto(d DType, b []byte, out []float64) {
	for i := range len(b) / d.Size() {
		switch d {
		case F64:
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
		case F32:
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
		case BF16:
			out[i] = float64(F32FromBF16(binary.LittleEndian.Uint16(b[2*i:])))
		case F16:
			out[i] = float64(F32FromF16(binary.LittleEndian.Uint16(b[2*i:])))
		case I32:
			out[i] = float64(int32(binary.LittleEndian.Uint32(b[4*i:])))
		case F8E4M3:
			out[i] = float64(F32FromF8E4M3(b[i]))
		}
	}
}

// EncodeI32 converts host int32 values to little-endian bytes.
func EncodeI32(v []int32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], uint32(x))
	}
	return out
}
