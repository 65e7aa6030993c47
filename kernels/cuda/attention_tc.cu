// attention_tc.cu: flash attention on the tensor cores (FlashAttention-2,
// Dao 2023) for head size 64, 96 or 128 (and 256, forward only): the
// forward on bf16 or fp16 Q/K/V/O, the backward on bf16 alone (fp16
// gradients take the portable kernels of attention.cu).
//
// Forward: a block owns 64 query rows of one head (16 per warp); K and V
// stream through shared memory in tiles of 64 keys, double-buffered with
// cp.async. Scores S = Q·Kᵀ and O += P·V are mma.sync m16n8k16 products
// (bf16 or fp16 operands, the bodies' F16 parameter) with fp32
// accumulation; the softmax is online in the exp2 domain, and P is reused
// straight from the score registers, rounded to the operand type, as the
// next product's A operand. The score matrix never leaves registers. The
// fp16 entry points carry the suffix _f16; LSE is fp32 for both.
//
// Backward: a block owns 64 keys of one kv head and walks every query tile
// of every query head sharing it, so dK and dV accumulate in registers with
// no atomics; dQ is accumulated across key blocks with fp32 atomic adds into
// a scratch buffer that a last kernel rounds to bf16.

#define TC_LOG2E 1.4426950408889634f

// The mma.sync, ldmatrix and cp.async primitives are tc.cuh's.

// red2 adds two adjacent floats in global memory with one vector
// reduction where the GPU has it (sm_90: half the atomic traffic of the dQ
// accumulation), two scalar atomics elsewhere. The test is on the target
// architecture, not the compiler version: NVRTC 12 building for sm_80 or
// sm_89 rejects the vector form.
__device__ __forceinline__ void red2(float* p, float x, float y) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// tile_load queues a ROWS × D tile (rows row0.. of a strided 16-bit matrix)
// into shared memory with padded rows of D+8 elements; rows ≥ valid are
// zero-filled. NT threads share the copy; both are compile-time constants
// so the loop unrolls.
template <int D, int ROWS = 64, int NT = 128>
__device__ __forceinline__ void tile_load(u16* s, const u16* g, i64 row0, i64 valid, i64 stride) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  static_assert(ROWS * CPR % NT == 0, "tile_load: chunks must split evenly over the threads");
  u32 base = smem_u32(s);
#pragma unroll
  for (int it = 0; it < ROWS * CPR / NT; it++) {
    int c = threadIdx.x + it * NT;
    int r = c / CPR, cc = c - r * CPR;
    bool ok = r < valid;
    const u16* src = ok ? g + (row0 + r) * stride + cc * 8 : g;
    cp16(base + (u32)((r * (D + 8) + cc * 8) * 2), src, ok);
  }
}

// row_keys is key_range for row i, empty for rows past Sq.
__device__ __forceinline__ void row_keys(const AttnShape& a, i64 b, i64 i, i64& lo, i64& hi) {
  if (i >= a.Sq) {
    lo = 0;
    hi = 0;
    return;
  }
  key_range(a, b, i, lo, hi);
}

