// rownorm_vec.cu: the model's RMSNorm, forward and input gradient, for bf16
// activations (x, y, dy, dx), a bf16 or absent weight (the forward also a
// float32 one) and F32 rstd, with
// rows a multiple of 8 elements so every access is one 16-byte chunk.
//
// A row is served by a group of L lanes (L a power of two, 1..32, picked on
// the Go side as the smallest power of two covering the row's chunks, capped
// at 32): the q/k norms' 96-wide rows (12 chunks) take 16 lanes, two rows
// per warp, where a block per row would leave 7/8 of its threads idle; the
// 2304-wide rows take a whole warp, each lane walking 9 chunks. A block of
// 256 threads holds 256/L groups and walks the rows grid-stride. The row
// sums are reduced by __shfl_xor_sync over the group's L lanes only (the
// xor offsets stay below L), so no shared memory and no __syncthreads are
// needed, and the order of each sum is fixed: results are reproducible.
//
// Where the row's chunks live between the two passes depends on how many a
// lane owns (ceil(chunks / L)); the Go side picks the kernel:
//   _h1   1 per lane (rows of up to 32 chunks, 256 columns: the q/k norms).
//         Each group takes 4 rows per step, so a lane has 4 independent
//         16-byte loads in flight; with one, too few bytes are in flight per
//         SM to cover DRAM latency. On the H200 at [104448, 96]: 0.0196 ms
//         forward and 0.0260 ms gradient with 4 rows per step, against
//         0.0224 and 0.0288 with one row per step and a prefetch of the
//         next, and 0.0225 and 0.0301 with 8 (half as many blocks).
//   _h2   2 per lane (33..64 chunks, up to 512 columns), 2 rows per step.
//   plain more: the second pass reads the row again (the warp has just
//         read it, so mostly L1/L2 serve it), which keeps any length legal
//         with few registers. Holding up to 12 chunks per lane in registers
//         was measured slower on the 2304-wide rows (160 registers: one
//         block per SM; 0.036 ms against 0.025 ms for the gradient).
// All three visit a row's chunks in the same order (lane + k·L) and add
// the same terms (absent chunks add exact zeros), so they round alike.
//
// Math is fp32 with one rounding to bf16 per stored element; the formulas
// are rownorm_body's and rownorm_grad_body's for rms = 1:
//   rs = 1/sqrt(mean(x²) + eps),  y = x·rs·w,
//   dx = rs·(g − x̂·mean(g·x̂)),   g = dy·w, x̂ = x·rs.

// rv_unpack, rv_pack and rv_group_sum live in common.cuh (the fused
// norms of fused_norm.cu use them too).

// rv_load fills c[k] with chunk lane + k·L of row r of p (nv chunks a
// row), or zeros where the row or the chunk does not exist.
template <int H>
__device__ __forceinline__ void rv_load(uint4* c, const u16* p, i64 r, i64 rows, i64 nv, int lane, int L) {
  const uint4* row = (const uint4*)p + (r < rows ? r : 0) * nv;
#pragma unroll
  for (int k = 0; k < H; k++) {
    const i64 j = lane + (i64)k * L;
    c[k] = r < rows && j < nv ? row[j] : make_uint4(0, 0, 0, 0);
  }
}

// NormScale's factor and residual for the bf16 kernels (NormScale in
// kernels/fused.go; the generic kernels are in fused_norm.cu): offsets in
// elements, s and res null for a plain RMSNorm.
struct NSVec {
  u64 s;
  i64 soff, sstride, seq, mode;
  u64 res;
};

// ns_rows returns the factor's and the residual's chunk rows for row r.
__device__ __forceinline__ void ns_rows(const NSVec& a, i64 r, i64 nv, const uint4*& srow, const uint4*& rrow) {
  srow = a.s ? (const uint4*)((const u16*)a.s + a.soff + (r / a.seq) * a.sstride) : nullptr;
  rrow = a.res ? (const uint4*)a.res + r * nv : nullptr;
}

