package cpu_test

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// TestPartAMisuse checks that bad arguments to the layout, GEMM,
// elementwise, reduction, softmax, gather and random ops are failures
// reported by Sync, naming the op, and never panics; and that Sync clears
// the failure.
func TestPartAMisuse(t *testing.T) {
	c := cpu.New()
	alloc := func(d kernels.DType, n int) kernels.Buffer {
		b, err := c.Alloc(d, n)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	f32 := func(n int) kernels.Buffer { return alloc(kernels.F32, n) }
	ids := alloc(kernels.I32, 3)
	c.Upload(ids, 0, kernels.EncodeI32([]int32{0, 9, 1}))
	freed := f32(4)
	c.Free(freed)
	gemm := func(mod func(*kernels.GemmArgs)) func() {
		return func() {
			g := kernels.GemmArgs{M: 4, N: 5, K: 6, Batch: 1, Alpha: 1, A: f32(24), LDA: 6, B: f32(30), LDB: 5, C: f32(20), LDC: 5}
			mod(&g)
			c.Gemm(g)
		}
	}
	cases := []struct {
		name, want string // want: a fragment the error must contain
		call       func()
	}{
		{"Cast length", "Cast", func() { c.Cast(f32(3), f32(4)) }},
		{"Fill freed", "freed", func() { c.Fill(freed, 1) }},
		{"Copy2D src too short", "Copy2D", func() { c.Copy2D(f32(20), 0, 5, f32(10), 0, 5, 4, 5) }},
		{"Copy2D dst too short", "Copy2D", func() { c.Copy2D(f32(10), 0, 5, f32(20), 0, 5, 4, 5) }},
		{"Copy2D overlapping dst rows", "overlap", func() { c.Copy2D(f32(20), 0, 2, f32(20), 0, 5, 4, 5) }},
		{"Permute bad perm", "Permute", func() { c.Permute(f32(6), f32(6), []int{2, 3}, []int{0, 0}) }},
		{"Permute length", "Permute", func() { c.Permute(f32(6), f32(7), []int{2, 3}, []int{1, 0}) }},
		{"Permute rank 7", "Permute", func() {
			c.Permute(f32(1), f32(1), []int{1, 1, 1, 1, 1, 1, 1}, []int{0, 1, 2, 3, 4, 5, 6})
		}},
		{"Gemm A too short", "A needs", gemm(func(g *kernels.GemmArgs) { g.A = f32(23) })},
		{"Gemm C too short", "C needs", gemm(func(g *kernels.GemmArgs) { g.C = f32(19) })},
		{"Gemm batch too long", "B needs", gemm(func(g *kernels.GemmArgs) { g.Batch, g.StrideA, g.StrideB, g.StrideC = 2, 0, 30, 20 })},
		{"Gemm small LDA", "LDA", gemm(func(g *kernels.GemmArgs) { g.LDA = 5 })},
		{"Gemm mixed dtypes", "share one dtype", gemm(func(g *kernels.GemmArgs) { g.B = alloc(kernels.BF16, 30) })},
		{"Gemm BF16 C for F32", "cannot write", gemm(func(g *kernels.GemmArgs) { g.C = alloc(kernels.BF16, 20) })},
		{"Gemm I32", "not F32", gemm(func(g *kernels.GemmArgs) { g.A, g.B = alloc(kernels.I32, 24), alloc(kernels.I32, 30) })},
		{"Gemm overlapping C", "overlap", gemm(func(g *kernels.GemmArgs) { g.Batch, g.StrideC, g.C = 2, 0, f32(40) })},
		{"Gemm C is A", "same buffer", gemm(func(g *kernels.GemmArgs) { g.C = g.A; g.LDC = 6; g.N = 6; g.B = f32(36); g.LDB = 6 })},
		{"Unary length", "Unary", func() { c.Unary(kernels.Exp, f32(3), f32(4), kernels.UnaryParams{}) }},
		{"Unary I32", "not a float", func() { c.Unary(kernels.Exp, f32(3), alloc(kernels.I32, 3), kernels.UnaryParams{}) }},
		{"Unary unknown op", "unknown op", func() { c.Unary(200, f32(3), f32(3), kernels.UnaryParams{}) }},
		{"UnaryGrad length", "UnaryGrad", func() { c.UnaryGrad(kernels.Tanh, f32(3), f32(3), f32(2), kernels.UnaryParams{}) }},
		{"Binary rank mismatch", "rank", func() { c.Binary(kernels.Add, f32(6), []int{2, 3}, f32(6), []int{2, 3}, f32(2), []int{2, 1, 1}) }},
		{"Binary wrong extent", "axis 1", func() { c.Binary(kernels.Add, f32(6), []int{2, 3}, f32(4), []int{2, 2}, f32(6), []int{2, 3}) }},
		{"Binary length", "Binary", func() { c.Binary(kernels.Mul, f32(6), []int{2, 3}, f32(5), []int{2, 3}, f32(6), []int{2, 3}) }},
		{"Reduce length", "Reduce", func() { c.Reduce(kernels.Sum, f32(3), f32(10), 3, 3, 1) }},
		{"SumSquares BF16 dst", "SumSquares", func() { c.SumSquares(alloc(kernels.BF16, 1), []kernels.Buffer{f32(3)}) }},
		{"NonFinite freed src", "freed", func() { c.NonFinite(f32(1), []kernels.Buffer{f32(3), freed}) }},
		{"Softmax length", "Softmax", func() { c.Softmax(f32(6), f32(5), 2, 3) }},
		{"SoftmaxGrad length", "SoftmaxGrad", func() { c.SoftmaxGrad(f32(6), f32(6), f32(5), 2, 3) }},
		{"Gather id out of range", "id 9 at position 1", func() { c.Gather(f32(6), f32(8), ids, 2) }},
		{"Gather float ids", "want I32", func() { c.Gather(f32(6), f32(8), f32(3), 2) }},
		{"Gather dst length", "Gather", func() { c.Gather(f32(5), f32(40), ids, 2) }},
		{"ScatterAdd id out of range", "id 9 at position 1", func() { c.ScatterAdd(f32(8), f32(6), ids, 2) }},
		{"RandNormal I32", "RandNormal", func() { c.RandNormal(alloc(kernels.I32, 3), 1, 0, 0, 1) }},
		{"RandUniform freed", "freed", func() { c.RandUniform(freed, 1, 0, 0, 1) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("panicked: %v", p)
				}
			}()
			tc.call()
			err := c.Sync()
			if err == nil {
				t.Fatal("Sync returned nil")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if err := c.Sync(); err != nil {
				t.Errorf("second Sync returned %v; the failure should be cleared", err)
			}
		})
	}
}