// Forward body: each warp owns MT·16 query rows (BQ = 64·MT per block), so
// every K and V fragment read from shared memory feeds MT products; MT = 2
// halves the shared-memory traffic per product where registers allow.
template <int D, int MT, bool F16>
__device__ void attn_fwd_tc_body(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8, BQ = 64 * MT;
  u16* sQ = (u16*)smem_raw;
  u16* sK = sQ + BQ * LD;       // two stages
  u16* sV = sK + 2 * 64 * LD;   // two stages
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tg = lane & 3;
  const i64 b = blockIdx.z, h = blockIdx.y, q0 = (i64)blockIdx.x * BQ;
  const i64 hk = h / (a.Hq / a.Hkv);
  const u16* qb = q + (b * a.Sq * a.Hq + h) * D;
  const u16* kb = k + (b * a.Sk * a.Hkv + hk) * D;
  const u16* vb = v + (b * a.Sk * a.Hkv + hk) * D;
  const i64 qs = a.Hq * D, ks = a.Hkv * D;

  // Keys any row of the block sees: lo and hi grow with the row index.
  i64 blo, bhi, tlo, thi;
  key_range(a, b, q0, blo, bhi);
  key_range(a, b, min(q0 + BQ - 1, a.Sq - 1), tlo, thi);
  const i64 kt0 = blo / 64, kt1 = thi > blo ? (thi + 63) / 64 : kt0;
  const i64 kmax = min(a.Sk, a.keylens ? (i64)((const int*)a.keylens)[b] : a.Sk);

  // Rows of this thread: m-tile mt, half e/2 of the fragment.
  // Stored as (first key, key count) in 32 bits: fewer registers.
  int lo[MT][2], cnt[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      i64 l0, h0;
      row_keys(a, b, q0 + warp * 16 * MT + mt * 16 + g + hf * 8, l0, h0);
      lo[mt][hf] = (int)l0;
      cnt[mt][hf] = (int)max(h0 - l0, (i64)0);
    }

  for (int r = 0; r < MT; r++) tile_load<D>(sQ + r * 64 * LD, qb, q0 + r * 64, a.Sq - q0 - r * 64, qs);
  if (kt0 < kt1) {
    tile_load<D>(sK, kb, kt0 * 64, a.Sk - kt0 * 64, ks);
    tile_load<D>(sV, vb, kt0 * 64, a.Sk - kt0 * 64, ks);
  }
  cp_commit();
  cp_wait0();
  __syncthreads();

  float acc[MT][D / 8][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int t = 0; t < D / 8; t++) acc[mt][t][0] = acc[mt][t][1] = acc[mt][t][2] = acc[mt][t][3] = 0.f;
    m[mt][0] = m[mt][1] = -NT_INF;
    l[mt][0] = l[mt][1] = 0.f;
  }
  const float sl2 = (float)a.scale * TC_LOG2E;
  const u16* wQ = sQ + warp * 16 * MT * LD;
  const u32 wQu = smem_u32(wQ);  // shared addresses, computed once

  for (i64 kt = kt0; kt < kt1; kt++) {
    const int stg = (int)((kt - kt0) & 1);
    if (kt + 1 < kt1) {
      tile_load<D>(sK + (stg ^ 1) * 64 * LD, kb, (kt + 1) * 64, a.Sk - (kt + 1) * 64, ks);
      tile_load<D>(sV + (stg ^ 1) * 64 * LD, vb, (kt + 1) * 64, a.Sk - (kt + 1) * 64, ks);
    }
    cp_commit();
    const u32 cKu = smem_u32(sK + stg * 64 * LD);
    const u32 cVu = smem_u32(sV + stg * 64 * LD);

    float s[MT][8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int t = 0; t < 8; t++) s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      u32 qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
        ldsm4((wQu + (u32)((mt * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8) * 2u), qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3]);
#pragma unroll
      for (int np = 0; np < 4; np++) {
        u32 b0, b1, b2, b3;
        ldsm4((cKu + (u32)((np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8) * 2u), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816_t<F16>(s[mt][2 * np], qa[mt], b0, b1);
          mma16816_t<F16>(s[mt][2 * np + 1], qa[mt], b2, b3);
        }
      }
    }
    // Mask only tiles that straddle a bound (the test is uniform over the
    // block, so no divergence). Scores stay unscaled: the Go side sends
    // only positive scales here, so the row max commutes with the scale,
    // which is folded into one multiply-add before each exp2.
    const i64 jb = kt * 64;
    const bool full = jb + 64 <= kmax && (!a.causal || (jb + 63 <= q0 && (a.window <= 0 || q0 + BQ - 1 - jb < a.window)));
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      float mx0 = -NT_INF, mx1 = -NT_INF;
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
        if (!full) {
          const int jl = nt * 8 + tg * 2;
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int hf = e >> 1;
            int j = (int)jb - lo[mt][hf] + jl + (e & 1);  // key offset from the row's first key
            if (!(j >= 0 && j < cnt[mt][hf])) s[mt][nt][e] = -NT_INF;
          }
        }
        mx0 = fmaxf(mx0, fmaxf(s[mt][nt][0], s[mt][nt][1]));
        mx1 = fmaxf(mx1, fmaxf(s[mt][nt][2], s[mt][nt][3]));
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float mn0 = fmaxf(m[mt][0], mx0), mn1 = fmaxf(m[mt][1], mx1);
      // Rows with no key yet keep everything at zero: alpha 1, offset 0.
      const float ms0 = mn0 == -NT_INF ? 0.f : mn0 * sl2, ms1 = mn1 == -NT_INF ? 0.f : mn1 * sl2;
      const float al0 = mn0 == -NT_INF ? 1.f : ex2(m[mt][0] * sl2 - ms0), al1 = mn1 == -NT_INF ? 1.f : ex2(m[mt][1] * sl2 - ms1);
      m[mt][0] = mn0;
      m[mt][1] = mn1;
      float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
        s[mt][nt][0] = ex2(fmaf(s[mt][nt][0], sl2, -ms0));
        s[mt][nt][1] = ex2(fmaf(s[mt][nt][1], sl2, -ms0));
        s[mt][nt][2] = ex2(fmaf(s[mt][nt][2], sl2, -ms1));
        s[mt][nt][3] = ex2(fmaf(s[mt][nt][3], sl2, -ms1));
        ps0 += s[mt][nt][0] + s[mt][nt][1];
        ps1 += s[mt][nt][2] + s[mt][nt][3];
      }
      l[mt][0] = l[mt][0] * al0 + ps0;
      l[mt][1] = l[mt][1] * al1 + ps1;
      // Once a row's maximum settles, alpha is 1: skip the rescale when the
      // whole warp agrees (the usual case after the first tiles).
      if (__any_sync(0xffffffffu, al0 != 1.f || al1 != 1.f)) {
#pragma unroll
        for (int t = 0; t < D / 8; t++) {
          acc[mt][t][0] *= al0;
          acc[mt][t][1] *= al0;
          acc[mt][t][2] *= al1;
          acc[mt][t][3] *= al1;
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      u32 pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        pa[mt][0] = pack2_t<F16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2_t<F16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2_t<F16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2_t<F16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        u32 b0, b1, b2, b3;
        ldsm4t((cVu + (u32)((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8) * 2u), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816_t<F16>(acc[mt][2 * dp], pa[mt], b0, b1);
          mma16816_t<F16>(acc[mt][2 * dp + 1], pa[mt], b2, b3);
        }
      }
    }
    cp_wait0();
    __syncthreads();
  }

#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      float lv = l[mt][hf];
      lv += __shfl_xor_sync(0xffffffffu, lv, 1);
      lv += __shfl_xor_sync(0xffffffffu, lv, 2);
      const float inv = lv > 0.f ? 1.f / lv : 0.f;
      const i64 r = q0 + warp * 16 * MT + mt * 16 + g + hf * 8;
      if (r < a.Sq) {
        u16* orow = o + ((b * a.Sq + r) * a.Hq + h) * D;
#pragma unroll
        for (int t = 0; t < D / 8; t++) *(u32*)(orow + t * 8 + tg * 2) = pack2_t<F16>(acc[mt][t][2 * hf] * inv, acc[mt][t][2 * hf + 1] * inv);
        if (tg == 0) lse[(b * a.Hq + h) * a.Sq + r] = lv > 0.f ? m[mt][hf] * (float)a.scale + logf(lv) : -NT_INF;
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc64(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<64, 2, false>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc96(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<96, 2, false>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc128(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<128, 1, false>(a, q, k, v, o, lse);
}
// Head size 256 (Gemma 3), forward only: 255 registers, no spills, and
// 169 KB of shared memory, so it runs where the device allows that (Hopper);
// see attention256.go.
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc256(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<256, 1, false>(a, q, k, v, o, lse);
}
// The fp16 forwards: the same kernels on fp16 Q, K, V and O.
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc64_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<64, 2, true>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc96_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<96, 2, true>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc128_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<128, 1, true>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc256_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<256, 1, true>(a, q, k, v, o, lse);
}

// ---------------------------------------------------------------------------
// Hopper forward: the two products on warpgroup MMA (wgmma, sm_90a).
//
// A block of 256 threads is two warpgroups, each owning 64 query rows; K and
// V tiles of BN keys stream through shared memory (cp.async, two stages)
// and are shared by both. S = Q·Kᵀ reads both operands from shared memory;
// O += P·V takes P straight from the score registers (the accumulator
// layout of m64nN is the m16n8 fragment layout per warp, so rounding pairs
// to bf16 or fp16 gives the A fragment) and V from shared memory as an
// MN-major operand. The softmax is the tensor-core kernel's above,
// unchanged, and so is the element type's selection (F16).
//
// Shared tiles use the 64-byte swizzle: a tile of R rows × D columns is
// stored as D/32 panels of R rows × 64 bytes, and within a panel the 16-byte
// chunk c of row r sits at chunk c ^ ((r/2) mod 4) — the layout the wgmma
// descriptors below declare (mode 2 in bits 62–63; 8-row groups 512 bytes
// apart; panels R·64 bytes apart). Each tile starts on a 1024-byte boundary.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The forward's products, defined once per element type by
// WG_FWD_PRODUCTS(SFX, TY) (the PTX type is part of the instruction's
// string literal): wg_ss64 is D = A·B, or D += A·B when accumulate is set
// (A and B in shared memory, K-major); wg_rsN is D += A·B (A from
// registers, B MN-major, N columns). SFX names the type: none for bf16,
// _f16 for fp16.
#define WG_FWD_PRODUCTS(SFX, TY) \
__device__ __forceinline__ void wg_ss64##SFX(float* d, u64 a, u64 b, int accumulate) { \
  asm volatile( \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n" \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
      : "l"(a), "l"(b), "r"(accumulate)); \
} \
__device__ __forceinline__ void wg_rs64##SFX(float* d, const u32* a, u64 b) { \
  asm volatile( \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(1)); \
} \
__device__ __forceinline__ void wg_rs96##SFX(float* d, const u32* a, u64 b) { \
  asm volatile( \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n" \
      "wgmma.mma_async.sync.aligned.m64n96k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, {%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]) \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(1)); \
} \
__device__ __forceinline__ void wg_rs128##SFX(float* d, const u32* a, u64 b) { \
  asm volatile( \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n" \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(1)); \
}
WG_FWD_PRODUCTS(, "bf16")
WG_FWD_PRODUCTS(_f16, "f16")
#undef WG_FWD_PRODUCTS

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// fence_async_smem orders this thread's shared-memory writes (cp.async
// lands through the generic proxy) before wgmma reads them (async proxy).
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// wg_desc is a shared-memory matrix descriptor for the 64-byte swizzle:
// start address, leading and stride byte offsets, all in 16-byte units.
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo, u32 sbo) {
  return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (2ull << 62);
}

