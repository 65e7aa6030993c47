// reduce.cu: axis reductions, the multi-tensor passes (sum of squares,
// non-finite check, AdamW: one launch for all tensors), softmax and the
// normalisations. Reductions use fixed trees so results are reproducible.

#define R_SUM 1
#define R_MEAN 2
#define R_SUMSQ 3
#define R_MAX 4

template <typename T>
__device__ __forceinline__ T max_nan(T a, T b) {
  if (a != a) return a;
  if (b != b) return b;
  return b > a ? b : a;
}

// reduce_rows: inner == 1, one block per outer row.
template <typename T>
__device__ void reduce_rows_body(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 outer, i64 axis) {
  __shared__ T scratch[32];
  for (i64 o = blockIdx.x; o < outer; o += gridDim.x) {
    T acc = op == R_MAX ? -nt_inf<T>() : (T)0;
    for (i64 j = threadIdx.x; j < axis; j += blockDim.x) {
      T v = ld<T>(s, (int)sdt, o * axis + j);
      if (op == R_MAX) acc = max_nan(acc, v);
      else acc += op == R_SUMSQ ? v * v : v;
    }
    T r;
    if (op == R_MAX) {
      // NaN-propagating block max: reduce with a NaN-aware shuffle tree.
      for (int k = 16; k > 0; k >>= 1) acc = max_nan(acc, __shfl_xor_sync(0xffffffffu, acc, k));
      __syncthreads();
      if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = acc;
      __syncthreads();
      int nw = (blockDim.x + 31) >> 5;
      T t = (int)(threadIdx.x & 31) < nw ? scratch[threadIdx.x & 31] : -nt_inf<T>();
      for (int k = 16; k > 0; k >>= 1) t = max_nan(t, __shfl_xor_sync(0xffffffffu, t, k));
      r = t;
    } else {
      r = block_sum(acc, scratch);
      if (op == R_MEAN) r /= (T)axis;
    }
    if (threadIdx.x == 0) st<T>(d, (int)ddt, o, r);
    __syncthreads();
  }
}
extern "C" __global__ void reduce_rows_f(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 outer, i64 axis) { reduce_rows_body<float>(op, d, ddt, s, sdt, outer, axis); }
extern "C" __global__ void reduce_rows_d(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 outer, i64 axis) { reduce_rows_body<double>(op, d, ddt, s, sdt, outer, axis); }

// reduce_cols: inner > 1, one thread per output, walking the axis in order
// (consecutive threads read consecutive inner elements: coalesced).
template <typename T>
__device__ void reduce_cols_body(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 outer, i64 axis, i64 inner) {
  GRID_STRIDE(i, outer * inner) {
    i64 o = i / inner, in = i - o * inner;
    T acc = op == R_MAX ? -nt_inf<T>() : (T)0;
    for (i64 j = 0; j < axis; j++) {
      T v = ld<T>(s, (int)sdt, (o * axis + j) * inner + in);
      if (op == R_MAX) acc = max_nan(acc, v);
      else acc += op == R_SUMSQ ? v * v : v;
    }
    if (op == R_MEAN) acc /= (T)axis;
    st<T>(d, (int)ddt, i, acc);
  }
}
extern "C" __global__ void reduce_cols_f(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 outer, i64 axis, i64 inner) { reduce_cols_body<float>(op, d, ddt, s, sdt, outer, axis, inner); }
extern "C" __global__ void reduce_cols_d(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 outer, i64 axis, i64 inner) { reduce_cols_body<double>(op, d, ddt, s, sdt, outer, axis, inner); }

