// fused_norm.cu: the fused ops of the Next-DiT block (kernels/fused.go).
//
// NormScale: y = res + round(round(x·rs·w) · f(s[sample])), the sandwich
// norm with adaLN's scale (f = 1+s) or tanh gate (f = tanh s) and the
// residual add in one pass, where the separate ops made five (RMSNorm, the
// factor's Affine or Tanh, Mul, Add, and the chunk's slice copy). Its
// backward is a row pass for dx (dn = dy·f(s) formed on the fly) and a
// column pass for the factor's gradient (n recomputed from x and rstd), so
// neither the normalised rows nor dn ever reach memory.
//
// QKVNormRope: q, k, v from the fused projection in one pass (the slices
// were three copies, then two norms and two rotations), and its backward
// into dqkv in one pass.
//
// Each op has a generic kernel (any dtypes, compute in T = float or
// double, block or warp per row) and a 16-byte bf16 kernel for the
// training path on lane groups: NormScale's are rownorm_vec.cu's RMSNorm
// kernels with the factor and residual applied (normscale_bf16_rows*), the
// QKV ones are below. Every stage
// rounds to the dtype the separate ops would have stored it in (nt_round),
// so the fused ops compute the same function as the composition.

__device__ __forceinline__ float ns_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double ns_tanh(double v) { return tanh(v); }

// ns_factor is f(s) rounded to s's dtype, as the Affine or Tanh op on the
// factor's chunk stored it.
template <typename T>
__device__ __forceinline__ T ns_factor(T s, int mode, int sdt) {
  if (mode == NS_ONEPLUS) return nt_round<T>(s * (T)1 + (T)1, sdt);
  if (mode == NS_TANH) return nt_round<T>(ns_tanh(s), sdt);
  return s;
}

// NormScale's factor and residual, as the kernels see them.
struct NSArgs {
  u64 s;
  i64 sdt, soff, sstride, seq, mode;
  u64 res;
  i64 resdt;
};

// normscale: one block of 256 threads per row (grid-stride).
template <typename T>
__device__ void normscale_body(void* y, i64 ydt, void* rstd, i64 rdt, const void* x, i64 xdt, const void* w, i64 wdt, NSArgs a,
                               i64 rows, i64 cols, double eps) {
  __shared__ T scratch[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 o = r * cols;
    T ss = 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T v = ld<T>(x, (int)xdt, o + j);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const T rs = (T)1 / sqrt(ss / (T)cols + (T)eps);
    const i64 so = a.s ? a.soff + (r / a.seq) * a.sstride : 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T v = ld<T>(x, (int)xdt, o + j) * rs;
      if (w) v *= ld<T>(w, (int)wdt, j);
      v = nt_round<T>(v, (int)ydt);
      if (a.s) v = nt_round<T>(v * ns_factor<T>(ld<T>((const void*)a.s, (int)a.sdt, so + j), (int)a.mode, (int)a.sdt), (int)ydt);
      if (a.res) v = ld<T>((const void*)a.res, (int)a.resdt, o + j) + v;
      st<T>(y, (int)ydt, o + j, v);
    }
    if (threadIdx.x == 0) st<T>(rstd, (int)rdt, r, rs);
    __syncthreads();
  }
}
extern "C" __global__ void normscale_f(void* y, i64 ydt, void* rstd, i64 rdt, const void* x, i64 xdt, const void* w, i64 wdt,
                                       NSArgs a, i64 rows, i64 cols, double eps) {
  normscale_body<float>(y, ydt, rstd, rdt, x, xdt, w, wdt, a, rows, cols, eps);
}
extern "C" __global__ void normscale_d(void* y, i64 ydt, void* rstd, i64 rdt, const void* x, i64 xdt, const void* w, i64 wdt,
                                       NSArgs a, i64 rows, i64 cols, double eps) {
  normscale_body<double>(y, ydt, rstd, rdt, x, xdt, w, wdt, a, rows, cols, eps);
}

