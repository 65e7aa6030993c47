// elementwise.cu: fills, casts, copies, permutes, unary and binary maps,
// RoPE, upsampling, gathers and the Philox random draws. Each generic kernel
// is a template over the compute type T (float, or double when the output
// is F64) with thin extern "C" wrappers _f / _d that the Go side picks.

template <typename T>
__device__ void fill_body(void* p, i64 dt, i64 n, double v) {
  GRID_STRIDE(i, n) st<T>(p, (int)dt, i, (T)v);
}
extern "C" __global__ void fill_f(void* p, i64 dt, i64 n, double v) { fill_body<float>(p, dt, n, v); }
extern "C" __global__ void fill_d(void* p, i64 dt, i64 n, double v) { fill_body<double>(p, dt, n, v); }

// copy_elem moves one element, exactly (bit for bit) when the dtypes agree.
template <typename T>
__device__ __forceinline__ void copy_elem(void* d, int ddt, i64 di, const void* s, int sdt, i64 si) {
  if (ddt == sdt) {
    switch (ddt) {
      case DT_F64: ((u64*)d)[di] = ((const u64*)s)[si]; return;
      case DT_BF16:
      case DT_F16: ((u16*)d)[di] = ((const u16*)s)[si]; return;
      default: ((u32*)d)[di] = ((const u32*)s)[si]; return;
    }
  }
  st<T>(d, ddt, di, ld<T>(s, sdt, si));
}

template <typename T>
__device__ void cast_body(void* d, i64 ddt, const void* s, i64 sdt, i64 n) {
  GRID_STRIDE(i, n) copy_elem<T>(d, (int)ddt, i, s, (int)sdt, i);
}
extern "C" __global__ void cast_f(void* d, i64 ddt, const void* s, i64 sdt, i64 n) { cast_body<float>(d, ddt, s, sdt, n); }
extern "C" __global__ void cast_d(void* d, i64 ddt, const void* s, i64 sdt, i64 n) { cast_body<double>(d, ddt, s, sdt, n); }

template <typename T>
__device__ void copy2d_body(void* d, i64 ddt, i64 doff, i64 dstride, const void* s, i64 sdt, i64 soff, i64 sstride, i64 rows, i64 cols) {
  GRID_STRIDE(i, rows * cols) {
    i64 r = i / cols, c = i - r * cols;
    copy_elem<T>(d, (int)ddt, doff + r * dstride + c, s, (int)sdt, soff + r * sstride + c);
  }
}
extern "C" __global__ void copy2d_f(void* d, i64 ddt, i64 doff, i64 dstride, const void* s, i64 sdt, i64 soff, i64 sstride, i64 rows, i64 cols) {
  copy2d_body<float>(d, ddt, doff, dstride, s, sdt, soff, sstride, rows, cols);
}
extern "C" __global__ void copy2d_d(void* d, i64 ddt, i64 doff, i64 dstride, const void* s, i64 sdt, i64 soff, i64 sstride, i64 rows, i64 cols) {
  copy2d_body<double>(d, ddt, doff, dstride, s, sdt, soff, sstride, rows, cols);
}

// bcast_rows16 writes one row of 16-byte chunks (the same dtype in and
// out) into every row of a dense block: a bias broadcast before a product
// accumulates onto it. Offsets and the row are whole chunks.
extern "C" __global__ void bcast_rows16(uint4* d, const uint4* s, i64 rows, i64 chunks) {
  GRID_STRIDE(i, rows * chunks) d[i] = s[i % chunks];
}

// Shape6 describes a permutation: dst's shape and, for each dst axis, the
// stride of the src axis that feeds it.
struct Shape6 {
  i64 rank;
  i64 dshape[6];
  i64 sstride[6];
};

