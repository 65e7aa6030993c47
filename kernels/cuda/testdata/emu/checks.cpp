// checks.cpp: the emulated runs of TestKernelsEmulated. It is compiled after
// emu.h, common.cuh and one kernel file, with EMU_CONV, EMU_GN, EMU_ATTN,
// EMU_SIMT or EMU_CONVGEMM naming which. Each case draws random inputs, runs the kernels with the
// grids the Go side launches, compares with a float64 reference from the
// same (rounded) inputs and prints PASS/FAIL lines; the exit code counts
// failures.

static u16 emu_bf16_of(double v) { return emu_rne_bf16((float)v); }

template <class T>
static T* emu_upload(const std::vector<T>& h) {
  T* d = emu_dev<T>(h.size());
  memcpy(d, h.data(), h.size() * sizeof(T));
  return d;
}

#if defined(EMU_CONV) || defined(EMU_CONVGEMM)
// conv_ref is the float64 direct convolution at one output element (bias
// b, or none when nullptr), reading x and w through xv and wv (the rounded
// inputs' values).
template <class XV, class WV>
static double conv_ref(i64 Cin, i64 H, i64 W, i64 KH, i64 KW, i64 s, i64 p, i64 n, i64 co, i64 oy, i64 ox, double b, XV xv, WV wv) {
  double acc = b;
  for (i64 ci = 0; ci < Cin; ci++)
    for (i64 ky = 0; ky < KH; ky++)
      for (i64 kx = 0; kx < KW; kx++) {
        const i64 iy = oy * s - p + ky, ix = ox * s - p + kx;
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
        acc += wv(((co * Cin + ci) * KH + ky) * KW + kx) * xv(((n * Cin + ci) * H + iy) * W + ix);
      }
  return acc;
}
#endif

#ifdef EMU_CONV
struct ConvCase {
  const char* name;
  i64 N, Cin, H, W, Cout, KH, KW, s, p;
  bool bias;
};

// conv_tile is convTC's channel tile (conv.go).
static int conv_tile(i64 cout) { return cout <= 16 ? 16 : cout <= 32 ? 32 : cout <= 64 ? 64 : 128; }

static void conv_case(const ConvCase& k) {
  const i64 HO = (k.H + 2 * k.p - k.KH) / k.s + 1, WO = (k.W + 2 * k.p - k.KW) / k.s + 1;
  const i64 Cp = (k.Cin + 31) / 32 * 32, taps = k.KH * k.KW;
  std::vector<u16> hx(k.N * k.Cin * k.H * k.W), hw(k.Cout * k.Cin * taps), hb(k.Cout);
  for (auto& v : hx) v = emu_bf16_of(emu_randn());
  for (auto& v : hw) v = emu_bf16_of(emu_randn() / std::sqrt((double)(k.Cin * taps)));
  for (auto& v : hb) v = emu_bf16_of(emu_randn());
  u16 *x = emu_upload(hx), *w = emu_upload(hw), *b = emu_upload(hb);
  const i64 ny = k.N * k.Cout * HO * WO;
  u16* y = emu_upload(std::vector<u16>(ny, 0xffff));  // NaN: an unwritten element fails
  u16* xt = emu_upload(std::vector<u16>(k.N * k.H * k.W * Cp, 0xffff));
  u16* wp = emu_upload(std::vector<u16>(k.Cout * taps * Cp, 0xffff));
  ConvTC c{k.N, k.Cin, k.H, k.W, k.Cout, k.KH, k.KW, k.s, k.p, HO, WO, Cp};
  // A grid-stride launch with fewer blocks than elements, as grid1 caps it.
  emu_launch(conv_tc_weights, uint3e{3, 1, 1}, 256, 0, wp, (const u16*)w, c);
  const i64 hw_ = k.H * k.W;
  emu_launch(conv_tc_nhwc, uint3e{(unsigned)((hw_ + 63) / 64), (unsigned)(Cp / 32), (unsigned)k.N}, 256, 0, xt, (const u16*)x, k.N, k.Cin, hw_, Cp);
  const int bm = conv_tile(k.Cout);
  const i64 pixels = k.N * HO * WO;
  const unsigned blocks = (unsigned)((k.Cout + bm - 1) / bm * ((pixels + 127) / 128));
  const size_t smem = 4 * (bm + 128) * 40 * 2;
  const void* bias = k.bias ? (const void*)b : nullptr;
  auto kern = bm == 128 ? conv_tc128 : bm == 64 ? conv_tc64 : bm == 32 ? conv_tc32 : conv_tc16;
  emu_launch(kern, uint3e{blocks, 1, 1}, 256, smem, y, (const u16*)xt, (const u16*)wp, bias, (i64)DT_BF16, c);

  std::vector<double> got(ny), want(ny);
  for (i64 n = 0; n < k.N; n++)
    for (i64 co = 0; co < k.Cout; co++)
      for (i64 oy = 0; oy < HO; oy++)
        for (i64 ox = 0; ox < WO; ox++) {
          const i64 i = ((n * k.Cout + co) * HO + oy) * WO + ox;
          want[i] = conv_ref(
              k.Cin, k.H, k.W, k.KH, k.KW, k.s, k.p, n, co, oy, ox, k.bias ? emu_bf16_value(hb[co]) : 0,
              [&](i64 j) { return (double)emu_bf16_value(hx[j]); }, [&](i64 j) { return (double)emu_bf16_value(hw[j]); });
          got[i] = emu_bf16_value(y[i]);
        }
  // One bf16 rounding of the output: about 2⁻⁹/√3 relative.
  emu_report(k.name, emu_relerr(got, want), 4e-3);
}

