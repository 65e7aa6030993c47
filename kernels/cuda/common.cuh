// common.cuh: definitions shared by every kernel file. The Go side prepends
// it to each .cu source, so NVRTC compiles self-contained units and needs
// no CUDA headers: bf16 and fp16 are handled as 16-bit patterns, converted
// with the same round-to-nearest-even as kernels.BF16FromF32/F16FromF32.
//
// Every kernel parameter is 8 bytes (pointers, long long, double) or a
// struct of 8-byte members: the Go launcher packs arguments that way.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

// Dtype codes, as kernels.DType numbers them.
#define DT_F32 1
#define DT_BF16 2
#define DT_F16 3
#define DT_F64 4
#define DT_I32 5
#define DT_F8E4M3 6

#define NT_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// f32_to_bf16 rounds to nearest even. From sm_80 on it is one cvt
// instruction (the software form is five or six integer operations, and the
// memory-bound bf16 kernels round several times an element, enough to make
// some of them instruction-bound); both give the same bits for every
// number, and a NaN stays a NaN (the instruction's is the canonical one).
__device__ __forceinline__ u16 f32_to_bf16(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  u16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  u32 b = __float_as_uint(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x0040u);
  b += 0x7fffu + ((b >> 16) & 1u);
  return (u16)(b >> 16);
#endif
}

// bf16x2_pack rounds lo and hi to bf16 and packs them into one word, lo in
// the low half (the lower address): one cvt instruction from sm_80 on.
__device__ __forceinline__ u32 bf16x2_pack(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  u32 w;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
  return w;
#else
  return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16);
#endif
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
  float f;
  asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
  u16 h;
  asm("{ .reg .f16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
  return h;
}

// e4m3_to_f32 widens an FP8 E4M3 pattern exactly; f32_to_e4m3 rounds to
// nearest even and saturates at ±448, NaN to the NaN code of its sign —
// the bit operations of kernels.F8E4M3FromF32, so both backends store the
// same codes.
__device__ __forceinline__ float e4m3_to_f32(unsigned char h) {
  const u32 e = (h >> 3) & 15u, m = h & 7u;
  float v;
  if (e == 15u && m == 7u) v = __int_as_float(0x7fc00000);
  else if (e == 0u) v = (float)m * (1.0f / 512.0f);
  else v = __uint_as_float(((e + 120u) << 23) | (m << 20));
  return (h & 0x80) ? -v : v;
}

__device__ __forceinline__ unsigned char f32_to_e4m3(float f) {
  const u32 b = __float_as_uint(f);
  const unsigned char sign = (unsigned char)((b >> 24) & 0x80u);
  const u32 a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7f;
  if (a >= 0x43e00000u) return sign | 0x7e;
  if (a < 0x3c800000u) return sign | (unsigned char)rintf(__uint_as_float(a) * 512.0f);
  u32 v = a - (120u << 23);
  v += 0x7ffffu + ((v >> 20) & 1u);
  return sign | (unsigned char)(v >> 20);
}

// ld reads element i of a buffer of dtype dt as the compute type T.
template <typename T>
__device__ __forceinline__ T ld(const void* p, int dt, i64 i) {
  switch (dt) {
    case DT_F32: return (T)((const float*)p)[i];
    case DT_BF16: return (T)bf16_to_f32(((const u16*)p)[i]);
    case DT_F16: return (T)f16_to_f32(((const u16*)p)[i]);
    case DT_F64: return (T)((const double*)p)[i];
    case DT_F8E4M3: return (T)e4m3_to_f32(((const unsigned char*)p)[i]);
    default: return (T)((const int*)p)[i];
  }
}

// st stores v into element i, rounding once (half types through float32,
// as a float32 computation would).
template <typename T>
__device__ __forceinline__ void st(void* p, int dt, i64 i, T v) {
  switch (dt) {
    case DT_F32: ((float*)p)[i] = (float)v; break;
    case DT_BF16: ((u16*)p)[i] = f32_to_bf16((float)v); break;
    case DT_F16: ((u16*)p)[i] = f32_to_f16((float)v); break;
    case DT_F64: ((double*)p)[i] = (double)v; break;
    case DT_F8E4M3: ((unsigned char*)p)[i] = f32_to_e4m3((float)v); break;
    default: {
      // Truncation toward zero; NaN and out-of-range values saturate
      // instead of being undefined.
      double d = (double)v;
      int r = d != d ? 0 : d >= 2147483647.0 ? 2147483647 : d <= -2147483648.0 ? (-2147483647 - 1) : (int)d;
      ((int*)p)[i] = r;
    }
  }
}

template <typename T> __device__ __forceinline__ T nt_inf();
template <> __device__ __forceinline__ float nt_inf<float>() { return NT_INF; }
template <> __device__ __forceinline__ double nt_inf<double>() { return __longlong_as_double(0x7ff0000000000000ll); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// block_sum reduces over the whole block in a fixed order (lane tree, then
// warp tree), so results are reproducible run to run. scratch holds 32 T.
// Every thread gets the total.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T t = lane < nw ? scratch[lane] : (T)0;
  t = warp_sum(t);
  return t;
}

template <typename T>
__device__ T block_max(T v, T* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T t = lane < nw ? scratch[lane] : -nt_inf<T>();
  t = warp_max(t);
  return t;
}

// The 16-byte bf16 chunk helpers of the row kernels (rownorm_vec.cu,
// fused_norm.cu).