template <typename T>
__device__ void permute_body(void* d, i64 ddt, const void* s, i64 sdt, i64 n, Shape6 sh) {
  GRID_STRIDE(i, n) {
    i64 rem = i, so = 0;
    for (int a = (int)sh.rank - 1; a >= 0; a--) {
      i64 idx = rem % sh.dshape[a];
      rem /= sh.dshape[a];
      so += idx * sh.sstride[a];
    }
    copy_elem<T>(d, (int)ddt, i, s, (int)sdt, so);
  }
}
extern "C" __global__ void permute_f(void* d, i64 ddt, const void* s, i64 sdt, i64 n, Shape6 sh) { permute_body<float>(d, ddt, s, sdt, n, sh); }
extern "C" __global__ void permute_d(void* d, i64 ddt, const void* s, i64 sdt, i64 n, Shape6 sh) { permute_body<double>(d, ddt, s, sdt, n, sh); }

// Unary op codes, as kernels.UnaryOp numbers them.
#define U_IDENTITY 1
#define U_NEG 2
#define U_ABS 3
#define U_EXP 4
#define U_LOG 5
#define U_SQRT 6
#define U_RSQRT 7
#define U_RECIP 8
#define U_SQUARE 9
#define U_TANH 10
#define U_SIGMOID 11
#define U_SILU 12
#define U_GELU 13
#define U_AFFINE 14
#define U_POW 15
#define U_DROPOUT 16
#define U_GELU_ERF 17

#define GELU_K 0.7978845608028654

// Transcendentals run in the compute type: float for float outputs (the
// accurate library functions, within 2 ulp, far inside the 1e-5 budget and
// fast enough to keep the map memory-bound) and double for F64 outputs.
__device__ __forceinline__ float t_exp(float x) { return expf(x); }
__device__ __forceinline__ double t_exp(double x) { return exp(x); }
__device__ __forceinline__ float t_log(float x) { return logf(x); }
__device__ __forceinline__ double t_log(double x) { return log(x); }
__device__ __forceinline__ float t_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double t_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float t_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double t_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float t_erf(float x) { return erff(x); }
__device__ __forceinline__ double t_erf(double x) { return erf(x); }
__device__ __forceinline__ float t_pow(float x, double a) { return powf(x, (float)a); }
__device__ __forceinline__ double t_pow(double x, double a) { return pow(x, a); }

// t_sigmoid never overflows: e^(−|x|) ≤ 1. The float version divides with
// __fdividef (2 ulp), which keeps SiLU memory-bound.
__device__ __forceinline__ float t_sigmoid(float x) {
  float e = expf(-fabsf(x));
  float r = __fdividef(1.f, 1.f + e);
  return x >= 0.f ? r : e * r;
}
__device__ __forceinline__ double t_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

template <typename T>
__device__ __forceinline__ T unary_apply(int op, T x, double A, double B) {
  const T k = (T)GELU_K, c = (T)0.044715;
  switch (op) {
    case U_IDENTITY: return x;
    case U_NEG: return -x;
    case U_ABS: return x < (T)0 ? -x : x;
    case U_EXP: return t_exp(x);
    case U_LOG: return t_log(x);
    case U_SQRT: return t_sqrt(x);
    case U_RSQRT: return (T)1 / t_sqrt(x);
    case U_RECIP: return (T)1 / x;
    case U_SQUARE: return x * x;
    case U_TANH: return t_tanh(x);
    case U_SIGMOID: return t_sigmoid(x);
    case U_SILU: return x * t_sigmoid(x);
    case U_GELU: return (T)0.5 * x * ((T)1 + t_tanh(k * (x + c * x * x * x)));
    case U_AFFINE: return x * (T)A + (T)B;
    case U_POW: return t_pow(x, A);
    case U_DROPOUT: return x >= (T)A ? (T)B : (T)0;
    case U_GELU_ERF: return (T)0.5 * x * ((T)1 + t_erf(x * (T)0.70710678118654752));
  }
  return x;
}