// reduce_cols_part / reduce_cols_fold: the same reduction for few outputs
// over a long axis (the adaLN scale and gate gradients: 2304 outputs over
// 4352 tokens), where one thread per output leaves the GPU idle. Pass one
// reduces chunks of the axis into partials [outer, nchunk, inner]; pass two
// folds them in chunk order. Both orders are fixed: results are
// reproducible. For SUMSQ the squares are taken in pass one only.
template <typename T>
__device__ void reduce_cols_part_body(i64 op, T* part, const void* s, i64 sdt, i64 outer, i64 axis, i64 inner, i64 chunk, i64 nchunk) {
  GRID_STRIDE(i, outer * nchunk * inner) {
    i64 in = i % inner, t = i / inner;
    i64 c = t % nchunk, o = t / nchunk;
    i64 j0 = c * chunk, j1 = min(axis, j0 + chunk);
    T acc = op == R_MAX ? -nt_inf<T>() : (T)0;
    for (i64 j = j0; j < j1; j++) {
      T v = ld<T>(s, (int)sdt, (o * axis + j) * inner + in);
      if (op == R_MAX) acc = max_nan(acc, v);
      else acc += op == R_SUMSQ ? v * v : v;
    }
    part[i] = acc;
  }
}
template <typename T>
__device__ void reduce_cols_fold_body(i64 op, void* d, i64 ddt, const T* part, i64 outer, i64 nchunk, i64 inner, i64 axis) {
  GRID_STRIDE(i, outer * inner) {
    i64 o = i / inner, in = i - o * inner;
    T acc = op == R_MAX ? -nt_inf<T>() : (T)0;
    for (i64 c = 0; c < nchunk; c++) {
      T v = part[(o * nchunk + c) * inner + in];
      if (op == R_MAX) acc = max_nan(acc, v);
      else acc += v;
    }
    if (op == R_MEAN) acc /= (T)axis;
    st<T>(d, (int)ddt, i, acc);
  }
}
extern "C" __global__ void reduce_cols_part_f(i64 op, float* part, const void* s, i64 sdt, i64 outer, i64 axis, i64 inner, i64 chunk, i64 nchunk) { reduce_cols_part_body<float>(op, part, s, sdt, outer, axis, inner, chunk, nchunk); }
extern "C" __global__ void reduce_cols_part_d(i64 op, double* part, const void* s, i64 sdt, i64 outer, i64 axis, i64 inner, i64 chunk, i64 nchunk) { reduce_cols_part_body<double>(op, part, s, sdt, outer, axis, inner, chunk, nchunk); }
extern "C" __global__ void reduce_cols_fold_f(i64 op, void* d, i64 ddt, const float* part, i64 outer, i64 nchunk, i64 inner, i64 axis) { reduce_cols_fold_body<float>(op, d, ddt, part, outer, nchunk, inner, axis); }
extern "C" __global__ void reduce_cols_fold_d(i64 op, void* d, i64 ddt, const double* part, i64 outer, i64 nchunk, i64 inner, i64 axis) { reduce_cols_fold_body<double>(op, d, ddt, part, outer, nchunk, inner, axis); }

// Multi-tensor descriptors: the Go side uploads one per tensor. Work is cut
// into chunks of MT_CHUNK elements; start is the tensor's first chunk.
#define MT_CHUNK 4096
struct MTensor {
  u64 p;
  i64 n;
  i64 dt;
  i64 start;
};

__device__ __forceinline__ int mt_find(const MTensor* t, int nt, i64 chunk) {
  int lo = 0, hi = nt - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (t[mid].start <= chunk) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// mt_partial: mode 0 sums squares, mode 1 counts non-finite elements. Each
// block writes one partial; the grid size is fixed by the caller, so the
// assignment of chunks to blocks, and the result, never vary.
template <typename T>
__device__ void mt_partial_body(const MTensor* t, i64 nt, i64 chunks, i64 mode, T* partial) {
  __shared__ T scratch[32];
  T acc = 0;
  for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
    int k = mt_find(t, (int)nt, c);
    i64 base = (c - t[k].start) * MT_CHUNK;
    i64 end = min(base + (i64)MT_CHUNK, t[k].n);
    const void* p = (const void*)t[k].p;
    for (i64 i = base + threadIdx.x; i < end; i += blockDim.x) {
      T v = ld<T>(p, (int)t[k].dt, i);
      if (mode == 0) acc += v * v;
      else if (v != v || v - v != (T)0) acc += (T)1;
    }
  }
  T r = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = r;
}
extern "C" __global__ void mt_partial_f(const MTensor* t, i64 nt, i64 chunks, i64 mode, float* partial) { mt_partial_body<float>(t, nt, chunks, mode, partial); }
extern "C" __global__ void mt_partial_d(const MTensor* t, i64 nt, i64 chunks, i64 mode, double* partial) { mt_partial_body<double>(t, nt, chunks, mode, partial); }

