package cpu_test

import (
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// benchGemm times one n×n×n product with operands of dtype in and C of
// dtype out, reporting GFLOP/s.
func benchGemm(bm *testing.B, n int, in, out kernels.DType) {
	c := cpu.New()
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]float64, n*n)
	for i := range vals {
		vals[i] = r.NormFloat64()
	}
	alloc := func(d kernels.DType) kernels.Buffer {
		buf, err := c.Alloc(d, n*n)
		if err != nil {
			bm.Fatal(err)
		}
		c.Upload(buf, 0, kernels.EncodeF64(d, vals))
		return buf
	}
	a, b, cc := alloc(in), alloc(in), alloc(out)
	g := kernels.GemmArgs{M: n, N: n, K: n, Batch: 1, Alpha: 1,
		A: a, LDA: n, B: b, LDB: n, C: cc, LDC: n}
	bm.ResetTimer()
	for bm.Loop() {
		c.Gemm(g)
	}
	if err := c.Sync(); err != nil {
		bm.Fatal(err)
	}
	bm.ReportMetric(2*float64(n)*float64(n)*float64(n)*float64(bm.N)/bm.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkGemm1024F32(b *testing.B)  { benchGemm(b, 1024, kernels.F32, kernels.F32) }
func BenchmarkGemm1024BF16(b *testing.B) { benchGemm(b, 1024, kernels.BF16, kernels.BF16) }
func BenchmarkGemm512F64(b *testing.B)   { benchGemm(b, 512, kernels.F64, kernels.F64) }