// ns_chunk_factor returns f(s) for one chunk of the factor, each value
// rounded to bf16 as the separate Affine or Tanh op stored it.
__device__ __forceinline__ void ns_chunk_factor(uint4 sv, int mode, float* f) {
  rv_unpack(sv, f);
  if (mode == NS_ASIS) return;
#pragma unroll
  for (int k = 0; k < 8; k++) f[k] = bf16_to_f32(f32_to_bf16(mode == NS_ONEPLUS ? f[k] + 1.0f : tanhf(f[k])));
}

// ns_finish turns one chunk of n (already rounded to bf16) into the
// output chunk: times the factor (rounded), plus the residual.
__device__ __forceinline__ uint4 ns_finish(uint4 nv, const uint4* srow, const uint4* rrow, i64 j, int mode) {
  if (!srow && !rrow) return nv;
  float n[8];
  rv_unpack(nv, n);
  if (srow) {
    float f[8];
    ns_chunk_factor(srow[j], mode, f);
#pragma unroll
    for (int k = 0; k < 8; k++) n[k] = bf16_to_f32(f32_to_bf16(n[k] * f[k]));
  }
  if (rrow) {
    float r[8];
    rv_unpack(rrow[j], r);
#pragma unroll
    for (int k = 0; k < 8; k++) n[k] = r[k] + n[k];
  }
  return rv_pack(n);
}

// ns_dnchunk returns dn = dy·f(s) for one chunk, rounded to bf16.
__device__ __forceinline__ uint4 ns_dnchunk(uint4 dv, const uint4* srow, i64 j, int mode) {
  if (!srow) return dv;
  float d[8], f[8];
  rv_unpack(dv, d);
  ns_chunk_factor(srow[j], mode, f);
#pragma unroll
  for (int k = 0; k < 8; k++) d[k] *= f[k];
  return rv_pack(d);
}

// rv_forward is the body of the forward kernels. H > 0: a lane holds up to
// H chunks of each of R rows in registers (needs chunks ≤ H·L); H = 0: one
// row per step, read again in the second pass. Launch with 256 threads per
// block; L = lanes; a block takes R·256/L rows per step.
// rv_wvec is the chunk type of a weight of element type W: 8 bf16 in one
// uint4, or 8 floats in two float4 (rv_scale's overloads).
template <typename W>
struct rv_wvec;
template <>
struct rv_wvec<u16> {
  typedef uint4 type;
};
template <>
struct rv_wvec<float> {
  typedef float4 type;
};

template <int H, int R, typename W = u16>
__device__ __forceinline__ void rv_forward(u16* y, float* rstd, const u16* x, const W* w, NSVec a, i64 rows, i64 cols, int L,
                                           double eps) {
  static_assert(H > 0 || R == 1, "the re-reading kernel takes one row per step");
  const int lane = (int)threadIdx.x & (L - 1);
  const i64 groups = blockDim.x / L;  // groups per block
  const i64 g = threadIdx.x / L;      // this lane's group in the block
  const i64 nv = cols / 8;            // chunks per row
  const i64 step = groups * R;        // rows per block per step
  const typename rv_wvec<W>::type* wv = (const typename rv_wvec<W>::type*)w;
  // base is the same for every lane of the block, so all lanes of a warp
  // run the same iterations and reach the shuffles together; groups past
  // the last row take part in them with zeros. Slot q of a step is row
  // base + q·groups + g: consecutive groups read consecutive rows.
  for (i64 base = (i64)blockIdx.x * step; base < rows; base += (i64)gridDim.x * step) {
    if constexpr (H > 0) {
      uint4 xc[R][H];
      float ss[R];
#pragma unroll
      for (int q = 0; q < R; q++) rv_load<H>(xc[q], x, base + q * groups + g, rows, nv, lane, L);
#pragma unroll
      for (int q = 0; q < R; q++) {
        ss[q] = 0.0f;
#pragma unroll
        for (int k = 0; k < H; k++) ss[q] = rv_sumsq(xc[q][k], ss[q]);
      }
#pragma unroll
      for (int q = 0; q < R; q++) ss[q] = rv_group_sum(ss[q], L);
#pragma unroll
      for (int q = 0; q < R; q++) {
        const i64 r = base + q * groups + g;
        if (r >= rows) continue;
        const float rs = 1.0f / sqrtf(ss[q] / (float)cols + (float)eps);
        const uint4 *srow, *rrow;
        ns_rows(a, r, nv, srow, rrow);
        uint4* yr = (uint4*)y + r * nv;
#pragma unroll
        for (int k = 0; k < H; k++) {
          const i64 j = lane + (i64)k * L;
          if (j < nv) yr[j] = ns_finish(rv_scale(xc[q][k], wv, j, rs), srow, rrow, j, (int)a.mode);
        }
        if (lane == 0) rstd[r] = rs;
      }
    } else {
      const i64 r = base + g;
      const bool live = r < rows;
      const uint4* xr = (const uint4*)x + (live ? r : 0) * nv;
      float ss = 0.0f;
      if (live)
        for (i64 j = lane; j < nv; j += L) ss = rv_sumsq(xr[j], ss);
      ss = rv_group_sum(ss, L);
      if (live) {
        const float rs = 1.0f / sqrtf(ss / (float)cols + (float)eps);
        const uint4 *srow, *rrow;
        ns_rows(a, r, nv, srow, rrow);
        uint4* yr = (uint4*)y + r * nv;
        for (i64 j = lane; j < nv; j += L) yr[j] = ns_finish(rv_scale(xr[j], wv, j, rs), srow, rrow, j, (int)a.mode);
        if (lane == 0) rstd[r] = rs;
      }
    }
  }
}