// kmaj_step is the descriptor offset (16-byte units) of k-step kk in a
// K-major swizzled tile of R rows: two 16-column steps per 32-column panel.
template <int R>
__device__ __forceinline__ constexpr u64 kmaj_step(int kk) {
  return (u64)(((kk >> 1) * R * 64 + (kk & 1) * 32) >> 4);
}

// wg_rs and wg_ss64_t pick the product by width and element type (F16:
// fp16, else bf16) at compile time.
template <int N, bool F16 = false>
__device__ __forceinline__ void wg_rs(float* d, const u32* a, u64 b) {
  if constexpr (F16) {
    if constexpr (N == 64) wg_rs64_f16(d, a, b);
    else if constexpr (N == 96) wg_rs96_f16(d, a, b);
    else wg_rs128_f16(d, a, b);
  } else {
    if constexpr (N == 64) wg_rs64(d, a, b);
    else if constexpr (N == 96) wg_rs96(d, a, b);
    else wg_rs128(d, a, b);
  }
}
template <bool F16>
__device__ __forceinline__ void wg_ss64_t(float* d, u64 a, u64 b, int accumulate) {
  if constexpr (F16) wg_ss64_f16(d, a, b, accumulate);
  else wg_ss64(d, a, b, accumulate);
}

// swz_load queues a ROWS × D tile (rows row0.. of a strided 16-bit matrix)
// into the swizzled panel layout at shared address base; rows ≥ valid are
// zero-filled.
template <int D, int ROWS, int NT>
__device__ __forceinline__ void swz_load(u32 base, const u16* g, i64 row0, i64 valid, i64 stride) {
  constexpr int CPR = D / 8;
  static_assert(ROWS * CPR % NT == 0, "swz_load: chunks must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < ROWS * CPR / NT; it++) {
    int c = threadIdx.x + it * NT;
    int r = c / CPR, cc = c - r * CPR;
    bool ok = r < valid;
    const u16* src = ok ? g + (row0 + r) * stride + cc * 8 : g;
    cp16(base + (u32)((cc >> 2) * ROWS * 64 + r * 64 + (((cc & 3) ^ ((r >> 1) & 3)) << 4)), src, ok);
  }
}

template <int D, bool F16>
__device__ void attn_fwd_wg_body(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  constexpr int BM = 128, BN = 64, NT = 256;
  constexpr u32 QB = BM * D * 2, KB = BN * D * 2;  // tile bytes, multiples of 1024
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const u32 sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const u32 sK = sQ + QB, sV = sK + 2 * KB;  // two stages each
  const int tid = threadIdx.x, wg = tid >> 7, wq = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, tg = lane & 3;
  const i64 b = blockIdx.z, h = blockIdx.y, q0 = (i64)blockIdx.x * BM;
  const i64 hk = h / (a.Hq / a.Hkv);
  const u16* qb = q + (b * a.Sq * a.Hq + h) * D;
  const u16* kb = k + (b * a.Sk * a.Hkv + hk) * D;
  const u16* vb = v + (b * a.Sk * a.Hkv + hk) * D;
  const i64 qs = a.Hq * D, ks = a.Hkv * D;

  i64 blo, bhi, tlo, thi;
  key_range(a, b, q0, blo, bhi);
  key_range(a, b, min(q0 + BM - 1, a.Sq - 1), tlo, thi);
  const i64 kt0 = blo / BN, kt1 = thi > blo ? (thi + BN - 1) / BN : kt0;
  const i64 kmax = min(a.Sk, a.keylens ? (i64)((const int*)a.keylens)[b] : a.Sk);
  const i64 r0 = q0 + wg * 64 + wq * 16 + g;  // this thread's rows: r0, r0 + 8
  int lo[2], cnt[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    i64 l0, h0;
    row_keys(a, b, r0 + hf * 8, l0, h0);
    lo[hf] = (int)l0;
    cnt[hf] = (int)max(h0 - l0, (i64)0);
  }

  swz_load<D, BM, NT>(sQ, qb, q0, a.Sq - q0, qs);
  if (kt0 < kt1) {
    swz_load<D, BN, NT>(sK, kb, kt0 * BN, a.Sk - kt0 * BN, ks);
    swz_load<D, BN, NT>(sV, vb, kt0 * BN, a.Sk - kt0 * BN, ks);
  }
  cp_commit();

  float acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) acc[i] = 0.f;
  float m[2] = {-NT_INF, -NT_INF}, l[2] = {0.f, 0.f};
  const float sl2 = (float)a.scale * TC_LOG2E;
  // Descriptors of each tile's first k-step (this warpgroup's 64 rows of
  // Q; stage 0 of K and V); the others are constant offsets from these.
  const u64 dQ0 = wg_desc(sQ + wg * 64 * 64, 16, 512), dK0 = wg_desc(sK, 16, 512), dV0 = wg_desc(sV, BN * 64, 512);

  for (i64 kt = kt0; kt < kt1; kt++) {
    const u32 stg = (u32)((kt - kt0) & 1);
    // One barrier a tile: after it this tile is visible to every thread and
    // every warpgroup is done with the other stage, which is refilled.
    cp_wait0();
    fence_async_smem();
    __syncthreads();
    if (kt + 1 < kt1) {
      swz_load<D, BN, NT>(sK + (stg ^ 1) * KB, kb, (kt + 1) * BN, a.Sk - (kt + 1) * BN, ks);
      swz_load<D, BN, NT>(sV + (stg ^ 1) * KB, vb, (kt + 1) * BN, a.Sk - (kt + 1) * BN, ks);
    }
    cp_commit();
    const u64 dKs = dK0 + stg * (KB >> 4), dVs = dV0 + stg * (KB >> 4);

    // Operands (descriptors, P fragments) are all formed before the fence:
    // a register written between the fence and the commit would make ptxas
    // serialise the wgmmas.
    u64 dq[D / 16], dk[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      dq[kk] = dQ0 + kmaj_step<BM>(kk);
      dk[kk] = dKs + kmaj_step<BN>(kk);
    }
    float s[BN / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wg_ss64_t<F16>(s, dq[kk], dk[kk], kk);
    wg_commit();
    wg_wait0();

    const i64 jb = kt * BN;
    const bool full = jb + BN <= kmax && (!a.causal || (jb + BN - 1 <= q0 && (a.window <= 0 || q0 + BM - 1 - jb < a.window)));
    float mx0 = -NT_INF, mx1 = -NT_INF;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
      if (!full) {
        const int jl = nt * 8 + tg * 2;
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int hf = e >> 1;
          int j = (int)jb - lo[hf] + jl + (e & 1);
          if (!(j >= 0 && j < cnt[hf])) s[4 * nt + e] = -NT_INF;
        }
      }
      mx0 = fmaxf(mx0, fmaxf(s[4 * nt], s[4 * nt + 1]));
      mx1 = fmaxf(mx1, fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m[0], mx0), mn1 = fmaxf(m[1], mx1);
    const float ms0 = mn0 == -NT_INF ? 0.f : mn0 * sl2, ms1 = mn1 == -NT_INF ? 0.f : mn1 * sl2;
    const float al0 = mn0 == -NT_INF ? 1.f : ex2(m[0] * sl2 - ms0), al1 = mn1 == -NT_INF ? 1.f : ex2(m[1] * sl2 - ms1);
    m[0] = mn0;
    m[1] = mn1;
    float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
      s[4 * nt] = ex2(fmaf(s[4 * nt], sl2, -ms0));
      s[4 * nt + 1] = ex2(fmaf(s[4 * nt + 1], sl2, -ms0));
      s[4 * nt + 2] = ex2(fmaf(s[4 * nt + 2], sl2, -ms1));
      s[4 * nt + 3] = ex2(fmaf(s[4 * nt + 3], sl2, -ms1));
      ps0 += s[4 * nt] + s[4 * nt + 1];
      ps1 += s[4 * nt + 2] + s[4 * nt + 3];
    }
    l[0] = l[0] * al0 + ps0;
    l[1] = l[1] * al1 + ps1;
