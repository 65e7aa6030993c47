package kerneltest

import (
	"fmt"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Gemm", testGemm)
	register("GemmBatched", testGemmBatched)
}

// paGemmRef computes C = alpha·op(A)·op(B) + beta·C for every batch in
// float64 from the flat buffers exactly as GemmArgs lays them out; with
// beta 0 the old C is not read. c is updated in place.
func paGemmRef(g kernels.GemmArgs, a, b, c []float64) {
	for bt := 0; bt < g.Batch; bt++ {
		for i := 0; i < g.M; i++ {
			for j := 0; j < g.N; j++ {
				var s float64
				for k := 0; k < g.K; k++ {
					var av, bv float64
					if g.TransA {
						av = a[g.OffA+bt*g.StrideA+k*g.LDA+i]
					} else {
						av = a[g.OffA+bt*g.StrideA+i*g.LDA+k]
					}
					if g.TransB {
						bv = b[g.OffB+bt*g.StrideB+j*g.LDB+k]
					} else {
						bv = b[g.OffB+bt*g.StrideB+k*g.LDB+j]
					}
					s += av * bv
				}
				at := g.OffC + bt*g.StrideC + i*g.LDC + j
				v := g.Alpha * s
				if g.Beta != 0 {
					v += g.Beta * c[at]
				}
				c[at] = v
			}
		}
	}
}

// paGemmDTypes are the (operand, C) dtype pairs GemmArgs allows.
var paGemmDTypes = [][2]kernels.DType{
	{kernels.F64, kernels.F64},
	{kernels.F32, kernels.F32},
	{kernels.BF16, kernels.F32},
	{kernels.BF16, kernels.BF16},
	{kernels.F16, kernels.F32},
	{kernels.F16, kernels.F16},
	{kernels.BF16, kernels.F16},
}

// paGemmRun allocates the operands of g (sizes from the layout, plus a
// margin that must stay untouched), runs the product on the backend and
// compares with the reference, including the untouched parts of C.
func paGemmRun(t *testing.T, b kernels.Backend, g kernels.GemmArgs, in, out kernels.DType) {
	t.Helper()
	r := Rng(t)
	span := func(off, stride, rows, cols, ld int) int {
		return off + (g.Batch-1)*stride + (rows-1)*ld + cols + 3
	}
	ar, ac := g.M, g.K
	if g.TransA {
		ar, ac = g.K, g.M
	}
	br, bc := g.K, g.N
	if g.TransB {
		br, bc = g.N, g.K
	}
	aBuf, a := Put(t, b, in, Randn(r, span(g.OffA, g.StrideA, ar, ac, g.LDA), 1))
	bBuf, bv := Put(t, b, in, Randn(r, span(g.OffB, g.StrideB, br, bc, g.LDB), 1))
	nC := span(g.OffC, g.StrideC, g.M, g.N, g.LDC)
	var cBuf kernels.Buffer
	var c []float64
	if g.Beta == 0 {
		// C holds NaN: beta 0 must not read it (BLAS semantics).
		cBuf = Poisoned(t, b, out, nC)
		c = paNaNs(nC)
	} else {
		cBuf, c = Put(t, b, out, Randn(r, nC, 1))
	}
	// Elements of C outside the matrices keep their old value (NaN when
	// poisoned), so the reference writes only the matrices.
	g.A, g.B, g.C = aBuf, bBuf, cBuf
	paGemmRef(g, a, bv, c)
	b.Gemm(g)
	Check(t, "Gemm", Get(t, b, cBuf), Quantize(out, c), Tol(in, out))
}

