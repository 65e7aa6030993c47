// gemm_thin.cu: C = alpha·A·op(B) for bf16 operands whose inner dimension
// is a LoRA rank (K = 16, 32, 48 or 64), bf16 C, beta = 0: the adapters'
// up-projections, y = scale·u·bᵀ (B given as [N, K], op(B) = Bᵀ), and
// their share of dx, du·a (B given as [K, N]). Such a product reads almost
// nothing (M·K + K·N elements) and writes M·N, so it is bound by its
// stores; cuBLAS ran these at 19 µs where the write alone takes about 7
// (BENCHMARKS, 2026-12-04 profile: 359 a step at 1024², 6.9 ms).
//
// A block of 256 threads owns a 128 × 128 tile of C. The whole of K fits in
// shared memory at once, so there is no k loop: the A rows and B columns of
// the tile are copied in (cp.async, zero-filled past M and N), each of the
// 8 warps computes a 32 × 64 piece with mma.sync m16n8k16 (fp32
// accumulation), and the tile goes back through shared memory so that
// every global store is a 16-byte chunk of a row (a fragment's own stores
// would write 16 bytes per row per instruction). Rounding: one, fp32 →
// bf16, of alpha·(A·op(B)).
//
// Shared layouts (16-bit elements): A [128][K+8]; B as given, [128][K+8]
// (BT) or [K][128+8]; C [128][128+8]. The padding keeps ldmatrix's eight
// row addresses and the fragment stores on distinct banks.

