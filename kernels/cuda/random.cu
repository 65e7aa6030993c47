// random.cu: the Philox4x32-10 draws of RandNormal and RandUniform.
//
// kernels.NormalAt defines each value in float64 through Go's math.Log and
// math.Cos; to give the same bits, this file carries ports of those two
// functions (Go's own algorithms: FreeBSD's e_log.c and the Cephes cosine)
// and is compiled with --fmad=false, so no multiply-add is fused where Go
// rounds twice.

// Philox4x32-10, as kernels.Philox4x32: counter (idx lo, idx hi, 0, 0),
// key (seed lo, seed hi).
__device__ __forceinline__ uint4 philox(u64 idx, u64 seed) {
  u32 c0 = (u32)idx, c1 = (u32)(idx >> 32), c2 = 0, c3 = 0;
  u32 k0 = (u32)seed, k1 = (u32)(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; r++) {
    u32 hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    u32 hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    u32 n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return make_uint4(c0, c1, c2, c3);
}

// go_log is Go's math.Log for finite x > 0 (the draws never pass others).
__device__ double go_log(double x) {
  const double Ln2Hi = 6.93147180369123816490e-01, Ln2Lo = 1.90821492927058770002e-10;
  const double L1 = 6.666666666666735130e-01, L2 = 3.999999999940941908e-01, L3 = 2.857142874366239149e-01,
               L4 = 2.222219843214978396e-01, L5 = 1.818357216161805012e-01, L6 = 1.531383769920937332e-01,
               L7 = 1.479819860511658591e-01;
  u64 bits = (u64)__double_as_longlong(x);
  double f1 = __longlong_as_double((long long)((bits & 0x000FFFFFFFFFFFFFull) | 0x3FE0000000000000ull));
  double k = (double)((int)((bits >> 52) & 0x7FF) - 0x3FE);
  if (f1 < __longlong_as_double(0x3fe6a09e667f3bcdll)) {
    k -= 1;
    f1 *= 2;
  }
  double f = f1 - 1;
  double s = f / (2 + f);
  double s2 = s * s;
  double s4 = s2 * s2;
  double t1 = s2 * (L1 + s4 * (L3 + s4 * (L5 + s4 * L7)));
  double t2 = s4 * (L2 + s4 * (L4 + s4 * L6));
  double R = t1 + t2;
  double hfsq = 0.5 * f * f;
  return k * Ln2Hi - ((hfsq - (s * (hfsq + R) + k * Ln2Lo)) - f);
}

// go_cos is Go's math.Cos for 0 ≤ x < 2²⁹ (the draws pass [0, 2π)).
__device__ double go_cos(double x) {
  const double PI4A = 7.85398125648498535156e-1, PI4B = 3.77489470793079817668e-8, PI4C = 2.69515142907905952645e-15;
  const double S0 = 1.58962301576546568060e-10, S1 = -2.50507477628578072866e-8, S2 = 2.75573136213857245213e-6,
               S3 = -1.98412698295895385996e-4, S4 = 8.33333333332211858878e-3, S5 = -1.66666666666666307295e-1;
  const double C0 = -1.13585365213876817300e-11, C1 = 2.08757008419747316778e-9, C2 = -2.75573141792967388112e-7,
               C3 = 2.48015872888517045348e-5, C4 = -1.38888888888730564116e-3, C5 = 4.16666666666665929218e-2;
  bool sign = false;
  x = fabs(x);
  u64 j = (u64)(x * __longlong_as_double(0x3ff45f306dc9c883ll));
  double y = (double)j;
  if (j & 1) {
    j++;
    y++;
  }
  j &= 7;
  double z = ((x - y * PI4A) - y * PI4B) - y * PI4C;
  if (j > 3) {
    j -= 4;
    sign = !sign;
  }
  if (j > 1) sign = !sign;
  double zz = z * z;
  if (j == 1 || j == 2) {
    y = z + z * zz * ((((((S0 * zz) + S1) * zz + S2) * zz + S3) * zz + S4) * zz + S5);
  } else {
    y = 1.0 - 0.5 * zz + zz * zz * ((((((C0 * zz) + C1) * zz + C2) * zz + C3) * zz + C4) * zz + C5);
  }
  return sign ? -y : y;
}

extern "C" __global__ void rand_uniform(void* d, i64 ddt, i64 n, u64 seed, u64 offset, double lo, double hi) {
  GRID_STRIDE(i, n) {
    uint4 w = philox(offset + (u64)i, seed);
    double v = lo + (hi - lo) * ((double)w.x / 4294967296.0);
    st<double>(d, (int)ddt, i, v);
  }
}

extern "C" __global__ void rand_normal(void* d, i64 ddt, i64 n, u64 seed, u64 offset, double mean, double sd) {
  GRID_STRIDE(i, n) {
    uint4 w = philox(offset + (u64)i, seed);
    double u1 = ((double)w.x + 0.5) / 4294967296.0;
    double u2 = ((double)w.y + 0.5) / 4294967296.0;
    double v = mean + sd * sqrt(-2.0 * go_log(u1)) * go_cos(__longlong_as_double(0x401921fb54442d18ll) * u2);
    st<double>(d, (int)ddt, i, v);
  }
}