// normscale_grad: dx per row (block per row), with dn = round(dy·f(s))
// standing for RMSNormGrad's dy: dx = rs·(g − x̂·mean(g·x̂)), g = dn·w.
template <typename T>
__device__ __forceinline__ T ns_dn(const void* dy, int dydt, i64 i, const NSArgs& a, i64 so, i64 j) {
  T g = ld<T>(dy, dydt, i);
  if (a.s) g = nt_round<T>(g * ns_factor<T>(ld<T>((const void*)a.s, (int)a.sdt, so + j), (int)a.mode, (int)a.sdt), dydt);
  return g;
}
template <typename T>
__device__ void normscale_grad_body(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w, i64 wdt,
                                    const void* rstd, i64 rdt, NSArgs a, i64 rows, i64 cols) {
  __shared__ T scratch[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 o = r * cols;
    const T rs = ld<T>(rstd, (int)rdt, r);
    const i64 so = a.s ? a.soff + (r / a.seq) * a.sstride : 0;
    T sgx = 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T g = ns_dn<T>(dy, (int)dydt, o + j, a, so, j);
      if (w) g *= ld<T>(w, (int)wdt, j);
      sgx += g * (ld<T>(x, (int)xdt, o + j) * rs);
    }
    sgx = block_sum(sgx, scratch) / (T)cols;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T g = ns_dn<T>(dy, (int)dydt, o + j, a, so, j);
      if (w) g *= ld<T>(w, (int)wdt, j);
      const T xh = ld<T>(x, (int)xdt, o + j) * rs;
      T v = rs * (g - xh * sgx);
      // A residual (it may be dx): the rounded gradient plus it, as an Add.
      if (a.res) v = nt_round<T>(v, (int)dxdt) + ld<T>((const void*)a.res, (int)a.resdt, o + j);
      st<T>(dx, (int)dxdt, o + j, v);
    }
    __syncthreads();
  }
}
extern "C" __global__ void normscale_grad_f(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w,
                                            i64 wdt, const void* rstd, i64 rdt, NSArgs a, i64 rows, i64 cols) {
  normscale_grad_body<float>(dx, dxdt, dy, dydt, x, xdt, w, wdt, rstd, rdt, a, rows, cols);
}
extern "C" __global__ void normscale_grad_d(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w,
                                            i64 wdt, const void* rstd, i64 rdt, NSArgs a, i64 rows, i64 cols) {
  normscale_grad_body<double>(dx, dxdt, dy, dydt, x, xdt, w, wdt, rstd, rdt, a, rows, cols);
}