#pragma unroll
    for (int t = 0; t < D / 8; t++) {
      acc[4 * t] *= al0;
      acc[4 * t + 1] *= al0;
      acc[4 * t + 2] *= al1;
      acc[4 * t + 3] *= al1;
    }
    u32 pa[BN / 16][4];
    u64 dv[BN / 16];
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      pa[kk][0] = pack2_t<F16>(s[8 * kk], s[8 * kk + 1]);
      pa[kk][1] = pack2_t<F16>(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack2_t<F16>(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack2_t<F16>(s[8 * kk + 6], s[8 * kk + 7]);
      dv[kk] = dVs + (u64)(kk * 16 * 64 >> 4);
    }
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wg_rs<D, F16>(acc, pa[kk], dv[kk]);
    wg_commit();
    wg_wait0();
  }
  cp_wait0();

#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    float lv = l[hf];
    lv += __shfl_xor_sync(0xffffffffu, lv, 1);
    lv += __shfl_xor_sync(0xffffffffu, lv, 2);
    const float inv = lv > 0.f ? 1.f / lv : 0.f;
    const i64 r = r0 + hf * 8;
    if (r < a.Sq) {
      u16* orow = o + ((b * a.Sq + r) * a.Hq + h) * D;
#pragma unroll
      for (int t = 0; t < D / 8; t++) *(u32*)(orow + t * 8 + tg * 2) = pack2_t<F16>(acc[4 * t + 2 * hf] * inv, acc[4 * t + 2 * hf + 1] * inv);
      if (tg == 0) lse[(b * a.Hq + h) * a.Sq + r] = lv > 0.f ? m[hf] * (float)a.scale + logf(lv) : -NT_INF;
    }
  }
}
#else
// Other architectures never launch the Hopper kernels (the Go side checks
// for sm_90); a launch by mistake traps rather than computing nothing.
template <int D, bool F16>
__device__ void attn_fwd_wg_body(AttnShape, const u16*, const u16*, const u16*, u16*, float*) { __trap(); }
#endif

extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_wg64(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_wg_body<64, false>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_wg96(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_wg_body<96, false>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_wg128(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_wg_body<128, false>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_wg64_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_wg_body<64, true>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_wg96_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_wg_body<96, true>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_wg128_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_wg_body<128, true>(a, q, k, v, o, lse);
}

// ---------------------------------------------------------------------------
// Hopper backward on warpgroup MMA. A block of two warpgroups owns 128 keys
// of one query head (64 per warpgroup: the M side of its products) and
// walks the query tiles of 64 rows that can see them, Q and dO double-
// buffered through shared memory. Per tile and warpgroup:
//   Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ      (both operands in shared memory)
//   Pᵀ = exp2(Sᵀ·scale·log2e − LSE), dSᵀ = Pᵀ ⊙ (dPᵀ − rowstat)
//   dV += Pᵀ·dO, dK += dSᵀ·Q       (A from registers, B MN-major)
//   dQ += dS·K                      (each warpgroup over its own 64 keys:
//                                    dSᵀ through shared memory, read as an
//                                    MN-major A)
// Each warpgroup stages its dQ partial in shared memory in fragment order
// and one thread adds it to the fp32 scratch with a bulk reduction
// (cp.reduce.async.bulk, the copy engine's add), so no thread issues
// atomics and the warpgroups meet only once a tile, where the Q/dO stage
// turns over. The scratch is [B, Hq, Sq/64 tiles, D/8, 128 threads, 4]:
// attn_dq_round_frag maps it back to rows and columns.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wg_sst64(float* d, u64 a, u64 b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wg_sst96(float* d, u64 a, u64 b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, %48, %49, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void wg_sst128(float* d, u64 a, u64 b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate));
}
template <int N>
__device__ __forceinline__ void wg_sst(float* d, u64 a, u64 b, int accumulate) {
  if constexpr (N == 64) wg_sst64(d, a, b, accumulate);
  else if constexpr (N == 96) wg_sst96(d, a, b, accumulate);
  else wg_sst128(d, a, b, accumulate);
}
// wg_bar syncs the 128 threads of warpgroup wg (named barriers 1 and 2;
// 0 is __syncthreads).
__device__ __forceinline__ void wg_bar(int wg) { asm volatile("bar.sync %0, 128;" ::"r"(wg + 1) : "memory"); }

template <int D>
__device__ void attn_bwd_wg_body(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse, const u16* dO,
                                 const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  // A stage holds TPS query tiles, so the block meets once every TPS
  // tiles (shared memory allows two below head size 128).
  constexpr int BK = 128, BQ = 64, NT = 256, TPS = D < 128 ? 2 : 1;
  constexpr u32 KB = BK * D * 2, QB = BQ * D * 2, SB = BK * BQ * 2, FB = BQ * D * 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const u32 sK = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const u32 sV = sK + KB, sQ = sV + KB, sG = sQ + 2 * TPS * QB, sS = sG + 2 * TPS * QB;  // Q, dO: two stages
  const u32 sF = sS + SB;  // dQ staging, one per warpgroup
  float* sL2 = (float*)(smem_raw + (sF + 2 * FB - smem_u32(smem_raw)));  // LSE·log2e, 2·TPS tiles of 64
  float* sD2 = sL2 + 2 * TPS * BQ;                                    // row statistic, likewise
  const int tid = threadIdx.x, wg = tid >> 7, wq = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, tg = lane & 3;
  const i64 b = blockIdx.z, h = blockIdx.y, k0 = (i64)blockIdx.x * BK;
  const i64 grp = a.Hq / a.Hkv, hk = h / grp;
  const i64 ks = a.Hkv * D, qs = a.Hq * D;
  const u16* kb = k + (b * a.Sk * a.Hkv + hk) * D;
  const u16* vb = v + (b * a.Sk * a.Hkv + hk) * D;
  const u16* qb = q + (b * a.Sq * a.Hq + h) * D;
  const u16* gb = dO + (b * a.Sq * a.Hq + h) * D;
  swz_load<D, BK, NT>(sK, kb, k0, a.Sk - k0, ks);
  swz_load<D, BK, NT>(sV, vb, k0, a.Sk - k0, ks);

  const i64 klen = a.keylens ? (i64)((const int*)a.keylens)[b] : a.Sk;
  const i64 kmax = min(klen, a.Sk);
  const i64 j0 = k0 + wg * 64 + wq * 16 + g, j1 = j0 + 8;  // this thread's keys
  i64 qlo = 0, qhi = a.Sq;
  if (k0 >= klen) qhi = 0;
  if (a.causal) {
    qlo = k0;
    if (a.window > 0) qhi = min(qhi, k0 + BK - 1 + a.window);
  }
  const float sl2 = (float)a.scale * TC_LOG2E;
  // stage_load queues the TPS query tiles from row qt (Q, dO, LSE·log2e,
  // row statistic) into stage st; tiles past Sq are zero-filled.
  auto stage_load = [&](i64 qt, int st) {
#pragma unroll
    for (int t = 0; t < TPS; t++) {
      const i64 q1 = qt + t * BQ;
      swz_load<D, BQ, NT>(sQ + (st * TPS + t) * QB, qb, q1, a.Sq - q1, qs);
      swz_load<D, BQ, NT>(sG + (st * TPS + t) * QB, gb, q1, a.Sq - q1, qs);
    }
    if (tid < TPS * BQ) {
      i64 i = qt + tid;
      bool ok = i < a.Sq;
      sL2[st * TPS * BQ + tid] = ok ? lse[(b * a.Hq + h) * a.Sq + i] * TC_LOG2E : NT_INF;
      sD2[st * TPS * BQ + tid] = ok ? dstat[(b * a.Hq + h) * a.Sq + i] : 0.f;
    }
  };
  const i64 qfirst = (qlo / BQ) * BQ;
  if (qfirst < qhi) stage_load(qfirst, 0);
  cp_commit();

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) dk[i] = dv[i] = 0.f;
  // Descriptors of each operand's first k-step (this warpgroup's 64 keys of
  // K and V; stage 0 of Q and dO, K-major and MN-major; dSᵀ and K as dQ's
  // MN-major operands); the others are constant offsets from these.
  const u64 dK0 = wg_desc(sK + wg * 64 * 64, 16, 512), dV0 = wg_desc(sV + wg * 64 * 64, 16, 512);
  const u64 dQ0 = wg_desc(sQ, 16, 512), dG0 = wg_desc(sG, 16, 512);
  const u64 dQm0 = wg_desc(sQ, BQ * 64, 512), dGm0 = wg_desc(sG, BQ * 64, 512);
  const u64 dS0 = wg_desc(sS + wg * 64 * 64, BK * 64, 512), dKm0 = wg_desc(sK + wg * 64 * 64, BK * 64, 512);
  const u32 myF = sF + wg * FB;
  const bool issuer = (tid & 127) == 0;  // issues this warpgroup's bulk reductions
  float* const dqtiles = dqacc + (b * a.Hq + h) * ((a.Sq + BQ - 1) / BQ) * (i64)(BQ * D);
  // This thread's two rows of the dSᵀ tile: base address and swizzle.
  u32 srow[2], sxor[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int r = wg * 64 + wq * 16 + g + hf * 8;
    srow[hf] = sS + r * 64 + tg * 4;
    sxor[hf] = (r >> 1) & 3;
  }
  for (i64 qt = qfirst, n = 0; qt < qhi; qt += BQ, n++) {
    const int slot = (int)(n % (2 * TPS));  // stage slot / TPS, tile slot % TPS
    if (slot % TPS == 0) {
      // One barrier a stage: after it the stage is visible to every
      // thread, and the other stage is free again.
      cp_wait0();
      fence_async_smem();
      __syncthreads();
      if (qt + TPS * BQ < qhi) stage_load(qt + TPS * BQ, (slot / TPS) ^ 1);
      cp_commit();
    }
    const u64 so = slot * (QB >> 4);  // this tile's descriptor offset
    const float* sL = sL2 + slot * BQ;
    const float* sD = sD2 + slot * BQ;

    // Sᵀ and dPᵀ as two wgmma groups, each group's descriptors formed
    // before its fence (fewer live registers than forming all 24 first).
    float s[32], dp[32];
    {
      u64 da[D / 16], db[D / 16];
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        da[kk] = dK0 + kmaj_step<BK>(kk);
        db[kk] = dQ0 + so + kmaj_step<BQ>(kk);
      }
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wg_ss64(s, da[kk], db[kk], kk);
      wg_commit();
    }
    {
      u64 da[D / 16], db[D / 16];
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        da[kk] = dV0 + kmaj_step<BK>(kk);
        db[kk] = dG0 + so + kmaj_step<BQ>(kk);
      }
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wg_ss64(dp, da[kk], db[kk], kk);
      wg_commit();
    }
    wg_wait0();

    // Pᵀ and dSᵀ: element (key j0/j1 by e, query qt + col).
    const bool full = qt + BQ <= a.Sq && k0 + BK <= kmax && (!a.causal || (qt >= k0 + BK - 1 && (a.window <= 0 || qt + BQ - 1 - k0 < a.window)));
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float2 lv = *(const float2*)(sL + nt * 8 + tg * 2), dv2 = *(const float2*)(sD + nt * 8 + tg * 2);
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int col = nt * 8 + tg * 2 + (e & 1);
        bool ok = true;
        if (!full) {
          i64 i = qt + col, j = e < 2 ? j0 : j1;
          ok = i < a.Sq && j < kmax && (!a.causal || (j <= i && (a.window <= 0 || i - j < a.window)));
        }
        const float p = ok ? ex2(fmaf(s[4 * nt + e], sl2, -((e & 1) ? lv.y : lv.x))) : 0.f;
        s[4 * nt + e] = p;
        dp[4 * nt + e] = p * (dp[4 * nt + e] - ((e & 1) ? dv2.y : dv2.x));
      }
    }
    // dSᵀ to shared memory as bf16, [key][query] in two 32-query panels
    // (swizzled like every tile), for dQ's A operand.
    u32 pa[4][4], sa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      pa[kk][0] = pack2(s[8 * kk], s[8 * kk + 1]);
      pa[kk][1] = pack2(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack2(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack2(s[8 * kk + 6], s[8 * kk + 7]);
      sa[kk][0] = pack2(dp[8 * kk], dp[8 * kk + 1]);
      sa[kk][1] = pack2(dp[8 * kk + 2], dp[8 * kk + 3]);
      sa[kk][2] = pack2(dp[8 * kk + 4], dp[8 * kk + 5]);
      sa[kk][3] = pack2(dp[8 * kk + 6], dp[8 * kk + 7]);
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        // query columns nt·8 + 2tg, +1: panel nt/4, chunk nt mod 4
        const u32 addr = srow[hf] + (u32)((nt >> 2) * BK * 64) + ((((u32)nt & 3) ^ sxor[hf]) << 4);
        asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(sa[nt >> 1][(nt & 1) * 2 + hf]));
      }
    }
    u64 dgm[4], dqm[4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      dgm[kk] = dGm0 + so + (u64)(kk * 16 * 64 >> 4);
      dqm[kk] = dQm0 + so + (u64)(kk * 16 * 64 >> 4);
    }
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_rs<D>(dv, pa[kk], dgm[kk]);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_rs<D>(dk, sa[kk], dqm[kk]);
    wg_commit();
    // dQ partial (64 queries × D) = dS · K over this warpgroup's 64 keys,
    // once its dSᵀ rows are visible to the whole warpgroup and the last
    // bulk reduction has finished reading the staging buffer.
    if (issuer) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
    fence_async_smem();
    wg_bar(wg);
    u64 dsa[4], dkb[4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      dsa[kk] = dS0 + (u64)(kk * 16 * 64 >> 4);
      dkb[kk] = dKm0 + (u64)(kk * 16 * 64 >> 4);
    }
    float dq[D / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_sst<D>(dq, dsa[kk], dkb[kk], kk);
    wg_commit();
    wg_wait0();
    const float sc = (float)a.scale;
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
      const u32 addr = myF + (u32)((i * 128 + (tid & 127)) * 16);
      asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "f"(dq[4 * i] * sc), "f"(dq[4 * i + 1] * sc), "f"(dq[4 * i + 2] * sc),
                   "f"(dq[4 * i + 3] * sc)
                   : "memory");
    }
    fence_async_smem();
    wg_bar(wg);
    if (issuer) {
      float* dst = dqtiles + (qt / BQ) * (i64)(BQ * D);
      asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(dst), "r"(myF), "n"(FB) : "memory");
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
  }
  if (issuer) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  cp_wait0();
  const float sc = (float)a.scale;
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const i64 j = half ? j1 : j0;
    if (j >= a.Sk) continue;
    if (pK) {
      // fp32 partials per query head, [B, Sk, Hq, D], summed by the group.
      float* kr = pK + ((b * a.Sk + j) * a.Hq + h) * D;
      float* vr = pV + ((b * a.Sk + j) * a.Hq + h) * D;
#pragma unroll
      for (int t = 0; t < D / 8; t++) {
        *(float2*)(kr + t * 8 + tg * 2) = make_float2(dk[4 * t + 2 * half] * sc, dk[4 * t + 2 * half + 1] * sc);
        *(float2*)(vr + t * 8 + tg * 2) = make_float2(dv[4 * t + 2 * half], dv[4 * t + 2 * half + 1]);
      }
    } else {
      u16* kr = dK + ((b * a.Sk + j) * a.Hkv + hk) * D;
      u16* vr = dV + ((b * a.Sk + j) * a.Hkv + hk) * D;
#pragma unroll
      for (int t = 0; t < D / 8; t++) {
        *(u32*)(kr + t * 8 + tg * 2) = pack2(dk[4 * t + 2 * half] * sc, dk[4 * t + 2 * half + 1] * sc);
        *(u32*)(vr + t * 8 + tg * 2) = pack2(dv[4 * t + 2 * half], dv[4 * t + 2 * half + 1]);
      }
    }
  }
}
#else
template <int D>
__device__ void attn_bwd_wg_body(AttnShape, const u16*, const u16*, const u16*, const float*, const u16*, const float*, float*, u16*, u16*, float*,
                                 float*) {
  __trap();
}
#endif