// rv_unpack widens 8 bf16 (one 16-byte chunk, lowest address first) to fp32.
__device__ __forceinline__ void rv_unpack(uint4 v, float* f) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    f[2 * k] = __uint_as_float(w[k] << 16);
    f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}

// rv_pack rounds 8 fp32 to bf16 (round to nearest even, as f32_to_bf16).
__device__ __forceinline__ uint4 rv_pack(const float* f) {
  u32 w[4];
#pragma unroll
  for (int k = 0; k < 4; k++) w[k] = bf16x2_pack(f[2 * k], f[2 * k + 1]);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// rv_group_sum adds v over the L lanes of this lane's group. Every lane of
// the warp must call it (full mask); groups never mix, since xor by an
// offset below L stays inside an aligned run of L lanes.
__device__ __forceinline__ float rv_group_sum(float v, int L) {
  for (int o = L >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// rv_sumsq adds the squares of one chunk's 8 values to acc.
__device__ __forceinline__ float rv_sumsq(uint4 xv, float acc) {
  float f[8];
  rv_unpack(xv, f);
#pragma unroll
  for (int k = 0; k < 8; k++) acc += f[k] * f[k];
  return acc;
}

// rv_scale returns the chunk x·rs·w (w absent: x·rs), rounded to bf16.
__device__ __forceinline__ uint4 rv_scale(uint4 xv, const uint4* w, i64 j, float rs) {
  float f[8];
  rv_unpack(xv, f);
#pragma unroll
  for (int k = 0; k < 8; k++) f[k] *= rs;
  if (w) {
    float g[8];
    rv_unpack(w[j], g);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] *= g[k];
  }
  return rv_pack(f);
}

// rv_scale for a float32 weight (Gemma's norms: x·rs·w in fp32, then one
// rounding to bf16, as x.float() … type_as(x) gives); w holds two float4
// per chunk.
__device__ __forceinline__ uint4 rv_scale(uint4 xv, const float4* w, i64 j, float rs) {
  float f[8];
  rv_unpack(xv, f);
#pragma unroll
  for (int k = 0; k < 8; k++) f[k] *= rs;
  if (w) {
    const float4 a = w[2 * j], b = w[2 * j + 1];
    f[0] *= a.x, f[1] *= a.y, f[2] *= a.z, f[3] *= a.w;
    f[4] *= b.x, f[5] *= b.y, f[6] *= b.z, f[7] *= b.w;
  }
  return rv_pack(f);
}

// rv_g widens one chunk of x and of g = dy·w (w absent: dy) to fp32.
__device__ __forceinline__ void rv_g(uint4 xv, uint4 dv, const uint4* w, i64 j, float* xf, float* gf) {
  rv_unpack(xv, xf);
  rv_unpack(dv, gf);
  if (w) {
    float wf[8];
    rv_unpack(w[j], wf);
#pragma unroll
    for (int k = 0; k < 8; k++) gf[k] *= wf[k];
  }
}

// rv_gdot adds Σ g·x̂ over one chunk to acc (x̂ = x·rs).
__device__ __forceinline__ float rv_gdot(uint4 xv, uint4 dv, const uint4* w, i64 j, float rs, float acc) {
  float xf[8], gf[8];
  rv_g(xv, dv, w, j, xf, gf);
#pragma unroll
  for (int k = 0; k < 8; k++) acc += gf[k] * (xf[k] * rs);
  return acc;
}

// rv_dx returns one chunk of dx = rs·(g − x̂·m), m = mean(g·x̂), in bf16.
__device__ __forceinline__ uint4 rv_dx(uint4 xv, uint4 dv, const uint4* w, i64 j, float rs, float m) {
  float xf[8], gf[8];
  rv_g(xv, dv, w, j, xf, gf);
#pragma unroll
  for (int k = 0; k < 8; k++) xf[k] = rs * (gf[k] - (xf[k] * rs) * m);
  return rv_pack(xf);
}

// nt_round rounds v to dtype dt and back (what storing it would keep).
template <typename T>
__device__ __forceinline__ T nt_round(T v, int dt) {
  switch (dt) {
    case DT_F32: return (T)(float)v;
    case DT_BF16: return (T)bf16_to_f32(f32_to_bf16((float)v));
    case DT_F16: return (T)f16_to_f32(f32_to_f16((float)v));
    case DT_F8E4M3: return (T)e4m3_to_f32(f32_to_e4m3((float)v));
    default: return v;
  }
}

// NormScale's scale modes (kernels.ScaleMode).
#define NS_ASIS 0
#define NS_ONEPLUS 1
#define NS_TANH 2

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Kernel-detected faults, reported by the Go side at Sync.
__device__ __forceinline__ void raise_fault(int* word, int code, int a, int b, i64 pos) {
  if (atomicCAS(word, 0, code) == 0) {
    word[1] = a;
    word[2] = b;
    word[3] = (int)pos;
  }
}

// AttnShape is kernels.AttentionArgs as the attention kernels see it.
struct AttnShape {
  i64 B, Sq, Sk, Hq, Hkv, D;
  double scale;
  i64 causal, window;
  u64 keylens;  // device int[B], or 0
};

__device__ __forceinline__ void key_range(const AttnShape& a, i64 b, i64 i, i64& lo, i64& hi) {
  hi = a.Sk;
  if (a.keylens) hi = min(hi, (i64)((const int*)a.keylens)[b]);
  lo = 0;
  if (a.causal) {
    hi = min(hi, i + 1);
    if (a.window > 0) lo = max((i64)0, i - a.window + 1);
  }
}

