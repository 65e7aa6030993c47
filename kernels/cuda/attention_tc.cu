// attention_tc.cu: flash attention on the tensor cores (FlashAttention-2,
// Dao 2023) for bf16 Q/K/V with head size 64, 96 or 128.
//
// Forward: a block owns 64 query rows of one head (16 per warp); K and V
// stream through shared memory in tiles of 64 keys, double-buffered with
// cp.async. Scores S = Q·Kᵀ and O += P·V are mma.sync m16n8k16 bf16
// products with fp32 accumulation; the softmax is online in the exp2
// domain, and P is reused straight from the score registers as the next
// product's A operand. The score matrix never leaves registers.
//
// Backward: a block owns 64 keys of one kv head and walks every query tile
// of every query head sharing it, so dK and dV accumulate in registers with
// no atomics; dQ is accumulated across key blocks with fp32 atomic adds into
// a scratch buffer that a last kernel rounds to bf16.

#define TC_LOG2E 1.4426950408889634f

__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// cp16 copies 16 bytes global → shared, or writes zeros when !ok.
__device__ __forceinline__ void cp16(u32 dst, const void* src, bool ok) {
  int n = ok ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_wait0() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

__device__ __forceinline__ void ldsm4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// red2 adds two adjacent floats in global memory with one vector
// reduction (sm_90), halving the atomic traffic of the dQ accumulation.
__device__ __forceinline__ void red2(float* p, float x, float y) {
#if __CUDACC_VER_MAJOR__ >= 12
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ex2 is 2ˣ on the special-function unit (relative error ~2⁻²², far below
// the bf16 rounding P gets next); ex2(−Inf) = 0.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// pack2 rounds two floats to bf16 (round to nearest even), lo in the low half.
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// tile_load queues a 64-row × D tile (rows row0.. of a strided bf16 matrix)
// into shared memory with padded rows of D+8 elements; rows ≥ valid are
// zero-filled.
// Every tensor-core kernel runs 128 threads, so the trip count is a
// compile-time constant and the loop unrolls.
template <int D>
__device__ __forceinline__ void tile_load(u16* s, const u16* g, i64 row0, i64 valid, i64 stride) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  u32 base = smem_u32(s);
#pragma unroll
  for (int it = 0; it < 64 * CPR / 128; it++) {
    int c = threadIdx.x + it * 128;
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
template <int D, int MT>
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
          mma16816(s[mt][2 * np], qa[mt], b0, b1);
          mma16816(s[mt][2 * np + 1], qa[mt], b2, b3);
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
        pa[mt][0] = pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        u32 b0, b1, b2, b3;
        ldsm4t((cVu + (u32)((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8) * 2u), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816(acc[mt][2 * dp], pa[mt], b0, b1);
          mma16816(acc[mt][2 * dp + 1], pa[mt], b2, b3);
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
        for (int t = 0; t < D / 8; t++) *(u32*)(orow + t * 8 + tg * 2) = pack2(acc[mt][t][2 * hf] * inv, acc[mt][t][2 * hf + 1] * inv);
        if (tg == 0) lse[(b * a.Hq + h) * a.Sq + r] = lv > 0.f ? m[mt][hf] * (float)a.scale + logf(lv) : -NT_INF;
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc64(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<64, 2>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc96(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<96, 2>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(128) attn_fwd_tc128(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_fwd_tc_body<128, 1>(a, q, k, v, o, lse);
}

template <int D>
__device__ void attn_bwd_tc_body(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse, const u16* dO,
                                 const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8, LDS = 64 + 8;
  u16* sK = (u16*)smem_raw;
  u16* sV = sK + 64 * LD;
  u16* sQ2 = sV + 64 * LD;       // Q tiles, two stages
  u16* sG2 = sQ2 + 2 * 64 * LD;  // dO tiles, two stages
  u16* sS = sG2 + 2 * 64 * LD;   // dSᵀ tile [key][query]
  float* sL2 = (float*)(sS + 64 * LDS);  // LSE·log2e, two stages of 64
  float* sD2 = sL2 + 128;                // row statistic, two stages
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tg = lane & 3;
  // One block per (64 keys, query head): the query heads of a group run in
  // parallel and their dK/dV partials are summed by attn_dkv_reduce (or
  // stored directly when the group has one head).
  const i64 b = blockIdx.z, h = blockIdx.y, k0 = (i64)blockIdx.x * 64;
  const i64 grp = a.Hq / a.Hkv, hk = h / grp;
  const i64 ks = a.Hkv * D, qs = a.Hq * D;
  const u16* kb = k + (b * a.Sk * a.Hkv + hk) * D;
  const u16* vb = v + (b * a.Sk * a.Hkv + hk) * D;
  tile_load<D>(sK, kb, k0, a.Sk - k0, ks);
  tile_load<D>(sV, vb, k0, a.Sk - k0, ks);
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
    if (a.window > 0) qhi = min(qhi, k0 + 63 + a.window);
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
      tile_load<D>(sQ2 + st * 64 * LD, qb, qt, a.Sq - qt, qs);
      tile_load<D>(sG2 + st * 64 * LD, gb, qt, a.Sq - qt, qs);
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
      const bool full = qt + 64 <= a.Sq && k0 + 64 <= kmax && (!a.causal || (qt >= k0 + 63 && (a.window <= 0 || qt + 63 - k0 < a.window)));
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
      // dQ (this warp's 16 queries × D) += dS · K_block, added to the fp32
      // scratch: A = dS read transposed from dSᵀ, B = K.
      u32 sa[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; kk++)
        ldsm4t((sSu + (u32)((kk * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + warp * 16 + ((lane >> 3) & 1) * 8) * 2u), sa[kk][0], sa[kk][1], sa[kk][2],
               sa[kk][3]);
      const i64 qr0 = qt + warp * 16 + g, qr1 = qr0 + 8;
      float* dq0 = dqacc + ((b * a.Sq + qr0) * a.Hq + h) * D;
      float* dq1 = dqacc + ((b * a.Sq + qr1) * a.Hq + h) * D;
      const float sc = (float)a.scale;
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
          u32 b0, b1, b2, b3;
          ldsm4t((sKu + (u32)((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8) * 2u), b0, b1, b2, b3);
          mma16816(c0, sa[kk], b0, b1);
          mma16816(c1, sa[kk], b2, b3);
        }
        const int d0 = dp * 16 + tg * 2;
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

extern "C" __global__ void __launch_bounds__(128) attn_bwd_tc64(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_tc_body<64>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}
extern "C" __global__ void __launch_bounds__(128) attn_bwd_tc96(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_tc_body<96>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}
extern "C" __global__ void __launch_bounds__(128) attn_bwd_tc128(AttnShape a, const u16* q, const u16* k, const u16* v, const float* lse,
    const u16* dO, const float* dstat, float* dqacc, u16* dK, u16* dV, float* pK, float* pV) {
  attn_bwd_tc_body<128>(a, q, k, v, lse, dO, dstat, dqacc, dK, dV, pK, pV);
}

// attn_dq_round stores the fp32 dQ scratch as bf16, 8 elements a thread.
extern "C" __global__ void attn_dq_round(u16* dq, const float* acc, i64 n8) {
  GRID_STRIDE(i, n8) {
    float4 x = ((const float4*)acc)[2 * i], y = ((const float4*)acc)[2 * i + 1];
    uint4 r = make_uint4(pack2(x.x, x.y), pack2(x.z, x.w), pack2(y.x, y.y), pack2(y.z, y.w));
    ((uint4*)dq)[i] = r;
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
