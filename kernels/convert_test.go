package kernels

import (
	"math"
	"testing"
)

// isNaN16 reports whether a 16-bit pattern with the given exponent mask is
// a NaN (all-ones exponent, non-zero mantissa).
func isNaN16(h, expMask uint16) bool { return h&expMask == expMask && h&^(expMask|0x8000) != 0 }

func TestBF16FromF32(t *testing.T) {
	cases := []struct {
		name string
		in   uint32 // float32 bits
		want uint16
	}{
		{"one", 0x3f800000, 0x3f80},
		{"tie-to-even-down", 0x3f808000, 0x3f80}, // halfway between 0x3f80 and 0x3f81
		{"tie-to-even-up", 0x3f818000, 0x3f82},   // halfway between 0x3f81 and 0x3f82
		{"above-tie", 0x3f808001, 0x3f81},
		{"below-tie", 0x3f807fff, 0x3f80},
		{"negative-tie", 0xbf808000, 0xbf80},
		{"negative-tie-up", 0xbf818000, 0xbf82},
		{"subnormal-exact", 0x00010000, 0x0001},
		{"subnormal-tie-down", 0x00008000, 0x0000},
		{"subnormal-tie-up", 0x00018000, 0x0002},
		{"subnormal-round", 0x00008001, 0x0001},
		{"smallest-normal", 0x00800000, 0x0080},
		{"max-finite", 0x7f7f0000, 0x7f7f},
		{"below-max-tie", 0x7f7f7fff, 0x7f7f},
		{"overflow-tie", 0x7f7f8000, 0x7f80}, // odd 0x7f7f rounds up into Inf
		{"max-float32", 0x7f7fffff, 0x7f80},
		{"+inf", 0x7f800000, 0x7f80},
		{"-inf", 0xff800000, 0xff80},
		{"+0", 0x00000000, 0x0000},
		{"-0", 0x80000000, 0x8000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := BF16FromF32(math.Float32frombits(c.in)); got != c.want {
				t.Errorf("BF16FromF32(%#08x) = %#04x, want %#04x", c.in, got, c.want)
			}
		})
	}
	for _, nan := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0x7f80ffff, 0xff800001} {
		if got := BF16FromF32(math.Float32frombits(nan)); !isNaN16(got, 0x7f80) || got>>15 != uint16(nan>>31) {
			t.Errorf("BF16FromF32(NaN %#08x) = %#04x, not a NaN of the same sign", nan, got)
		}
	}
}

func TestBF16RoundTrip(t *testing.T) {
	// Every bf16 value widens to float32 exactly and narrows back unchanged.
	for h := 0; h < 1<<16; h++ {
		f := F32FromBF16(uint16(h))
		back := BF16FromF32(f)
		if isNaN16(uint16(h), 0x7f80) {
			if !isNaN16(back, 0x7f80) {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x → %g → %#04x", h, f, back)
		}
	}
}

func TestF16FromF32(t *testing.T) {
	cases := []struct {
		name string
		in   float32
		want uint16
	}{
		{"one", 1, 0x3c00},
		{"tie-to-even-down", 1 + 0x1p-11, 0x3c00}, // halfway between 1 and 1+2⁻¹⁰
		{"tie-to-even-up", 1 + 3*0x1p-11, 0x3c02},
		{"above-tie", 1 + 0x1p-11 + 0x1p-20, 0x3c01},
		{"negative-tie", -(1 + 0x1p-11), 0xbc00},
		{"max-finite", 65504, 0x7bff},
		{"below-overflow", 65519, 0x7bff},
		{"overflow-tie", 65520, 0x7c00}, // halfway to 65536: odd 0x7bff rounds into Inf
		{"overflow", 1e6, 0x7c00},
		{"-overflow", -1e6, 0xfc00},
		{"smallest-normal", 0x1p-14, 0x0400},
		{"largest-subnormal", 0x1p-14 - 0x1p-24, 0x03ff},
		{"smallest-subnormal", 0x1p-24, 0x0001},
		{"subnormal-tie-down", 0x1p-25, 0x0000}, // halfway between 0 and 2⁻²⁴
		{"subnormal-tie-up", 3 * 0x1p-25, 0x0002},
		{"subnormal-round-up", 0x1.8p-25, 0x0001},
		{"underflow", 0x1p-26, 0x0000},
		{"+inf", float32(math.Inf(1)), 0x7c00},
		{"-inf", float32(math.Inf(-1)), 0xfc00},
		{"+0", 0, 0x0000},
		{"-0", float32(math.Copysign(0, -1)), 0x8000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := F16FromF32(c.in); got != c.want {
				t.Errorf("F16FromF32(%g) = %#04x, want %#04x", c.in, got, c.want)
			}
		})
	}
	for _, nan := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000} {
		if got := F16FromF32(math.Float32frombits(nan)); !isNaN16(got, 0x7c00) {
			t.Errorf("F16FromF32(NaN %#08x) = %#04x, not a NaN", nan, got)
		}
	}
}

func TestF16RoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F32FromF16(uint16(h))
		back := F16FromF32(f)
		if isNaN16(uint16(h), 0x7c00) {
			if !isNaN16(back, 0x7c00) {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x → %g → %#04x", h, f, back)
		}
	}
}

