package cpu

import "github.com/newbie-train/newbie-train/kernels"

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

// storeF32 writes v to elements [off, off+len(v)), rounding to the dtype.
func (b *buffer) storeF32(off int, v []float32) {
	switch b.dt {
	case kernels.F32:
		copy(b.f32[off:], v)
	case kernels.BF16:
		for i, x := range v {
			b.u16[off+i] = kernels.BF16FromF32(x)
		}
	case kernels.F16:
		for i, x := range v {
			b.u16[off+i] = kernels.F16FromF32(x)
		}
	default:
		for i, x := range v {
			b.set(off+i, float64(x))
		}
	}
}

// storeF64 writes v to elements [off, off+len(v)). Half types round through
// float32, matching a device that computes in float32 and stores once.
func (b *buffer) storeF64(off int, v []float64) {
	if b.dt == kernels.F64 {
		copy(b.f64[off:], v)
		return
	}
	for i, x := range v {
		b.set(off+i, x)
	}
}