template <typename T>
__device__ __forceinline__ T unary_grad_apply(int op, T x, T g, double A) {
  const T k = (T)GELU_K, c = (T)0.044715;
  switch (op) {
    case U_IDENTITY: return g;
    case U_NEG: return -g;
    case U_ABS: return x > (T)0 ? g : x < (T)0 ? -g : (T)0;
    case U_EXP: return g * t_exp(x);
    case U_LOG: return g / x;
    case U_SQRT: return g * (T)0.5 / t_sqrt(x);
    case U_RSQRT: return g * (T)-0.5 / (x * t_sqrt(x));
    case U_RECIP: return -g / (x * x);
    case U_SQUARE: return (T)2 * x * g;
    case U_TANH: {
      T t = t_tanh(x);
      return g * ((T)1 - t * t);
    }
    case U_SIGMOID: {
      T s = t_sigmoid(x);
      return g * s * ((T)1 - s);
    }
    case U_SILU: {
      T s = t_sigmoid(x);
      return g * s * ((T)1 + x * ((T)1 - s));
    }
    case U_GELU: {
      T t = t_tanh(k * (x + c * x * x * x));
      T d = (T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * k * ((T)1 + (T)3 * c * x * x);
      return g * d;
    }
    case U_AFFINE: return g * (T)A;
    case U_POW: return g * (T)A * t_pow(x, A - 1.0);
    case U_DROPOUT: return (T)0;
    case U_GELU_ERF: {
      // Φ(x) + x·φ(x), φ the standard normal density.
      T phi = t_exp((T)-0.5 * x * x) * (T)0.39894228040143268;
      return g * ((T)0.5 * ((T)1 + t_erf(x * (T)0.70710678118654752)) + x * phi);
    }
  }
  return g;
}

template <typename T>
__device__ void unary_body(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 n, double A, double B) {
  GRID_STRIDE(i, n) st<T>(d, (int)ddt, i, unary_apply<T>((int)op, ld<T>(s, (int)sdt, i), A, B));
}
extern "C" __global__ void unary_f(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 n, double A, double B) { unary_body<float>(op, d, ddt, s, sdt, n, A, B); }
extern "C" __global__ void unary_d(i64 op, void* d, i64 ddt, const void* s, i64 sdt, i64 n, double A, double B) { unary_body<double>(op, d, ddt, s, sdt, n, A, B); }

template <typename T>
__device__ void unary_grad_body(i64 op, void* dx, i64 dxdt, const void* x, i64 xdt, const void* dy, i64 dydt, i64 n, double A) {
  GRID_STRIDE(i, n) {
    T xv = ld<T>(x, (int)xdt, i), g = ld<T>(dy, (int)dydt, i);
    st<T>(dx, (int)dxdt, i, unary_grad_apply<T>((int)op, xv, g, A));
  }
}
extern "C" __global__ void unary_grad_f(i64 op, void* dx, i64 dxdt, const void* x, i64 xdt, const void* dy, i64 dydt, i64 n, double A) {
  unary_grad_body<float>(op, dx, dxdt, x, xdt, dy, dydt, n, A);
}
extern "C" __global__ void unary_grad_d(i64 op, void* dx, i64 dxdt, const void* x, i64 xdt, const void* dy, i64 dydt, i64 n, double A) {
  unary_grad_body<double>(op, dx, dxdt, x, xdt, dy, dydt, n, A);
}

// Binary broadcasting: dst's shape and each operand's strides (0 along a
// broadcast axis), rank ≤ 8 after the Go side merges contiguous axes.
struct Bcast {
  i64 rank;
  i64 shape[8];
  i64 astride[8];
  i64 bstride[8];
};

#define B_ADD 1
#define B_SUB 2
#define B_MUL 3
#define B_DIV 4
#define B_MAX 5
#define B_MIN 6

template <typename T>
__device__ __forceinline__ T binary_apply(int op, T a, T b) {
  switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_MAX: return (a != a || b != b) ? a + b : (a > b ? a : b);
    case B_MIN: return (a != a || b != b) ? a + b : (a < b ? a : b);
  }
  return a;
}