template <typename T>
__device__ void mt_final_body(const T* partial, i64 np, i64 mode, void* d, i64 ddt) {
  __shared__ T scratch[32];
  T acc = 0;
  for (i64 i = threadIdx.x; i < np; i += blockDim.x) acc += partial[i];
  T r = block_sum(acc, scratch);
  if (threadIdx.x == 0) st<T>(d, (int)ddt, 0, mode == 0 ? r : (r != (T)0 ? (T)1 : (T)0));
}
extern "C" __global__ void mt_final_f(const float* partial, i64 np, i64 mode, void* d, i64 ddt) { mt_final_body<float>(partial, np, mode, d, ddt); }
extern "C" __global__ void mt_final_d(const double* partial, i64 np, i64 mode, void* d, i64 ddt) { mt_final_body<double>(partial, np, mode, d, ddt); }

// AdamW: per-tensor descriptor and the shared scalars. Everything that
// changes from step to step (decay, step size, the second moment's bias
// correction) is in the descriptor, which is uploaded, so the launch's own
// arguments repeat and a captured graph of the update replays.
// w (0: none) receives the updated parameter in dtype wdt, rounded as
// cast rounds; zero set clears the gradient once read.
struct AdamTensor {
  u64 p, g, m, v;
  i64 n, gdt, pdt, start;
  double decay, step, bc2sqrt;
  u64 w;
  i64 wdt, zero;
};
struct AdamScalars {
  double b1, b2, eps;
  u64 scale;
  i64 scaledt;
  u64 skip;
  i64 skipdt;
};

extern "C" __global__ void adamw(const AdamTensor* t, i64 nt, i64 chunks, AdamScalars s) {
  if (s.skip != 0 && ld<double>((const void*)s.skip, (int)s.skipdt, 0) != 0.0) return;  // NaN skips too
  double scale = s.scale != 0 ? ld<double>((const void*)s.scale, (int)s.scaledt, 0) : 1.0;
  for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
    int lo = 0, hi = (int)nt - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) >> 1;
      if (t[mid].start <= c) lo = mid;
      else hi = mid - 1;
    }
    const AdamTensor& a = t[lo];
    i64 base = (c - a.start) * MT_CHUNK;
    i64 end = min(base + (i64)MT_CHUNK, a.n);
    if (a.pdt == DT_F64) {
      double* p = (double*)a.p;
      double* m = (double*)a.m;
      double* v = (double*)a.v;
      for (i64 i = base + threadIdx.x; i < end; i += blockDim.x) {
        double g = ld<double>((const void*)a.g, (int)a.gdt, i) * scale;
        double pj = p[i] * a.decay;
        double mj = s.b1 * m[i] + (1.0 - s.b1) * g;
        double vj = s.b2 * v[i] + (1.0 - s.b2) * g * g;
        double den = sqrt(vj) / a.bc2sqrt + s.eps;
        const double pn = pj - a.step * (mj / den);
        p[i] = pn;
        m[i] = mj;
        v[i] = vj;
        if (a.w) st<double>((void*)a.w, (int)a.wdt, i, pn);
        if (a.zero) st<double>((void*)a.g, (int)a.gdt, i, 0.0);
      }
    } else {
      float* p = (float*)a.p;
      float* m = (float*)a.m;
      float* v = (float*)a.v;
      float b1 = (float)s.b1, b2 = (float)s.b2, ob1 = (float)(1.0 - s.b1), ob2 = (float)(1.0 - s.b2);
      float decay = (float)a.decay, step = (float)a.step, bc2 = (float)a.bc2sqrt, eps = (float)s.eps, sc = (float)scale;
      for (i64 i = base + threadIdx.x; i < end; i += blockDim.x) {
        float g = ld<float>((const void*)a.g, (int)a.gdt, i) * sc;
        float pj = p[i] * decay;
        float mj = b1 * m[i] + ob1 * g;
        float vj = b2 * v[i] + ob2 * g * g;
        float den = sqrtf(vj) / bc2 + eps;
        const float pn = pj - step * (mj / den);
        p[i] = pn;
        m[i] = mj;
        v[i] = vj;
        if (a.w) st<float>((void*)a.w, (int)a.wdt, i, pn);
        if (a.zero) st<float>((void*)a.g, (int)a.gdt, i, 0.0f);
      }
    }
  }
}