int main() {
  const ConvCase cases[] = {
      // 3×3 same padding, channels padded 40 → 64, an odd plane (scalar
      // stores), a partial channel tile (70 of 128), two images in a tile.
      {"conv/3x3/odd-plane/cin40-cout70", 2, 40, 9, 11, 70, 3, 3, 1, 1, true},
      // The VAE's input convolution: 3 channels padded to 32.
      {"conv/3x3/cin3-cout32", 1, 3, 16, 16, 32, 3, 3, 1, 1, true},
      // The downsampler: stride 2, no padding, on the zero-extended 17×17.
      {"conv/3x3/stride2-pad0/cin64-cout64", 1, 64, 17, 17, 64, 3, 3, 2, 0, true},
      // A 1×1 shortcut, no bias, a 16-channel tile.
      {"conv/1x1/cin32-cout16", 2, 32, 8, 8, 16, 1, 1, 1, 0, false},
      // The decoder's output convolution: 3 channels out.
      {"conv/3x3/cin32-cout3", 1, 32, 12, 12, 3, 3, 3, 1, 1, true},
      // Wide channels: several k tiles per tap and two channel tiles.
      {"conv/3x3/cin96-cout160", 1, 96, 6, 7, 160, 3, 3, 1, 1, true},
  };
  for (const auto& k : cases) conv_case(k);
  return emu_failures;
}
#endif

#ifdef EMU_GN

static void gn_case(const char* name, i64 N, i64 C, i64 HW, i64 G, i64 S, bool xbf, bool ybf, bool silu, bool affine) {
  const i64 n = N * C * HW, cpg = C / G, len = cpg * HW;
  std::vector<double> hx(n), hw(C), hb(C);
  for (auto& v : hx) v = 2 * emu_randn() - 1.5;
  for (auto& v : hw) v = 1 + 0.3 * emu_randn();
  for (auto& v : hb) v = 0.5 * emu_randn();
  std::vector<u16> xb(n);
  std::vector<float> xf(n);
  for (i64 i = 0; i < n; i++) {
    xb[i] = emu_bf16_of(hx[i]);
    hx[i] = xbf ? emu_bf16_value(xb[i]) : (float)hx[i];
    xf[i] = (float)hx[i];
  }
  std::vector<float> wf(C), bf(C);
  for (i64 c = 0; c < C; c++) wf[c] = (float)hw[c], bf[c] = (float)hb[c], hw[c] = wf[c], hb[c] = bf[c];
  const void* x = xbf ? (const void*)emu_upload(xb) : (const void*)emu_upload(xf);
  void* y = ybf ? (void*)emu_upload(std::vector<u16>(n, 0xffff)) : (void*)emu_upload(std::vector<float>(n, NAN));
  float* part = emu_upload(std::vector<float>(N * G * S * 3, NAN));
  float* mean = emu_upload(std::vector<float>(N * G, NAN));
  float* rstd = emu_upload(std::vector<float>(N * G, NAN));
  const float* w = affine ? emu_upload(wf) : nullptr;
  const float* b = affine ? emu_upload(bf) : nullptr;
  const double eps = 1e-6;
  const uint3e grid{(unsigned)S, (unsigned)(N * G), 1};
  emu_launch(gn_stats_kernel, grid, 256, 0, part, x, (i64)xbf, len, S);
  emu_launch(gn_apply_kernel, grid, 256, 0, y, (i64)ybf, mean, rstd, x, (i64)xbf, (const void*)w, (i64)DT_F32, (const void*)b, (i64)DT_F32,
             (const float*)part, C, HW, G, S, S, (i64)silu, eps);

  std::vector<double> gy(n), wy(n), gm(N * G), wm(N * G), gr(N * G), wr(N * G);
  for (i64 ng = 0; ng < N * G; ng++) {
    double m = 0, q = 0;
    for (i64 j = 0; j < len; j++) m += hx[ng * len + j];
    m /= len;
    for (i64 j = 0; j < len; j++) q += (hx[ng * len + j] - m) * (hx[ng * len + j] - m);
    const double rs = 1 / std::sqrt(q / len + eps);
    wm[ng] = m, wr[ng] = rs, gm[ng] = mean[ng], gr[ng] = rstd[ng];
    for (i64 j = 0; j < len; j++) {
      const i64 c = (ng % G) * cpg + j / HW, i = ng * len + j;
      double v = (hx[i] - m) * rs;
      if (affine) v = v * hw[c] + hb[c];
      if (silu) v = v / (1 + std::exp(-v));
      wy[i] = v;
      gy[i] = ybf ? emu_bf16_value(((u16*)y)[i]) : ((float*)y)[i];
    }
  }
  char buf[256];
  snprintf(buf, sizeof buf, "%s/y", name);
  emu_report(buf, emu_relerr(gy, wy), ybf ? 4e-3 : 1e-5);
  snprintf(buf, sizeof buf, "%s/mean", name);
  emu_report(buf, emu_relerr(gm, wm), 1e-5);
  snprintf(buf, sizeof buf, "%s/rstd", name);
  emu_report(buf, emu_relerr(gr, wr), 1e-5);
}