extern "C" __global__ void __launch_bounds__(256, 1) attn_bwd_wg64(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_wg_body<64>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_bwd_wg96(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_wg_body<96>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_bwd_wg128(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_wg_body<128>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}

template <int D, int NW>
__device__ void attn_bwd_tc_body(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse, const u16* dO,
                                 const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // BK keys per block, 16 per warp; query tiles of 64 rows.
  constexpr int LD = D + 8, LDS = 64 + 8, BK = 16 * NW, NT = 32 * NW;
  // dQ of a query tile is split over the warps as 4 groups of 16 rows ×
  // NW/4 column slices of DQW.
  constexpr int DQW = D / (NW / 4);
  static_assert(NW % 4 == 0 && DQW % 16 == 0, "attn_bwd_tc: warps must split dQ into 16-wide column slices");
  u16* sK = (u16*)smem_raw;
  u16* sV = sK + BK * LD;
  u16* sQ2 = sV + BK * LD;       // Q tiles, two stages
  u16* sG2 = sQ2 + 2 * 64 * LD;  // dO tiles, two stages
  u16* sS = sG2 + 2 * 64 * LD;   // dSᵀ tile [key][query]
  float* sL2 = (float*)(sS + BK * LDS);  // LSE·log2e, two stages of 64
  float* sD2 = sL2 + 128;                // row statistic, two stages
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tg = lane & 3;
  // One block per (BK keys, query head): the query heads of a group run in
  // parallel and their dK/dV partials are summed by attn_dkv_reduce (or
  // stored directly when the group has one head). BK = 128 rather than 64
  // halves the Q/dO tiles each key is streamed against and the dQ atomics,
  // both of which go through L2.
  const i64 b = blockIdx.z, h = blockIdx.y, k0 = (i64)blockIdx.x * BK;
  const i64 grp = a.Hq / a.Hkv, hk = h / grp;
  const i64 ks = a.Hkv * D, qs = a.Hq * D;
  const u16* kb = k + (b * a.Sk * a.Hkv + hk) * D;
  const u16* vb = v + (b * a.Sk * a.Hkv + hk) * D;
  tile_load<D, BK, NT>(sK, kb, k0, a.Sk - k0, ks);
  tile_load<D, BK, NT>(sV, vb, k0, a.Sk - k0, ks);
  const u32 sKu = smem_u32(sK), sVu = smem_u32(sV), sSu = smem_u32(sS);
  cp_commit();

  const i64 klen = a.keylens ? (i64)((const int*)a.keylens)[b] : a.Sk;
  const i64 kmax = min(klen, a.Sk);
  const i64 j0 = k0 + warp * 16 + g, j1 = j0 + 8;
  // Queries that can see some key of the block.
  i64 qlo = 0, qhi = a.Sq;
  if (k0 >= klen) qhi = 0;
  if (a.causal) {
    qlo = k0;
    if (a.window > 0) qhi = min(qhi, k0 + BK - 1 + a.window);
  }
  const float sl2 = (float)a.scale * TC_LOG2E;

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int t = 0; t < D / 8; t++) dk[t][0] = dk[t][1] = dk[t][2] = dk[t][3] = dv[t][0] = dv[t][1] = dv[t][2] = dv[t][3] = 0.f;

  {
    const u16* qb = q + (b * a.Sq * a.Hq + h) * D;
    const u16* gb = dO + (b * a.Sq * a.Hq + h) * D;
    // stage_load queues query tile qt (Q, dO, LSE, statistic) into stage
    // st; the next tile loads while this one is computed.
    auto stage_load = [&](i64 qt, int st) {
      tile_load<D, 64, NT>(sQ2 + st * 64 * LD, qb, qt, a.Sq - qt, qs);
      tile_load<D, 64, NT>(sG2 + st * 64 * LD, gb, qt, a.Sq - qt, qs);
      if (threadIdx.x < 64) {
        i64 i = qt + threadIdx.x;
        bool ok = i < a.Sq;
        sL2[st * 64 + threadIdx.x] = ok ? lse[(b * a.Hq + h) * a.Sq + i] * TC_LOG2E : NT_INF;
        sD2[st * 64 + threadIdx.x] = ok ? dstat[(b * a.Hq + h) * a.Sq + i] : 0.f;
      }
    };
    const i64 qfirst = (qlo / 64) * 64;
    if (qfirst < qhi) stage_load(qfirst, 0);
    cp_commit();
    cp_wait0();
    __syncthreads();
    int st = 0;
    for (i64 qt = qfirst; qt < qhi; qt += 64, st ^= 1) {
      if (qt + 64 < qhi) stage_load(qt + 64, st ^ 1);
      cp_commit();
      const u32 sQu = smem_u32(sQ2 + st * 64 * LD);
      const u32 sGu = smem_u32(sG2 + st * 64 * LD);
      const float* sL = sL2 + st * 64;
      const float* sD = sD2 + st * 64;

      // Sᵀ = K_w · Qᵀ (16 keys × 64 queries per warp).
      float s[8][4];
#pragma unroll
      for (int t = 0; t < 8; t++) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        u32 ka[4];
        ldsm4((sKu + (u32)((warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8) * 2u), ka[0], ka[1], ka[2], ka[3]);
#pragma unroll
        for (int np = 0; np < 4; np++) {
          u32 b0, b1, b2, b3;
          ldsm4((sQu + (u32)((np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8) * 2u), b0, b1, b2, b3);
          mma16816(s[2 * np], ka, b0, b1);
          mma16816(s[2 * np + 1], ka, b2, b3);
        }
      }
      // Pᵀ, masked where the tile straddles a bound: element (key j0/j1,
      // query qt + col).
      const bool full = qt + 64 <= a.Sq && k0 + BK <= kmax && (!a.causal || (qt >= k0 + BK - 1 && (a.window <= 0 || qt + 63 - k0 < a.window)));
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int col = nt * 8 + tg * 2 + (e & 1);
          bool ok = true;
          if (!full) {
            i64 i = qt + col, j = e < 2 ? j0 : j1;
            ok = i < a.Sq && j < kmax && (!a.causal || (j <= i && (a.window <= 0 || i - j < a.window)));
          }
          s[nt][e] = ok ? ex2(fmaf(s[nt][e], sl2, -sL[col])) : 0.f;
        }
      }
      // dV += Pᵀ · dO.
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        u32 pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]), pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                     pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
          u32 b0, b1, b2, b3;
          ldsm4t((sGu + (u32)((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8) * 2u), b0, b1, b2, b3);
          mma16816(dv[2 * dp], pa, b0, b1);
          mma16816(dv[2 * dp + 1], pa, b2, b3);
        }
      }
      // dPᵀ = V_w · dOᵀ, then dSᵀ = Pᵀ ⊙ (dPᵀ − Dq).
      float dp_[8][4];