// softmax over rows of length cols, one block per row.
template <typename T>
__device__ void softmax_body(void* d, i64 ddt, const void* s, i64 sdt, i64 rows, i64 cols) {
  __shared__ T scratch[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    i64 o = r * cols;
    T m = -nt_inf<T>();
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) m = fmax(m, ld<T>(s, (int)sdt, o + j));
    m = block_max(m, scratch);
    T sum = 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) sum += exp(ld<T>(s, (int)sdt, o + j) - m);
    sum = block_sum(sum, scratch);
    T inv = (T)1 / sum;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) st<T>(d, (int)ddt, o + j, exp(ld<T>(s, (int)sdt, o + j) - m) * inv);
    __syncthreads();
  }
}
extern "C" __global__ void softmax_f(void* d, i64 ddt, const void* s, i64 sdt, i64 rows, i64 cols) { softmax_body<float>(d, ddt, s, sdt, rows, cols); }
extern "C" __global__ void softmax_d(void* d, i64 ddt, const void* s, i64 sdt, i64 rows, i64 cols) { softmax_body<double>(d, ddt, s, sdt, rows, cols); }

template <typename T>
__device__ void softmax_grad_body(void* dx, i64 dxdt, const void* y, i64 ydt, const void* dy, i64 dydt, i64 rows, i64 cols) {
  __shared__ T scratch[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    i64 o = r * cols;
    T dot = 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) dot += ld<T>(y, (int)ydt, o + j) * ld<T>(dy, (int)dydt, o + j);
    dot = block_sum(dot, scratch);
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T yv = ld<T>(y, (int)ydt, o + j);
      st<T>(dx, (int)dxdt, o + j, yv * (ld<T>(dy, (int)dydt, o + j) - dot));
    }
    __syncthreads();
  }
}
extern "C" __global__ void softmax_grad_f(void* dx, i64 dxdt, const void* y, i64 ydt, const void* dy, i64 dydt, i64 rows, i64 cols) {
  softmax_grad_body<float>(dx, dxdt, y, ydt, dy, dydt, rows, cols);
}
extern "C" __global__ void softmax_grad_d(void* dx, i64 dxdt, const void* y, i64 ydt, const void* dy, i64 dydt, i64 rows, i64 cols) {
  softmax_grad_body<double>(dx, dxdt, y, ydt, dy, dydt, rows, cols);
}

// Row normalisation, shared by RMSNorm (rms = 1) and LayerNorm (rms = 0):
// one block per row. mean (LayerNorm only) and rstd are F32 or F64.
template <typename T>
__device__ void rownorm_body(i64 rms, void* y, i64 ydt, void* mean, void* rstd, i64 sdt, const void* x, i64 xdt,
                             const void* w, i64 wdt, const void* b, i64 bdt, i64 rows, i64 cols, double eps) {
  __shared__ T scratch[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    i64 o = r * cols;
    T mu = 0;
    if (!rms) {
      T s = 0;
      for (i64 j = threadIdx.x; j < cols; j += blockDim.x) s += ld<T>(x, (int)xdt, o + j);
      mu = block_sum(s, scratch) / (T)cols;
    }
    T ss = 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T v = ld<T>(x, (int)xdt, o + j) - mu;
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    T rs = (T)1 / sqrt(ss / (T)cols + (T)eps);
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T v = (ld<T>(x, (int)xdt, o + j) - mu) * rs;
      if (w) v *= ld<T>(w, (int)wdt, j);
      if (b) v += ld<T>(b, (int)bdt, j);
      st<T>(y, (int)ydt, o + j, v);
    }
    if (threadIdx.x == 0) {
      st<T>(rstd, (int)sdt, r, rs);
      if (!rms && mean) st<T>(mean, (int)sdt, r, mu);
    }
    __syncthreads();
  }
}
extern "C" __global__ void rownorm_f(i64 rms, void* y, i64 ydt, void* mean, void* rstd, i64 sdt, const void* x, i64 xdt,
                                     const void* w, i64 wdt, const void* b, i64 bdt, i64 rows, i64 cols, double eps) {
  rownorm_body<float>(rms, y, ydt, mean, rstd, sdt, x, xdt, w, wdt, b, bdt, rows, cols, eps);
}
extern "C" __global__ void rownorm_d(i64 rms, void* y, i64 ydt, void* mean, void* rstd, i64 sdt, const void* x, i64 xdt,
                                     const void* w, i64 wdt, const void* b, i64 bdt, i64 rows, i64 cols, double eps) {
  rownorm_body<double>(rms, y, ydt, mean, rstd, sdt, x, xdt, w, wdt, b, bdt, rows, cols, eps);
}