int main() {
  // 50 chunks per group split 1, 3 and 7 ways (uneven slices, and with 7 an
  // empty tail slice); every dtype pair; SiLU on and off.
  gn_case("gn/bf16-bf16/silu/S3", 2, 8, 200, 4, 3, true, true, true, true);
  gn_case("gn/bf16-bf16/S1", 1, 8, 200, 4, 1, true, true, false, true);
  gn_case("gn/f32-f32/S7", 2, 8, 200, 4, 7, false, false, false, true);
  gn_case("gn/f32-f32/silu/noaffine/S3", 1, 8, 200, 4, 3, false, false, true, false);
  gn_case("gn/bf16-f32/silu/S2", 1, 16, 64, 8, 2, true, false, true, true);
  gn_case("gn/f32-bf16/S4", 1, 16, 64, 2, 4, false, true, false, true);
  // Many chunks per thread (the 4-deep unrolled loop with a ragged end).
  gn_case("gn/bf16-bf16/silu/long", 1, 4, 4096 + 8, 2, 2, true, true, true, true);
  return emu_failures;
}
#endif

#ifdef EMU_ATTN
struct AttnCase {
  const char* name;
  bool f16;  // fp16 Q/K/V/O (the _f16 kernels), else bf16
  i64 B, Sq, Sk, Hq, Hkv, D;
  bool causal;
  i64 window;
  std::vector<int> keylens;
};

typedef void (*AttnKernel)(AttnShape, const u16*, const u16*, const u16*, u16*, float*);

