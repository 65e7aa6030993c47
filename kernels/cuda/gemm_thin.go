package cuda

import "github.com/newbie-train/newbie-train/kernels"

// thinKernels names gemm_thin.cu's kernels by K/16 − 1 and the form of B
// (1: given as [N, K]).
var thinKernels = [4][2]string{
	{"gemm_thin_k16_nn", "gemm_thin_k16_nt"}, {"gemm_thin_k32_nn", "gemm_thin_k32_nt"},
	{"gemm_thin_k48_nn", "gemm_thin_k48_nt"}, {"gemm_thin_k64_nn", "gemm_thin_k64_nt"},
}

// thinGemm runs g on gemm_thin.cu's kernels where they apply — bf16 A, B
// and C, a rank-sized K, one batch, A not transposed, beta 0, N and every
// leading dimension and offset a multiple of 8 elements (16-byte rows), on
// a GPU with bf16 tensor cores — and reports whether it did. The operands'
// extents have been checked by Gemm.
//
// The other thin side, N a rank and K long (the down-projections u = h·aᵀ
// and du = g·b), stays on cuBLAS: a split-K kernel for it (64-row tiles,
// three cp.async stages, partials summed in order) was built and measured
// slower than cuBLAS, which reads the qkv's 3840-wide gradient at 9.1 µs,
// near the H200's bandwidth (BENCHMARKS, 2026-12-04 20:44 call).
func (c *Backend) thinGemm(g kernels.GemmArgs, a, b, cc *buffer) bool {
	if !c.fast(fastThinGemm) || !c.tensorCoreArch() || a.dt != kernels.BF16 || cc.dt != kernels.BF16 ||
		g.Batch != 1 || g.TransA || g.Beta != 0 || g.M == 0 || g.N%8 != 0 || g.K%16 != 0 || g.K < 16 || g.K > 64 ||
		(g.M+127)/128 > 65535 || (g.LDA|g.LDB|g.LDC|g.OffA|g.OffB|g.OffC)%8 != 0 {
		return false
	}
	form := 0
	if g.TransB {
		form = 1
	}
	esz := uint64(a.dt.Size())
	c.launch(thinKernels[g.K/16-1][form], dims{(g.N + 127) / 128, (g.M + 127) / 128, 1}, 256, thinSmem(g.K, g.TransB),
		cc.ptr+uint64(g.OffC)*esz, a.ptr+uint64(g.OffA)*esz, b.ptr+uint64(g.OffB)*esz, g.M, g.N, g.LDA, g.LDB, g.LDC, g.Alpha)
	return true
}

// thinSmem is the dynamic shared memory of gemm_thin.cu's kernel for K and
// the form of B (bt: [N, K]): the A and B tiles, or the C tile that reuses
// them, whichever is larger, in 16-bit elements of padded rows.
func thinSmem(k int, bt bool) int {
	const bm, bn = 128, 128
	ab := bm*(k+8) + k*(bn+8)
	if bt {
		ab = bm*(k+8) + bn*(k+8)
	}
	return 2 * max(ab, bm*(bn+8))
}