template <typename T>
__device__ void binary_body(i64 op, void* d, i64 ddt, const void* a, i64 adt, const void* b, i64 bdt, i64 n, Bcast bc) {
  GRID_STRIDE(i, n) {
    i64 ao, bo;
    if (bc.rank == 0) {
      ao = i;
      bo = i;
    } else {
      i64 rem = i;
      ao = 0;
      bo = 0;
      for (int x = (int)bc.rank - 1; x >= 0; x--) {
        i64 idx = rem % bc.shape[x];
        rem /= bc.shape[x];
        ao += idx * bc.astride[x];
        bo += idx * bc.bstride[x];
      }
    }
    st<T>(d, (int)ddt, i, binary_apply<T>((int)op, ld<T>(a, (int)adt, ao), ld<T>(b, (int)bdt, bo)));
  }
}
extern "C" __global__ void binary_f(i64 op, void* d, i64 ddt, const void* a, i64 adt, const void* b, i64 bdt, i64 n, Bcast bc) {
  binary_body<float>(op, d, ddt, a, adt, b, bdt, n, bc);
}
extern "C" __global__ void binary_d(i64 op, void* d, i64 ddt, const void* a, i64 adt, const void* b, i64 bdt, i64 n, Bcast bc) {
  binary_body<double>(op, d, ddt, a, adt, b, bdt, n, bc);
}

// binary_bf16_vec is the fast path of the model's elementwise products and
// sums: bf16 operands and result, 8 elements a thread through 16-byte
// accesses. mode 0: a and b have dst's shape; mode 1: b is broadcast over
// the middle axis of dst viewed as [X, S, D] (b is [X, 1, D], as an adaLN
// scale or gate over the tokens); mode 2: the same for a. D % 8 == 0.
template <int OP>
__device__ void binary_vec_loop(u16* d, const u16* a, const u16* b, i64 n8, i64 mode, i64 S, i64 D) {
  GRID_STRIDE(g, n8) {
    i64 i = g * 8;
    i64 bi = i;
    if (mode != 0) bi = (i / (S * D)) * D + i % D;
    // Widened and packed in registers (rv_unpack, rv_pack): viewing the
    // chunks through u16 pointers can put them in local memory.
    float af[8], bf[8];
    rv_unpack(*(const uint4*)(a + (mode == 2 ? bi : i)), af);
    rv_unpack(*(const uint4*)(b + (mode == 1 ? bi : i)), bf);
#pragma unroll
    for (int k = 0; k < 8; k++) af[k] = binary_apply<float>(OP, af[k], bf[k]);
    *(uint4*)(d + i) = rv_pack(af);
  }
}
extern "C" __global__ void binary_bf16_vec(i64 op, u16* d, const u16* a, const u16* b, i64 n8, i64 mode, i64 S, i64 D) {
  switch ((int)op) {
    case B_ADD: binary_vec_loop<B_ADD>(d, a, b, n8, mode, S, D); break;
    case B_SUB: binary_vec_loop<B_SUB>(d, a, b, n8, mode, S, D); break;
    case B_MUL: binary_vec_loop<B_MUL>(d, a, b, n8, mode, S, D); break;
    case B_DIV: binary_vec_loop<B_DIV>(d, a, b, n8, mode, S, D); break;
    case B_MAX: binary_vec_loop<B_MAX>(d, a, b, n8, mode, S, D); break;
    case B_MIN: binary_vec_loop<B_MIN>(d, a, b, n8, mode, S, D); break;
  }
}