// rmsnorm_bf16_rows*: y = x·rs·w and rstd = rs per row (w may be null);
// lanes = L. The suffix says how many chunks a lane may own (see above);
// _wf takes a float32 weight (Gemma 3's norms), the others a bf16 one.
// Each kernel is written out: the kernel index reads declarations, not
// macro expansions (kernelIndex refuses a kernel declared in a #define).
#define RMS_ARGS(W) u16 *y, float *rstd, const u16 *x, const W *w, i64 rows, i64 cols, i64 lanes, double eps
#define RMS_BODY(H, R) rv_forward<H, R>(y, rstd, x, w, NSVec{}, rows, cols, (int)lanes, eps)
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bf16_rows_h1(RMS_ARGS(u16)) { RMS_BODY(1, 4); }
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bf16_rows_h2(RMS_ARGS(u16)) { RMS_BODY(2, 2); }
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bf16_rows(RMS_ARGS(u16)) { RMS_BODY(0, 1); }
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bf16_rows_wf_h1(RMS_ARGS(float)) { RMS_BODY(1, 4); }
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bf16_rows_wf_h2(RMS_ARGS(float)) { RMS_BODY(2, 2); }
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bf16_rows_wf(RMS_ARGS(float)) { RMS_BODY(0, 1); }
#undef RMS_ARGS
#undef RMS_BODY

// ns_plus returns the chunk r + v, rounded once: the Add of two bf16
// chunks, which NormScaleGrad's residual (a pending gradient of x) and the
// norm's dx make.
__device__ __forceinline__ uint4 ns_plus(uint4 rv, uint4 v) {
  float a[8], b[8];
  rv_unpack(rv, a);
  rv_unpack(v, b);
#pragma unroll
  for (int k = 0; k < 8; k++) a[k] += b[k];
  return rv_pack(a);
}