// TestPartADeterminism checks that GEMM, Reduce and SumSquares give
// bit-identical results with one and with several goroutines, as the
// backend promises (the summation order depends only on the shapes).
func TestPartADeterminism(t *testing.T) {
	run := func(procs int) [][]byte {
		old := runtime.GOMAXPROCS(procs)
		defer runtime.GOMAXPROCS(old)
		c := cpu.New()
		put := func(d kernels.DType, n int, seed uint64) kernels.Buffer {
			b, err := c.Alloc(d, n)
			if err != nil {
				t.Fatal(err)
			}
			c.RandNormal(b, seed, 0, 0.1, 1)
			return b
		}
		const m, n, k = 67, 301, 530
		cc := put(kernels.F32, m*n, 3)
		c.Gemm(kernels.GemmArgs{TransA: true, M: m, N: n, K: k, Batch: 1, Alpha: 0.7, Beta: 0.5,
			A: put(kernels.BF16, k*m, 1), LDA: m, B: put(kernels.BF16, k*n, 2), LDB: n, C: cc, LDC: n})
		red := put(kernels.F32, 3*7, 0)
		c.Reduce(kernels.Sum, red, put(kernels.F32, 3*5000*7, 4), 3, 5000, 7)
		sq := put(kernels.F32, 1, 0)
		c.SumSquares(sq, []kernels.Buffer{put(kernels.F32, 100003, 5), put(kernels.BF16, 70001, 6)})
		var out [][]byte
		for _, b := range []kernels.Buffer{cc, red, sq} {
			raw := make([]byte, b.Len()*b.DType().Size())
			if err := c.Download(raw, b, 0); err != nil {
				t.Fatal(err)
			}
			out = append(out, raw)
		}
		return out
	}
	one, many := run(1), run(max(4, runtime.NumCPU()))
	for i, name := range []string{"Gemm", "Reduce", "SumSquares"} {
		if !bytes.Equal(one[i], many[i]) {
			t.Errorf("%s differs between 1 and %d goroutines", name, max(4, runtime.NumCPU()))
		}
	}
}