// rope rotates pairs of x [b, s, h, d] by angles whose cos/sin are
// [b, s, d/2]; one thread per pair, reading both halves before writing, so
// dst may alias x.
template <typename T>
__device__ void rope_body(void* dst, i64 ddt, const void* x, i64 xdt, const void* cs, i64 cdt, const void* sn, i64 sdt,
                          i64 B, i64 S, i64 H, i64 D, i64 interleaved, i64 inverse) {
  i64 half = D / 2;
  i64 n = B * S * H * half;
  GRID_STRIDE(i, n) {
    i64 p = i % half;
    i64 row = i / half;  // (b, s, h)
    i64 bs = row / H;    // (b, s)
    i64 base = row * D;
    i64 i1 = interleaved ? base + 2 * p : base + p;
    i64 i2 = interleaved ? base + 2 * p + 1 : base + p + half;
    T c = ld<T>(cs, (int)cdt, bs * half + p), s = ld<T>(sn, (int)sdt, bs * half + p);
    if (inverse) s = -s;
    T x1 = ld<T>(x, (int)xdt, i1), x2 = ld<T>(x, (int)xdt, i2);
    st<T>(dst, (int)ddt, i1, x1 * c - x2 * s);
    st<T>(dst, (int)ddt, i2, x1 * s + x2 * c);
  }
}
extern "C" __global__ void rope_f(void* dst, i64 ddt, const void* x, i64 xdt, const void* cs, i64 cdt, const void* sn, i64 sdt,
                                  i64 B, i64 S, i64 H, i64 D, i64 il, i64 inv) {
  rope_body<float>(dst, ddt, x, xdt, cs, cdt, sn, sdt, B, S, H, D, il, inv);
}
extern "C" __global__ void rope_d(void* dst, i64 ddt, const void* x, i64 xdt, const void* cs, i64 cdt, const void* sn, i64 sdt,
                                  i64 B, i64 S, i64 H, i64 D, i64 il, i64 inv) {
  rope_body<double>(dst, ddt, x, xdt, cs, cdt, sn, sdt, B, S, H, D, il, inv);
}

// rope_vec_body is the fast path for rotate-half pairs, bf16 in and out,
// D a multiple of 16: each thread moves 8 pairs with 16-byte loads and
// stores. The tables are F32 (the DiT's) or bf16 (Jina's, which casts its
// float32 cos and sin to the activations' dtype), read 8 at a time.
template <bool BF16Tables>
__device__ __forceinline__ void rope_vec_body(u16* dst, const u16* x, const void* cs, const void* sn, i64 B, i64 S, i64 H, i64 D, i64 inverse) {
  i64 half = D / 2, groups = half / 8;
  i64 n = B * S * H * groups;
  GRID_STRIDE(i, n) {
    i64 g = i % groups, row = i / groups, bs = row / H;
    i64 base = row * D + g * 8;
    uint4 a = *(const uint4*)(x + base);
    uint4 b = *(const uint4*)(x + base + half);
    float c[8], s[8];
    if constexpr (BF16Tables) {
      rv_unpack(*(const uint4*)((const u16*)cs + bs * half + g * 8), c);
      rv_unpack(*(const uint4*)((const u16*)sn + bs * half + g * 8), s);
    } else {
      const float4* cp = (const float4*)((const float*)cs + bs * half + g * 8);
      const float4* sp = (const float4*)((const float*)sn + bs * half + g * 8);
      float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
      c[0] = c0.x, c[1] = c0.y, c[2] = c0.z, c[3] = c0.w, c[4] = c1.x, c[5] = c1.y, c[6] = c1.z, c[7] = c1.w;
      s[0] = s0.x, s[1] = s0.y, s[2] = s0.z, s[3] = s0.w, s[4] = s1.x, s[5] = s1.y, s[6] = s1.z, s[7] = s1.w;
    }
    u16* av = (u16*)&a;
    u16* bv = (u16*)&b;
    u16 o1[8], o2[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float sk = inverse ? -s[k] : s[k];
      float x1 = bf16_to_f32(av[k]), x2 = bf16_to_f32(bv[k]);
      o1[k] = f32_to_bf16(x1 * c[k] - x2 * sk);
      o2[k] = f32_to_bf16(x1 * sk + x2 * c[k]);
    }
    *(uint4*)(dst + base) = *(uint4*)o1;
    *(uint4*)(dst + base + half) = *(uint4*)o2;
  }
}
extern "C" __global__ void rope_bf16_vec(u16* dst, const u16* x, const float* cs, const float* sn, i64 B, i64 S, i64 H, i64 D, i64 inverse) {
  rope_vec_body<false>(dst, x, cs, sn, B, S, H, D, inverse);
}
extern "C" __global__ void rope_bf16_vec_bt(u16* dst, const u16* x, const u16* cs, const u16* sn, i64 B, i64 S, i64 H, i64 D, i64 inverse) {
  rope_vec_body<true>(dst, x, cs, sn, B, S, H, D, inverse);
}