static void attn_case(const AttnCase& k) {
  const i64 nq = k.B * k.Sq * k.Hq * k.D, nk = k.B * k.Sk * k.Hkv * k.D;
  // Inputs are drawn, rounded to the element type and read back through it.
  auto enc = [&k](double v) { return k.f16 ? emu_rne_f16((float)v) : emu_bf16_of(v); };
  auto dec = [&k](u16 h) { return (double)(k.f16 ? emu_f16(h) : emu_bf16_value(h)); };
  std::vector<u16> hq(nq), hk(nk), hv(nk);
  for (auto& v : hq) v = enc(emu_randn());
  for (auto& v : hk) v = enc(emu_randn());
  for (auto& v : hv) v = enc(emu_randn());
  u16 *q = emu_upload(hq), *kk = emu_upload(hk), *vv = emu_upload(hv);
  u16* o = emu_upload(std::vector<u16>(nq, 0xffff));  // NaN in either type
  float* lse = emu_upload(std::vector<float>(k.B * k.Hq * k.Sq, NAN));
  int* kl = k.keylens.empty() ? nullptr : emu_upload(k.keylens);
  const double scale = 1 / std::sqrt((double)k.D);
  AttnShape a{k.B, k.Sq, k.Sk, k.Hq, k.Hkv, k.D, scale, k.causal ? 1 : 0, k.window, (u64)(uintptr_t)kl};
  // attnFastFwd's mma.sync launches: two m-tiles a warp (128 rows a block)
  // at 64 and 96; attnFwd256's at 256, one m-tile (64 rows).
  AttnKernel kern;
  i64 rows;
  switch (k.D) {
    case 64: kern = k.f16 ? attn_fwd_tc64_f16 : attn_fwd_tc64, rows = 128; break;
    case 96: kern = k.f16 ? attn_fwd_tc96_f16 : attn_fwd_tc96, rows = 128; break;
    case 256: kern = k.f16 ? attn_fwd_tc256_f16 : attn_fwd_tc256, rows = 64; break;
    default: emu_fail("no launch for this head size"); return;
  }
  emu_launch(kern, uint3e{(unsigned)((k.Sq + rows - 1) / rows), (unsigned)k.Hq, (unsigned)k.B}, 128, (rows + 4 * 64) * (k.D + 8) * 2, a,
             (const u16*)q, (const u16*)kk, (const u16*)vv, o, lse);
  std::vector<double> go(nq), wo(nq, 0), gl, wl;
  const i64 grp = k.Hq / k.Hkv;
  for (i64 b = 0; b < k.B; b++)
    for (i64 h = 0; h < k.Hq; h++)
      for (i64 i = 0; i < k.Sq; i++) {
        std::vector<double> s(k.Sk, -INFINITY);
        double mx = -INFINITY;
        for (i64 j = 0; j < k.Sk; j++) {
          if (!k.keylens.empty() && j >= k.keylens[b]) continue;
          if (k.causal && j > i) continue;
          if (k.window > 0 && j <= i - k.window) continue;
          double d = 0;
          for (i64 e = 0; e < k.D; e++) d += dec(hq[((b * k.Sq + i) * k.Hq + h) * k.D + e]) * dec(hk[((b * k.Sk + j) * k.Hkv + h / grp) * k.D + e]);
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        const float gotl = lse[(b * k.Hq + h) * k.Sq + i];
        if (mx == -INFINITY) {
          // A row that sees no key: O = 0, LSE = −Inf exactly.
          if (!(gotl == -INFINITY)) gl.push_back(NAN), wl.push_back(0);
          for (i64 e = 0; e < k.D; e++) go[((b * k.Sq + i) * k.Hq + h) * k.D + e] = dec(o[((b * k.Sq + i) * k.Hq + h) * k.D + e]);
          continue;
        }
        double sum = 0;
        for (auto& v : s) sum += (v = std::exp(v - mx));
        gl.push_back(gotl), wl.push_back(mx + std::log(sum));
        for (i64 e = 0; e < k.D; e++) {
          double acc = 0;
          for (i64 j = 0; j < k.Sk; j++) acc += s[j] / sum * dec(hv[((b * k.Sk + j) * k.Hkv + h / grp) * k.D + e]);
          const i64 idx = ((b * k.Sq + i) * k.Hq + h) * k.D + e;
          wo[idx] = acc;
          go[idx] = dec(o[idx]);
        }
      }
  char buf[256];
  snprintf(buf, sizeof buf, "%s/O", k.name);
  // P is rounded to the element type before P·V, as in every flash kernel,
  // and O once more: bf16 (2⁻⁹ relative; 2e-3 measured) or fp16 (2⁻¹¹;
  // 2.6e-4). The fp16 bound fails a kernel that rounds P to bf16 precision.
  emu_report(buf, emu_relerr(go, wo), k.f16 ? 1e-3 : 1e-2);
  snprintf(buf, sizeof buf, "%s/LSE", k.name);
  emu_report(buf, emu_relerr(gl, wl), 1e-4);
}

int main() {
  const AttnCase cases[] = {
      // The device-verified kernel first: it checks the emulator itself.
      {"attn/d64/keylens", false, 2, 77, 77, 4, 4, 64, false, 0, {77, 40}},
      {"attn/d64/gqa-causal-window", false, 1, 150, 150, 4, 2, 64, true, 33, {}},
      // Gemma 3: GQA 2:1, causal, a sliding window, right padding; a
      // global layer; a sample that sees no key.
      {"attn/d256/gqa-causal-window-keylens", false, 2, 90, 90, 4, 2, 256, true, 40, {90, 61}},
      {"attn/d256/causal", false, 1, 130, 130, 2, 1, 256, true, 0, {}},
      {"attn/d256/cross-empty", false, 2, 20, 70, 2, 2, 256, false, 0, {70, 0}},
      // The fp16 kernels: Jina CLIP's heads with right padding, the DiT's
      // (96) bidirectional and causal with a window, Gemma 3's.
      {"attn/f16/d64/keylens", true, 2, 77, 77, 4, 4, 64, false, 0, {77, 40}},
      {"attn/f16/d96/gqa", true, 1, 150, 150, 6, 2, 96, false, 0, {}},
      {"attn/f16/d96/causal-window-keylens", true, 2, 130, 130, 2, 1, 96, true, 50, {130, 71}},
      {"attn/f16/d256/gqa-causal-window-keylens", true, 2, 90, 90, 4, 2, 256, true, 40, {90, 61}},
  };
  for (const auto& k : cases) attn_case(k);
  return emu_failures;
}
#endif

#ifdef EMU_SIMT
// The tiled forward (attention_simt.cu), fp32 and its bf16 and fp16
// variants, against a float64 reference from the same (rounded) inputs.
struct SimtCase {
  const char* name;
  i64 B, Sq, Sk, Hq, Hkv, D;
  bool causal;
  i64 window;
  std::vector<int> keylens;
  double scale;  // 0: 1/√D
};

// SimtHost gives, per dtype, the storage type, the rounding of an input
// (enc), the value of a stored element (dec), the NaN that poisons the
// outputs, attnSIMTFwd's kernels by head size, the name's prefix and the
// output's tolerance.
template <int DT> struct SimtHost;
template <> struct SimtHost<DT_F32> {
  typedef float E;
  static E enc(double v) { return (float)v; }
  static double dec(E v) { return v; }
  static E nan() { return NAN; }
  static constexpr const char* prefix = "simt";
  // fp32 throughout: a dot product of D terms and a softmax-weighted sum
  // of up to Sk, each about 2⁻²⁴·√n relative; measured near 1e-7.
  static constexpr double tol = 1e-5;
};
template <> struct SimtHost<DT_BF16> {
  typedef u16 E;
  static E enc(double v) { return emu_rne_bf16((float)v); }
  static double dec(E v) { return emu_bf16_value(v); }
  static E nan() { return 0xffff; }
  static constexpr const char* prefix = "simt/bf16";
  // The fp32 computation's 1e-7 and one bf16 rounding of O, about
  // 2⁻⁹/√3 ≈ 1.1e-3 relative.
  static constexpr double tol = 4e-3;
};
template <> struct SimtHost<DT_F16> {
  typedef u16 E;
  static E enc(double v) { return emu_rne_f16((float)v); }
  static double dec(E v) { return emu_f16(v); }
  static E nan() { return 0xffff; }
  static constexpr const char* prefix = "simt/f16";
  // One fp16 rounding of O, about 2⁻¹²/√3 ≈ 1.4e-4 relative.
  static constexpr double tol = 5e-4;
};

template <int DT>
static void (*simt_kernel(i64 d))(AttnShape, const typename SimtHost<DT>::E*, const typename SimtHost<DT>::E*, const typename SimtHost<DT>::E*,
                                  typename SimtHost<DT>::E*, float*) {
  if constexpr (DT == DT_F32) return d == 64 ? attn_fwd_simt64 : d == 96 ? attn_fwd_simt96 : d == 128 ? attn_fwd_simt128 : nullptr;
  if constexpr (DT == DT_BF16)
    return d == 64 ? attn_fwd_simt64_bf16 : d == 96 ? attn_fwd_simt96_bf16 : d == 128 ? attn_fwd_simt128_bf16 : nullptr;
  if constexpr (DT == DT_F16) return d == 64 ? attn_fwd_simt64_f16 : d == 96 ? attn_fwd_simt96_f16 : d == 128 ? attn_fwd_simt128_f16 : nullptr;
}

template <int DT>
static void simt_case(const SimtCase& k) {
  typedef SimtHost<DT> H;
  typedef typename H::E E;
  const i64 nq = k.B * k.Sq * k.Hq * k.D, nk = k.B * k.Sk * k.Hkv * k.D;
  // The inputs as stored (eq, ek, ev) and their values (hq, hk, hv), which
  // the reference takes.
  std::vector<E> eq(nq), ek(nk), ev(nk);
  std::vector<double> hq(nq), hk(nk), hv(nk);
  for (i64 i = 0; i < nq; i++) hq[i] = H::dec(eq[i] = H::enc(emu_randn()));
  for (i64 i = 0; i < nk; i++) hk[i] = H::dec(ek[i] = H::enc(emu_randn()));
  for (i64 i = 0; i < nk; i++) hv[i] = H::dec(ev[i] = H::enc(emu_randn()));
  E *q = emu_upload(eq), *kk = emu_upload(ek), *vv = emu_upload(ev);
  E* o = emu_upload(std::vector<E>(nq, H::nan()));  // an unwritten element fails
  float* lse = emu_upload(std::vector<float>(k.B * k.Hq * k.Sq, NAN));
  int* kl = k.keylens.empty() ? nullptr : emu_upload(k.keylens);
  const double scale = k.scale != 0 ? k.scale : 1 / std::sqrt((double)k.D);
  AttnShape a{k.B, k.Sq, k.Sk, k.Hq, k.Hkv, k.D, scale, k.causal ? 1 : 0, k.window, (u64)(uintptr_t)kl};
  // attnSIMTFwd's launch: 64 query rows a block of 256 threads, 800·D
  // bytes of shared memory whatever the dtype.
  auto kern = simt_kernel<DT>(k.D);
  if (kern == nullptr) {
    emu_fail("no launch for this head size");
    return;
  }
  emu_launch(kern, uint3e{(unsigned)((k.Sq + 63) / 64), (unsigned)k.Hq, (unsigned)k.B}, 256, (size_t)(800 * k.D), a, (const E*)q,
             (const E*)kk, (const E*)vv, o, lse);
  std::vector<double> go, wo, gl, wl;
  double maxo = 0, maxl = 0;
  int empty_bad = 0, empty_rows = 0;
  const i64 grp = k.Hq / k.Hkv;
  for (i64 b = 0; b < k.B; b++)
    for (i64 h = 0; h < k.Hq; h++)
      for (i64 i = 0; i < k.Sq; i++) {
        const i64 orow = ((b * k.Sq + i) * k.Hq + h) * k.D;
        std::vector<double> s(k.Sk, -INFINITY);
        double mx = -INFINITY;
        for (i64 j = 0; j < k.Sk; j++) {
          if (!k.keylens.empty() && j >= k.keylens[b]) continue;
          if (k.causal && j > i) continue;
          if (k.window > 0 && j <= i - k.window) continue;
          double d = 0;
          for (i64 e = 0; e < k.D; e++) d += hq[orow + e] * hk[((b * k.Sk + j) * k.Hkv + h / grp) * k.D + e];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        const float gotl = lse[(b * k.Hq + h) * k.Sq + i];
        if (mx == -INFINITY) {
          // A row that sees no key: O = 0 and LSE = −Inf exactly.
          empty_rows++;
          bool ok = gotl == -INFINITY;
          for (i64 e = 0; e < k.D; e++) ok = ok && H::dec(o[orow + e]) == 0;
          if (!ok) empty_bad++;
          continue;
        }
        double sum = 0;
        for (auto& v : s) sum += (v = std::exp(v - mx));
        const double wantl = mx + std::log(sum);
        gl.push_back(gotl), wl.push_back(wantl);
        maxl = std::max(maxl, std::fabs(gotl - wantl));
        for (i64 e = 0; e < k.D; e++) {
          double acc = 0;
          for (i64 j = 0; j < k.Sk; j++)
            if (s[j] != 0) acc += s[j] / sum * hv[((b * k.Sk + j) * k.Hkv + h / grp) * k.D + e];
          const double got = H::dec(o[orow + e]);
          go.push_back(got), wo.push_back(acc);
          maxo = std::max(maxo, std::isnan(got) ? INFINITY : std::fabs(got - acc));
        }
      }
  // The LSE is fp32 in every variant, computed from the same inputs.
  const double tol = H::tol, tolLSE = 1e-5;
  const double eo = emu_relerr(go, wo), el = emu_relerr(gl, wl);
  const bool ok = eo <= tol && el <= tolLSE && empty_bad == 0;
  printf("%s %s/%s relerr O %.3g (tol %.3g) LSE %.3g (tol %.3g) max|ΔO| %.3g max|ΔLSE| %.3g, %d empty rows, %d wrong\n", ok ? "PASS" : "FAIL",
         H::prefix, k.name, eo, tol, el, tolLSE, maxo, maxl, empty_rows, empty_bad);
  if (!ok) emu_failures++;
}

int main() {
  std::vector<SimtCase> cases, cases16;
  for (i64 d : {64, 96, 128}) {
    char buf[64];
    auto name = [&](const char* what) {
      snprintf(buf, sizeof buf, "d%lld/%s", (long long)d, what);
      return strdup(buf);
    };
    // Bidirectional, 130 rows and keys: a third, two-row query block and
    // a two-key tile.
    cases.push_back({name("plain"), 1, 130, 130, 2, 2, d, false, 0, {}, 0});
    // Right padding: one sample whole, one short, one that sees no key.
    cases.push_back({name("keylens"), 3, 100, 100, 2, 2, d, false, 0, {100, 61, 0}, 0});
    // GQA 2:1, causal with a window shorter than a tile (later blocks
    // skip their first key tiles) and one longer.
    cases.push_back({name("gqa-causal-window40"), 1, 150, 150, 4, 2, d, true, 40, {}, 0});
    cases.push_back({name("gqa3-causal-window70-keylens"), 2, 140, 140, 3, 1, d, true, 70, {140, 90}, 0});
    // A short sample under a window of 10: rows 14 on see no key while
    // the rows before them in the same block do (masked from the first
    // tile to the last), and a long sample beside it.
    cases.push_back({name("causal-window10-keylens5"), 2, 80, 80, 2, 1, d, true, 10, {5, 80}, 0});
    // Cross attention: 37 queries, 150 keys (three tiles, the last of 22),
    // with and without padding.
    cases.push_back({name("cross"), 2, 37, 150, 2, 2, d, false, 0, {}, 0});
    cases.push_back({name("cross-keylens"), 2, 70, 150, 2, 1, d, false, 0, {150, 5}, 0});
    // Sharp scores (scale 1: standard deviation √D) make the running
    // maximum move and the rescaling matter; a negative scale, which the
    // scale folded into Q serves as well.
    cases.push_back({name("sharp-causal"), 1, 200, 200, 2, 2, d, true, 0, {}, 1.0});
    cases.push_back({name("negative-scale"), 1, 65, 65, 1, 1, d, false, 0, {}, -0.2});
    // The 16-bit variants differ from fp32 only in their loads and O's
    // store: padding with a sample that sees no key, GQA under a causal
    // window with padding, rows that see no key beside rows that do,
    // cross attention with padding.
    cases16.push_back(cases[cases.size() - 8]);
    cases16.push_back(cases[cases.size() - 6]);
    cases16.push_back(cases[cases.size() - 5]);
    cases16.push_back(cases[cases.size() - 3]);
  }
  for (const auto& k : cases) simt_case<DT_F32>(k);
  for (const auto& k : cases16) simt_case<DT_BF16>(k);
  for (const auto& k : cases16) simt_case<DT_F16>(k);
  return emu_failures;
}
#endif

#ifdef EMU_CONVGEMM
// convGEMM's launches (conv.go) — the widened weights, then per image and
// pixel range the im2col columns and the product, here done on the host
// exactly as the Go side asks cuBLAS for it (column-major, m = the range's
// pixels, n = Cout, k = Cin·KH·KW + 1, lda = pixels, ldb = k, ldc = HO·WO,
// C at image n's row block plus p0) — against a float64 direct
// convolution. Small ranges force several products a plane and a short
// last one.
struct CGCase {
  const char* name;
  i64 N, Cin, H, W, Cout, KH, KW, s, p;
  bool bias;
  i64 pc;
};

static void cg_case(const CGCase& k) {
  const i64 HO = (k.H + 2 * k.p - k.KH) / k.s + 1, WO = (k.W + 2 * k.p - k.KW) / k.s + 1;
  const i64 taps = k.KH * k.KW, K1 = k.Cin * taps + 1, hw = HO * WO;
  std::vector<float> hx(k.N * k.Cin * k.H * k.W), hw_(k.Cout * k.Cin * taps), hb(k.Cout);
  for (auto& v : hx) v = (float)emu_randn();
  for (auto& v : hw_) v = (float)(emu_randn() / std::sqrt((double)(k.Cin * taps)));
  for (auto& v : hb) v = (float)emu_randn();
  float *x = emu_upload(hx), *w = emu_upload(hw_), *b = emu_upload(hb);
  const i64 ny = k.N * k.Cout * hw;
  float* y = emu_upload(std::vector<float>(ny, NAN));  // an unwritten element fails
  float* wp = emu_upload(std::vector<float>(k.Cout * K1, NAN));
  float* cp = emu_upload(std::vector<float>(K1 * k.pc, NAN));
  ConvShape c{k.N, k.Cin, k.H, k.W, k.Cout, k.KH, k.KW, k.s, k.p, HO, WO};
  // Grid-stride launches with fewer blocks than elements, as grid1 caps them.
  emu_launch(conv_wbias_f, uint3e{3, 1, 1}, 256, 0, (void*)wp, (const void*)w, k.bias ? (const void*)b : nullptr, (i64)DT_F32,
             (i64)DT_F32, k.Cout, K1 - 1);
  for (i64 n = 0; n < k.N; n++)
    for (i64 p0 = 0; p0 < hw; p0 += k.pc) {
      const i64 cols = std::min(k.pc, hw - p0);
      emu_launch(conv_im2col_f, uint3e{2, 1, 1}, 256, 0, (void*)cp, (const void*)x, (i64)DT_F32, c, n, p0, cols);
      float* C = y + n * k.Cout * hw + p0;
      for (i64 jn = 0; jn < k.Cout; jn++)
        for (i64 im = 0; im < cols; im++) {
          double s = 0;
          for (i64 l = 0; l < K1; l++) s += (double)cp[im + l * cols] * wp[l + jn * K1];
          C[im + jn * hw] = (float)s;
        }
    }
  std::vector<double> got(ny), want(ny);
  for (i64 n = 0; n < k.N; n++)
    for (i64 co = 0; co < k.Cout; co++)
      for (i64 oy = 0; oy < HO; oy++)
        for (i64 ox = 0; ox < WO; ox++) {
          const i64 i = ((n * k.Cout + co) * HO + oy) * WO + ox;
          want[i] = conv_ref(
              k.Cin, k.H, k.W, k.KH, k.KW, k.s, k.p, n, co, oy, ox, k.bias ? hb[co] : 0, [&](i64 j) { return (double)hx[j]; },
              [&](i64 j) { return (double)hw_[j]; });
          got[i] = y[i];
        }
  // One float32 rounding of each output.
  emu_report(k.name, emu_relerr(got, want), 1e-6);
}

int main() {
  const CGCase cases[] = {
      // 3×3 same padding, two images, ranges of 37 pixels (99 = 2·37 + 25).
      {"convgemm/3x3/n2-cin5-cout7/pc37", 2, 5, 9, 11, 7, 3, 3, 1, 1, true, 37},
      // The downsampler: stride 2, no padding; one range for the plane.
      {"convgemm/3x3/stride2-pad0/pc-all", 1, 6, 17, 17, 4, 3, 3, 2, 0, true, 64},
      // A 1×1 shortcut without bias, ranges of 8.
      {"convgemm/1x1/no-bias/pc8", 2, 9, 6, 5, 3, 1, 1, 1, 0, false, 8},
      // A non-square kernel window and odd plane, ranges of 64.
      {"convgemm/3x1/pc64", 1, 3, 13, 10, 5, 3, 1, 1, 1, true, 64},
  };
  for (const auto& k : cases) cg_case(k);
  return emu_failures;
}
#endif

#ifdef EMU_THIN
// gemm_thin.cu's products, C = alpha·A·op(B) with a rank-sized K, on the
// grid thinGemm (gemm_thin.go) launches: partial tiles in M and N, leading
// dimensions wider than the rows, both forms of B. C starts as NaN
// around and inside its rows: the kernel must write every element of the
// product and nothing past N in a row (the padding columns stay NaN).
struct ThinCase {
  const char* name;
  i64 M, N, K, lda, ldb, ldc;
  bool bt;
  double alpha;
};

static void thin_case(const ThinCase& k) {
  std::vector<u16> ha(k.M * k.lda), hb(k.bt ? k.N * k.ldb : k.K * k.ldb);
  for (auto& v : ha) v = emu_bf16_of(emu_randn());
  for (auto& v : hb) v = emu_bf16_of(emu_randn());
  u16 *a = emu_upload(ha), *b = emu_upload(hb);
  u16* c = emu_upload(std::vector<u16>(k.M * k.ldc, 0xffff));
  const unsigned gx = (unsigned)((k.N + 127) / 128), gy = (unsigned)((k.M + 127) / 128);
  auto kern = k.bt ? (k.K == 16 ? gemm_thin_k16_nt : k.K == 32 ? gemm_thin_k32_nt : k.K == 48 ? gemm_thin_k48_nt : gemm_thin_k64_nt)
                   : (k.K == 16 ? gemm_thin_k16_nn : k.K == 32 ? gemm_thin_k32_nn : k.K == 48 ? gemm_thin_k48_nn : gemm_thin_k64_nn);
  // thinSmem of gemm_thin.go.
  const i64 ab = k.bt ? 128 * (k.K + 8) * 2 : 128 * (k.K + 8) + k.K * 136;
  const size_t smem = (size_t)(2 * std::max<i64>(ab, 128 * 136));
  emu_launch(kern, uint3e{gx, gy, 1}, 256, smem, c, (const u16*)a, (const u16*)b, k.M, k.N, k.lda, k.ldb, k.ldc, k.alpha);
  std::vector<double> got(k.M * k.N), want(k.M * k.N);
  i64 stray = 0;
  for (i64 i = 0; i < k.M; i++) {
    for (i64 j = 0; j < k.N; j++) {
      double s = 0;
      for (i64 q = 0; q < k.K; q++) {
        const double bv = emu_bf16_value(k.bt ? hb[j * k.ldb + q] : hb[q * k.ldb + j]);
        s += (double)emu_bf16_value(ha[i * k.lda + q]) * bv;
      }
      want[i * k.N + j] = k.alpha * s;
      got[i * k.N + j] = emu_bf16_value(c[i * k.ldc + j]);
    }
    for (i64 j = k.N; j < k.ldc; j++)
      if (c[i * k.ldc + j] != 0xffff) stray++;
  }
  char name[160];
  snprintf(name, sizeof name, "%s: %lld stray writes past N", k.name, (long long)stray);
  emu_report(name, stray ? 1.0 : 0.0, 0);
  // One bf16 rounding of the output: about 2⁻⁹/√3 relative.
  emu_report(k.name, emu_relerr(got, want), 4e-3);
}

int main() {
  const ThinCase cases[] = {
      {"thin/k32/nt/300x264", 300, 264, 32, 32, 32, 264, true, 0.5},
      {"thin/k32/nn/300x264", 300, 264, 32, 32, 264, 264, false, 2.0},
      {"thin/k16/nn/130x136/wide rows", 130, 136, 16, 24, 144, 152, false, 1.0},
      {"thin/k48/nt/257x392/wide rows", 257, 392, 48, 56, 64, 400, true, 0.25},
      {"thin/k64/nt/64x8", 64, 8, 64, 64, 64, 8, true, 1.0},
      {"thin/k64/nn/129x8", 129, 8, 64, 64, 8, 16, false, 1.0},
  };
  for (const auto& c : cases) thin_case(c);
  return emu_failures;
}
#endif