// rv_backward is the body of the dx kernels, with rv_forward's H and R; a
// residual (a.res, which may be dx itself) is added to dx: each chunk of it
// is read before the same thread writes that chunk of dx.
template <int H, int R>
__device__ __forceinline__ void rv_backward(u16* dx, const u16* dy, const u16* x, const u16* w, const float* rstd, NSVec a, i64 rows,
                                            i64 cols, int L) {
  static_assert(H > 0 || R == 1, "the re-reading kernel takes one row per step");
  const int lane = (int)threadIdx.x & (L - 1);
  const i64 groups = blockDim.x / L;
  const i64 g = threadIdx.x / L;
  const i64 nv = cols / 8;
  const i64 step = groups * R;
  const uint4* wv = (const uint4*)w;
  // Same warp-uniform walk and row slots as rv_forward.
  for (i64 base = (i64)blockIdx.x * step; base < rows; base += (i64)gridDim.x * step) {
    if constexpr (H > 0) {
      uint4 xc[R][H], dc[R][H];
      float rs[R], m[R];
#pragma unroll
      for (int q = 0; q < R; q++) {
        const i64 r = base + q * groups + g;
        rv_load<H>(xc[q], x, r, rows, nv, lane, L);
        rv_load<H>(dc[q], dy, r, rows, nv, lane, L);
        rs[q] = r < rows ? rstd[r] : 0.0f;
        if (a.s && r < rows) { // NormScale: dy becomes dn = dy·f(s)
          const uint4 *srow, *rrow;
          ns_rows(a, r, nv, srow, rrow);
#pragma unroll
          for (int k = 0; k < H; k++) {
            const i64 j = lane + (i64)k * L;
            if (j < nv) dc[q][k] = ns_dnchunk(dc[q][k], srow, j, (int)a.mode);
          }
        }
      }
#pragma unroll
      for (int q = 0; q < R; q++) {
        m[q] = 0.0f;
#pragma unroll
        for (int k = 0; k < H; k++) {
          const i64 j = lane + (i64)k * L;
          if (j < nv) m[q] = rv_gdot(xc[q][k], dc[q][k], wv, j, rs[q], m[q]);
        }
      }
#pragma unroll
      for (int q = 0; q < R; q++) m[q] = rv_group_sum(m[q], L) / (float)cols;
#pragma unroll
      for (int q = 0; q < R; q++) {
        const i64 r = base + q * groups + g;
        if (r >= rows) continue;
        uint4* out = (uint4*)dx + r * nv;
        const uint4* rres = a.res ? (const uint4*)a.res + r * nv : nullptr;
#pragma unroll
        for (int k = 0; k < H; k++) {
          const i64 j = lane + (i64)k * L;
          if (j < nv) {
            const uint4 d = rv_dx(xc[q][k], dc[q][k], wv, j, rs[q], m[q]);
            out[j] = rres ? ns_plus(rres[j], d) : d;
          }
        }
      }
    } else {
      const i64 r = base + g;
      const bool live = r < rows;
      const i64 o = (live ? r : 0) * nv;
      const uint4* xr = (const uint4*)x + o;
      const uint4* dr = (const uint4*)dy + o;
      const float rs = live ? rstd[r] : 0.0f;
      const uint4 *srow = nullptr, *rrow = nullptr;
      if (live) ns_rows(a, r, nv, srow, rrow);
      float sgx = 0.0f;
      if (live)
        for (i64 j = lane; j < nv; j += L) sgx = rv_gdot(xr[j], ns_dnchunk(dr[j], srow, j, (int)a.mode), wv, j, rs, sgx);
      const float m = rv_group_sum(sgx, L) / (float)cols;
      if (live) {
        uint4* out = (uint4*)dx + o;
        for (i64 j = lane; j < nv; j += L) {
          const uint4 d = rv_dx(xr[j], ns_dnchunk(dr[j], srow, j, (int)a.mode), wv, j, rs, m);
          out[j] = rrow ? ns_plus(rrow[j], d) : d;
        }
      }
    }
  }
}