// rownorm_grad: dx per row. For RMSNorm (rms = 1) mean is absent:
//   dx = rstd·g − x·rstd³·mean(g·x),               g = dy·w
// and for LayerNorm, with x̂ = (x−mean)·rstd:
//   dx = rstd·(g − mean(g) − x̂·mean(g·x̂)).
template <typename T>
__device__ void rownorm_grad_body(i64 rms, void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt,
                                  const void* w, i64 wdt, const void* mean, const void* rstd, i64 sdt, i64 rows, i64 cols) {
  __shared__ T scratch[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    i64 o = r * cols;
    T rs = ld<T>(rstd, (int)sdt, r);
    T mu = rms ? (T)0 : ld<T>(mean, (int)sdt, r);
    T sg = 0, sgx = 0;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T g = ld<T>(dy, (int)dydt, o + j);
      if (w) g *= ld<T>(w, (int)wdt, j);
      T xh = (ld<T>(x, (int)xdt, o + j) - mu) * rs;
      sg += g;
      sgx += g * xh;
    }
    sgx = block_sum(sgx, scratch) / (T)cols;
    sg = rms ? (T)0 : block_sum(sg, scratch) / (T)cols;
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
      T g = ld<T>(dy, (int)dydt, o + j);
      if (w) g *= ld<T>(w, (int)wdt, j);
      T xh = (ld<T>(x, (int)xdt, o + j) - mu) * rs;
      st<T>(dx, (int)dxdt, o + j, rs * (g - sg - xh * sgx));
    }
    __syncthreads();
  }
}
extern "C" __global__ void rownorm_grad_f(i64 rms, void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt,
                                          const void* w, i64 wdt, const void* mean, const void* rstd, i64 sdt, i64 rows, i64 cols) {
  rownorm_grad_body<float>(rms, dx, dxdt, dy, dydt, x, xdt, w, wdt, mean, rstd, sdt, rows, cols);
}
extern "C" __global__ void rownorm_grad_d(i64 rms, void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt,
                                          const void* w, i64 wdt, const void* mean, const void* rstd, i64 sdt, i64 rows, i64 cols) {
  rownorm_grad_body<double>(rms, dx, dxdt, dy, dydt, x, xdt, w, wdt, mean, rstd, sdt, rows, cols);
}

