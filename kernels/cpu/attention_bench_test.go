package cpu_test

import (
	"bytes"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// These benchmarks time the part-B ops at the model's sizes: NewBie's
// attention (24 query / 8 kv heads of 96) and a VAE-style 64-channel 3×3
// convolution. GFLOP/s counts the multiply-adds of the textbook algorithm
// (×2), so the figures compare with a GEMM's.

// pbBuf allocates a buffer of dtype d holding n standard-normal values.
func pbBuf(bm *testing.B, c *cpu.Backend, r *rand.Rand, d kernels.DType, n int) kernels.Buffer {
	bm.Helper()
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64()
	}
	buf, err := c.Alloc(d, n)
	if err != nil {
		bm.Fatal(err)
	}
	c.Upload(buf, 0, kernels.EncodeF64(d, v))
	return buf
}

// benchAttention times the forward (or forward+backward when grad) of
// attention over one sample of s tokens.
func benchAttention(bm *testing.B, d kernels.DType, s int, causal, grad bool) {
	c := cpu.New()
	r := rand.New(rand.NewPCG(3, 4))
	const hq, hkv, hd = 24, 8, 96
	a := kernels.AttentionArgs{B: 1, Sq: s, Sk: s, Hq: hq, Hkv: hkv, D: hd, Scale: 1 / math.Sqrt(hd), Causal: causal}
	a.Q = pbBuf(bm, c, r, d, s*hq*hd)
	a.K = pbBuf(bm, c, r, d, s*hkv*hd)
	a.V = pbBuf(bm, c, r, d, s*hkv*hd)
	o := pbBuf(bm, c, r, d, s*hq*hd)
	lse := pbBuf(bm, c, r, kernels.F32, hq*s)
	dO := pbBuf(bm, c, r, d, s*hq*hd)
	dq := pbBuf(bm, c, r, d, s*hq*hd)
	dk := pbBuf(bm, c, r, d, s*hkv*hd)
	dv := pbBuf(bm, c, r, d, s*hkv*hd)
	c.Attention(a, o, lse)
	// QKᵀ and PV are 2·s²·hq·hd multiply-adds; the backward's five products
	// (QKᵀ again, dP, dV, dQ, dK) are 5·s²·hq·hd. Causal halves both.
	macs := 2.0 * float64(s) * float64(s) * hq * hd
	if grad {
		macs = 5.0 * float64(s) * float64(s) * hq * hd
	}
	if causal {
		macs /= 2
	}
	bm.ResetTimer()
	for bm.Loop() {
		if grad {
			c.AttentionGrad(a, o, lse, dO, dq, dk, dv)
		} else {
			c.Attention(a, o, lse)
		}
	}
	if err := c.Sync(); err != nil {
		bm.Fatal(err)
	}
	bm.ReportMetric(2*macs*float64(bm.N)/bm.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkAttentionS1024F32(b *testing.B)     { benchAttention(b, kernels.F32, 1024, false, false) }
func BenchmarkAttentionGradS1024F32(b *testing.B) { benchAttention(b, kernels.F32, 1024, false, true) }
func BenchmarkAttentionS1024BF16(b *testing.B)    { benchAttention(b, kernels.BF16, 1024, false, false) }
func BenchmarkAttentionCausalS1024F32(b *testing.B) {
	benchAttention(b, kernels.F32, 1024, true, false)
}

// benchConv times a 3×3, stride-1, padding-1 convolution of ch→ch channels
// over one side×side image, forward or backward (dx, dw and dbias).
func benchConv(bm *testing.B, d kernels.DType, ch, side int, grad bool) {
	c := cpu.New()
	r := rand.New(rand.NewPCG(5, 6))
	a := kernels.ConvArgs{N: 1, Cin: ch, H: side, W: side, Cout: ch, KH: 3, KW: 3, Stride: 1, Pad: 1}
	x := pbBuf(bm, c, r, d, ch*side*side)
	w := pbBuf(bm, c, r, d, ch*ch*9)
	bias := pbBuf(bm, c, r, d, ch)
	y := pbBuf(bm, c, r, d, ch*side*side)
	dx := pbBuf(bm, c, r, d, ch*side*side)
	dw := pbBuf(bm, c, r, d, ch*ch*9)
	db := pbBuf(bm, c, r, d, ch)
	macs := float64(ch) * float64(ch) * 9 * float64(side*side)
	if grad {
		macs *= 2
	}
	bm.ResetTimer()
	for bm.Loop() {
		if grad {
			c.Conv2DGrad(dx, dw, db, y, x, w, a)
		} else {
			c.Conv2D(y, x, w, bias, a)
		}
	}
	if err := c.Sync(); err != nil {
		bm.Fatal(err)
	}
	bm.ReportMetric(2*macs*float64(bm.N)/bm.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkConv3x3C64S64F32(b *testing.B)     { benchConv(b, kernels.F32, 64, 64, false) }
func BenchmarkConv3x3C64S64GradF32(b *testing.B) { benchConv(b, kernels.F32, 64, 64, true) }
func BenchmarkConv3x3C64S64BF16(b *testing.B)    { benchConv(b, kernels.BF16, 64, 64, false) }

// BenchmarkRMSNormGrad2304 times the backward of the model's RMSNorm over
// 4096 tokens of width 2304, dw included.
func BenchmarkRMSNormGrad2304(bm *testing.B) {
	c := cpu.New()
	r := rand.New(rand.NewPCG(7, 8))
	const rows, cols = 4096, 2304
	x := pbBuf(bm, c, r, kernels.F32, rows*cols)
	w := pbBuf(bm, c, r, kernels.F32, cols)
	y := pbBuf(bm, c, r, kernels.F32, rows*cols)
	rstd := pbBuf(bm, c, r, kernels.F32, rows)
	dx := pbBuf(bm, c, r, kernels.F32, rows*cols)
	dw := pbBuf(bm, c, r, kernels.F32, cols)
	c.RMSNorm(y, rstd, x, w, rows, cols, 1e-6)
	bm.ResetTimer()
	for bm.Loop() {
		c.RMSNormGrad(dx, dw, y, x, w, rstd, rows, cols)
	}
	if err := c.Sync(); err != nil {
		bm.Fatal(err)
	}
}

// TestPartBCoreCountIndependent runs attention, conv, group norm and RMS norm
// (forward and backward) with 1 and with 3 worker threads and requires the
// same bytes: the design promises bit-identical CPU runs whatever the
// machine, so no sum may depend on how the work is split.
func TestPartBCoreCountIndependent(t *testing.T) {
	run := func(procs int) [][]byte {
		old := runtime.GOMAXPROCS(procs)
		defer runtime.GOMAXPROCS(old)
		c := cpu.New()
		r := rand.New(rand.NewPCG(9, 10))
		put := func(d kernels.DType, n int) kernels.Buffer {
			v := make([]float64, n)
			for i := range v {
				v[i] = r.NormFloat64()
			}
			b, err := c.Alloc(d, n)
			if err != nil {
				t.Fatal(err)
			}
			c.Upload(b, 0, kernels.EncodeF64(d, v))
			return b
		}
		var outs []kernels.Buffer
		out := func(d kernels.DType, n int) kernels.Buffer {
			b, err := c.Alloc(d, n)
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, b)
			return b
		}
		const s, hq, hkv, hd = 77, 6, 2, 40
		a := kernels.AttentionArgs{Q: put(kernels.BF16, s*hq*hd), K: put(kernels.BF16, s*hkv*hd), V: put(kernels.BF16, s*hkv*hd),
			B: 1, Sq: s, Sk: s, Hq: hq, Hkv: hkv, D: hd, Scale: 0.15, Causal: true}
		o, lse := out(kernels.BF16, s*hq*hd), out(kernels.F32, hq*s)
		c.Attention(a, o, lse)
		c.AttentionGrad(a, o, lse, put(kernels.BF16, s*hq*hd), out(kernels.BF16, s*hq*hd), out(kernels.F32, s*hkv*hd), out(kernels.F32, s*hkv*hd))

		ca := kernels.ConvArgs{N: 2, Cin: 16, H: 23, W: 19, Cout: 24, KH: 3, KW: 3, Stride: 2, Pad: 1}
		nx, nw, ny := 2*16*23*19, 24*16*9, 2*24*ca.OutH()*ca.OutW()
		x, w := put(kernels.F32, nx), put(kernels.F32, nw)
		c.Conv2D(out(kernels.F32, ny), x, w, put(kernels.F32, 24), ca)
		c.Conv2DGrad(out(kernels.F32, nx), out(kernels.F32, nw), out(kernels.F32, 24), put(kernels.F32, ny), x, w, ca)

		const n, ch, hw, groups = 3, 32, 700, 8
		gx, gw := put(kernels.F32, n*ch*hw), put(kernels.F32, ch)
		mean, rstd := out(kernels.F32, n*groups), out(kernels.F32, n*groups)
		c.GroupNorm(out(kernels.F32, n*ch*hw), mean, rstd, gx, gw, put(kernels.F32, ch), n, ch, hw, groups, 1e-6)
		c.GroupNormGrad(out(kernels.F32, n*ch*hw), out(kernels.F32, ch), out(kernels.F32, ch), put(kernels.F32, n*ch*hw), gx, gw, mean, rstd, n, ch, hw, groups)

		const rows, cols = 300, 257
		rx, rw, rr := put(kernels.BF16, rows*cols), put(kernels.F32, cols), out(kernels.F32, rows)
		c.RMSNorm(out(kernels.BF16, rows*cols), rr, rx, rw, rows, cols, 1e-6)
		c.RMSNormGrad(out(kernels.BF16, rows*cols), out(kernels.F32, cols), put(kernels.BF16, rows*cols), rx, rw, rr, rows, cols)

		var got [][]byte
		for _, b := range outs {
			raw := make([]byte, b.Len()*b.DType().Size())
			if err := c.Download(raw, b, 0); err != nil {
				t.Fatal(err)
			}
			got = append(got, raw)
		}
		return got
	}
	one, three := run(1), run(3)
	for i := range one {
		if !bytes.Equal(one[i], three[i]) {
			t.Errorf("output %d differs between 1 and 3 worker threads", i)
		}
	}
}
