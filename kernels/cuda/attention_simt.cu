// attention_simt.cu: a tiled attention forward on the CUDA cores (no
// tensor cores, so any architecture) at head sizes 64, 96 and 128, for fp32
// Q/K/V/O — the fp32 sampling path, where attn_fwd_f's one warp per query
// row re-reads every key and value from global memory for each row — and
// for fp16 and bf16 Q/K/V/O on GPUs without the tensor-core kernels
// (before sm_80: a T4 samples and trains in fp16). The LSE is fp32 always.
// The 16-bit variants compute exactly as the fp32 one: their values are
// widened to fp32 as they are loaded into the same shared-memory layout,
// and O is rounded once to the operands' dtype as it is stored.
//
// A block of 256 threads takes 64 query rows of one head and walks the keys
// in tiles of 64. The threads form a 16×16 grid: thread (ty, tx) owns query
// rows 4ty..4ty+3 of the block and, for the scores, keys 4tx..4tx+3 of the
// tile, a 4×4 register block of S = Q·Kᵀ taken from shared memory (two
// 16-byte loads per 16 multiply-adds). The 16 threads of a row group are
// one half-warp, so the row maxima need four xor shuffles; the row sums
// stay per thread until the end (every thread of a row scales by the same
// factor). P goes back to shared memory, and each thread accumulates its
// 4 rows × D/16 columns of O (column pairs 2(tx + 16c)) from P and the V
// tile.
//
// Global memory is read in chunks of 4 elements (16-byte loads of fp32,
// 8-byte loads of 16-bit values) and O written in pairs (8 or 4 bytes).
// Shared memory, in floats: Qᵀ [D][68] (pre-scaled by scale·log2e, so the
// softmax runs on exp2), Kᵀ [D][68] and V [64][D]. P [64][68] reuses the Kᵀ
// tile once the scores are taken. The padding of 4 keeps the 16-byte
// rows aligned and the transposing stores, whose lanes walk the rows,
// conflict-free. 800·D bytes in all: 51,200 at 64, 76,800 at 96, 102,400
// at 128, whatever the operands' dtype.
//
// Masks follow attn_fwd_body: key_range gives each query row one
// contiguous range [lo, hi), rows of a block differ (causal, window), so
// every score outside its row's range becomes −Inf. Both ends of the range
// are non-decreasing in the row, so the block's keys are [lo of its first
// row, hi of its last): tiles wholly outside every row are never loaded.
// Keys of the last tile past that end are zero in shared memory, so a
// masked P of 0 meets a finite V.

// The element types: E is the operands' storage type; load4 widens the 4
// elements at p (aligned to 4 elements) to fp32, store2 rounds a pair to E
// and writes it at p (aligned to 2 elements).
struct SimtF32 {
  typedef float E;
  static __device__ __forceinline__ float4 load4(const float* p) { return *(const float4*)p; }
  static __device__ __forceinline__ void store2(float* p, float x, float y) { *(float2*)p = make_float2(x, y); }
};

struct SimtBF16 {
  typedef u16 E;
  static __device__ __forceinline__ float4 load4(const u16* p) {
    const uint2 w = *(const uint2*)p;  // lowest address in the low half
    return make_float4(bf16_to_f32((u16)w.x), bf16_to_f32((u16)(w.x >> 16)), bf16_to_f32((u16)w.y), bf16_to_f32((u16)(w.y >> 16)));
  }
  static __device__ __forceinline__ void store2(u16* p, float x, float y) { *(u32*)p = (u32)f32_to_bf16(x) | ((u32)f32_to_bf16(y) << 16); }
};

struct SimtF16 {
  typedef u16 E;
  static __device__ __forceinline__ float4 load4(const u16* p) {
    const uint2 w = *(const uint2*)p;
    return make_float4(f16_to_f32((u16)w.x), f16_to_f32((u16)(w.x >> 16)), f16_to_f32((u16)w.y), f16_to_f32((u16)(w.y >> 16)));
  }
  static __device__ __forceinline__ void store2(u16* p, float x, float y) { *(u32*)p = (u32)f32_to_f16(x) | ((u32)f32_to_f16(y) << 16); }
};

#define ASIMT_LD 68  // row stride of Qᵀ, Kᵀ and P, in floats