func TestRoundHelpers(t *testing.T) {
	cases := []struct {
		in, bf16, f16 float32
	}{
		{1, 1, 1},
		{1 + 0x1p-9, 1, 1 + 0x1p-9}, // exact in f16, a quarter ulp (rounded away) in bf16
		{3.14159265, 3.140625, 3.140625},
	}
	for _, c := range cases {
		if got := RoundBF16(c.in); got != c.bf16 {
			t.Errorf("RoundBF16(%g) = %g, want %g", c.in, got, c.bf16)
		}
		if got := RoundF16(c.in); got != c.f16 {
			t.Errorf("RoundF16(%g) = %g, want %g", c.in, got, c.f16)
		}
	}
}

// TestF8E4M3 checks FP8 E4M3 against a table of values whose codes are
// worked out by hand from the format (bias 7, 3 mantissa bits, no
// infinities, NaN = S.1111.111, largest finite 448 = S.1111.110): exact
// values, ties to even in the normal and the subnormal range, the
// subnormal/normal boundary, saturation and NaN.
func TestF8E4M3(t *testing.T) {
	cases := []struct {
		name string
		in   float32
		want uint8
	}{
		{"+0", 0, 0x00},
		{"-0", float32(math.Copysign(0, -1)), 0x80},
		{"one", 1, 0x38},
		{"minus one", -1, 0xb8},
		{"1.125", 1.125, 0x39},
		{"tie 1.0625 to even 1", 1.0625, 0x38},
		{"tie 1.1875 to even 1.25", 1.1875, 0x3a},
		{"above the tie", 1.0626, 0x39},
		{"240", 240, 0x77},
		{"416", 416, 0x7d},
		{"tie 432 to even 448", 432, 0x7e},
		{"max 448", 448, 0x7e},
		{"449 saturates", 449, 0x7e},
		{"464 saturates", 464, 0x7e},
		{"1e9 saturates", 1e9, 0x7e},
		{"+inf saturates", float32(math.Inf(1)), 0x7e},
		{"-inf saturates", float32(math.Inf(-1)), 0xfe},
		{"-500 saturates", -500, 0xfe},
		{"min normal 2^-6", 1.0 / 64, 0x08},
		{"max subnormal 7·2^-9", 7.0 / 512, 0x07},
		{"tie 7.5·2^-9 to even 2^-6", 7.5 / 512, 0x08},
		{"tie 6.5·2^-9 to even 6·2^-9", 6.5 / 512, 0x06},
		{"min subnormal 2^-9", 1.0 / 512, 0x01},
		{"tie 2^-10 to even 0", 1.0 / 1024, 0x00},
		{"above the tie 1.5·2^-10", 1.5 / 1024, 0x01},
		{"tiny negative to -0", -1e-6, 0x80},
		{"float32 subnormal", math.Float32frombits(1), 0x00},
		{"0.1", 0.1, 0x1d},   // 0.1 = 1.6·2^-4: mantissa 0.6·8 = 4.8 → 5
		{"-3.3", -3.3, 0xc5}, // 3.3 = 1.65·2^1: 5.2 → 5; exponent 8
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := F8E4M3FromF32(c.in); got != c.want {
				t.Errorf("F8E4M3FromF32(%v) = %#02x, want %#02x", c.in, got, c.want)
			}
		})
	}
	for _, nan := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001} {
		if got := F8E4M3FromF32(math.Float32frombits(nan)); got != uint8(nan>>24)&0x80|0x7f {
			t.Errorf("F8E4M3FromF32(NaN %#08x) = %#02x, want the NaN code of its sign", nan, got)
		}
	}
	// Every code decodes to its value by the format's definition and, but
	// for the NaNs, encodes back to itself.
	for c := 0; c < 256; c++ {
		h := uint8(c)
		e, m := int(h>>3)&15, float64(h&7)
		want := math.Ldexp(1+m/8, e-7)
		if e == 0 {
			want = math.Ldexp(m/8, -6)
		}
		if h&0x80 != 0 {
			want = -want
		}
		got := F32FromF8E4M3(h)
		if e == 15 && h&7 == 7 {
			if !math.IsNaN(float64(got)) {
				t.Errorf("code %#02x decodes to %v, want NaN", h, got)
			}
			continue
		}
		if float64(got) != want {
			t.Errorf("code %#02x decodes to %v, want %v", h, got, want)
		}
		if back := F8E4M3FromF32(got); back != h && !(got == 0 && back == h&0x80) {
			t.Errorf("code %#02x (%v) encodes back to %#02x", h, got, back)
		}
	}
	// Midpoints between neighbouring codes round to the even one.
	for c := 0; c < 0x7e; c++ {
		lo, hi := F32FromF8E4M3(uint8(c)), F32FromF8E4M3(uint8(c+1))
		even := uint8(c)
		if c&1 == 1 {
			even = uint8(c + 1)
		}
		if got := F8E4M3FromF32((lo + hi) / 2); got != even {
			t.Errorf("midpoint of %#02x and %#02x (%v) → %#02x, want %#02x", c, c+1, (lo+hi)/2, got, even)
		}
	}
	if got := DecodeF64(F8E4M3, EncodeF64(F8E4M3, []float64{0.3, -1000, 2})); got[0] != float64(RoundF8E4M3(0.3)) || got[1] != -448 || got[2] != 2 {
		t.Errorf("EncodeF64/DecodeF64 through F8E4M3: %v", got)
	}
}