// rmsnorm_grad_bf16_rows*: dx of RMSNorm per row from the saved rstd (w may
// be null); the weight gradient is the separate rownorm_wgrad pass. lanes =
// L; the suffix as for the forward.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_grad_bf16_rows_h1(u16* dx, const u16* dy, const u16* x, const u16* w,
                                                                           const float* rstd, i64 rows, i64 cols, i64 lanes) {
  rv_backward<1, 4>(dx, dy, x, w, rstd, NSVec{}, rows, cols, (int)lanes);
}
extern "C" __global__ void __launch_bounds__(256) rmsnorm_grad_bf16_rows_h2(u16* dx, const u16* dy, const u16* x, const u16* w,
                                                                           const float* rstd, i64 rows, i64 cols, i64 lanes) {
  rv_backward<2, 2>(dx, dy, x, w, rstd, NSVec{}, rows, cols, (int)lanes);
}
extern "C" __global__ void __launch_bounds__(256) rmsnorm_grad_bf16_rows(u16* dx, const u16* dy, const u16* x, const u16* w,
                                                                        const float* rstd, i64 rows, i64 cols, i64 lanes) {
  rv_backward<0, 1>(dx, dy, x, w, rstd, NSVec{}, rows, cols, (int)lanes);
}

// normscale_bf16_rows* / normscale_grad_bf16_rows*: NormScale (kernels/
// fused.go) on the same lane groups: the RMSNorm kernels above with the
// factor and residual of a (a chunk of adaLN's modulation read in place,
// offsets and strides multiples of 8). The factor's gradient is the column
// pass of fused_norm.cu.
extern "C" __global__ void __launch_bounds__(256) normscale_bf16_rows_h1(u16* y, float* rstd, const u16* x, const u16* w, NSVec a,
                                                                        i64 rows, i64 cols, i64 lanes, double eps) {
  rv_forward<1, 4>(y, rstd, x, w, a, rows, cols, (int)lanes, eps);
}
extern "C" __global__ void __launch_bounds__(256) normscale_bf16_rows_h2(u16* y, float* rstd, const u16* x, const u16* w, NSVec a,
                                                                        i64 rows, i64 cols, i64 lanes, double eps) {
  rv_forward<2, 2>(y, rstd, x, w, a, rows, cols, (int)lanes, eps);
}
extern "C" __global__ void __launch_bounds__(256) normscale_bf16_rows(u16* y, float* rstd, const u16* x, const u16* w, NSVec a,
                                                                     i64 rows, i64 cols, i64 lanes, double eps) {
  rv_forward<0, 1>(y, rstd, x, w, a, rows, cols, (int)lanes, eps);
}
extern "C" __global__ void __launch_bounds__(256) normscale_grad_bf16_rows_h1(u16* dx, const u16* dy, const u16* x, const u16* w,
                                                                             const float* rstd, NSVec a, i64 rows, i64 cols, i64 lanes) {
  rv_backward<1, 4>(dx, dy, x, w, rstd, a, rows, cols, (int)lanes);
}
extern "C" __global__ void __launch_bounds__(256) normscale_grad_bf16_rows_h2(u16* dx, const u16* dy, const u16* x, const u16* w,
                                                                             const float* rstd, NSVec a, i64 rows, i64 cols, i64 lanes) {
  rv_backward<2, 2>(dx, dy, x, w, rstd, a, rows, cols, (int)lanes);
}
extern "C" __global__ void __launch_bounds__(256) normscale_grad_bf16_rows(u16* dx, const u16* dy, const u16* x, const u16* w,
                                                                          const float* rstd, NSVec a, i64 rows, i64 cols, i64 lanes) {
  rv_backward<0, 1>(dx, dy, x, w, rstd, a, rows, cols, (int)lanes);
}

// ---------------------------------------------------------------------------
// LayerNorm forward for bf16 rows (Jina's 1024-wide ones), bf16 or absent w
// and b, F32 mean and rstd: the same lane groups as the RMSNorm kernels,
// one row per group and step. rownorm_body's two passes, mean first and
// then Σ(x − mean)², so the variance never cancels; y = (x − mean)·rs·w + b
// in fp32 with one rounding. H > 0 keeps the row's chunks in registers
// (chunks ≤ H·L); H = 0 reads the row again in each pass.

// ln_chunk_sum adds one chunk's 8 values, or their squared distances from
// mu when sq is set, to acc.
__device__ __forceinline__ float ln_chunk_sum(uint4 xv, float mu, bool sq, float acc) {
  float f[8];
  rv_unpack(xv, f);
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const float d = f[k] - mu;
    acc += sq ? d * d : f[k];
  }
  return acc;
}

