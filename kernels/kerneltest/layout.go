package kerneltest

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Fill", testFill)
	register("Cast", testCast)
	register("CastBF16Bits", testCastBF16Bits)
	register("Copy2D", testCopy2D)
	register("Permute", testPermute)
}

// paFloats are the float dtypes every op of part A is run in.
var paFloats = []kernels.DType{kernels.F64, kernels.F32, kernels.BF16, kernels.F16}

// paAllDTypes adds I32 for the ops that take it (Fill, Cast, Copy2D).
var paAllDTypes = []kernels.DType{kernels.F64, kernels.F32, kernels.BF16, kernels.F16, kernels.I32}

// paNaNs returns n NaNs: the reference for elements an op must not touch in
// a poisoned buffer (RelErr counts NaN against NaN as equal).
func paNaNs(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = math.NaN()
	}
	return v
}

// paUniform returns n values uniform in [lo, hi).
func paUniform(r *rand.Rand, n int, lo, hi float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + (hi-lo)*r.Float64()
	}
	return v
}

// paTrunc is the I32 a cast stores for v: truncation toward zero.
func paTrunc(v float64) float64 { return math.Trunc(v) }

func testFill(t *testing.T, b kernels.Backend) {
	for _, d := range paAllDTypes {
		for _, v := range []float64{2.718281828459045, -7.9, 1e-3} {
			t.Run(fmt.Sprintf("%v/%g", d, v), func(t *testing.T) {
				const n = 37
				buf, err := b.Alloc(d, n)
				if err != nil {
					t.Fatal(err)
				}
				b.Upload(buf, 0, kernels.EncodeF64(d, Randn(Rng(t), n, 1)))
				b.Fill(buf, v)
				want := make([]float64, n)
				for i := range want {
					want[i] = v
				}
				if d == kernels.I32 {
					for i := range want {
						want[i] = paTrunc(v)
					}
				} else {
					want = Quantize(d, want)
				}
				Check(t, "Fill", Get(t, b, buf), want, 0)
			})
		}
	}
	t.Run("NaN", func(t *testing.T) {
		for _, d := range paFloats {
			buf := Poisoned(t, b, d, 13)
			for i, v := range Get(t, b, buf) {
				if !math.IsNaN(v) {
					t.Errorf("%v: element %d = %g after Fill(NaN)", d, i, v)
				}
			}
		}
	})
}

func testCast(t *testing.T, b kernels.Backend) {
	for _, from := range paAllDTypes {
		for _, to := range paAllDTypes {
			t.Run(fmt.Sprintf("%v->%v", from, to), func(t *testing.T) {
				const n = 101
				// A spread of magnitudes and both signs, so I32 truncation and
				// half-precision rounding are both exercised.
				src, vals := Put(t, b, from, Randn(Rng(t), n, 30))
				dst := Poisoned(t, b, to, n)
				b.Cast(dst, src)
				want := make([]float64, n)
				for i, v := range vals {
					if to == kernels.I32 {
						want[i] = paTrunc(v)
					} else {
						want[i] = v
					}
				}
				if to != kernels.I32 {
					want = Quantize(to, want)
				}
				// Casts are exact up to the one rounding into `to`, which the
				// reference applies too; only F64 → BF16/F16 may round
				// directly (a device's __double2bfloat16) rather than through
				// float32 as the reference does, differing by one half-ulp tie.
				tol := 0.0
				if from == kernels.F64 && (to == kernels.BF16 || to == kernels.F16) {
					tol = Tol(to, to)
				}
				Check(t, "Cast", Get(t, b, dst), want, tol)
			})
		}
	}
}

// testCastBF16Bits casts F32 values where rounding to bf16 is delicate —
// ties to even both ways, the last values below a tie, subnormals, the
// largest finite values (which round to infinity), infinities and signed
// zeros, in every row of a fill and a cast — and wants the bits of
// kernels.BF16FromF32 for each: a backend's conversion (the CUDA backend's
// is one cvt instruction) must round exactly as the reference does.
func testCastBF16Bits(t *testing.T, b kernels.Backend) {
	bits := []uint32{
		0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, 0xbf808000, 0xbf818000, // ties and near-ties
		0x00000001, 0x00008000, 0x00018000, 0x807fffff, 0x00400000, 0x80008000, // subnormals
		0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0xff7fffff, 0x7f800000, 0xff800000, // overflow, infinities
		0x00000000, 0x80000000, 0x3f800000, 0x4b7fffff, 0xc0490fdb, 0x33800000,
	}
	raw := make([]byte, 4*len(bits))
	for i, v := range bits {
		binary.LittleEndian.PutUint32(raw[4*i:], v)
	}
	src, err := b.Alloc(kernels.F32, len(bits))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free(src)
	b.Upload(src, 0, raw)
	dst := Poisoned(t, b, kernels.BF16, len(bits))
	b.Cast(dst, src)
	out := make([]byte, 2*len(bits))
	if err := b.Download(out, dst, 0); err != nil {
		t.Fatal(err)
	}
	for i, v := range bits {
		got, want := binary.LittleEndian.Uint16(out[2*i:]), kernels.BF16FromF32(math.Float32frombits(v))
		if got != want {
			t.Errorf("F32 %#08x → BF16 %#04x, want %#04x", v, got, want)
		}
	}
}