// normscale_sgrad_part / normscale_sgrad_fold: the factor's gradient. A
// block takes 32 columns × 8 row lanes of one slice of one sample's rows
// (blockIdx.y = sample·slices + slice) and sums round(dy·n), n recomputed
// as the forward rounded it (to dy's dtype, which is y's), in a fixed
// order into partials [samples, slices, cols]; the fold adds each sample's
// slices in order, rounds to s's dtype, applies the mode's derivative as
// the Affine or Tanh gradient would, and writes every element of ds: the
// chunk's values, zeros elsewhere.
template <typename T>
__device__ void normscale_sgrad_part_body(T* part, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w, i64 wdt,
                                          const void* rstd, i64 rdt, i64 seq, i64 slices, i64 per, i64 cols) {
  __shared__ T sh[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const i64 j = (i64)blockIdx.x * 32 + tx;
  const i64 b = blockIdx.y / slices, sl = blockIdx.y % slices;
  const i64 r0 = b * seq + sl * per, r1 = min(b * seq + seq, r0 + per);
  T acc = 0;
  if (j < cols) {
    const T wj = w ? ld<T>(w, (int)wdt, j) : (T)1;
    for (i64 r = r0 + ty; r < r1; r += 8) {
      T n = ld<T>(x, (int)xdt, r * cols + j) * ld<T>(rstd, (int)rdt, r);
      if (w) n *= wj;
      n = nt_round<T>(n, (int)dydt);
      acc += nt_round<T>(ld<T>(dy, (int)dydt, r * cols + j) * n, (int)dydt);
    }
  }
  sh[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && j < cols) {
    T t = 0;
    for (int k = 0; k < 8; k++) t += sh[k][tx];
    part[blockIdx.y * cols + j] = t;
  }
}
template <typename T>
__device__ void normscale_sgrad_fold_body(void* ds, i64 n, const T* part, NSArgs a, i64 samples, i64 slices, i64 cols) {
  GRID_STRIDE(i, n) {
    const i64 rel = i - a.soff;
    const i64 b = rel >= 0 ? rel / a.sstride : -1, j = rel >= 0 ? rel % a.sstride : -1;
    T v = 0;
    if (rel >= 0 && b < samples && j < cols) {
      for (i64 k = 0; k < slices; k++) v += part[(b * slices + k) * cols + j];
      v = nt_round<T>(v, (int)a.sdt);
      if (a.mode == NS_TANH) {
        const T t = ns_tanh(ld<T>((const void*)a.s, (int)a.sdt, i));
        v = v * ((T)1 - t * t);
      }
    }
    st<T>(ds, (int)a.sdt, i, v);
  }
}
extern "C" __global__ void normscale_sgrad_part_f(float* part, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w,
                                                  i64 wdt, const void* rstd, i64 rdt, i64 seq, i64 slices, i64 per, i64 cols) {
  normscale_sgrad_part_body<float>(part, dy, dydt, x, xdt, w, wdt, rstd, rdt, seq, slices, per, cols);
}
extern "C" __global__ void normscale_sgrad_part_d(double* part, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w,
                                                  i64 wdt, const void* rstd, i64 rdt, i64 seq, i64 slices, i64 per, i64 cols) {
  normscale_sgrad_part_body<double>(part, dy, dydt, x, xdt, w, wdt, rstd, rdt, seq, slices, per, cols);
}
extern "C" __global__ void normscale_sgrad_fold_f(void* ds, i64 n, const float* part, NSArgs a, i64 samples, i64 slices, i64 cols) {
  normscale_sgrad_fold_body<float>(ds, n, part, a, samples, slices, cols);
}
extern "C" __global__ void normscale_sgrad_fold_d(void* ds, i64 n, const double* part, NSArgs a, i64 samples, i64 slices, i64 cols) {
  normscale_sgrad_fold_body<double>(ds, n, part, a, samples, slices, cols);
}

// normscale_sgrad_part_bf16: normscale_sgrad_part_f for bf16 dy and x, a
// bf16 or absent w and F32 rstd, cols a multiple of 8: a thread takes one
// 16-byte chunk (8 columns) where the generic kernel takes one column, so a
// warp reads 512 contiguous bytes of a row instead of 64, and each step of
// a thread has four rows' loads in flight. A block is 32 chunks × 8 row
// lanes. Row lane ty walks the slice's rows ty, ty+8, … and each column's
// terms are added in that order, then the 8 lanes in order, as the generic
// kernel adds them, so with the same slices both give the same partials.
extern "C" __global__ void __launch_bounds__(256) normscale_sgrad_part_bf16(float* part, const u16* dy, const u16* x, const u16* w,
                                                                            const float* rstd, i64 seq, i64 slices, i64 per, i64 cols) {
  __shared__ float sh[8][32][9];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const i64 nv = cols / 8, jc = (i64)blockIdx.x * 32 + tx;
  const i64 b = blockIdx.y / slices, sl = blockIdx.y % slices;
  const i64 r0 = b * seq + sl * per, r1 = min(b * seq + seq, r0 + per);
  float acc[8];
#pragma unroll
  for (int k = 0; k < 8; k++) acc[k] = 0.0f;
  if (jc < nv) {
    float wj[8];
    if (w) {
      rv_unpack(((const uint4*)w)[jc], wj);
    }
    const uint4* xv = (const uint4*)x;
    const uint4* dv = (const uint4*)dy;
    i64 r = r0 + ty;
    for (; r + 24 < r1; r += 32) {
      uint4 xc[4], dc[4];
      float rs[4];
#pragma unroll
      for (int q = 0; q < 4; q++) {
        xc[q] = xv[(r + 8 * q) * nv + jc];
        dc[q] = dv[(r + 8 * q) * nv + jc];
        rs[q] = rstd[r + 8 * q];
      }
#pragma unroll
      for (int q = 0; q < 4; q++) {
        float xf[8], df[8];
        rv_unpack(xc[q], xf);
        rv_unpack(dc[q], df);
#pragma unroll
        for (int k = 0; k < 8; k++) {
          float n = xf[k] * rs[q];
          if (w) n *= wj[k];
          n = bf16_to_f32(f32_to_bf16(n));
          acc[k] += bf16_to_f32(f32_to_bf16(df[k] * n));
        }
      }
    }
    for (; r < r1; r += 8) {
      float xf[8], df[8];
      rv_unpack(xv[r * nv + jc], xf);
      rv_unpack(dv[r * nv + jc], df);
      const float rs = rstd[r];
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float n = xf[k] * rs;
        if (w) n *= wj[k];
        n = bf16_to_f32(f32_to_bf16(n));
        acc[k] += bf16_to_f32(f32_to_bf16(df[k] * n));
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; k++) sh[ty][tx][k] = acc[k];
  __syncthreads();
  if (ty == 0 && jc < nv) {
    float t[8];
#pragma unroll
    for (int k = 0; k < 8; k++) t[k] = 0.0f;
    for (int q = 0; q < 8; q++) {
#pragma unroll
      for (int k = 0; k < 8; k++) t[k] += sh[q][tx][k];
    }
    float4* out = (float4*)(part + blockIdx.y * cols + jc * 8);
    out[0] = make_float4(t[0], t[1], t[2], t[3]);
    out[1] = make_float4(t[4], t[5], t[6], t[7]);
  }
}

// --- QKVNormRope ------------------------------------------------------

// QKVShape is kernels.QKVArgs as the kernels see it.
struct QKVShape {
  i64 B, S, Hq, Hkv, D;
  double eps;
  i64 interleaved;
};

// qkv_pair gives the element indices (within a head) of rotary pair i.
__device__ __forceinline__ void qkv_pair(const QKVShape& a, i64 i, i64& p0, i64& p1) {
  p0 = a.interleaved ? 2 * i : i;
  p1 = a.interleaved ? 2 * i + 1 : i + a.D / 2;
}

// qkv_fwd: one warp per (token, head) unit over all Hq+2·Hkv heads of a
// token (grid-stride); value heads are copied, query and key heads are
// normalised (rounded to the output's dtype) and rotated.
template <typename T>
__device__ void qkv_fwd_body(void* q, void* k, void* v, i64 odt, void* rq, void* rk, i64 rdt, const void* qkv, i64 xdt,
                             const void* wq, const void* wk, i64 wdt, const void* cs, const void* sn, i64 tdt, QKVShape a) {
  const i64 H = a.Hq + 2 * a.Hkv, W = H * a.D, half = a.D / 2;
  const i64 units = a.B * a.S * H;
  const int lane = threadIdx.x & 31;
  const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
  for (i64 u = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); u < units; u += warps) {
    const i64 p = u / H, h = u % H;
    const i64 xo = p * W + h * a.D;
    if (h >= a.Hq + a.Hkv) {
      const i64 vo = (p * a.Hkv + (h - a.Hq - a.Hkv)) * a.D;
      for (i64 j = lane; j < a.D; j += 32) st<T>(v, (int)odt, vo + j, ld<T>(qkv, (int)xdt, xo + j));
      continue;
    }
    const bool isq = h < a.Hq;
    void* out = isq ? q : k;
    const void* w = isq ? wq : wk;
    const i64 oo = isq ? (p * a.Hq + h) * a.D : (p * a.Hkv + (h - a.Hq)) * a.D;
    T ss = 0;
    for (i64 j = lane; j < a.D; j += 32) {
      const T x = ld<T>(qkv, (int)xdt, xo + j);
      ss += x * x;
    }
    ss = warp_sum(ss);
    const T rs = (T)1 / sqrt(ss / (T)a.D + (T)a.eps);
    for (i64 i = lane; i < half; i += 32) {
      i64 p0, p1;
      qkv_pair(a, i, p0, p1);
      T n0 = ld<T>(qkv, (int)xdt, xo + p0) * rs, n1 = ld<T>(qkv, (int)xdt, xo + p1) * rs;
      if (w) {
        n0 *= ld<T>(w, (int)wdt, p0);
        n1 *= ld<T>(w, (int)wdt, p1);
      }
      n0 = nt_round<T>(n0, (int)odt);
      n1 = nt_round<T>(n1, (int)odt);
      const T c = ld<T>(cs, (int)tdt, p * half + i), s = ld<T>(sn, (int)tdt, p * half + i);
      st<T>(out, (int)odt, oo + p0, n0 * c - n1 * s);
      st<T>(out, (int)odt, oo + p1, n0 * s + n1 * c);
    }
    if (lane == 0) st<T>(isq ? rq : rk, (int)rdt, isq ? p * a.Hq + h : p * a.Hkv + (h - a.Hq), rs);
  }
}
extern "C" __global__ void qkv_norm_rope_f(void* q, void* k, void* v, i64 odt, void* rq, void* rk, i64 rdt, const void* qkv, i64 xdt,
                                           const void* wq, const void* wk, i64 wdt, const void* cs, const void* sn, i64 tdt, QKVShape a) {
  qkv_fwd_body<float>(q, k, v, odt, rq, rk, rdt, qkv, xdt, wq, wk, wdt, cs, sn, tdt, a);
}
extern "C" __global__ void qkv_norm_rope_d(void* q, void* k, void* v, i64 odt, void* rq, void* rk, i64 rdt, const void* qkv, i64 xdt,
                                           const void* wq, const void* wk, i64 wdt, const void* cs, const void* sn, i64 tdt, QKVShape a) {
  qkv_fwd_body<double>(q, k, v, odt, rq, rk, rdt, qkv, xdt, wq, wk, wdt, cs, sn, tdt, a);
}

// qkv_bwd: the same units; value heads copy dv into dqkv, query and key
// heads rotate their gradient back (rounded to its dtype, as Rope's
// backward stored it) and run RMSNormGrad into dqkv.
template <typename T>
__device__ __forceinline__ void qkv_grot(const void* g, int gdt, i64 go, const void* cs, const void* sn, int tdt, i64 p, i64 half,
                                         i64 i, i64 p0, i64 p1, T& r0, T& r1) {
  const T g0 = ld<T>(g, gdt, go + p0), g1 = ld<T>(g, gdt, go + p1);
  const T c = ld<T>(cs, tdt, p * half + i), s = -ld<T>(sn, tdt, p * half + i);
  r0 = nt_round<T>(g0 * c - g1 * s, gdt);
  r1 = nt_round<T>(g0 * s + g1 * c, gdt);
}
template <typename T>
__device__ void qkv_bwd_body(void* dqkv, i64 ddt, const void* dq, const void* dk, const void* dv, i64 gdt, const void* qkv, i64 xdt,
                             const void* wq, const void* wk, i64 wdt, const void* rq, const void* rk, i64 rdt, const void* cs,
                             const void* sn, i64 tdt, QKVShape a) {
  const i64 H = a.Hq + 2 * a.Hkv, W = H * a.D, half = a.D / 2;
  const i64 units = a.B * a.S * H;
  const int lane = threadIdx.x & 31;
  const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
  for (i64 u = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); u < units; u += warps) {
    const i64 p = u / H, h = u % H;
    const i64 xo = p * W + h * a.D;
    if (h >= a.Hq + a.Hkv) {
      const i64 vo = (p * a.Hkv + (h - a.Hq - a.Hkv)) * a.D;
      for (i64 j = lane; j < a.D; j += 32) st<T>(dqkv, (int)ddt, xo + j, ld<T>(dv, (int)gdt, vo + j));
      continue;
    }
    const bool isq = h < a.Hq;
    const void* g = isq ? dq : dk;
    const void* w = isq ? wq : wk;
    const i64 go = isq ? (p * a.Hq + h) * a.D : (p * a.Hkv + (h - a.Hq)) * a.D;
    const T rs = ld<T>(isq ? rq : rk, (int)rdt, isq ? p * a.Hq + h : p * a.Hkv + (h - a.Hq));
    T sgx = 0;
    for (i64 i = lane; i < half; i += 32) {
      i64 p0, p1;
      qkv_pair(a, i, p0, p1);
      T r0, r1;
      qkv_grot<T>(g, (int)gdt, go, cs, sn, (int)tdt, p, half, i, p0, p1, r0, r1);
      if (w) {
        r0 *= ld<T>(w, (int)wdt, p0);
        r1 *= ld<T>(w, (int)wdt, p1);
      }
      sgx += r0 * (ld<T>(qkv, (int)xdt, xo + p0) * rs) + r1 * (ld<T>(qkv, (int)xdt, xo + p1) * rs);
    }
    sgx = warp_sum(sgx) / (T)a.D;
    for (i64 i = lane; i < half; i += 32) {
      i64 p0, p1;
      qkv_pair(a, i, p0, p1);
      T r0, r1;
      qkv_grot<T>(g, (int)gdt, go, cs, sn, (int)tdt, p, half, i, p0, p1, r0, r1);
      if (w) {
        r0 *= ld<T>(w, (int)wdt, p0);
        r1 *= ld<T>(w, (int)wdt, p1);
      }
      const T x0 = ld<T>(qkv, (int)xdt, xo + p0) * rs, x1 = ld<T>(qkv, (int)xdt, xo + p1) * rs;
      st<T>(dqkv, (int)ddt, xo + p0, rs * (r0 - x0 * sgx));
      st<T>(dqkv, (int)ddt, xo + p1, rs * (r1 - x1 * sgx));
    }
  }
}
extern "C" __global__ void qkv_norm_rope_grad_f(void* dqkv, i64 ddt, const void* dq, const void* dk, const void* dv, i64 gdt,
                                                const void* qkv, i64 xdt, const void* wq, const void* wk, i64 wdt, const void* rq,
                                                const void* rk, i64 rdt, const void* cs, const void* sn, i64 tdt, QKVShape a) {
  qkv_bwd_body<float>(dqkv, ddt, dq, dk, dv, gdt, qkv, xdt, wq, wk, wdt, rq, rk, rdt, cs, sn, tdt, a);
}
extern "C" __global__ void qkv_norm_rope_grad_d(void* dqkv, i64 ddt, const void* dq, const void* dk, const void* dv, i64 gdt,
                                                const void* qkv, i64 xdt, const void* wq, const void* wk, i64 wdt, const void* rq,
                                                const void* rk, i64 rdt, const void* cs, const void* sn, i64 tdt, QKVShape a) {
  qkv_bwd_body<double>(dqkv, ddt, dq, dk, dv, gdt, qkv, xdt, wq, wk, wdt, rq, rk, rdt, cs, sn, tdt, a);
}