template <class EL, int D>
__device__ __forceinline__ void attn_simt_body(const AttnShape& a, const typename EL::E* __restrict__ q, const typename EL::E* __restrict__ k,
                                               const typename EL::E* __restrict__ v, typename EL::E* __restrict__ o, float* __restrict__ lse) {
  typedef typename EL::E E;
  static_assert(D % 32 == 0, "each thread owns D/32 column pairs");
  constexpr int LD = ASIMT_LD, CH = D / 4, NC = D / 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* qs = (float*)smem_raw;  // [D][LD]
  float* ks = qs + D * LD;       // [D][LD], then P [64][LD]
  float* vs = ks + D * LD;       // [64][D]
  const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
  const i64 b = blockIdx.z, h = blockIdx.y, hk = h / (a.Hq / a.Hkv);
  const i64 q0 = (i64)blockIdx.x * 64;
  const float qscale = (float)(a.scale * 1.4426950408889634);  // log2(e)

  // Qᵀ: lanes walk the rows (t & 63), so the transposing stores hit 32
  // banks; each thread reads 16-byte chunks t >> 6, +4, … of its row.
  {
    const int r = t & 63;
    const i64 i = q0 + r;
    const E* src = q + ((b * a.Sq + i) * a.Hq + h) * D;
    for (int c = t >> 6; c < CH; c += 4) {
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (i < a.Sq) x = EL::load4(src + 4 * c);
      qs[(4 * c + 0) * LD + r] = x.x * qscale;
      qs[(4 * c + 1) * LD + r] = x.y * qscale;
      qs[(4 * c + 2) * LD + r] = x.z * qscale;
      qs[(4 * c + 3) * LD + r] = x.w * qscale;
    }
  }

  // This thread's rows' key ranges; a row past Sq sees nothing.
  int lo[4], hi[4];
#pragma unroll
  for (int r = 0; r < 4; r++) {
    const i64 i = q0 + 4 * ty + r;
    i64 l = 0, e = 0;
    if (i < a.Sq) key_range(a, b, i, l, e);
    lo[r] = (int)l, hi[r] = (int)e;
  }
  i64 blo, bhi, unused;
  key_range(a, b, q0, blo, unused);
  key_range(a, b, min(q0 + 63, a.Sq - 1), unused, bhi);

  float acc[4][2 * NC], m[4], l[4];
#pragma unroll
  for (int r = 0; r < 4; r++) {
    m[r] = -NT_INF, l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < 2 * NC; c++) acc[r][c] = 0.f;
  }

  for (i64 kc = blo; kc < bhi; kc += 64) {
    // Kᵀ tile, transposed like Q; V tile row-major, lanes along the row.
    {
      const int c = t & 63;
      const i64 j = kc + c;
      const E* src = k + ((b * a.Sk + j) * a.Hkv + hk) * D;
      for (int ch = t >> 6; ch < CH; ch += 4) {
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (j < bhi) x = EL::load4(src + 4 * ch);
        ks[(4 * ch + 0) * LD + c] = x.x;
        ks[(4 * ch + 1) * LD + c] = x.y;
        ks[(4 * ch + 2) * LD + c] = x.z;
        ks[(4 * ch + 3) * LD + c] = x.w;
      }
    }
    for (int idx = t; idx < 64 * CH; idx += 256) {
      const int c = idx / CH, ch = idx % CH;
      const i64 j = kc + c;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (j < bhi) x = EL::load4(v + ((b * a.Sk + j) * a.Hkv + hk) * D + 4 * ch);
      *(float4*)(vs + c * D + 4 * ch) = x;
    }
    __syncthreads();

    float s[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
      for (int c = 0; c < 4; c++) s[r][c] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; d++) {
      const float4 qv = *(const float4*)(qs + d * LD + 4 * ty);
      const float4 kv = *(const float4*)(ks + d * LD + 4 * tx);
      const float qa[4] = {qv.x, qv.y, qv.z, qv.w}, ka[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) s[r][c] = fmaf(qa[r], ka[c], s[r][c]);
    }

    // Online softmax in base 2. A row that has seen only −Inf so far
    // takes 0 as its reference, so exp2 gives 0, never −Inf − −Inf.
    const int j0 = (int)kc + 4 * tx;  // this thread's first key
#pragma unroll
    for (int r = 0; r < 4; r++) {
      float mx = -NT_INF;
#pragma unroll
      for (int c = 0; c < 4; c++) {
        const int j = j0 + c;
        if (j < lo[r] || j >= hi[r]) s[r][c] = -NT_INF;
        mx = fmaxf(mx, s[r][c]);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mn = fmaxf(m[r], mx);
      const float ref = mn == -NT_INF ? 0.f : mn;
      const float alpha = exp2f(m[r] - ref);
      m[r] = mn;
      float ps = 0.f;
#pragma unroll
      for (int c = 0; c < 4; c++) {
        s[r][c] = exp2f(s[r][c] - ref);
        ps += s[r][c];
      }
      l[r] = l[r] * alpha + ps;
#pragma unroll
      for (int c = 0; c < 2 * NC; c++) acc[r][c] *= alpha;
    }
    __syncthreads();  // every thread is done with Kᵀ before P overwrites it
#pragma unroll
    for (int r = 0; r < 4; r++) *(float4*)(ks + (4 * ty + r) * LD + 4 * tx) = make_float4(s[r][0], s[r][1], s[r][2], s[r][3]);
    __syncthreads();

#pragma unroll 2
    for (int kk = 0; kk < 64; kk += 4) {
      float p[4][4];
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const float4 pv = *(const float4*)(ks + (4 * ty + r) * LD + kk);
        p[r][0] = pv.x, p[r][1] = pv.y, p[r][2] = pv.z, p[r][3] = pv.w;
      }
#pragma unroll
      for (int e = 0; e < 4; e++) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
          const float2 vv = *(const float2*)(vs + (kk + e) * D + 2 * (tx + 16 * c));
#pragma unroll
          for (int r = 0; r < 4; r++) {
            acc[r][2 * c] = fmaf(p[r][e], vv.x, acc[r][2 * c]);
            acc[r][2 * c + 1] = fmaf(p[r][e], vv.y, acc[r][2 * c + 1]);
          }
        }
      }
    }
    __syncthreads();  // before the next tile overwrites P and V
  }

  // The row sums, over the 16 threads of the row group; then O = acc / l
  // and LSE = ln 2 · m + ln l, or 0 and −Inf for a row that saw no key.
