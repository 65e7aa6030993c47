// attention.cu: scaled dot-product attention with grouped-query heads,
// without a score matrix in device memory.
//
// The portable path (any float dtype, F64 included, any D ≤ 256) runs one
// warp per query row (forward, dQ) or per key row (dK, dV): the 32 lanes
// take 32 keys (or queries) at a time, so the softmax statistics need one
// warp reduction per 32 scores, and each lane owns D/32 output columns.
// Every mask leaves a row a contiguous key range [lo, hi), so masking is
// loop bounds.

// Forward: grid (Sq/warps, Hq, B), one warp per query row.
template <typename T>
__device__ void attn_fwd_body(AttnShape a, const void* q, const void* k, const void* v, i64 dt, void* o, i64 odt, void* lse, i64 ldt) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = (T*)smem_raw;  // [warps][D]
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  i64 i = (i64)blockIdx.x * nw + warp, h = blockIdx.y, b = blockIdx.z;
  if (i >= a.Sq) return;
  i64 D = a.D, hk = h / (a.Hq / a.Hkv);
  T* qrow = qs + warp * D;
  i64 qoff = ((b * a.Sq + i) * a.Hq + h) * D;
  for (i64 d = lane; d < D; d += 32) qrow[d] = ld<T>(q, (int)dt, qoff + d) * (T)a.scale;
  __syncwarp();
  i64 lo, hi;
  key_range(a, b, i, lo, hi);
  T acc[8];
#pragma unroll
  for (int t = 0; t < 8; t++) acc[t] = 0;
  T m = -nt_inf<T>(), l = 0;
  for (i64 kc = lo; kc < hi; kc += 32) {
    i64 j = kc + lane;
    T s = -nt_inf<T>();
    if (j < hi) {
      i64 koff = ((b * a.Sk + j) * a.Hkv + hk) * D;
      T dot = 0;
      for (i64 d = 0; d < D; d++) dot += qrow[d] * ld<T>(k, (int)dt, koff + d);
      s = dot;
    }
    T mc = warp_max(s);
    T mn = fmax(m, mc);
    T alpha = exp(m - mn);
    T p = j < hi ? exp(s - mn) : (T)0;
    l = l * alpha + warp_sum(p);
#pragma unroll
    for (int t = 0; t < 8; t++) acc[t] *= alpha;
    int cnt = (int)min((i64)32, hi - kc);
    for (int jj = 0; jj < cnt; jj++) {
      T pj = __shfl_sync(0xffffffffu, p, jj);
      i64 voff = ((b * a.Sk + kc + jj) * a.Hkv + hk) * D;
#pragma unroll
      for (int t = 0; t < 8; t++) {
        i64 d = lane + 32 * t;
        if (d < D) acc[t] += pj * ld<T>(v, (int)dt, voff + d);
      }
    }
    m = mn;
  }
  i64 ooff = ((b * a.Sq + i) * a.Hq + h) * D;
  T inv = l > (T)0 ? (T)1 / l : (T)0;
#pragma unroll
  for (int t = 0; t < 8; t++) {
    i64 d = lane + 32 * t;
    if (d < D) st<T>(o, (int)odt, ooff + d, acc[t] * inv);
  }
  if (lane == 0) st<T>(lse, (int)ldt, (b * a.Hq + h) * a.Sq + i, l > (T)0 ? m + log(l) : -nt_inf<T>());
}
extern "C" __global__ void attn_fwd_f(AttnShape a, const void* q, const void* k, const void* v, i64 dt, void* o, i64 odt, void* lse, i64 ldt) {
  attn_fwd_body<float>(a, q, k, v, dt, o, odt, lse, ldt);
}
extern "C" __global__ void attn_fwd_d(AttnShape a, const void* q, const void* k, const void* v, i64 dt, void* o, i64 odt, void* lse, i64 ldt) {
  attn_fwd_body<double>(a, q, k, v, dt, o, odt, lse, ldt);
}

// attn_dot: Dq[b, h, i] = Σ_d dO·O (F32, or F64 in double mode), the row
// term of the softmax backward. One warp per row.
template <typename T>
__device__ void attn_dot_body(AttnShape a, const void* o, i64 odt, const void* dO, i64 gdt, T* dq) {
  int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  i64 rows = a.B * a.Sq * a.Hq;
  for (i64 r = (i64)blockIdx.x * nw + (threadIdx.x >> 5); r < rows; r += (i64)gridDim.x * nw) {
    T s = 0;
    for (i64 d = lane; d < a.D; d += 32) s += ld<T>(o, (int)odt, r * a.D + d) * ld<T>(dO, (int)gdt, r * a.D + d);
    s = warp_sum(s);
    // r indexes [B, Sq, Hq]; the statistic is stored [B, Hq, Sq] like LSE.
    i64 h = r % a.Hq, bi = r / a.Hq, i = bi % a.Sq, b = bi / a.Sq;
    if (lane == 0) dq[(b * a.Hq + h) * a.Sq + i] = s;
  }
}
extern "C" __global__ void attn_dot_f(AttnShape a, const void* o, i64 odt, const void* dO, i64 gdt, float* dq) { attn_dot_body<float>(a, o, odt, dO, gdt, dq); }
extern "C" __global__ void attn_dot_d(AttnShape a, const void* o, i64 odt, const void* dO, i64 gdt, double* dq) { attn_dot_body<double>(a, o, odt, dO, gdt, dq); }