// --- QKVNormRope, bf16 with interleaved pairs: a lane group of L lanes per
// (token, head) unit, one 16-byte chunk (8 elements, 4 rotary pairs) a
// lane, so the rotation never leaves the lane; R units a step. qkv, q, k,
// v, the weights bf16, rstd and the tables F32, D a multiple of 8 and at
// most 256 (32 chunks). ------------------------------------------------

// qkv_rot rotates the 4 pairs of a chunk (f: 8 values) by the angles of
// pairs i0..i0+3 (sign -1: the inverse rotation).
__device__ __forceinline__ void qkv_rot(float* f, const float* cs, const float* sn, i64 i0, float sign) {
  const float4 c = *(const float4*)(cs + i0);
  const float4 s = *(const float4*)(sn + i0);
  const float cc[4] = {c.x, c.y, c.z, c.w}, ssn[4] = {sign * s.x, sign * s.y, sign * s.z, sign * s.w};
#pragma unroll
  for (int t = 0; t < 4; t++) {
    const float x0 = f[2 * t], x1 = f[2 * t + 1];
    f[2 * t] = x0 * cc[t] - x1 * ssn[t];
    f[2 * t + 1] = x0 * ssn[t] + x1 * cc[t];
  }
}

template <int R>
__device__ __forceinline__ void qkv_vec_fwd(u16* q, u16* k, u16* v, float* rq, float* rk, const u16* qkv, const u16* wq, const u16* wk,
                                            const float* cs, const float* sn, QKVShape a, int L) {
  const i64 H = a.Hq + 2 * a.Hkv, nv = a.D / 8, W = H * nv, half = a.D / 2;
  const i64 units = a.B * a.S * H;
  const int lane = (int)threadIdx.x & (L - 1);
  const i64 groups = blockDim.x / L, g = threadIdx.x / L, step = groups * R;
  for (i64 base = (i64)blockIdx.x * step; base < units; base += (i64)gridDim.x * step) {
    uint4 xc[R];
    float ss[R];
#pragma unroll
    for (int t = 0; t < R; t++) {
      const i64 u = base + t * groups + g;
      const bool live = u < units && lane < nv;
      xc[t] = live ? ((const uint4*)qkv)[(u / H) * W + (u % H) * nv + lane] : make_uint4(0, 0, 0, 0);
      ss[t] = rv_sumsq(xc[t], 0.0f);
    }
#pragma unroll
    for (int t = 0; t < R; t++) ss[t] = rv_group_sum(ss[t], L);
#pragma unroll
    for (int t = 0; t < R; t++) {
      const i64 u = base + t * groups + g;
      if (u >= units) continue;
      const i64 p = u / H, h = u % H;
      if (h >= a.Hq + a.Hkv) {
        if (lane < nv) ((uint4*)v)[(p * a.Hkv + (h - a.Hq - a.Hkv)) * nv + lane] = xc[t];
        continue;
      }
      const bool isq = h < a.Hq;
      const i64 head = isq ? p * a.Hq + h : p * a.Hkv + (h - a.Hq);
      const float rs = 1.0f / sqrtf(ss[t] / (float)a.D + (float)a.eps);
      if (lane < nv) {
        float f[8];
        rv_unpack(rv_scale(xc[t], (const uint4*)(isq ? wq : wk), lane, rs), f);
        qkv_rot(f, cs + p * half, sn + p * half, 4 * lane, 1.0f);
        ((uint4*)(isq ? q : k))[head * nv + lane] = rv_pack(f);
      }
      if (lane == 0) (isq ? rq : rk)[head] = rs;
    }
  }
}
extern "C" __global__ void __launch_bounds__(256) qkv_norm_rope_bf16(u16* q, u16* k, u16* v, float* rq, float* rk, const u16* qkv,
                                                                    const u16* wq, const u16* wk, const float* cs, const float* sn,
                                                                    QKVShape a, i64 lanes) {
  qkv_vec_fwd<4>(q, k, v, rq, rk, qkv, wq, wk, cs, sn, a, (int)lanes);
}