// ln_chunk_out returns the output chunk j: (x − mu)·rs·w + b, rounded.
__device__ __forceinline__ uint4 ln_chunk_out(uint4 xv, const uint4* w, const uint4* b, i64 j, float mu, float rs) {
  float f[8];
  rv_unpack(xv, f);
#pragma unroll
  for (int k = 0; k < 8; k++) f[k] = (f[k] - mu) * rs;
  if (w) {
    float g[8];
    rv_unpack(w[j], g);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] *= g[k];
  }
  if (b) {
    float g[8];
    rv_unpack(b[j], g);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] += g[k];
  }
  return rv_pack(f);
}

template <int H>
__device__ __forceinline__ void ln_forward(u16* y, float* mean, float* rstd, const u16* x, const u16* w, const u16* b, i64 rows, i64 cols,
                                           int L, double eps) {
  const int lane = (int)threadIdx.x & (L - 1);
  const i64 groups = blockDim.x / L;
  const i64 g = threadIdx.x / L;
  const i64 nv = cols / 8;
  const uint4 *wv = (const uint4*)w, *bv = (const uint4*)b;
  // As in rv_forward, every lane of a warp runs the same iterations, so
  // the group sums' shuffles line up; groups past the last row add zeros.
  for (i64 base = (i64)blockIdx.x * groups; base < rows; base += (i64)gridDim.x * groups) {
    const i64 r = base + g;
    const bool live = r < rows;
    const uint4* xr = (const uint4*)x + (live ? r : 0) * nv;
    uint4 xc[H > 0 ? H : 1];
    if constexpr (H > 0) rv_load<H>(xc, x, r, rows, nv, lane, L);
    float s = 0.0f;
    if constexpr (H > 0) {
#pragma unroll
      for (int k = 0; k < H; k++) s = ln_chunk_sum(xc[k], 0.0f, false, s);  // absent chunks are zeros
    } else if (live) {
      for (i64 j = lane; j < nv; j += L) s = ln_chunk_sum(xr[j], 0.0f, false, s);
    }
    const float mu = rv_group_sum(s, L) / (float)cols;
    float ss = 0.0f;
    if constexpr (H > 0) {
#pragma unroll
      for (int k = 0; k < H; k++)
        if (lane + (i64)k * L < nv) ss = ln_chunk_sum(xc[k], mu, true, ss);
    } else if (live) {
      for (i64 j = lane; j < nv; j += L) ss = ln_chunk_sum(xr[j], mu, true, ss);
    }
    ss = rv_group_sum(ss, L);
    if (!live) continue;
    const float rs = 1.0f / sqrtf(ss / (float)cols + (float)eps);
    uint4* yr = (uint4*)y + r * nv;
    if constexpr (H > 0) {
#pragma unroll
      for (int k = 0; k < H; k++) {
        const i64 j = lane + (i64)k * L;
        if (j < nv) yr[j] = ln_chunk_out(xc[k], wv, bv, j, mu, rs);
      }
    } else {
      for (i64 j = lane; j < nv; j += L) yr[j] = ln_chunk_out(xr[j], wv, bv, j, mu, rs);
    }
    if (lane == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// layernorm_bf16_rows_h4 holds up to 4 chunks a lane (rows of up to 1024
// columns with 32 lanes: Jina's); layernorm_bf16_rows re-reads any length.
extern "C" __global__ void __launch_bounds__(256) layernorm_bf16_rows_h4(u16* y, float* mean, float* rstd, const u16* x, const u16* w,
                                                                        const u16* b, i64 rows, i64 cols, i64 lanes, double eps) {
  ln_forward<4>(y, mean, rstd, x, w, b, rows, cols, (int)lanes, eps);
}
extern "C" __global__ void __launch_bounds__(256) layernorm_bf16_rows(u16* y, float* mean, float* rstd, const u16* x, const u16* w,
                                                                     const u16* b, i64 rows, i64 cols, i64 lanes, double eps) {
  ln_forward<0>(y, mean, rstd, x, w, b, rows, cols, (int)lanes, eps);
}
