// conv_gemm.cu: the pieces of Conv2D as matrix products, for fp32 and fp16
// operands (the bf16 ones have the tensor-core implicit GEMM, conv_tc.cu):
// per image and per range of output pixels, the input's windows are laid
// out as columns (im2col) with a last row of ones, and one cuBLAS product
// with the weights, widened by a bias column, writes the output rows.
//
//   col[k][j]  = x[n, ci, oy·s − p + ky, ox·s − p + kx] (0 outside), k = (ci·KH + ky)·KW + kx
//   col[K][j]  = 1
//   wb[co][k]  = w[co, ci, ky, kx] for k < K, bias[co] (or 0) for k = K
//   y[n, co, p0 + j] = Σ_k wb[co][k]·col[k][j]
//
// Both layouts keep the operands' dtype (values are copied, not rounded).

struct ConvShape {
  i64 N, Cin, H, W, Cout, KH, KW, stride, pad, HO, WO;
};

// conv_im2col_f: (K+1) × pc columns for output pixels p0 … p0+pc−1 of
// image n, element (k, j) at col[k·pc + j].
extern "C" __global__ void conv_im2col_f(void* col, const void* x, i64 dt, ConvShape c, i64 n, i64 p0, i64 pc) {
  const i64 taps = c.KH * c.KW, K = c.Cin * taps;
  GRID_STRIDE(i, (K + 1) * pc) {
    const i64 k = i / pc, j = i - k * pc;
    float v = 1.0f;
    if (k < K) {
      const i64 ci = k / taps, r = k - ci * taps, ky = r / c.KW, kx = r - ky * c.KW;
      const i64 p = p0 + j, oy = p / c.WO, ox = p - oy * c.WO;
      const i64 iy = oy * c.stride - c.pad + ky, ix = ox * c.stride - c.pad + kx;
      v = iy >= 0 && iy < c.H && ix >= 0 && ix < c.W ? ld<float>(x, (int)dt, ((n * c.Cin + ci) * c.H + iy) * c.W + ix) : 0.0f;
    }
    st<float>(col, (int)dt, i, v);
  }
}

// conv_wbias_f: the weights [Cout][K] widened to [Cout][K+1] by the bias.
extern "C" __global__ void conv_wbias_f(void* wb, const void* w, const void* bias, i64 bdt, i64 dt, i64 cout, i64 K) {
  GRID_STRIDE(i, cout * (K + 1)) {
    const i64 co = i / (K + 1), k = i - co * (K + 1);
    const float v = k < K ? ld<float>(w, (int)dt, co * K + k) : (bias ? ld<float>(bias, (int)bdt, co) : 0.0f);
    st<float>(wb, (int)dt, i, v);
  }
}
