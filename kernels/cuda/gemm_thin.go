package cuda

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// rankSized reports whether d is one of the LoRA ranks gemm_thin.cu's
// kernels are built for.
func rankSized(d int) bool { return d == 16 || d == 32 || d == 48 || d == 64 }

// thinGemm runs g on gemm_thin.cu's kernels where they apply — bf16 A, B
// and C, one batch, A not transposed, beta 0, K and N and every leading
// dimension and offset a multiple of 8 elements (16-byte rows), on a GPU
// with bf16 tensor cores, and K (gemm_thin_k*) or else N (gemm_narrow_n*)
// a rank — and reports whether it did. The operands' extents have been
// checked by Gemm.
func (c *Backend) thinGemm(g kernels.GemmArgs, a, b, cc *buffer) bool {
	if !c.fast(fastThinGemm) || !c.tensorCoreArch() || a.dt != kernels.BF16 || cc.dt != kernels.BF16 ||
		g.Batch != 1 || g.TransA || g.Beta != 0 || g.M == 0 || g.N == 0 || g.K == 0 || g.N%8 != 0 || g.K%8 != 0 {
		return false
	}
	for _, v := range []int{g.LDA, g.LDB, g.LDC, g.OffA, g.OffB, g.OffC} {
		if v%8 != 0 {
			return false
		}
	}
	if !rankSized(g.K) || (g.M+127)/128 > 65535 {
		return rankSized(g.N) && c.narrowGemm(g, a, b, cc)
	}
	form := "nn"
	if g.TransB {
		form = "nt"
	}
	esz := uint64(a.dt.Size())
	c.launch(fmt.Sprintf("gemm_thin_k%d_%s", g.K, form), dims{(g.N + 127) / 128, (g.M + 127) / 128, 1}, 256, thinSmem(g.K, g.TransB),
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

// narrowGemm runs g, with N a rank, as gemm_narrow_n*: ⌈M/64⌉ row tiles
// times S splits of K, S chosen for about four blocks an SM, then the
// ordered sum of the splits (gemm_narrow_reduce).
func (c *Backend) narrowGemm(g kernels.GemmArgs, a, b, cc *buffer) bool {
	const op = "Gemm"
	tiles, nk := (g.M+63)/64, (g.K+63)/64
	splits := max(1, min(nk, (4*c.dev.sms+tiles-1)/tiles, 65535))
	kc := (nk + splits - 1) / splits
	splits = (nk + kc - 1) / kc
	part, psize, err := c.alloc.get(int64(splits*g.M*g.N) * 4)
	if err != nil {
		c.failf("%s: split partials: %v", op, err)
		return true
	}
	defer c.alloc.put(part, psize)
	form := "nn"
	if g.TransB {
		form = "nt"
	}
	esz := uint64(a.dt.Size())
	c.launch(fmt.Sprintf("gemm_narrow_n%d_%s", g.N, form), dims{tiles, splits, 1}, 128, narrowSmem(g.N, g.TransB),
		part, a.ptr+uint64(g.OffA)*esz, b.ptr+uint64(g.OffB)*esz, g.M, g.K, g.LDA, g.LDB, kc)
	c.launch("gemm_narrow_reduce", c.grid1(g.M*g.N, blockSize), blockSize, 0, cc.ptr+uint64(g.OffC)*esz, part, g.M, g.N, splits,
		g.LDC, g.Alpha)
	return true
}

// narrowSmem is gemm_narrow_n*'s dynamic shared memory for N and the form
// of B: three stages of the A tile [64][72] and the B tile, [N][72] (bt) or
// [64][N+8].
func narrowSmem(n int, bt bool) int {
	b := 64 * (n + 8)
	if bt {
		b = n * 72
	}
	return 3 * 2 * (64*72 + b)
}