template <int R>
__device__ __forceinline__ void qkv_vec_bwd(u16* dqkv, const u16* dq, const u16* dk, const u16* dv, const u16* qkv, const u16* wq,
                                            const u16* wk, const float* rq, const float* rk, const float* cs, const float* sn, QKVShape a,
                                            int L) {
  const i64 H = a.Hq + 2 * a.Hkv, nv = a.D / 8, W = H * nv, half = a.D / 2;
  const i64 units = a.B * a.S * H;
  const int lane = (int)threadIdx.x & (L - 1);
  const i64 groups = blockDim.x / L, g = threadIdx.x / L, step = groups * R;
  for (i64 base = (i64)blockIdx.x * step; base < units; base += (i64)gridDim.x * step) {
    uint4 xc[R], gc[R];
    float rs[R], m[R];
#pragma unroll
    for (int t = 0; t < R; t++) {
      const i64 u = base + t * groups + g;
      const i64 p = u / H, h = u % H;
      const bool live = u < units && lane < nv;
      const bool isv = h >= a.Hq + a.Hkv, isq = h < a.Hq;
      const i64 head = isv ? p * a.Hkv + (h - a.Hq - a.Hkv) : isq ? p * a.Hq + h : p * a.Hkv + (h - a.Hq);
      xc[t] = live ? ((const uint4*)qkv)[p * W + h * nv + lane] : make_uint4(0, 0, 0, 0);
      gc[t] = live ? ((const uint4*)(isv ? dv : isq ? dq : dk))[head * nv + lane] : make_uint4(0, 0, 0, 0);
      rs[t] = u < units && !isv ? (isq ? rq : rk)[head] : 0.0f;
      if (live && !isv) {
        float f[8];
        rv_unpack(gc[t], f);
        qkv_rot(f, cs + p * half, sn + p * half, 4 * lane, -1.0f);
        gc[t] = rv_pack(f);
      }
      const uint4* w = (const uint4*)(isq ? wq : wk);
      m[t] = live && !isv ? rv_gdot(xc[t], gc[t], w, lane, rs[t], 0.0f) : 0.0f;
    }
#pragma unroll
    for (int t = 0; t < R; t++) m[t] = rv_group_sum(m[t], L) / (float)a.D;
#pragma unroll
    for (int t = 0; t < R; t++) {
      const i64 u = base + t * groups + g;
      if (u >= units || lane >= nv) continue;
      const i64 p = u / H, h = u % H;
      uint4* out = (uint4*)dqkv + p * W + h * nv + lane;
      if (h >= a.Hq + a.Hkv) {
        *out = gc[t];
        continue;
      }
      *out = rv_dx(xc[t], gc[t], (const uint4*)(h < a.Hq ? wq : wk), lane, rs[t], m[t]);
    }
  }
}
extern "C" __global__ void __launch_bounds__(256) qkv_norm_rope_grad_bf16(u16* dqkv, const u16* dq, const u16* dk, const u16* dv,
                                                                         const u16* qkv, const u16* wq, const u16* wk, const float* rq,
                                                                         const float* rk, const float* cs, const float* sn, QKVShape a,
                                                                         i64 lanes) {
  qkv_vec_bwd<4>(dqkv, dq, dk, dv, qkv, wq, wk, rq, rk, cs, sn, a, (int)lanes);
}