// rownorm_wgrad_part / rownorm_wgrad_fold: dw[j] = Σ_rows dy·x̂ and
// db[j] = Σ_rows dy. A block takes 32 columns × 8 row lanes of one slice of
// the rows (blockIdx.y; several slices when the columns alone give too few
// blocks — q/k norms: 96 columns over 100k rows) and combines its lanes in
// shared memory in a fixed order into partials [slices, cols]; the fold
// adds the slices in order, so results are reproducible.
template <typename T>
__device__ void rownorm_wgrad_part_body(T* pw, T* pb, const void* dy, i64 dydt, const void* x, i64 xdt,
                                        const void* mean, const void* rstd, i64 sdt, i64 rows, i64 cols, i64 per) {
  __shared__ T sw[8][33], sb[8][33];
  int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  i64 j = (i64)blockIdx.x * 32 + tx;
  i64 r0 = (i64)blockIdx.y * per, r1 = min(rows, r0 + per);
  T aw = 0, ab = 0;
  if (j < cols) {
    for (i64 r = r0 + ty; r < r1; r += 8) {
      T g = ld<T>(dy, (int)dydt, r * cols + j);
      T mu = mean ? ld<T>(mean, (int)sdt, r) : (T)0;
      T xh = (ld<T>(x, (int)xdt, r * cols + j) - mu) * ld<T>(rstd, (int)sdt, r);
      aw += g * xh;
      ab += g;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < cols) {
    T tw = 0, tb = 0;
    for (int k = 0; k < 8; k++) {
      tw += sw[k][tx];
      tb += sb[k][tx];
    }
    pw[blockIdx.y * cols + j] = tw;
    pb[blockIdx.y * cols + j] = tb;
  }
}
template <typename T>
__device__ void rownorm_wgrad_fold_body(void* dw, i64 dwdt, void* db, i64 dbdt, const T* pw, const T* pb, i64 slices, i64 cols) {
  GRID_STRIDE(j, cols) {
    T tw = 0, tb = 0;
    for (i64 k = 0; k < slices; k++) {
      tw += pw[k * cols + j];
      tb += pb[k * cols + j];
    }
    if (dw) st<T>(dw, (int)dwdt, j, tw);
    if (db) st<T>(db, (int)dbdt, j, tb);
  }
}
extern "C" __global__ void rownorm_wgrad_part_f(float* pw, float* pb, const void* dy, i64 dydt, const void* x, i64 xdt,
                                                const void* mean, const void* rstd, i64 sdt, i64 rows, i64 cols, i64 per) {
  rownorm_wgrad_part_body<float>(pw, pb, dy, dydt, x, xdt, mean, rstd, sdt, rows, cols, per);
}
extern "C" __global__ void rownorm_wgrad_part_d(double* pw, double* pb, const void* dy, i64 dydt, const void* x, i64 xdt,
                                                const void* mean, const void* rstd, i64 sdt, i64 rows, i64 cols, i64 per) {
  rownorm_wgrad_part_body<double>(pw, pb, dy, dydt, x, xdt, mean, rstd, sdt, rows, cols, per);
}
extern "C" __global__ void rownorm_wgrad_fold_f(void* dw, i64 dwdt, void* db, i64 dbdt, const float* pw, const float* pb, i64 slices, i64 cols) {
  rownorm_wgrad_fold_body<float>(dw, dwdt, db, dbdt, pw, pb, slices, cols);
}
extern "C" __global__ void rownorm_wgrad_fold_d(void* dw, i64 dwdt, void* db, i64 dbdt, const double* pw, const double* pb, i64 slices, i64 cols) {
  rownorm_wgrad_fold_body<double>(dw, dwdt, db, dbdt, pw, pb, slices, cols);
}

// GroupNorm over x [n, c, hw]: one block per (sample, group), whose cpg·hw
// elements are contiguous.
template <typename T>
__device__ void groupnorm_body(void* y, i64 ydt, void* mean, void* rstd, i64 sdt, const void* x, i64 xdt,
                               const void* w, i64 wdt, const void* b, i64 bdt, i64 N, i64 C, i64 HW, i64 G, double eps) {
  __shared__ T scratch[32];
  i64 cpg = C / G, len = cpg * HW;
  for (i64 ng = blockIdx.x; ng < N * G; ng += gridDim.x) {
    i64 n = ng / G, g = ng - n * G;
    i64 o = (n * C + g * cpg) * HW;
    T s = 0;
    for (i64 j = threadIdx.x; j < len; j += blockDim.x) s += ld<T>(x, (int)xdt, o + j);
    T mu = block_sum(s, scratch) / (T)len;
    T ss = 0;
    for (i64 j = threadIdx.x; j < len; j += blockDim.x) {
      T v = ld<T>(x, (int)xdt, o + j) - mu;
      ss += v * v;
    }
    T rs = (T)1 / sqrt(block_sum(ss, scratch) / (T)len + (T)eps);
    for (i64 j = threadIdx.x; j < len; j += blockDim.x) {
      i64 ch = g * cpg + j / HW;
      T v = (ld<T>(x, (int)xdt, o + j) - mu) * rs;
      if (w) v *= ld<T>(w, (int)wdt, ch);
      if (b) v += ld<T>(b, (int)bdt, ch);
      st<T>(y, (int)ydt, o + j, v);
    }
    if (threadIdx.x == 0) {
      st<T>(mean, (int)sdt, ng, mu);
      st<T>(rstd, (int)sdt, ng, rs);
    }
    __syncthreads();
  }
}
extern "C" __global__ void groupnorm_f(void* y, i64 ydt, void* mean, void* rstd, i64 sdt, const void* x, i64 xdt,
                                       const void* w, i64 wdt, const void* b, i64 bdt, i64 N, i64 C, i64 HW, i64 G, double eps) {
  groupnorm_body<float>(y, ydt, mean, rstd, sdt, x, xdt, w, wdt, b, bdt, N, C, HW, G, eps);
}
extern "C" __global__ void groupnorm_d(void* y, i64 ydt, void* mean, void* rstd, i64 sdt, const void* x, i64 xdt,
                                       const void* w, i64 wdt, const void* b, i64 bdt, i64 N, i64 C, i64 HW, i64 G, double eps) {
  groupnorm_body<double>(y, ydt, mean, rstd, sdt, x, xdt, w, wdt, b, bdt, N, C, HW, G, eps);
}

template <typename T>
__device__ void groupnorm_grad_body(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w, i64 wdt,
                                    const void* mean, const void* rstd, i64 sdt, i64 N, i64 C, i64 HW, i64 G) {
  __shared__ T scratch[32];
  i64 cpg = C / G, len = cpg * HW;
  for (i64 ng = blockIdx.x; ng < N * G; ng += gridDim.x) {
    i64 n = ng / G, g = ng - n * G;
    i64 o = (n * C + g * cpg) * HW;
    T mu = ld<T>(mean, (int)sdt, ng), rs = ld<T>(rstd, (int)sdt, ng);
    T sg = 0, sgx = 0;
    for (i64 j = threadIdx.x; j < len; j += blockDim.x) {
      T gv = ld<T>(dy, (int)dydt, o + j);
      if (w) gv *= ld<T>(w, (int)wdt, g * cpg + j / HW);
      T xh = (ld<T>(x, (int)xdt, o + j) - mu) * rs;
      sg += gv;
      sgx += gv * xh;
    }
    sg = block_sum(sg, scratch) / (T)len;
    sgx = block_sum(sgx, scratch) / (T)len;
    for (i64 j = threadIdx.x; j < len; j += blockDim.x) {
      T gv = ld<T>(dy, (int)dydt, o + j);
      if (w) gv *= ld<T>(w, (int)wdt, g * cpg + j / HW);
      T xh = (ld<T>(x, (int)xdt, o + j) - mu) * rs;
      st<T>(dx, (int)dxdt, o + j, rs * (gv - sg - xh * sgx));
    }
    __syncthreads();
  }
}
extern "C" __global__ void groupnorm_grad_f(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w, i64 wdt,
                                            const void* mean, const void* rstd, i64 sdt, i64 N, i64 C, i64 HW, i64 G) {
  groupnorm_grad_body<float>(dx, dxdt, dy, dydt, x, xdt, w, wdt, mean, rstd, sdt, N, C, HW, G);
}
extern "C" __global__ void groupnorm_grad_d(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* x, i64 xdt, const void* w, i64 wdt,
                                            const void* mean, const void* rstd, i64 sdt, i64 N, i64 C, i64 HW, i64 G) {
  groupnorm_grad_body<double>(dx, dxdt, dy, dydt, x, xdt, w, wdt, mean, rstd, sdt, N, C, HW, G);
}

// groupnorm_wgrad: one block per channel, dw = Σ dy·x̂ and db = Σ dy over
// samples and pixels.
template <typename T>
__device__ void groupnorm_wgrad_body(void* dw, i64 dwdt, void* db, i64 dbdt, const void* dy, i64 dydt, const void* x, i64 xdt,
                                     const void* mean, const void* rstd, i64 sdt, i64 N, i64 C, i64 HW, i64 G) {
  __shared__ T scratch[32];
  i64 cpg = C / G;
  for (i64 ch = blockIdx.x; ch < C; ch += gridDim.x) {
    i64 g = ch / cpg;
    T aw = 0, ab = 0;
    for (i64 k = threadIdx.x; k < N * HW; k += blockDim.x) {
      i64 n = k / HW, p = k - n * HW;
      i64 idx = (n * C + ch) * HW + p;
      T gv = ld<T>(dy, (int)dydt, idx);
      T xh = (ld<T>(x, (int)xdt, idx) - ld<T>(mean, (int)sdt, n * G + g)) * ld<T>(rstd, (int)sdt, n * G + g);
      aw += gv * xh;
      ab += gv;
    }
    aw = block_sum(aw, scratch);
    ab = block_sum(ab, scratch);
    if (threadIdx.x == 0) {
      if (dw) st<T>(dw, (int)dwdt, ch, aw);
      if (db) st<T>(db, (int)dbdt, ch, ab);
    }
    __syncthreads();
  }
}
extern "C" __global__ void groupnorm_wgrad_f(void* dw, i64 dwdt, void* db, i64 dbdt, const void* dy, i64 dydt, const void* x, i64 xdt,
                                             const void* mean, const void* rstd, i64 sdt, i64 N, i64 C, i64 HW, i64 G) {
  groupnorm_wgrad_body<float>(dw, dwdt, db, dbdt, dy, dydt, x, xdt, mean, rstd, sdt, N, C, HW, G);
}
extern "C" __global__ void groupnorm_wgrad_d(void* dw, i64 dwdt, void* db, i64 dbdt, const void* dy, i64 dydt, const void* x, i64 xdt,
                                             const void* mean, const void* rstd, i64 sdt, i64 N, i64 C, i64 HW, i64 G) {
  groupnorm_wgrad_body<double>(dw, dwdt, db, dbdt, dy, dydt, x, xdt, mean, rstd, sdt, N, C, HW, G);
}