// attn_dot_bf16 is attn_dot for bf16 O and dO with D a multiple of 8: 16
// lanes per row, 16-byte loads, fp32 sums (the tensor-core backward's case).
extern "C" __global__ void attn_dot_bf16(AttnShape a, const u16* o, const u16* dO, float* dq) {
  const int sub = threadIdx.x & 15;
  const i64 rows = a.B * a.Sq * a.Hq, nv = a.D / 8;
  const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
  // Each warp takes two rows at a time; the loop bound is warp-uniform so
  // every lane reaches the shuffles.
  for (i64 w = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); 2 * w < rows; w += warps) {
    const i64 r = 2 * w + ((threadIdx.x >> 4) & 1);
    float s = 0.f;
    if (r < rows) {
      const uint4* orow = (const uint4*)(o + r * a.D);
      const uint4* grow = (const uint4*)(dO + r * a.D);
      for (i64 c = sub; c < nv; c += 16) {
        uint4 x = orow[c], y = grow[c];
        const u16* xh = (const u16*)&x;
        const u16* yh = (const u16*)&y;
#pragma unroll
        for (int e = 0; e < 8; e++) s += bf16_to_f32(xh[e]) * bf16_to_f32(yh[e]);
      }
    }
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (r < rows && sub == 0) {
      const i64 h = r % a.Hq, bi = r / a.Hq, i = bi % a.Sq, b = bi / a.Sq;
      dq[(b * a.Hq + h) * a.Sq + i] = s;
    }
  }
}

// dQ: one warp per query row, P recomputed from LSE:
//   dS = P ⊙ (dO·Vᵀ − Dq),  dQ = scale · dS · K.
template <typename T>
__device__ void attn_dq_body(AttnShape a, const void* q, const void* k, const void* v, i64 dt, const void* lse, i64 ldt,
                             const void* dO, i64 gdt, const T* dq, void* dQ, i64 qdt) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  i64 i = (i64)blockIdx.x * nw + warp, h = blockIdx.y, b = blockIdx.z;
  if (i >= a.Sq) return;
  i64 D = a.D, hk = h / (a.Hq / a.Hkv);
  T* qrow = (T*)smem_raw + warp * 2 * D;
  T* grow = qrow + D;
  i64 qoff = ((b * a.Sq + i) * a.Hq + h) * D;
  for (i64 d = lane; d < D; d += 32) {
    qrow[d] = ld<T>(q, (int)dt, qoff + d) * (T)a.scale;
    grow[d] = ld<T>(dO, (int)gdt, qoff + d);
  }
  __syncwarp();
  i64 srow = (b * a.Hq + h) * a.Sq + i;
  T L = ld<T>(lse, (int)ldt, srow), Di = dq[srow];
  i64 lo, hi;
  key_range(a, b, i, lo, hi);
  T acc[8];
