// conv.cu: direct 2-D convolution (NCHW, cross-correlation as in PyTorch)
// and its gradients, one thread per output element. Correct for every
// shape; the VAE's large convolutions would be faster as implicit GEMMs.

struct ConvShape {
  i64 N, Cin, H, W, Cout, KH, KW, stride, pad, HO, WO;
};

template <typename T>
__device__ void conv_body(void* y, i64 ydt, const void* x, i64 xdt, const void* w, i64 wdt, const void* bias, i64 bdt, ConvShape c) {
  GRID_STRIDE(i, c.N * c.Cout * c.HO * c.WO) {
    i64 ox = i % c.WO, t = i / c.WO;
    i64 oy = t % c.HO;
    t /= c.HO;
    i64 co = t % c.Cout, n = t / c.Cout;
    T acc = bias ? ld<T>(bias, (int)bdt, co) : (T)0;
    for (i64 ci = 0; ci < c.Cin; ci++) {
      for (i64 ky = 0; ky < c.KH; ky++) {
        i64 iy = oy * c.stride - c.pad + ky;
        if (iy < 0 || iy >= c.H) continue;
        for (i64 kx = 0; kx < c.KW; kx++) {
          i64 ix = ox * c.stride - c.pad + kx;
          if (ix < 0 || ix >= c.W) continue;
          acc += ld<T>(x, (int)xdt, ((n * c.Cin + ci) * c.H + iy) * c.W + ix) * ld<T>(w, (int)wdt, ((co * c.Cin + ci) * c.KH + ky) * c.KW + kx);
        }
      }
    }
    st<T>(y, (int)ydt, i, acc);
  }
}
extern "C" __global__ void conv_f(void* y, i64 ydt, const void* x, i64 xdt, const void* w, i64 wdt, const void* bias, i64 bdt, ConvShape c) {
  conv_body<float>(y, ydt, x, xdt, w, wdt, bias, bdt, c);
}
extern "C" __global__ void conv_d(void* y, i64 ydt, const void* x, i64 xdt, const void* w, i64 wdt, const void* bias, i64 bdt, ConvShape c) {
  conv_body<double>(y, ydt, x, xdt, w, wdt, bias, bdt, c);
}

// dx[n, ci, iy, ix] = Σ dy[n, co, oy, ox]·w[co, ci, ky, kx] over the output
// positions whose window covers (iy, ix).
template <typename T>
__device__ void conv_dx_body(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* w, i64 wdt, ConvShape c) {
  GRID_STRIDE(i, c.N * c.Cin * c.H * c.W) {
    i64 ix = i % c.W, t = i / c.W;
    i64 iy = t % c.H;
    t /= c.H;
    i64 ci = t % c.Cin, n = t / c.Cin;
    T acc = 0;
    for (i64 ky = 0; ky < c.KH; ky++) {
      i64 ny = iy + c.pad - ky;
      if (ny < 0 || ny % c.stride) continue;
      i64 oy = ny / c.stride;
      if (oy >= c.HO) continue;
      for (i64 kx = 0; kx < c.KW; kx++) {
        i64 nx = ix + c.pad - kx;
        if (nx < 0 || nx % c.stride) continue;
        i64 ox = nx / c.stride;
        if (ox >= c.WO) continue;
        for (i64 co = 0; co < c.Cout; co++)
          acc += ld<T>(dy, (int)dydt, ((n * c.Cout + co) * c.HO + oy) * c.WO + ox) * ld<T>(w, (int)wdt, ((co * c.Cin + ci) * c.KH + ky) * c.KW + kx);
      }
    }
    st<T>(dx, (int)dxdt, i, acc);
  }
}
extern "C" __global__ void conv_dx_f(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* w, i64 wdt, ConvShape c) { conv_dx_body<float>(dx, dxdt, dy, dydt, w, wdt, c); }
extern "C" __global__ void conv_dx_d(void* dx, i64 dxdt, const void* dy, i64 dydt, const void* w, i64 wdt, ConvShape c) { conv_dx_body<double>(dx, dxdt, dy, dydt, w, wdt, c); }

// dw[co, ci, ky, kx] = Σ_{n, oy, ox} dy·x: one block per weight element,
// threads over the output positions, a fixed-order block sum.
template <typename T>
__device__ void conv_dw_body(void* dw, i64 dwdt, const void* dy, i64 dydt, const void* x, i64 xdt, ConvShape c) {
  __shared__ T scratch[32];
  for (i64 e = blockIdx.x; e < c.Cout * c.Cin * c.KH * c.KW; e += gridDim.x) {
    i64 kx = e % c.KW, t = e / c.KW;
    i64 ky = t % c.KH;
    t /= c.KH;
    i64 ci = t % c.Cin, co = t / c.Cin;
    T acc = 0;
    for (i64 p = threadIdx.x; p < c.N * c.HO * c.WO; p += blockDim.x) {
      i64 ox = p % c.WO, u = p / c.WO;
      i64 oy = u % c.HO, n = u / c.HO;
      i64 iy = oy * c.stride - c.pad + ky, ix = ox * c.stride - c.pad + kx;
      if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
      acc += ld<T>(dy, (int)dydt, ((n * c.Cout + co) * c.HO + oy) * c.WO + ox) * ld<T>(x, (int)xdt, ((n * c.Cin + ci) * c.H + iy) * c.W + ix);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) st<T>(dw, (int)dwdt, e, acc);
    __syncthreads();
  }
}
extern "C" __global__ void conv_dw_f(void* dw, i64 dwdt, const void* dy, i64 dydt, const void* x, i64 xdt, ConvShape c) { conv_dw_body<float>(dw, dwdt, dy, dydt, x, xdt, c); }
extern "C" __global__ void conv_dw_d(void* dw, i64 dwdt, const void* dy, i64 dydt, const void* x, i64 xdt, ConvShape c) { conv_dw_body<double>(dw, dwdt, dy, dydt, x, xdt, c); }

template <typename T>
__device__ void conv_db_body(void* db, i64 dbdt, const void* dy, i64 dydt, ConvShape c) {
  __shared__ T scratch[32];
  for (i64 co = blockIdx.x; co < c.Cout; co += gridDim.x) {
    T acc = 0;
    for (i64 p = threadIdx.x; p < c.N * c.HO * c.WO; p += blockDim.x) {
      i64 hw = p % (c.HO * c.WO), n = p / (c.HO * c.WO);
      acc += ld<T>(dy, (int)dydt, (n * c.Cout + co) * c.HO * c.WO + hw);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) st<T>(db, (int)dbdt, co, acc);
    __syncthreads();
  }
}
extern "C" __global__ void conv_db_f(void* db, i64 dbdt, const void* dy, i64 dydt, ConvShape c) { conv_db_body<float>(db, dbdt, dy, dydt, c); }
extern "C" __global__ void conv_db_d(void* db, i64 dbdt, const void* dy, i64 dydt, ConvShape c) { conv_db_body<double>(db, dbdt, dy, dydt, c); }
