package cpu

import "github.com/newbie-train/newbie-train/kernels"

// realT is the compute type of the float ops: float32, or float64 when an
// operand or result is F64.
type realT interface{ ~float32 | ~float64 }

// at reads element i as float64, exactly.
func (b *buffer) at(i int) float64 {
	switch b.dt {
	case kernels.F32:
		return float64(b.f32[i])
	case kernels.F64:
		return b.f64[i]
	case kernels.BF16:
		return float64(kernels.F32FromBF16(b.u16[i]))
	case kernels.F16:
		return float64(kernels.F32FromF16(b.u16[i]))
	case kernels.I32:
		return float64(b.i32[i])
	case kernels.F8E4M3:
		return float64(kernels.F32FromF8E4M3(b.u8[i]))
	}
	return 0
}

// set stores v at element i, rounding once to the buffer's dtype (float64 →
// float32 → bf16/f16 for half types is one rounding only when v is already a
// float32 value, which is how the ops call it).
func (b *buffer) set(i int, v float64) {
	switch b.dt {
	case kernels.F32:
		b.f32[i] = float32(v)
	case kernels.F64:
		b.f64[i] = v
	case kernels.BF16:
		b.u16[i] = kernels.BF16FromF32(float32(v))
	case kernels.F16:
		b.u16[i] = kernels.F16FromF32(float32(v))
	case kernels.I32:
		b.i32[i] = toI32(v)
	case kernels.F8E4M3:
		b.u8[i] = kernels.F8E4M3FromF32(float32(v))
	}
}

// loadF32 returns elements [off, off+n) as float32: the buffer's own slice
// for F32 (no copy, do not write to it), a converted copy otherwise.
func (b *buffer) loadF32(off, n int) []float32 {
	if b.dt == kernels.F32 {
		return b.f32[off : off+n]
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(b.at(off + i))
	}
	return out
}

// loadF64 returns elements [off, off+n) as float64: the buffer's own slice
// for F64 (no copy, do not write to it), a converted copy otherwise.
func (b *buffer) loadF64(off, n int) []float64 {
	if b.dt == kernels.F64 {
		return b.f64[off : off+n]
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = b.at(off + i)
	}
	return out
}

// readReal converts elements [off, off+len(dst)) of b into dst. The dtype
// switch sits outside the loops so each loop is a plain conversion.
func readReal[T realT](dst []T, b *buffer, off int) {
	switch b.dt {
	case kernels.F32:
		for i, v := range b.f32[off : off+len(dst)] {
			dst[i] = T(v)
		}
	case kernels.F64:
		for i, v := range b.f64[off : off+len(dst)] {
			dst[i] = T(v)
		}
	case kernels.BF16:
		for i, v := range b.u16[off : off+len(dst)] {
			dst[i] = T(kernels.F32FromBF16(v))
		}
	case kernels.F16:
		for i, v := range b.u16[off : off+len(dst)] {
			dst[i] = T(kernels.F32FromF16(v))
		}
	case kernels.I32:
		for i, v := range b.i32[off : off+len(dst)] {
			dst[i] = T(v)
		}
	case kernels.F8E4M3:
		for i, v := range b.u8[off : off+len(dst)] {
			dst[i] = T(kernels.F32FromF8E4M3(v))
		}
	}
}

// writeReal stores v into b from element off, rounding each value once to
// the buffer's dtype (a float64 value headed for a half type goes through
// float32, as a device computing in float32 would store it).
func writeReal[T realT](b *buffer, off int, v []T) {
	switch b.dt {
	case kernels.F32:
		dst := b.f32[off : off+len(v)]
		for i, x := range v {
			dst[i] = float32(x)
		}
	case kernels.F64:
		dst := b.f64[off : off+len(v)]
		for i, x := range v {
			dst[i] = float64(x)
		}
	case kernels.BF16:
		dst := b.u16[off : off+len(v)]
		for i, x := range v {
			dst[i] = kernels.BF16FromF32(float32(x))
		}
	case kernels.F16:
		dst := b.u16[off : off+len(v)]
		for i, x := range v {
			dst[i] = kernels.F16FromF32(float32(x))
		}
	case kernels.I32: // truncating toward zero, saturating (see toI32)
		dst := b.i32[off : off+len(v)]
		for i, x := range v {
			dst[i] = toI32(float64(x))
		}
	case kernels.F8E4M3:
		dst := b.u8[off : off+len(v)]
		for i, x := range v {
			dst[i] = kernels.F8E4M3FromF32(float32(x))
		}
	}
}