#pragma unroll
  for (int t = 0; t < 8; t++) acc[t] = 0;
  for (i64 kc = lo; kc < hi; kc += 32) {
    i64 j = kc + lane;
    T ds = 0;
    if (j < hi) {
      i64 koff = ((b * a.Sk + j) * a.Hkv + hk) * D;
      T s = 0, dp = 0;
      for (i64 d = 0; d < D; d++) {
        s += qrow[d] * ld<T>(k, (int)dt, koff + d);
        dp += grow[d] * ld<T>(v, (int)dt, koff + d);
      }
      T p = exp(s - L);
      ds = p * (dp - Di);
    }
    int cnt = (int)min((i64)32, hi - kc);
    for (int jj = 0; jj < cnt; jj++) {
      T dsj = __shfl_sync(0xffffffffu, ds, jj);
      i64 koff = ((b * a.Sk + kc + jj) * a.Hkv + hk) * D;
#pragma unroll
      for (int t = 0; t < 8; t++) {
        i64 d = lane + 32 * t;
        if (d < D) acc[t] += dsj * ld<T>(k, (int)dt, koff + d);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 8; t++) {
    i64 d = lane + 32 * t;
    if (d < D) st<T>(dQ, (int)qdt, qoff + d, acc[t] * (T)a.scale);
  }
}
extern "C" __global__ void attn_dq_f(AttnShape a, const void* q, const void* k, const void* v, i64 dt, const void* lse, i64 ldt,
                                     const void* dO, i64 gdt, const float* dq, void* dQ, i64 qdt) {
  attn_dq_body<float>(a, q, k, v, dt, lse, ldt, dO, gdt, dq, dQ, qdt);
}
extern "C" __global__ void attn_dq_d(AttnShape a, const void* q, const void* k, const void* v, i64 dt, const void* lse, i64 ldt,
                                     const void* dO, i64 gdt, const double* dq, void* dQ, i64 qdt) {
  attn_dq_body<double>(a, q, k, v, dt, lse, ldt, dO, gdt, dq, dQ, qdt);
}

// dK, dV: one warp per key row of one kv head, summing over the query heads
// that share it and every query that sees the key (no atomics, so the
// result is deterministic):
//   dV = Σ P·dO,  dK = scale · Σ dS·Q.
template <typename T>
__device__ void attn_dkv_body(AttnShape a, const void* q, const void* k, const void* v, i64 dt, const void* lse, i64 ldt,
                              const void* dO, i64 gdt, const T* dq, void* dK, i64 kdt, void* dV, i64 vdt) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  i64 j = (i64)blockIdx.x * nw + warp, hk = blockIdx.y, b = blockIdx.z;
  if (j >= a.Sk) return;
  i64 D = a.D, grp = a.Hq / a.Hkv;
  T* krow = (T*)smem_raw + warp * 2 * D;
  T* vrow = krow + D;
  i64 koff = ((b * a.Sk + j) * a.Hkv + hk) * D;
  for (i64 d = lane; d < D; d += 32) {
    krow[d] = ld<T>(k, (int)dt, koff + d);
    vrow[d] = ld<T>(v, (int)dt, koff + d);
  }
  __syncwarp();
  // Queries that see key j: i ≥ j when causal, i < j + window with a window;
  // none when j is past the sample's key length.
  i64 klen = a.keylens ? (i64)((const int*)a.keylens)[b] : a.Sk;
  i64 qlo = 0, qhi = a.Sq;
  if (j >= klen) qhi = 0;
  if (a.causal) {
    qlo = j;
    if (a.window > 0) qhi = min(qhi, j + a.window);
  }
  T dk[8], dv[8];
#pragma unroll
  for (int t = 0; t < 8; t++) dk[t] = dv[t] = 0;
  for (i64 hh = 0; hh < grp; hh++) {
    i64 h = hk * grp + hh;
    for (i64 ic = qlo; ic < qhi; ic += 32) {
      i64 i = ic + lane;
      T p = 0, ds = 0;
      if (i < qhi) {
        i64 qoff = ((b * a.Sq + i) * a.Hq + h) * D;
        T s = 0, dp = 0;
        for (i64 d = 0; d < D; d++) {
          s += ld<T>(q, (int)dt, qoff + d) * krow[d];
          dp += ld<T>(dO, (int)gdt, qoff + d) * vrow[d];
        }
        i64 srow = (b * a.Hq + h) * a.Sq + i;
        p = exp(s * (T)a.scale - ld<T>(lse, (int)ldt, srow));
        ds = p * (dp - dq[srow]);
      }
      int cnt = (int)min((i64)32, qhi - ic);
      for (int ii = 0; ii < cnt; ii++) {
        T pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        i64 qoff = ((b * a.Sq + ic + ii) * a.Hq + h) * D;
#pragma unroll
        for (int t = 0; t < 8; t++) {
          i64 d = lane + 32 * t;
          if (d < D) {
            dv[t] += pi * ld<T>(dO, (int)gdt, qoff + d);
            dk[t] += dsi * ld<T>(q, (int)dt, qoff + d);
          }
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 8; t++) {
    i64 d = lane + 32 * t;
    if (d < D) {
      st<T>(dK, (int)kdt, koff + d, dk[t] * (T)a.scale);
      st<T>(dV, (int)vdt, koff + d, dv[t]);
    }
  }
}
extern "C" __global__ void attn_dkv_f(AttnShape a, const void* q, const void* k, const void* v, i64 dt, const void* lse, i64 ldt,
                                      const void* dO, i64 gdt, const float* dq, void* dK, i64 kdt, void* dV, i64 vdt) {
  attn_dkv_body<float>(a, q, k, v, dt, lse, ldt, dO, gdt, dq, dK, kdt, dV, vdt);
}
extern "C" __global__ void attn_dkv_d(AttnShape a, const void* q, const void* k, const void* v, i64 dt, const void* lse, i64 ldt,
                                      const void* dO, i64 gdt, const double* dq, void* dK, i64 kdt, void* dV, i64 vdt) {
  attn_dkv_body<double>(a, q, k, v, dt, lse, ldt, dO, gdt, dq, dK, kdt, dV, vdt);
}