template <typename T>
__device__ void upsample_body(void* y, i64 ydt, const void* x, i64 xdt, i64 nc, i64 H, i64 W) {
  i64 n = nc * H * 2 * W * 2;
  GRID_STRIDE(i, n) {
    i64 ox = i % (2 * W), t = i / (2 * W);
    i64 oy = t % (2 * H), p = t / (2 * H);
    copy_elem<T>(y, (int)ydt, i, x, (int)xdt, (p * H + oy / 2) * W + ox / 2);
  }
}
extern "C" __global__ void upsample_f(void* y, i64 ydt, const void* x, i64 xdt, i64 nc, i64 H, i64 W) { upsample_body<float>(y, ydt, x, xdt, nc, H, W); }
extern "C" __global__ void upsample_d(void* y, i64 ydt, const void* x, i64 xdt, i64 nc, i64 H, i64 W) { upsample_body<double>(y, ydt, x, xdt, nc, H, W); }

template <typename T>
__device__ void upsample_grad_body(void* dx, i64 dxdt, const void* dy, i64 dydt, i64 nc, i64 H, i64 W) {
  i64 n = nc * H * W;
  GRID_STRIDE(i, n) {
    i64 xx = i % W, t = i / W;
    i64 yy = t % H, p = t / H;
    i64 r0 = (p * 2 * H + 2 * yy) * 2 * W + 2 * xx, r1 = r0 + 2 * W;
    T s = ld<T>(dy, (int)dydt, r0) + ld<T>(dy, (int)dydt, r0 + 1) + ld<T>(dy, (int)dydt, r1) + ld<T>(dy, (int)dydt, r1 + 1);
    st<T>(dx, (int)dxdt, i, s);
  }
}
extern "C" __global__ void upsample_grad_f(void* dx, i64 dxdt, const void* dy, i64 dydt, i64 nc, i64 H, i64 W) {
  upsample_grad_body<float>(dx, dxdt, dy, dydt, nc, H, W);
}
extern "C" __global__ void upsample_grad_d(void* dx, i64 dxdt, const void* dy, i64 dydt, i64 nc, i64 H, i64 W) {
  upsample_grad_body<double>(dx, dxdt, dy, dydt, nc, H, W);
}

template <typename T>
__device__ void gather_body(void* d, i64 ddt, const void* tab, i64 tdt, const int* ids, i64 n, i64 dim, i64 rows, int* fault) {
  GRID_STRIDE(i, n * dim) {
    i64 r = i / dim, c = i - r * dim;
    int id = ids[r];
    if (id < 0 || id >= rows) {
      raise_fault(fault, 1, id, (int)rows, r);
      st<T>(d, (int)ddt, i, (T)0);
      continue;
    }
    copy_elem<T>(d, (int)ddt, i, tab, (int)tdt, (i64)id * dim + c);
  }
}
extern "C" __global__ void gather_f(void* d, i64 ddt, const void* tab, i64 tdt, const int* ids, i64 n, i64 dim, i64 rows, int* fault) {
  gather_body<float>(d, ddt, tab, tdt, ids, n, dim, rows, fault);
}
extern "C" __global__ void gather_d(void* d, i64 ddt, const void* tab, i64 tdt, const int* ids, i64 n, i64 dim, i64 rows, int* fault) {
  gather_body<double>(d, ddt, tab, tdt, ids, n, dim, rows, fault);
}

// atomic_add_any adds v to element i of a buffer of any float dtype; 16-bit
// types update their half of the enclosing 32-bit word by compare-and-swap.
__device__ void atomic_add_any(void* p, int dt, i64 i, double v) {
  switch (dt) {
    case DT_F32: atomicAdd((float*)p + i, (float)v); return;
    case DT_F64: atomicAdd((double*)p + i, v); return;
    default: {
      u32* word = (u32*)((u16*)p + (i & ~1ll));
      int shift = (i & 1) ? 16 : 0;
      u32 old = *word, assumed;
      do {
        assumed = old;
        u16 h = (u16)((assumed >> shift) & 0xffffu);
        float f = dt == DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        f += (float)v;
        u16 nh = dt == DT_BF16 ? f32_to_bf16(f) : f32_to_f16(f);
        u32 nw = (assumed & ~(0xffffu << shift)) | ((u32)nh << shift);
        old = atomicCAS(word, assumed, nw);
      } while (old != assumed);
    }
  }
}