#pragma unroll
      for (int t = 0; t < 8; t++) dp_[t][0] = dp_[t][1] = dp_[t][2] = dp_[t][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        u32 va[4];
        ldsm4((sVu + (u32)((warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8) * 2u), va[0], va[1], va[2], va[3]);
#pragma unroll
        for (int np = 0; np < 4; np++) {
          u32 b0, b1, b2, b3;
          ldsm4((sGu + (u32)((np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8) * 2u), b0, b1, b2, b3);
          mma16816(dp_[2 * np], va, b0, b1);
          mma16816(dp_[2 * np + 1], va, b2, b3);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int col = nt * 8 + tg * 2 + (e & 1);
          dp_[nt][e] = s[nt][e] * (dp_[nt][e] - sD[col]);
        }
        *(u32*)(sS + (warp * 16 + g) * LDS + nt * 8 + tg * 2) = pack2(dp_[nt][0], dp_[nt][1]);
        *(u32*)(sS + (warp * 16 + g + 8) * LDS + nt * 8 + tg * 2) = pack2(dp_[nt][2], dp_[nt][3]);
      }
      // dK += dSᵀ · Q.
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        u32 pa[4] = {pack2(dp_[2 * kk][0], dp_[2 * kk][1]), pack2(dp_[2 * kk][2], dp_[2 * kk][3]), pack2(dp_[2 * kk + 1][0], dp_[2 * kk + 1][1]),
                     pack2(dp_[2 * kk + 1][2], dp_[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
          u32 b0, b1, b2, b3;
          ldsm4t((sQu + (u32)((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8) * 2u), b0, b1, b2, b3);
          mma16816(dk[2 * dp], pa, b0, b1);
          mma16816(dk[2 * dp + 1], pa, b2, b3);
        }
      }
      __syncthreads();
      // dQ (16 queries × DQW columns per warp) += dS · K_block, added to
      // the fp32 scratch: A = dS read transposed from dSᵀ, B = K.
      const int qg = warp & 3, c0w = (warp >> 2) * DQW;
      u32 sa[BK / 16][4];
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++)
        ldsm4t((sSu + (u32)((kk * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + qg * 16 + ((lane >> 3) & 1) * 8) * 2u), sa[kk][0], sa[kk][1], sa[kk][2],
               sa[kk][3]);
      const i64 qr0 = qt + qg * 16 + g, qr1 = qr0 + 8;
      float* dq0 = dqacc + ((b * a.Sq + qr0) * a.Hq + h) * D;
      float* dq1 = dqacc + ((b * a.Sq + qr1) * a.Hq + h) * D;
      const float sc = (float)a.scale;
#pragma unroll
      for (int dp = 0; dp < DQW / 16; dp++) {
        float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
          u32 b0, b1, b2, b3;
          ldsm4t((sKu + (u32)((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0w + dp * 16 + (lane >> 4) * 8) * 2u), b0, b1, b2, b3);
          mma16816(c0, sa[kk], b0, b1);
          mma16816(c1, sa[kk], b2, b3);
        }
        const int d0 = c0w + dp * 16 + tg * 2;
        if (qr0 < a.Sq) {
          red2(dq0 + d0, c0[0] * sc, c0[1] * sc);
          red2(dq0 + d0 + 8, c1[0] * sc, c1[1] * sc);
        }
        if (qr1 < a.Sq) {
          red2(dq1 + d0, c0[2] * sc, c0[3] * sc);
          red2(dq1 + d0 + 8, c1[2] * sc, c1[3] * sc);
        }
      }
      cp_wait0();
      __syncthreads();
    }
  }
  cp_wait0();
  const float sc = (float)a.scale;
  if (pK) {
    // fp32 partials per query head, [B, Sk, Hq, D], summed by the group.
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const i64 j = half ? j1 : j0;
      if (j >= a.Sk) continue;
      float* kr = pK + ((b * a.Sk + j) * a.Hq + h) * D;
      float* vr = pV + ((b * a.Sk + j) * a.Hq + h) * D;
#pragma unroll
      for (int t = 0; t < D / 8; t++) {
        *(float2*)(kr + t * 8 + tg * 2) = make_float2(dk[t][2 * half] * sc, dk[t][2 * half + 1] * sc);
        *(float2*)(vr + t * 8 + tg * 2) = make_float2(dv[t][2 * half], dv[t][2 * half + 1]);
      }
    }
    return;
  }
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const i64 j = half ? j1 : j0;
    if (j >= a.Sk) continue;
    u16* kr = dK + ((b * a.Sk + j) * a.Hkv + hk) * D;
    u16* vr = dV + ((b * a.Sk + j) * a.Hkv + hk) * D;
#pragma unroll
    for (int t = 0; t < D / 8; t++) {
      *(u32*)(kr + t * 8 + tg * 2) = pack2(dk[t][2 * half] * sc, dk[t][2 * half + 1] * sc);
      *(u32*)(vr + t * 8 + tg * 2) = pack2(dv[t][2 * half], dv[t][2 * half + 1]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256) attn_bwd_tc64(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_tc_body<64, 8>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}
extern "C" __global__ void __launch_bounds__(256) attn_bwd_tc96(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_tc_body<96, 8>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}
extern "C" __global__ void __launch_bounds__(256) attn_bwd_tc128(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_tc_body<128, 8>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}

// attn_dq_round stores the fp32 dQ scratch as bf16, 8 elements a thread.
extern "C" __global__ void attn_dq_round(u16* dq, const float* acc, i64 n8) {
  GRID_STRIDE(i, n8) {
    float4 x = ((const float4*)acc)[2 * i], y = ((const float4*)acc)[2 * i + 1];
    uint4 r = make_uint4(pack2(x.x, x.y), pack2(x.z, x.w), pack2(y.x, y.y), pack2(y.z, y.w));
    ((uint4*)dq)[i] = r;
  }
}

// attn_dq_round_frag stores the Hopper backward's fp32 dQ scratch (fragment
// order, see attn_bwd_wg_body) as bf16 dQ [B, Sq, Hq, D]: one thread per
// float4, which holds registers 4i..4i+3 of one thread of the tile's
// m64nD accumulator — two column pairs on rows r and r + 8.
extern "C" __global__ void attn_dq_round_frag(u16* dq, const float* acc, i64 B, i64 Sq, i64 Hq, i64 D) {
  const i64 ntq = (Sq + 63) / 64, per = 64 * D / 4;  // float4s per tile
  GRID_STRIDE(e, B * Hq * ntq * per) {
    const i64 tile = e / per, f = e - tile * per;
    const i64 i = f / 128, t = f - i * 128;
    const i64 bh = tile / ntq, qt = tile - bh * ntq, b = bh / Hq, h = bh - b * Hq;
    const i64 r = qt * 64 + (t >> 5) * 16 + ((t & 31) >> 2), c = i * 8 + (t & 3) * 2;
    const float4 x = ((const float4*)acc)[e];
    if (r < Sq) *(u32*)(dq + ((b * Sq + r) * Hq + h) * D + c) = pack2(x.x, x.y);
    if (r + 8 < Sq) *(u32*)(dq + ((b * Sq + r + 8) * Hq + h) * D + c) = pack2(x.z, x.w);
  }
}

// attn_dkv_reduce sums the per-query-head fp32 partials of dK and dV over
// each group and stores bf16: rows indexes [B, Sk, Hkv].
extern "C" __global__ void attn_dkv_reduce(u16* dK, u16* dV, const float* pK, const float* pV, i64 rows, i64 Hkv, i64 grp, i64 D) {
  GRID_STRIDE(e, rows * D) {
    i64 r = e / D, d = e - r * D;
    i64 src = ((r / Hkv) * (Hkv * grp) + (r % Hkv) * grp) * D + d;
    float sk = 0.f, sv = 0.f;
    for (i64 hh = 0; hh < grp; hh++) {
      sk += pK[src + hh * D];
      sv += pV[src + hh * D];
    }
    dK[e] = f32_to_bf16(sk);
    dV[e] = f32_to_bf16(sv);
  }
}