func testCopy2D(t *testing.T, b kernels.Backend) {
	type cse struct {
		name                   string
		from, to               kernels.DType
		rows, cols             int
		srcOff, srcStr, srcLen int
		dstOff, dstStr, dstLen int
	}
	cases := []cse{
		{"same-dtype", kernels.F32, kernels.F32, 7, 13, 3, 17, 3 + 6*17 + 13, 5, 19, 5 + 6*19 + 13 + 4},
		{"contiguous", kernels.BF16, kernels.BF16, 5, 11, 0, 11, 55, 0, 11, 55},
		{"cast-f32-bf16", kernels.F32, kernels.BF16, 7, 13, 1, 13, 1 + 7*13, 2, 15, 2 + 6*15 + 13},
		{"cast-bf16-f64", kernels.BF16, kernels.F64, 4, 9, 0, 10, 40, 9, 9, 9 + 36},
		{"cast-f16-f32", kernels.F16, kernels.F32, 3, 37, 2, 40, 2 + 2*40 + 37, 0, 37, 3 * 37},
		{"broadcast-row", kernels.F32, kernels.F64, 6, 13, 4, 0, 17, 1, 14, 1 + 5*14 + 13},
		{"i32", kernels.I32, kernels.I32, 3, 5, 1, 6, 1 + 2*6 + 5, 0, 7, 2*7 + 5},
		{"one-row", kernels.F64, kernels.F64, 1, 100, 7, 0, 107, 0, 0, 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Rng(t)
			vals := Randn(r, c.srcLen, 1)
			if c.from == kernels.I32 {
				for i := range vals {
					vals[i] = float64(r.IntN(2001) - 1000)
				}
			}
			src, q := Put(t, b, c.from, vals)
			var dst kernels.Buffer
			want := paNaNs(c.dstLen)
			if c.to == kernels.I32 {
				// Poisoned I32 holds -1 everywhere.
				dst = Poisoned(t, b, c.to, c.dstLen)
				for i := range want {
					want[i] = -1
				}
			} else {
				dst = Poisoned(t, b, c.to, c.dstLen)
			}
			for i := 0; i < c.rows; i++ {
				for j := 0; j < c.cols; j++ {
					want[c.dstOff+i*c.dstStr+j] = q[c.srcOff+i*c.srcStr+j]
				}
			}
			if c.to != kernels.I32 {
				want = Quantize(c.to, want)
			}
			b.Copy2D(dst, c.dstOff, c.dstStr, src, c.srcOff, c.srcStr, c.rows, c.cols)
			Check(t, "Copy2D", Get(t, b, dst), want, 0)
		})
	}
}

// paPermuteRef transposes v of the given shape by perm with plain index
// arithmetic: dst multi-index k ↦ src multi-index with axis perm[k] = k's.
func paPermuteRef(v []float64, shape, perm []int) []float64 {
	rank := len(shape)
	n := len(v)
	out := make([]float64, n)
	dshape := make([]int, rank)
	for k, p := range perm {
		dshape[k] = shape[p]
	}
	idx := make([]int, rank)
	src := make([]int, rank)
	for lin := 0; lin < n; lin++ {
		rem := lin
		for k := rank - 1; k >= 0; k-- {
			idx[k] = rem % dshape[k]
			rem /= dshape[k]
		}
		for k, p := range perm {
			src[p] = idx[k]
		}
		s := 0
		for k := 0; k < rank; k++ {
			s = s*shape[k] + src[k]
		}
		out[lin] = v[s]
	}
	return out
}

func testPermute(t *testing.T, b kernels.Backend) {
	shapes := []struct {
		shape, perm []int
	}{
		{[]int{37}, []int{0}},
		{[]int{7, 13}, []int{1, 0}},
		{[]int{3, 5, 7}, []int{2, 0, 1}},
		{[]int{3, 5, 7}, []int{0, 2, 1}},
		{[]int{2, 3, 5, 7}, []int{0, 2, 1, 3}}, // [B,S,H,D] → [B,H,S,D]
		{[]int{2, 3, 1, 5, 4}, []int{4, 3, 2, 1, 0}},
		{[]int{2, 3, 2, 3, 2, 5}, []int{5, 1, 3, 0, 2, 4}},
		{[]int{4, 1, 9}, []int{1, 2, 0}},
	}
	pairs := [][2]kernels.DType{
		{kernels.F64, kernels.F64}, {kernels.F32, kernels.F32}, {kernels.BF16, kernels.BF16},
		{kernels.F16, kernels.F16}, {kernels.F32, kernels.BF16}, {kernels.BF16, kernels.F32},
	}
	for _, s := range shapes {
		for _, p := range pairs {
			t.Run(fmt.Sprintf("%v%v/%v->%v", s.shape, s.perm, p[0], p[1]), func(t *testing.T) {
				n := 1
				for _, e := range s.shape {
					n *= e
				}
				src, q := Put(t, b, p[0], Randn(Rng(t), n, 1))
				dst := Poisoned(t, b, p[1], n)
				b.Permute(dst, src, s.shape, s.perm)
				Check(t, "Permute", Get(t, b, dst), Quantize(p[1], paPermuteRef(q, s.shape, s.perm)), 0)
			})
		}
	}
}
