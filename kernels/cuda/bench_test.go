package cuda

import (
	"fmt"
	"math"
	"runtime"
	"sort"
	"testing"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

// eventTimes runs fn warm times, then iters times, each bracketed by CUDA
// events on the backend's stream, and returns the per-run milliseconds.
func eventTimes(tb testing.TB, c *Backend, warm, iters int, fn func()) []float64 {
	tb.Helper()
	for i := 0; i < warm; i++ {
		fn()
	}
	if err := c.Sync(); err != nil {
		tb.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d := c.l.drv
	ev := make([]uintptr, 2*iters)
	var pin runtime.Pinner
	defer pin.Unpin()
	for i := range ev {
		pin.Pin(&ev[i])
		d.ctxSetCurrent.call(c.dev.ctx)
		if r := d.eventCreate.call(uintptr(unsafe.Pointer(&ev[i])), 0); r != 0 {
			tb.Fatalf("cuEventCreate: %s", d.errText(r))
		}
	}
	for i := 0; i < iters; i++ {
		d.ctxSetCurrent.call(c.dev.ctx)
		d.eventRecord.call(ev[2*i], c.stream)
		fn()
		d.ctxSetCurrent.call(c.dev.ctx)
		d.eventRecord.call(ev[2*i+1], c.stream)
	}
	if err := c.Sync(); err != nil {
		tb.Fatal(err)
	}
	d.ctxSetCurrent.call(c.dev.ctx)
	out := make([]float64, iters)
	var ms float32
	pin.Pin(&ms)
	for i := 0; i < iters; i++ {
		d.eventElapsedTime.call(uintptr(unsafe.Pointer(&ms)), ev[2*i], ev[2*i+1])
		out[i] = float64(ms)
	}
	for _, e := range ev {
		d.eventDestroy.call(e)
	}
	return out
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// randBuf fills a buffer with N(0, std) on the device (never zeros: zeros
// run faster than real data through the tensor cores).
func randBuf(tb testing.TB, c *Backend, d kernels.DType, n int, seed uint64, std float64) kernels.Buffer {
	b, err := c.Alloc(d, n)
	if err != nil {
		tb.Fatal(err)
	}
	c.RandNormal(b, seed, 0, 0, std)
	return b
}

// BenchmarkGemm times the matrix products of one Next-DiT block at 1024²
// (M = 4352 tokens, dim 2304, qkv width 3840, SwiGLU hidden 9216), bf16 in,
// bf16 out, fp32 accumulation; weights are [out, in] as in PyTorch (TransB).
func BenchmarkGemm(b *testing.B) {
	c := openGPU(b)
	const M = 4352
	shapes := []struct {
		name    string
		m, n, k int
		ta, tb  bool
	}{
		{"qkv_2304x3840", M, 3840, 2304, false, true},
		{"out_2304x2304", M, 2304, 2304, false, true},
		{"w13_2304x9216", M, 9216, 2304, false, true},
		{"w2_9216x2304", M, 2304, 9216, false, true},
		{"qkv_dX_3840x2304", M, 2304, 3840, false, false},
		{"qkv_dW_3840x2304", 3840, 2304, M, true, false},
	}
	for _, s := range shapes {
		b.Run(s.name, func(b *testing.B) {
			ar, ac := s.m, s.k
			if s.ta {
				ar, ac = s.k, s.m
			}
			br, bc := s.k, s.n
			if s.tb {
				br, bc = s.n, s.k
			}
			A := randBuf(b, c, kernels.BF16, ar*ac, 1, 1)
			B := randBuf(b, c, kernels.BF16, br*bc, 2, 0.02)
			C, _ := c.Alloc(kernels.BF16, s.m*s.n)
			defer c.Free(A)
			defer c.Free(B)
			defer c.Free(C)
			g := kernels.GemmArgs{TransA: s.ta, TransB: s.tb, M: s.m, N: s.n, K: s.k, Batch: 1, Alpha: 1,
				A: A, LDA: ac, B: B, LDB: bc, C: C, LDC: s.n}
			// Ten products between each pair of events keep the GPU busy
			// across host launch gaps; the figure is per product.
			iters := max(b.N, 30)
			ms := median(eventTimes(b, c, 3, iters, func() {
				for r := 0; r < 10; r++ {
					c.Gemm(g)
				}
			})) / 10
			flops := 2 * float64(s.m) * float64(s.n) * float64(s.k)
			b.ReportMetric(ms, "ms/op")
			b.ReportMetric(flops/ms/1e9, "TFLOP/s")
			b.ReportMetric(flops/790e12*1e3, "roofline-ms")
		})
	}
}

// BenchmarkThinGemm times the adapters' rank-32 products that write a
// model-width tile at 1024² (M = 4352 tokens; widths w of 2304, the qkv's
// 3840 and the SwiGLU's 9216) on gemm_thin.cu's kernels and on cuBLAS (the
// thingemm fast path off), with the time the tile's bytes alone would take
// at 4.8 TB/s beside them: the up-projections y = u·bᵀ (up: [M, 32]·[w,
// 32]ᵀ) and the dx shares du·a (dx: [M, 32]·[32, w]).
func BenchmarkThinGemm(b *testing.B) {
	c := openGPU(b)
	const M, R = 4352, 32
	for _, w := range []int{2304, 3840, 9216} {
		for _, form := range []string{"up", "dx"} {
			for _, kernel := range []string{"thin", "cublas"} {
				b.Run(fmt.Sprintf("%s_%d/%s", form, w, kernel), func(b *testing.B) {
					prev := c.off
					if kernel == "cublas" {
						c.off = map[string]bool{fastThinGemm: true}
					}
					defer func() { c.off = prev }()
					var g kernels.GemmArgs
					switch form {
					case "up":
						g = kernels.GemmArgs{TransB: true, N: w, K: R, LDA: R, LDB: R, LDC: w}
					case "dx":
						g = kernels.GemmArgs{N: w, K: R, LDA: R, LDB: w, LDC: w}
					}
					g.M, g.Batch, g.Alpha = M, 1, 0.5
					g.A = randBuf(b, c, kernels.BF16, M*g.K, 1, 1)
					g.B = randBuf(b, c, kernels.BF16, g.N*g.K, 2, 0.02)
					g.C, _ = c.Alloc(kernels.BF16, M*g.N)
					defer c.Free(g.A)
					defer c.Free(g.B)
					defer c.Free(g.C)
					iters := max(b.N, 30)
					ms := median(eventTimes(b, c, 3, iters, func() {
						for r := 0; r < 10; r++ {
							c.Gemm(g)
						}
					})) / 10
					b.ReportMetric(ms, "ms/op")
					b.ReportMetric(float64(M*w*2)/4.8e12*1e3, "bytes-floor-ms")
				})
			}
		}
	}
}

// BenchmarkAttention times attention forward and forward+backward at the
// model's 1024² shape: B=1, S=4352, 24 query / 8 kv heads, d=96, bf16.
func BenchmarkAttention(b *testing.B) {
	c := openGPU(b)
	const B, S, Hq, Hkv, D = 1, 4352, 24, 8, 96
	nq, nk := B*S*Hq*D, B*S*Hkv*D
	a := kernels.AttentionArgs{Q: randBuf(b, c, kernels.BF16, nq, 3, 1), K: randBuf(b, c, kernels.BF16, nk, 4, 1), V: randBuf(b, c, kernels.BF16, nk, 5, 1),
		B: B, Sq: S, Sk: S, Hq: Hq, Hkv: Hkv, D: D, Scale: 1 / math.Sqrt(D)}
	o, _ := c.Alloc(kernels.BF16, nq)
	lse, _ := c.Alloc(kernels.F32, B*Hq*S)
	dO := randBuf(b, c, kernels.BF16, nq, 6, 1)
	dq, _ := c.Alloc(kernels.BF16, nq)
	dk, _ := c.Alloc(kernels.BF16, nk)
	dv, _ := c.Alloc(kernels.BF16, nk)
	fwdFlops := 4 * float64(B*Hq) * S * S * D
	iters := max(b.N, 10)
	b.Run("fwd", func(b *testing.B) {
		ms := median(eventTimes(b, c, 2, iters, func() { c.Attention(a, o, lse) }))
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(fwdFlops/ms/1e9, "TFLOP/s")
		b.ReportMetric(fwdFlops/790e12*1e3, "roofline-ms")
	})
	b.Run("fwd+bwd", func(b *testing.B) {
		ms := median(eventTimes(b, c, 2, iters, func() {
			c.Attention(a, o, lse)
			c.AttentionGrad(a, o, lse, dO, dq, dk, dv)
		}))
		// backward ≈ 2.5× the forward's matrix work (5 products vs 2)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(3.5*fwdFlops/ms/1e9, "TFLOP/s")
		b.ReportMetric(3.5*fwdFlops/790e12*1e3, "roofline-ms")
	})
}

// BenchmarkAttentionF32 times the fp32 attention forward at the Next-DiT's
// sampling shape (B=2 for the conditional and unconditional halves,
// S=4352, 24 heads, d=96, fp32 Q/K/V/O): the tiled kernel
// (attention_simt.cu) and, for comparison, the portable attn_fwd_f it
// replaces there (about half a second a call, so a few runs).
func BenchmarkAttentionF32(b *testing.B) {
	c := openGPU(b)
	const B, S, H, D = 2, 4352, 24, 96
	n := B * S * H * D
	a := kernels.AttentionArgs{Q: randBuf(b, c, kernels.F32, n, 3, 1), K: randBuf(b, c, kernels.F32, n, 4, 1), V: randBuf(b, c, kernels.F32, n, 5, 1),
		B: B, Sq: S, Sk: S, Hq: H, Hkv: H, D: D, Scale: 1 / math.Sqrt(D)}
	o, _ := c.Alloc(kernels.F32, n)
	lse, _ := c.Alloc(kernels.F32, B*H*S)
	flops := 4 * float64(B*H) * S * S * D
	for _, bc := range []struct {
		name  string
		off   bool
		iters int
	}{{"simt", false, max(b.N, 20)}, {"portable", true, 3}} {
		b.Run(bc.name, func(b *testing.B) {
			was := c.off
			off := map[string]bool{fastAttnSIMT: bc.off}
			for k, v := range was {
				off[k] = off[k] || v
			}
			c.off = off
			defer func() { c.off = was }()
			ms := median(eventTimes(b, c, 1, bc.iters, func() { c.Attention(a, o, lse) }))
			b.ReportMetric(ms, "ms/op")
			b.ReportMetric(flops/ms/1e9, "TFLOP/s")
		})
	}
}

// BenchmarkMemoryBound times the vectorised bf16 RMSNorm (forward and
// input gradient) and RoPE at the model's activation sizes (4352 tokens ×
// 2304, and q/k with 24 or 32 heads × 96).
func BenchmarkMemoryBound(b *testing.B) {
	c := openGPU(b)
	const M, Dm = 4352, 2304
	x := randBuf(b, c, kernels.BF16, M*Dm, 7, 1)
	w := randBuf(b, c, kernels.BF16, Dm, 8, 1)
	y, _ := c.Alloc(kernels.BF16, M*Dm)
	r, _ := c.Alloc(kernels.F32, M)
	b.Run("rmsnorm_4352x2304_bf16", func(b *testing.B) {
		ms := median(eventTimes(b, c, 5, max(b.N, 100), func() { c.RMSNorm(y, r, x, w, M, Dm, 1e-6) }))
		bytes := float64(2*2*M*Dm + 2*Dm + 4*M)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(bytes/ms/1e9, "TB/s")
		b.ReportMetric(bytes/4.3e12*1e3, "roofline-ms")
	})
	// RMSNormGrad as LoRA training runs it (frozen weight: dw nil) at the
	// block norms' shape and at the q/k norms' (24 + 8 heads of 96 per
	// token, 104,448 rows), plus the forward at the q/k shape. Bytes: x and
	// dy read, dx written, w and rstd read once.
	dy := randBuf(b, c, kernels.BF16, M*Dm, 13, 1)
	dx, _ := c.Alloc(kernels.BF16, M*Dm)
	c.RMSNorm(y, r, x, w, M, Dm, 1e-6)
	b.Run("rmsnormgrad_4352x2304_bf16", func(b *testing.B) {
		ms := median(eventTimes(b, c, 5, max(b.N, 100), func() { c.RMSNormGrad(dx, nil, dy, x, w, r, M, Dm) }))
		bytes := float64(3*2*M*Dm + 2*Dm + 4*M)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(bytes/ms/1e9, "TB/s")
		b.ReportMetric(bytes/4.3e12*1e3, "roofline-ms")
	})
	const QK, Dh = M * 24, 96
	qx := randBuf(b, c, kernels.BF16, QK*Dh, 14, 1)
	qdy := randBuf(b, c, kernels.BF16, QK*Dh, 15, 1)
	qw := randBuf(b, c, kernels.BF16, Dh, 16, 1)
	qy, _ := c.Alloc(kernels.BF16, QK*Dh)
	qdx, _ := c.Alloc(kernels.BF16, QK*Dh)
	qr, _ := c.Alloc(kernels.F32, QK)
	c.RMSNorm(qy, qr, qx, qw, QK, Dh, 1e-6)
	b.Run("rmsnorm_104448x96_bf16", func(b *testing.B) {
		ms := median(eventTimes(b, c, 5, max(b.N, 100), func() { c.RMSNorm(qy, qr, qx, qw, QK, Dh, 1e-6) }))
		bytes := float64(2*2*QK*Dh + 2*Dh + 4*QK)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(bytes/ms/1e9, "TB/s")
		b.ReportMetric(bytes/4.3e12*1e3, "roofline-ms")
	})
	b.Run("rmsnormgrad_104448x96_bf16", func(b *testing.B) {
		ms := median(eventTimes(b, c, 5, max(b.N, 100), func() { c.RMSNormGrad(qdx, nil, qdy, qx, qw, qr, QK, Dh) }))
		bytes := float64(3*2*QK*Dh + 2*Dh + 4*QK)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(bytes/ms/1e9, "TB/s")
		b.ReportMetric(bytes/4.3e12*1e3, "roofline-ms")
	})
	const H = 32
	q := randBuf(b, c, kernels.BF16, M*H*96, 9, 1)
	qo, _ := c.Alloc(kernels.BF16, M*H*96)
	cs := randBuf(b, c, kernels.F32, M*48, 10, 1)
	sn := randBuf(b, c, kernels.F32, M*48, 11, 1)
	b.Run("rope_4352x32x96_bf16", func(b *testing.B) {
		ms := median(eventTimes(b, c, 5, max(b.N, 100), func() { c.Rope(qo, q, cs, sn, 1, M, H, 96, false, false) }))
		bytes := float64(2*2*M*H*96 + 2*4*M*48)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(bytes/ms/1e9, "TB/s")
		b.ReportMetric(bytes/4.3e12*1e3, "roofline-ms")
	})
	b.Run("silu_4352x9216_bf16", func(b *testing.B) {
		h := randBuf(b, c, kernels.BF16, M*9216, 12, 1)
		ho, _ := c.Alloc(kernels.BF16, M*9216)
		ms := median(eventTimes(b, c, 5, max(b.N, 100), func() { c.Unary(kernels.SiLU, ho, h, kernels.UnaryParams{}) }))
		bytes := float64(2 * 2 * M * 9216)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(bytes/ms/1e9, "TB/s")
		b.ReportMetric(bytes/4.3e12*1e3, "roofline-ms")
	})
}