func testGemm(t *testing.T, b kernels.Backend) {
	shapes := []struct{ m, n, k int }{
		{7, 13, 37},
		{1, 100, 13}, // a row vector times a matrix
		{37, 5, 300}, // K longer than one packed block
		{13, 1, 7},
		{5, 7, 1},
	}
	for _, dt := range paGemmDTypes {
		for _, s := range shapes {
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					for _, beta := range []float64{0, 1, 0.5} {
						name := fmt.Sprintf("%v-%v/%dx%dx%d/tA=%v,tB=%v/beta=%g", dt[0], dt[1], s.m, s.n, s.k, ta, tb, beta)
						t.Run(name, func(t *testing.T) {
							g := kernels.GemmArgs{TransA: ta, TransB: tb, M: s.m, N: s.n, K: s.k, Batch: 1, Alpha: 1, Beta: beta}
							// Leading dimensions larger than the rows, and offsets.
							g.LDA, g.LDB, g.LDC = s.k+3, s.n+2, s.n+5
							if ta {
								g.LDA = s.m + 4
							}
							if tb {
								g.LDB = s.k + 1
							}
							g.OffA, g.OffB, g.OffC = 5, 2, 3
							if beta == 0.5 {
								g.Alpha = -1.7
							}
							paGemmRun(t, b, g, dt[0], dt[1])
						})
					}
				}
			}
		}
	}
	// The adapters' products: K a LoRA rank, bf16 in and out, beta 0, rows
	// and offsets in whole 16-byte chunks (the shapes the CUDA backend's
	// thin-K kernels take), over several 128-wide tiles with partial ones.
	for _, k := range []int{16, 32, 48, 64} {
		for _, tb := range []bool{false, true} {
			t.Run(fmt.Sprintf("rank-K/%d/tB=%v", k, tb), func(t *testing.T) {
				g := kernels.GemmArgs{TransB: tb, M: 300, N: 264, K: k, Batch: 1, Alpha: 0.5, LDA: k + 8, LDB: 264 + 8, LDC: 264 + 16,
					OffA: 8, OffB: 16, OffC: 8}
				if tb {
					g.LDB = k + 8
				}
				paGemmRun(t, b, g, kernels.BF16, kernels.BF16)
			})
		}
	}
	// The adapters' down-projections and their gradients' du: N a rank, K
	// long and not a multiple of 64.
	for _, n := range []int{16, 32, 48, 64} {
		for _, tb := range []bool{false, true} {
			t.Run(fmt.Sprintf("rank-N/%d/tB=%v", n, tb), func(t *testing.T) {
				g := kernels.GemmArgs{TransB: tb, M: 300, N: n, K: 520, Batch: 1, Alpha: 0.5, LDA: 520 + 8, LDB: n + 8, LDC: n + 8,
					OffA: 8, OffB: 16, OffC: 8}
				if tb {
					g.LDB = 520 + 16
				}
				paGemmRun(t, b, g, kernels.BF16, kernels.BF16)
			})
		}
	}
	t.Run("K=0", func(t *testing.T) {
		// An empty inner dimension leaves beta·C.
		g := kernels.GemmArgs{M: 7, N: 5, K: 0, Batch: 1, Alpha: 1, Beta: 0.5, LDA: 1, LDB: 5, LDC: 5}
		paGemmRun(t, b, g, kernels.F32, kernels.F32)
	})
	t.Run("large", func(t *testing.T) {
		// Big enough to span several tiles and packed blocks in every
		// direction, in the autocast dtypes.
		g := kernels.GemmArgs{TransB: true, M: 150, N: 530, K: 270, Batch: 1, Alpha: 0.5, Beta: 1, LDA: 270, LDB: 270, LDC: 530}
		paGemmRun(t, b, g, kernels.BF16, kernels.F32)
	})
}

func testGemmBatched(t *testing.T, b kernels.Backend) {
	const m, n, k = 7, 13, 11
	cases := []struct {
		name                      string
		strideA, strideB, strideC int
		ta, tb                    bool
	}{
		{"packed", m * k, k * n, m * n, false, false},
		{"gaps", m*k + 5, k*n + 3, m*n + 7, false, true},
		{"shared-A", 0, k * n, m * n, true, false},
		{"shared-B", m * k, 0, m * n, false, false},
		{"shared-both", 0, 0, m*n + 1, true, true},
	}
	for _, dt := range paGemmDTypes {
		for _, c := range cases {
			for _, beta := range []float64{0, 1, 0.5} {
				t.Run(fmt.Sprintf("%v-%v/%s/beta=%g", dt[0], dt[1], c.name, beta), func(t *testing.T) {
					g := kernels.GemmArgs{TransA: c.ta, TransB: c.tb, M: m, N: n, K: k, Batch: 4, Alpha: 1.3, Beta: beta,
						StrideA: c.strideA, StrideB: c.strideB, StrideC: c.strideC, OffA: 1, OffB: 2, OffC: 3}
					g.LDA, g.LDB, g.LDC = k, n, n
					if c.ta {
						g.LDA = m
					}
					if c.tb {
						g.LDB = k
					}
					paGemmRun(t, b, g, dt[0], dt[1])
				})
			}
		}
	}
}
