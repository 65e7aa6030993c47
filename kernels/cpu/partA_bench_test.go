package cpu_test

import (
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// Throughput of the memory-bound ops of part A on 4 Mi elements, reported
// as elements per second.

const benchN = 2048 * 2304

func benchBufs(bm *testing.B, c *cpu.Backend, d kernels.DType, sizes ...int) []kernels.Buffer {
	out := make([]kernels.Buffer, len(sizes))
	for i, n := range sizes {
		b, err := c.Alloc(d, n)
		if err != nil {
			bm.Fatal(err)
		}
		c.RandUniform(b, uint64(i), 0, 0.1, 1)
		out[i] = b
	}
	return out
}

func benchLoop(bm *testing.B, c *cpu.Backend, f func()) {
	bm.ResetTimer()
	for bm.Loop() {
		f()
	}
	if err := c.Sync(); err != nil {
		bm.Fatal(err)
	}
	bm.ReportMetric(float64(benchN)*float64(bm.N)/bm.Elapsed().Seconds()/1e6, "Melem/s")
}

func BenchmarkUnarySiLUBF16(bm *testing.B) {
	c := cpu.New()
	b := benchBufs(bm, c, kernels.BF16, benchN, benchN)
	benchLoop(bm, c, func() { c.Unary(kernels.SiLU, b[0], b[1], kernels.UnaryParams{}) })
}

func BenchmarkBinaryMulBroadcastF32(bm *testing.B) {
	c := cpu.New()
	const cols = 2304
	b := benchBufs(bm, c, kernels.F32, benchN, benchN, cols)
	benchLoop(bm, c, func() {
		c.Binary(kernels.Mul, b[0], []int{benchN / cols, cols}, b[1], []int{benchN / cols, cols}, b[2], []int{1, cols})
	})
}

func BenchmarkReduceSumRowsF32(bm *testing.B) {
	c := cpu.New()
	const cols = 2304
	b := benchBufs(bm, c, kernels.F32, benchN/cols, benchN)
	benchLoop(bm, c, func() { c.Reduce(kernels.Sum, b[0], b[1], benchN/cols, cols, 1) })
}

func BenchmarkReduceSumColsF32(bm *testing.B) {
	c := cpu.New()
	const cols = 2304
	b := benchBufs(bm, c, kernels.F32, cols, benchN)
	benchLoop(bm, c, func() { c.Reduce(kernels.Sum, b[0], b[1], 1, benchN/cols, cols) })
}

func BenchmarkSoftmaxF32(bm *testing.B) {
	c := cpu.New()
	const cols = 2304
	b := benchBufs(bm, c, kernels.F32, benchN, benchN)
	benchLoop(bm, c, func() { c.Softmax(b[0], b[1], benchN/cols, cols) })
}

func BenchmarkRandNormalF32(bm *testing.B) {
	c := cpu.New()
	b := benchBufs(bm, c, kernels.F32, benchN)
	benchLoop(bm, c, func() { c.RandNormal(b[0], 7, 0, 0, 1) })
}

func BenchmarkPermuteBSHD(bm *testing.B) {
	c := cpu.New()
	b := benchBufs(bm, c, kernels.BF16, benchN, benchN)
	benchLoop(bm, c, func() { c.Permute(b[0], b[1], []int{4, 1152, 8, 128}, []int{0, 2, 1, 3}) })
}
