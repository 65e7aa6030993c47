package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("FP8", testFP8)
}

// fp8Inputs draws values that exercise every part of FP8 E4M3: normal
// values of both signs over the whole exponent range, subnormals, exact
// midpoints between codes (ties to even), values past ±448 (saturation),
// infinities and NaN.
func fp8Inputs(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		switch i % 8 {
		case 0: // midpoint of two neighbouring codes
			c := uint8(r.IntN(0x7e))
			lo, hi := kernels.F32FromF8E4M3(c), kernels.F32FromF8E4M3(c+1)
			v[i] = float64((lo + hi) / 2)
		case 1:
			v[i] = r.NormFloat64() * 1e-3 // subnormal range
		case 2:
			v[i] = 300 + 400*r.Float64() // around and past 448
		case 3:
			v[i] = [...]float64{math.Inf(1), math.Inf(-1), math.NaN(), -500, 448, -0.0}[r.IntN(6)]
		default:
			v[i] = math.Ldexp(r.NormFloat64(), r.IntN(16)-8)
		}
		if r.IntN(2) == 0 {
			v[i] = -v[i]
		}
	}
	return v
}

// rawBytes downloads a buffer's bytes.
func rawBytes(t *testing.T, b kernels.Backend, buf kernels.Buffer) []byte {
	t.Helper()
	raw := make([]byte, buf.Len()*buf.DType().Size())
	if err := b.Download(raw, buf, 0); err != nil {
		t.Fatalf("download: %v", err)
	}
	return raw
}

// sameCodes fails unless the stored FP8 codes are the ones
// kernels.F8E4M3FromF32 gives for want's float32 values.
func sameCodes(t *testing.T, what string, got []byte, want []float32) {
	t.Helper()
	for i, w := range want {
		if c := kernels.F8E4M3FromF32(w); got[i] != c {
			t.Fatalf("%s[%d]: code %#02x for %v, want %#02x", what, i, got[i], w, c)
		}
	}
}

// testFP8 checks FP8 E4M3 storage: stores round exactly as
// kernels.F8E4M3FromF32 (Cast, Fill and an elementwise op writing FP8),
// loads widen exactly (Cast from FP8, and the weight dequantisation
// x·scale of the fp8 base-weight mode), and NaN is found by NonFinite.
func testFP8(t *testing.T, b kernels.Backend) {
	r := Rng(t)
	const n = 1000
	vals := fp8Inputs(r, n)
	f32 := make([]float32, n)
	for i, v := range vals {
		f32[i] = float32(v)
	}
	t.Run("Cast F32→F8E4M3", func(t *testing.T) {
		src, _ := Put(t, b, kernels.F32, vals)
		dst := Poisoned(t, b, kernels.F8E4M3, n)
		b.Cast(dst, src)
		sameCodes(t, "cast", rawBytes(t, b, dst), f32)
	})
	t.Run("Cast F8E4M3→F32,BF16", func(t *testing.T) {
		codes := make([]byte, 256)
		for i := range codes {
			codes[i] = byte(i)
		}
		src, err := b.Alloc(kernels.F8E4M3, 256)
		if err != nil {
			t.Fatal(err)
		}
		b.Upload(src, 0, codes)
		for _, d := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F64} {
			dst := Poisoned(t, b, d, 256)
			b.Cast(dst, src)
			got := Get(t, b, dst)
			for i, g := range got {
				w := float64(kernels.F32FromF8E4M3(uint8(i)))
				if !(g == w || (math.IsNaN(g) && math.IsNaN(w))) {
					t.Fatalf("%v: code %#02x widened to %v, want %v", d, i, g, w)
				}
			}
		}
	})
	t.Run("Fill", func(t *testing.T) {
		for _, v := range []float32{0.3, -1000, 7.5 / 512} {
			dst := Poisoned(t, b, kernels.F8E4M3, 17)
			b.Fill(dst, float64(v))
			want := make([]float32, 17)
			for i := range want {
				want[i] = v
			}
			sameCodes(t, fmt.Sprint("fill ", v), rawBytes(t, b, dst), want)
		}
	})
	// The fp8 base-weight mode: quantise w [rows, cols] by a per-row scale
	// (w / scale stored in FP8), then dequantise (q · scale, stored BF16).
	t.Run("Quantise and dequantise by row", func(t *testing.T) {
		const rows, cols = 13, 37
		w := Randn(r, rows*cols, 0.05)
		scale := make([]float64, rows)
		for i := range scale {
			scale[i] = float64(float32(0.02 + 0.01*r.Float64()))
		}
		wb, wq := Put(t, b, kernels.F32, w)
		sb, _ := Put(t, b, kernels.F32, scale)
		q := Poisoned(t, b, kernels.F8E4M3, rows*cols)
		b.Binary(kernels.Div, q, []int{rows, cols}, wb, []int{rows, cols}, sb, []int{rows, 1})
		want := make([]float32, rows*cols)
		for i := range want {
			want[i] = float32(wq[i]) / float32(scale[i/cols])
		}
		raw := rawBytes(t, b, q)
		sameCodes(t, "quantised", raw, want)
		dq := Poisoned(t, b, kernels.BF16, rows*cols)
		b.Binary(kernels.Mul, dq, []int{rows, cols}, q, []int{rows, cols}, sb, []int{rows, 1})
		deq := make([]float64, rows*cols)
		for i := range deq {
			deq[i] = float64(kernels.RoundBF16(kernels.F32FromF8E4M3(raw[i]) * float32(scale[i/cols])))
		}
		Check(t, "dequantised", Get(t, b, dq), deq, 0)
		// What quantising costs: the relative error of the dequantised
		// weight is under e4m3's half-ulp (2⁻⁴) plus bf16's.
		Check(t, "dequantised against the weight", Get(t, b, dq), wq, 0.07)
	})
	t.Run("NonFinite", func(t *testing.T) {
		src, err := b.Alloc(kernels.F8E4M3, 4)
		if err != nil {
			t.Fatal(err)
		}
		flag := Poisoned(t, b, kernels.F32, 1)
		b.Upload(src, 0, []byte{0x38, 0x7e, 0xfe, 0x01})
		b.NonFinite(flag, []kernels.Buffer{src})
		if got := Get(t, b, flag); got[0] != 0 {
			t.Errorf("finite codes (±448 included) flagged: %v", got)
		}
		b.Upload(src, 0, []byte{0x38, 0xff, 0x00, 0x01})
		b.NonFinite(flag, []kernels.Buffer{src})
		if got := Get(t, b, flag); got[0] != 1 {
			t.Errorf("NaN code not flagged: %v", got)
		}
	})
}
