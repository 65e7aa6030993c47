// groupnorm_fast.cu: GroupNorm over x [n, c, hw] for bf16 or fp32 tensors
// whose hw is a multiple of 8, optionally followed by SiLU in the same pass
// (the VAE's every norm but one is GroupNorm then SiLU).
//
// The general kernel (reduce.cu) gives each (sample, group) one block: the
// VAE's 32 groups of one image then use 32 of the GPU's multiprocessors,
// and a group of a 1024² image holds 4 M elements. Here each group is split
// over S blocks in two launches:
//   gn_stats: each block reduces its slice to (count, mean, M2) — chunk
//     means and squared deviations merged by Chan's formula, so large
//     means cost no precision — into a partials buffer [n·groups, S, 3];
//   gn_apply: each block merges its group's S partials in a fixed order
//     (the same mean and rstd in every block, reproducible run to run),
//     then normalises its slice with per-channel scale and shift (and SiLU).
// Every access moves 8 elements (16 bytes of bf16, 32 of fp32); statistics
// are fp32; y is rounded once.

// load8 reads 8 consecutive elements as floats.
__device__ __forceinline__ void load8(const u16* p, float* v) {
  const uint4 r = *(const uint4*)p;
  const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// store8 writes 8 consecutive elements, rounding to bf16 once.
__device__ __forceinline__ void store8(u16* p, const float* v) {
  u32 w[4];
#pragma unroll
  for (int i = 0; i < 4; i++) w[i] = (u32)f32_to_bf16(v[2 * i]) | ((u32)f32_to_bf16(v[2 * i + 1]) << 16);
  *(uint4*)p = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void store8(float* p, const float* v) {
  ((float4*)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  ((float4*)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// chan_merge folds a set of nb values with mean mb and squared deviations
// m2b into the running (n, mean, m2) (Chan, Golub and LeVeque 1979).
__device__ __forceinline__ void chan_merge(float& n, float& mean, float& m2, float nb, float mb, float m2b) {
  if (nb == 0.f) return;
  const float nt = n + nb, d = mb - mean, f = nb / nt;
  mean += d * f;
  m2 += m2b + d * d * n * f;
  n = nt;
}

// gn_slice is the range of 8-element chunks [c0, c1) that slice s of S
// covers in a group of nch chunks.
__device__ __forceinline__ void gn_slice(i64 nch, i64 s, i64 S, i64& c0, i64& c1) {
  const i64 per = (nch + S - 1) / S;
  c0 = min(nch, s * per);
  c1 = min(nch, c0 + per);
}

// gn_stats: grid (S, n·groups), 256 threads.
template <typename X>
__device__ void gn_stats_body(float* part, const X* x, i64 len, i64 S) {
  __shared__ float sh[3][8];
  const i64 ng = blockIdx.y, s = blockIdx.x;
  i64 c0, c1;
  gn_slice(len / 8, s, S, c0, c1);
  const X* base = x + ng * len;
  float n = 0.f, mean = 0.f, m2 = 0.f;
  // Four chunks in flight per thread before the first is used.
  for (i64 ch = c0 + threadIdx.x; ch < c1; ch += 4 * (i64)blockDim.x) {
    float v[4][8];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const i64 cu = ch + u * (i64)blockDim.x;
      if (cu < c1) load8(base + cu * 8, v[u]);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      if (ch + u * (i64)blockDim.x >= c1) break;
      float cs = 0.f;
#pragma unroll
      for (int i = 0; i < 8; i++) cs += v[u][i];
      const float cm = cs * 0.125f;
      float cq = 0.f;
#pragma unroll
      for (int i = 0; i < 8; i++) cq += (v[u][i] - cm) * (v[u][i] - cm);
      chan_merge(n, mean, m2, 8.f, cm, cq);
    }
  }
  // Warp tree, then warp 0 over the warps' results: a fixed order.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float nb = __shfl_xor_sync(0xffffffffu, n, o), mb = __shfl_xor_sync(0xffffffffu, mean, o), qb = __shfl_xor_sync(0xffffffffu, m2, o);
    chan_merge(n, mean, m2, nb, mb, qb);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) {
    sh[0][warp] = n;
    sh[1][warp] = mean;
    sh[2][warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float tn = 0.f, tm = 0.f, tq = 0.f;
    for (int w = 0; w < nw; w++) chan_merge(tn, tm, tq, sh[0][w], sh[1][w], sh[2][w]);
    float* p = part + (ng * S + s) * 3;
    p[0] = tn;
    p[1] = tm;
    p[2] = tq;
  }
}
// gn_stats_kernel: x is bf16 when xbf, else fp32.
extern "C" __global__ void __launch_bounds__(256) gn_stats_kernel(float* part, const void* x, i64 xbf, i64 len, i64 S) {
  if (xbf) gn_stats_body(part, (const u16*)x, len, S);
  else gn_stats_body(part, (const float*)x, len, S);
}

// gn_apply: grid (S2, n·groups), 256 threads. Slice 0 of each group also
// stores the group's mean and rstd.
template <typename X, typename Y>
__device__ void gn_apply_body(Y* y, float* mean, float* rstd, const X* x, const void* w, i64 wdt, const void* b, i64 bdt, const float* part, i64 C,
                              i64 HW, i64 G, i64 S, i64 S2, bool silu, double eps) {
  __shared__ float stat[2];
  const i64 ng = blockIdx.y, s = blockIdx.x;
  const i64 cpg = C / G, len = cpg * HW, g = ng % G;
  if (threadIdx.x == 0) {
    float n = 0.f, m = 0.f, q = 0.f;
    const float* p = part + ng * S * 3;
    for (i64 k = 0; k < S; k++) chan_merge(n, m, q, p[3 * k], p[3 * k + 1], p[3 * k + 2]);
    const float rs = 1.f / sqrtf(q / n + (float)eps);
    stat[0] = m;
    stat[1] = rs;
    if (s == 0) {
      mean[ng] = m;
      rstd[ng] = rs;
    }
  }
  __syncthreads();
  const float mu = stat[0], rs = stat[1];
  i64 c0, c1;
  gn_slice(len / 8, s, S2, c0, c1);
  const i64 cpc = HW / 8;  // chunks per channel
  const X* xb = x + ng * len;
  Y* yb = y + ng * len;
  for (i64 ch = c0 + threadIdx.x; ch < c1; ch += blockDim.x) {
    const i64 c = g * cpg + ch / cpc;
    const float sc = rs * (w ? ld<float>(w, (int)wdt, c) : 1.f);
    const float sf = (b ? ld<float>(b, (int)bdt, c) : 0.f) - mu * sc;
    float v[8];
    load8(xb + ch * 8, v);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      float t = fmaf(v[i], sc, sf);
      if (silu) {
        // x·sigmoid(x) as elementwise.cu's t_sigmoid computes it.
        const float e = expf(-fabsf(t));
        const float r = __fdividef(1.f, 1.f + e);
        t *= t >= 0.f ? r : e * r;
      }
      v[i] = t;
    }
    store8(yb + ch * 8, v);
  }
}

// gn_apply_kernel: x is bf16 when xbf, else fp32, and likewise y with ybf;
// silu ≠ 0 applies SiLU. (The branches are uniform over the grid.)
extern "C" __global__ void __launch_bounds__(256) gn_apply_kernel(void* y, i64 ybf, float* mean, float* rstd, const void* x, i64 xbf,
    const void* w, i64 wdt, const void* b, i64 bdt, const float* part, i64 C, i64 HW, i64 G, i64 S, i64 S2, i64 silu, double eps) {
  const bool sl = silu != 0;
  if (xbf && ybf) gn_apply_body((u16*)y, mean, rstd, (const u16*)x, w, wdt, b, bdt, part, C, HW, G, S, S2, sl, eps);
  else if (xbf) gn_apply_body((float*)y, mean, rstd, (const u16*)x, w, wdt, b, bdt, part, C, HW, G, S, S2, sl, eps);
  else if (ybf) gn_apply_body((u16*)y, mean, rstd, (const float*)x, w, wdt, b, bdt, part, C, HW, G, S, S2, sl, eps);
  else gn_apply_body((float*)y, mean, rstd, (const float*)x, w, wdt, b, bdt, part, C, HW, G, S, S2, sl, eps);
}