extern "C" __global__ void scatter_add(void* d, i64 ddt, const void* src, i64 sdt, const int* ids, i64 n, i64 dim, i64 rows, int* fault) {
  GRID_STRIDE(i, n * dim) {
    i64 r = i / dim, c = i - r * dim;
    int id = ids[r];
    if (id < 0 || id >= rows) {
      raise_fault(fault, 2, id, (int)rows, r);
      continue;
    }
    double v = (int)ddt == DT_F64 ? ld<double>(src, (int)sdt, i) : (double)ld<float>(src, (int)sdt, i);
    atomic_add_any(d, (int)ddt, (i64)id * dim + c, v);
  }
}

// unary_bf16_vec is the activation fast path: bf16 in and out, 8 elements
// a thread through 16-byte loads and stores (n a multiple of 8). The op is
// a template parameter of the loop, so the per-element switch folds away.
template <int OP>
__device__ void unary_vec_loop(u16* d, const u16* s, i64 n8, double A, double B) {
  GRID_STRIDE(i, n8) {
    float f[8];
    rv_unpack(((const uint4*)s)[i], f);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] = unary_apply<float>(OP, f[k], A, B);
    ((uint4*)d)[i] = rv_pack(f);
  }
}

template <int OP>
__device__ void unary_grad_vec_loop(u16* dx, const u16* x, const u16* dy, i64 n8, double A) {
  GRID_STRIDE(i, n8) {
    float xf[8], gf[8];
    rv_unpack(((const uint4*)x)[i], xf);
    rv_unpack(((const uint4*)dy)[i], gf);
#pragma unroll
    for (int k = 0; k < 8; k++) xf[k] = unary_grad_apply<float>(OP, xf[k], gf[k], A);
    ((uint4*)dx)[i] = rv_pack(xf);
  }
}

#define UNARY_CASES(F, ...)                       \
  switch ((int)op) {                              \
    case U_IDENTITY: F<U_IDENTITY>(__VA_ARGS__); break; \
    case U_NEG: F<U_NEG>(__VA_ARGS__); break;     \
    case U_ABS: F<U_ABS>(__VA_ARGS__); break;     \
    case U_EXP: F<U_EXP>(__VA_ARGS__); break;     \
    case U_LOG: F<U_LOG>(__VA_ARGS__); break;     \
    case U_SQRT: F<U_SQRT>(__VA_ARGS__); break;   \
    case U_RSQRT: F<U_RSQRT>(__VA_ARGS__); break; \
    case U_RECIP: F<U_RECIP>(__VA_ARGS__); break; \
    case U_SQUARE: F<U_SQUARE>(__VA_ARGS__); break; \
    case U_TANH: F<U_TANH>(__VA_ARGS__); break;   \
    case U_SIGMOID: F<U_SIGMOID>(__VA_ARGS__); break; \
    case U_SILU: F<U_SILU>(__VA_ARGS__); break;   \
    case U_GELU: F<U_GELU>(__VA_ARGS__); break;   \
    case U_AFFINE: F<U_AFFINE>(__VA_ARGS__); break; \
    case U_POW: F<U_POW>(__VA_ARGS__); break;     \
    case U_DROPOUT: F<U_DROPOUT>(__VA_ARGS__); break; \
    case U_GELU_ERF: F<U_GELU_ERF>(__VA_ARGS__); break; \
  }

extern "C" __global__ void unary_bf16_vec(i64 op, u16* d, const u16* s, i64 n8, double A, double B) {
  UNARY_CASES(unary_vec_loop, d, s, n8, A, B)
}

// unary_grad_bf16_vec is UnaryGrad's fast path for bf16 dx, x and dy.
extern "C" __global__ void unary_grad_bf16_vec(i64 op, u16* dx, const u16* x, const u16* dy, i64 n8, double A) {
  UNARY_CASES(unary_grad_vec_loop, dx, x, dy, n8, A)
}