template <int K, bool BT>
__device__ __forceinline__ void thin_gemm_body(u16* c, const u16* a, const u16* b, i64 m, i64 n, i64 lda, i64 ldb, i64 ldc,
                                               float alpha) {
  constexpr int BM = 128, BN = 128, LDK = K + 8, LDN = BN + 8;
  constexpr int AE = BM * LDK, BE = BT ? BN * LDK : K * LDN, CE = BM * LDN;
  constexpr int SE = AE + BE > CE ? AE + BE : CE;
  static_assert(SE * 2 <= 48 * 1024, "gemm_thin: the tiles must fit the default shared memory");
  extern __shared__ __align__(16) unsigned char smem_raw[];  // SE elements: thinSmem in gemm_thin.go
  u16* sm = (u16*)smem_raw;
  u16* sA = sm;
  u16* sB = sm + AE;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 3, wn = warp >> 2;  // 4 warps down M (32 rows each), 2 across N (64 columns each)
  const int g = lane >> 2, tg = lane & 3;
  const i64 m0 = (i64)blockIdx.y * BM, n0 = (i64)blockIdx.x * BN;

  // Copy in: A's 128 rows of K; B's 128 columns of K (BT: rows of B) or
  // K rows of 128 columns.
  {
    constexpr int ACH = BM * (K / 8);
    const u32 base = smem_u32(sA);
#pragma unroll
    for (int it = 0; it < ACH / 256; it++) {
      const int ch = tid + it * 256, r = ch / (K / 8), cc = ch % (K / 8);
      const bool ok = m0 + r < m;
      cp16(base + (u32)((r * LDK + cc * 8) * 2), ok ? a + (m0 + r) * lda + cc * 8 : a, ok);
    }
  }
  {
    const u32 base = smem_u32(sB);
    if constexpr (BT) {
      constexpr int BCH = BN * (K / 8);
#pragma unroll
      for (int it = 0; it < BCH / 256; it++) {
        const int ch = tid + it * 256, r = ch / (K / 8), cc = ch % (K / 8);
        const bool ok = n0 + r < n;
        cp16(base + (u32)((r * LDK + cc * 8) * 2), ok ? b + (n0 + r) * ldb + cc * 8 : b, ok);
      }
    } else {
      constexpr int BCH = K * (BN / 8);
#pragma unroll
      for (int it = 0; it < BCH / 256; it++) {
        const int ch = tid + it * 256, r = ch / (BN / 8), cc = ch % (BN / 8);
        const bool ok = n0 + cc * 8 < n;  // n is a multiple of 8: a chunk is all in or all out
        cp16(base + (u32)((r * LDN + cc * 8) * 2), ok ? b + r * ldb + n0 + cc * 8 : b, ok);
      }
    }
  }
  cp_commit();
  cp_wait0();
  __syncthreads();

  float acc[2][8][4];
#pragma unroll
  for (int mt = 0; mt < 2; mt++)
#pragma unroll
    for (int nt = 0; nt < 8; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
  const u32 aU = smem_u32(sA), bU = smem_u32(sB);
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    u32 af[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
      ldsm4(aU + (u32)(((wm * 32 + mt * 16 + (lane & 15)) * LDK + kk * 16 + (lane >> 4) * 8) * 2), af[mt][0], af[mt][1], af[mt][2],
            af[mt][3]);
#pragma unroll
    for (int np = 0; np < 4; np++) {
      u32 b0, b1, b2, b3;
      if constexpr (BT)
        ldsm4(bU + (u32)(((wn * 64 + np * 16 + (lane & 7) + (lane >> 4) * 8) * LDK + kk * 16 + ((lane >> 3) & 1) * 8) * 2), b0, b1,
              b2, b3);
      else
        ldsm4t(bU + (u32)(((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDN + wn * 64 + np * 16 + (lane >> 4) * 8) * 2), b0, b1,
               b2, b3);
#pragma unroll
      for (int mt = 0; mt < 2; mt++) {
        mma16816(acc[mt][2 * np], af[mt], b0, b1);
        mma16816(acc[mt][2 * np + 1], af[mt], b2, b3);
      }
    }
  }
  __syncthreads();  // every warp is done reading sA and sB: the tile of C reuses them

  u16* sC = sm;
#pragma unroll
  for (int mt = 0; mt < 2; mt++)
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const int r = wm * 32 + mt * 16 + g, col = wn * 64 + nt * 8 + tg * 2;
      *(u32*)(sC + r * LDN + col) = pack2(alpha * acc[mt][nt][0], alpha * acc[mt][nt][1]);
      *(u32*)(sC + (r + 8) * LDN + col) = pack2(alpha * acc[mt][nt][2], alpha * acc[mt][nt][3]);
    }
  __syncthreads();
#pragma unroll
  for (int it = 0; it < BM * (BN / 8) / 256; it++) {
    const int ch = tid + it * 256, r = ch / (BN / 8), cc = ch % (BN / 8);
    if (m0 + r < m && n0 + cc * 8 < n) *(uint4*)(c + (m0 + r) * ldc + n0 + cc * 8) = *(const uint4*)(sC + r * LDN + cc * 8);
  }
}

// gemm_thin_kK_{nt,nn}: the kernels per K; _nt takes B as [N, K] (C =
// A·Bᵀ), _nn as [K, N]. Grid: (⌈N/128⌉, ⌈M/128⌉), 256 threads, the dynamic
// shared memory thinSmem gives. The Go side (gemm_thin.go) checks the
// shapes, strides and alignment they assume.
#define THIN_ARGS u16 *c, const u16 *a, const u16 *b, i64 m, i64 n, i64 lda, i64 ldb, i64 ldc, double alpha
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k16_nt(THIN_ARGS) { thin_gemm_body<16, true>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k32_nt(THIN_ARGS) { thin_gemm_body<32, true>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k48_nt(THIN_ARGS) { thin_gemm_body<48, true>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k64_nt(THIN_ARGS) { thin_gemm_body<64, true>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k16_nn(THIN_ARGS) { thin_gemm_body<16, false>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k32_nn(THIN_ARGS) { thin_gemm_body<32, false>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k48_nn(THIN_ARGS) { thin_gemm_body<48, false>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
extern "C" __global__ void __launch_bounds__(256) gemm_thin_k64_nn(THIN_ARGS) { thin_gemm_body<64, false>(c, a, b, m, n, lda, ldb, ldc, (float)alpha); }
#undef THIN_ARGS