#pragma unroll
  for (int r = 0; r < 4; r++)
#pragma unroll
    for (int off = 1; off < 16; off <<= 1) l[r] += __shfl_xor_sync(0xffffffffu, l[r], off);
#pragma unroll
  for (int r = 0; r < 4; r++) {
    const i64 i = q0 + 4 * ty + r;
    if (i >= a.Sq) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    E* dst = o + ((b * a.Sq + i) * a.Hq + h) * D;
#pragma unroll
    for (int c = 0; c < NC; c++) EL::store2(dst + 2 * (tx + 16 * c), acc[r][2 * c] * inv, acc[r][2 * c + 1] * inv);
    if (tx == 0) lse[(b * a.Hq + h) * a.Sq + i] = l[r] > 0.f ? m[r] * 0.6931471805599453f + logf(l[r]) : -NT_INF;
  }
}

// The fp32 kernels, then the bf16 and fp16 ones (suffixes _bf16, _f16).
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt64(AttnShape a, const float* q, const float* k, const float* v, float* o, float* lse) {
  attn_simt_body<SimtF32, 64>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt96(AttnShape a, const float* q, const float* k, const float* v, float* o, float* lse) {
  attn_simt_body<SimtF32, 96>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt128(AttnShape a, const float* q, const float* k, const float* v, float* o, float* lse) {
  attn_simt_body<SimtF32, 128>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt64_bf16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_simt_body<SimtBF16, 64>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt96_bf16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_simt_body<SimtBF16, 96>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt128_bf16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_simt_body<SimtBF16, 128>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt64_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_simt_body<SimtF16, 64>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt96_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_simt_body<SimtF16, 96>(a, q, k, v, o, lse);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_simt128_f16(AttnShape a, const u16* q, const u16* k, const u16* v, u16* o, float* lse) {
  attn_simt_body<SimtF16, 128>(a, q, k, v, o, lse);
}