// swiglu / swiglu_grad: autograd.SwiGLU's forward, SiLU(a)·b, and its
// backward, da = SiLU'(a)·(dy·b) and db = dy·SiLU(a), each in one pass
// where the separate ops took two and four (kernels.ComposeSwiGLU*); every
// intermediate is rounded to the operands' dtype dt as those ops stored it.
template <typename T>
__device__ void swiglu_body(void* y, const void* a, const void* b, i64 dt, i64 n) {
  GRID_STRIDE(i, n) {
    const T s = nt_round<T>(unary_apply<T>(U_SILU, ld<T>(a, (int)dt, i), 0, 0), (int)dt);
    st<T>(y, (int)dt, i, s * ld<T>(b, (int)dt, i));
  }
}
extern "C" __global__ void swiglu_f(void* y, const void* a, const void* b, i64 dt, i64 n) { swiglu_body<float>(y, a, b, dt, n); }
extern "C" __global__ void swiglu_d(void* y, const void* a, const void* b, i64 dt, i64 n) { swiglu_body<double>(y, a, b, dt, n); }

template <typename T>
__device__ void swiglu_grad_body(void* da, void* db, const void* dy, const void* a, const void* b, i64 dt, i64 n) {
  GRID_STRIDE(i, n) {
    const T x = ld<T>(a, (int)dt, i), g = ld<T>(dy, (int)dt, i);
    if (da) st<T>(da, (int)dt, i, unary_grad_apply<T>(U_SILU, x, nt_round<T>(g * ld<T>(b, (int)dt, i), (int)dt), 0));
    if (db) st<T>(db, (int)dt, i, g * nt_round<T>(unary_apply<T>(U_SILU, x, 0, 0), (int)dt));
  }
}
extern "C" __global__ void swiglu_grad_f(void* da, void* db, const void* dy, const void* a, const void* b, i64 dt, i64 n) {
  swiglu_grad_body<float>(da, db, dy, a, b, dt, n);
}
extern "C" __global__ void swiglu_grad_d(void* da, void* db, const void* dy, const void* a, const void* b, i64 dt, i64 n) {
  swiglu_grad_body<double>(da, db, dy, a, b, dt, n);
}

// swiglu_bf16_vec / swiglu_grad_bf16_vec: the same for bf16, 8 elements a
// thread through 16-byte accesses (n a multiple of 8).
__device__ __forceinline__ float swiglu_silu_bf(float x) { return bf16_to_f32(f32_to_bf16(unary_apply<float>(U_SILU, x, 0, 0))); }
extern "C" __global__ void swiglu_bf16_vec(u16* y, const u16* a, const u16* b, i64 n8) {
  GRID_STRIDE(g, n8) {
    float af[8], bf[8], out[8];
    rv_unpack(((const uint4*)a)[g], af);
    rv_unpack(((const uint4*)b)[g], bf);
#pragma unroll
    for (int k = 0; k < 8; k++) out[k] = swiglu_silu_bf(af[k]) * bf[k];
    ((uint4*)y)[g] = rv_pack(out);
  }
}
extern "C" __global__ void swiglu_grad_bf16_vec(u16* da, u16* db, const u16* dy, const u16* a, const u16* b, i64 n8) {
  GRID_STRIDE(g, n8) {
    float af[8], bf[8], gf[8], out[8];
    rv_unpack(((const uint4*)a)[g], af);
    rv_unpack(((const uint4*)dy)[g], gf);
    if (da) {
      rv_unpack(((const uint4*)b)[g], bf);
#pragma unroll
      for (int k = 0; k < 8; k++) out[k] = unary_grad_apply<float>(U_SILU, af[k], bf16_to_f32(f32_to_bf16(gf[k] * bf[k])), 0);
      ((uint4*)da)[g] = rv_pack(out);
    }
    if (db) {
#pragma unroll
      for (int k = 0; k < 8; k++) out[k] = gf[k] * swiglu_silu_bf(af[k]);
      ((uint4*)db)[g] = rv_pack(out);
    }
  }
}
