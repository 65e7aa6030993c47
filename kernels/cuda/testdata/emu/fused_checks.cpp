// fused_checks.cpp: emulated runs of the fused block ops' kernels
// (TestFusedKernelsEmulated), compiled after emu.h, common.cuh and one
// kernel file: EMU_NS with rownorm_vec.cu (NormScale's bf16 row kernels),
// EMU_FUSED with fused_norm.cu (the generic NormScale kernels, the factor's
// gradient and QKVNormRope). Inputs are random, outputs start as NaN (an
// unwritten element fails), grids are the ones the Go side launches but
// capped small so the grid-stride loops turn over, and every result is
// compared with a float64 reference of the same (rounded) inputs.

static u16 bf(double v) { return emu_rne_bf16((float)v); }
static double bfv(u16 h) { return emu_bf16_value(h); }

template <class T>
static T* upload(const std::vector<T>& h) {
  T* d = emu_dev<T>(h.size());
  memcpy(d, h.data(), h.size() * sizeof(T));
  return d;
}

static double mode_f(int mode, double s) { return mode == NS_ONEPLUS ? 1 + s : mode == NS_TANH ? std::tanh(s) : s; }
static double mode_df(int mode, double s) {
  if (mode != NS_TANH) return 1;
  const double t = std::tanh(s);
  return 1 - t * t;
}

// NormScale's float64 reference: y = res + n·f(s), dx from dn = dy·f(s),
// ds (shaped like s, zero outside the chunk) = f'(s)·Σ dy·n.
struct NSRef {
  std::vector<double> y, dx, ds;
};
static NSRef ns_ref(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& s,
                    const std::vector<double>& res, const std::vector<double>& dy, i64 samples, i64 seq, i64 cols, i64 soff,
                    i64 sstride, int mode, double eps) {
  const i64 rows = samples * seq;
  NSRef r{std::vector<double>(rows * cols), std::vector<double>(rows * cols), std::vector<double>(s.size(), 0)};
  for (i64 row = 0; row < rows; row++) {
    const i64 b = row / seq;
    double ss = 0;
    for (i64 j = 0; j < cols; j++) ss += x[row * cols + j] * x[row * cols + j];
    const double rs = 1 / std::sqrt(ss / cols + eps);
    double m = 0;
    std::vector<double> g(cols);
    for (i64 j = 0; j < cols; j++) {
      const i64 i = row * cols + j, k = soff + b * sstride + j;
      const double n = x[i] * rs * (w.empty() ? 1 : w[j]);
      const double f = s.empty() ? 1 : mode_f(mode, s[k]);
      r.y[i] = (res.empty() ? 0 : res[i]) + n * f;
      g[j] = dy[i] * f * (w.empty() ? 1 : w[j]);
      m += g[j] * x[i] * rs;
      if (!s.empty()) r.ds[k] += dy[i] * n;
    }
    m /= cols;
    for (i64 j = 0; j < cols; j++) r.dx[row * cols + j] = rs * (g[j] - x[row * cols + j] * rs * m);
  }
  for (i64 b = 0; b < samples && !s.empty(); b++)
    for (i64 j = 0; j < cols; j++) r.ds[soff + b * sstride + j] *= mode_df(mode, s[soff + b * sstride + j]);
  return r;
}

// draw returns n random values rounded to bf16, as doubles and as codes.
static std::vector<double> draw(i64 n, double scale, double shift, std::vector<u16>& codes) {
  std::vector<double> v(n);
  codes.resize(n);
  for (i64 i = 0; i < n; i++) {
    codes[i] = bf(emu_randn() * scale + shift);
    v[i] = bfv(codes[i]);
  }
  return v;
}

static std::vector<double> got_bf(const u16* p, i64 n) {
  std::vector<double> g(n);
  for (i64 i = 0; i < n; i++) g[i] = bfv(p[i]);
  return g;
}

#ifdef EMU_NS
// rowKernel of ops.go: lanes and the kernel kind for a width.
static void row_kernel(i64 cols, int& lanes, int& kind, i64& per) {
  const i64 chunks = cols / 8;
  lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  const i64 groups = 256 / lanes, perLane = (chunks + lanes - 1) / lanes;
  kind = perLane <= 1 ? 1 : perLane <= 2 ? 2 : 0;
  per = kind == 1 ? 4 * groups : kind == 2 ? 2 * groups : groups;
}

struct NSCase {
  const char* name;
  i64 samples, seq, cols, chunk, chunks;
  int mode;
  bool factor, res, weight;
};

static void ns_case(const NSCase& c) {
  const i64 rows = c.samples * c.seq, n = rows * c.cols, ns = c.factor ? c.samples * c.chunks * c.cols : 0;
  std::vector<u16> hx, hw, hs, hr, hdy;
  auto x = draw(n, 1.5, 0, hx);
  auto w = c.weight ? draw(c.cols, 0.2, 1, hw) : std::vector<double>{};
  auto s = c.factor ? draw(ns, 0.7, 0, hs) : std::vector<double>{};
  auto res = c.res ? draw(n, 1, 0, hr) : std::vector<double>{};
  auto dy = draw(n, 1, 0, hdy);
  // The kernels round f(s) to bf16 before use, as the separate ops did: so
  // does the reference (its ds keeps the raw s for the derivative).
  std::vector<double> sr = s;
  for (auto& v : sr) {
    const double f = bfv(bf(mode_f(c.mode, v)));
    v = c.mode == NS_ONEPLUS ? f - 1 : c.mode == NS_TANH ? std::atanh(std::max(-0.999999, std::min(0.999999, f))) : f;
  }
  const i64 soff = c.chunk * c.cols, sstride = c.chunks * c.cols;
  NSRef ref = ns_ref(x, w, sr, res, dy, c.samples, c.seq, c.cols, soff, sstride, c.mode, 1e-5);
  u16 *dx_ = upload(hx), *dw = c.weight ? upload(hw) : nullptr, *dsv = c.factor ? upload(hs) : nullptr;
  u16 *dres = c.res ? upload(hr) : nullptr, *ddy = upload(hdy);
  u16* y = upload(std::vector<u16>(n, 0xffff));
  u16* dxo = upload(std::vector<u16>(n, 0xffff));
  float* rstd = upload(std::vector<float>(rows, NAN));
  NSVec a{(u64)dsv, soff, sstride, c.seq, c.mode, (u64)dres};
  int lanes, kind;
  i64 per;
  row_kernel(c.cols, lanes, kind, per);
  const unsigned grid = (unsigned)std::min<i64>((rows + per - 1) / per, 3);
  auto fwd = kind == 1 ? normscale_bf16_rows_h1 : kind == 2 ? normscale_bf16_rows_h2 : normscale_bf16_rows;
  auto bwd = kind == 1 ? normscale_grad_bf16_rows_h1 : kind == 2 ? normscale_grad_bf16_rows_h2 : normscale_grad_bf16_rows;
  emu_launch(fwd, uint3e{grid, 1, 1}, 256, 0, y, rstd, (const u16*)dx_, (const u16*)dw, a, rows, c.cols, (i64)lanes, 1e-5);
  NSVec ga = a;
  ga.res = 0;  // the backward's residual is a gradient to add to (below)
  emu_launch(bwd, uint3e{grid, 1, 1}, 256, 0, dxo, (const u16*)ddy, (const u16*)dx_, (const u16*)dw, (const float*)rstd, ga, rows,
             c.cols, (i64)lanes);
  char name[160];
  snprintf(name, sizeof name, "%s/y", c.name);
  emu_report(name, emu_relerr(got_bf(y, n), ref.y), 1e-2);
  snprintf(name, sizeof name, "%s/dx", c.name);
  emu_report(name, emu_relerr(got_bf(dxo, n), ref.dx), 1e-2);
  if (c.res) {
    // dx added in place into a pending gradient (res's values).
    u16* pend = upload(hr);
    ga.res = (u64)pend;
    emu_launch(bwd, uint3e{grid, 1, 1}, 256, 0, pend, (const u16*)ddy, (const u16*)dx_, (const u16*)dw, (const float*)rstd, ga, rows,
               c.cols, (i64)lanes);
    std::vector<double> acc(n);
    for (i64 i = 0; i < n; i++) acc[i] = res[i] + ref.dx[i];
    snprintf(name, sizeof name, "%s/dx into a pending gradient", c.name);
    emu_report(name, emu_relerr(got_bf(pend, n), acc), 1e-2);
  }
  // The plain RMSNorm kernels (no factor, no residual) still run as before.
  if (!c.factor && !c.res) return;
  u16* y2 = upload(std::vector<u16>(n, 0xffff));
  auto plain = kind == 1 ? rmsnorm_bf16_rows_h1 : kind == 2 ? rmsnorm_bf16_rows_h2 : rmsnorm_bf16_rows;
  emu_launch(plain, uint3e{grid, 1, 1}, 256, 0, y2, rstd, (const u16*)dx_, (const u16*)dw, rows, c.cols, (i64)lanes, 1e-5);
  NSRef pr = ns_ref(x, w, {}, {}, dy, c.samples, c.seq, c.cols, 0, 0, 0, 1e-5);
  snprintf(name, sizeof name, "%s/plain rmsnorm", c.name);
  emu_report(name, emu_relerr(got_bf(y2, n), pr.y), 1e-2);
}

int main() {
  const NSCase cases[] = {
      {"normscale/h1/96/tanh+res", 2, 13, 96, 1, 4, NS_TANH, true, true, true},
      {"normscale/h1/40/1+s", 3, 5, 40, 0, 4, NS_ONEPLUS, true, false, true},
      {"normscale/h2/264/tanh", 1, 9, 264, 3, 4, NS_TANH, true, true, false},
      {"normscale/plain/520/1+s+res", 2, 3, 520, 2, 4, NS_ONEPLUS, true, true, true},
      {"normscale/h1/64/res only", 1, 17, 64, 0, 1, NS_ASIS, false, true, true},
  };
  for (const auto& c : cases) ns_case(c);
  return emu_failures;
}
#endif

#ifdef EMU_FUSED
static void normscale_generic_case(const char* cname, i64 samples, i64 seq, i64 cols, int mode) {
  const i64 rows = samples * seq, n = rows * cols, chunks = 4, chunk = 3, soff = chunk * cols, sstride = chunks * cols;
  std::vector<u16> tmp;
  auto x = draw(n, 1.5, 0, tmp);
  auto w = draw(cols, 0.2, 1, tmp);
  auto s = draw(samples * chunks * cols, 0.7, 0, tmp);
  auto res = draw(n, 1, 0, tmp);
  auto dy = draw(n, 1, 0, tmp);
  auto f32 = [](const std::vector<double>& v) {
    std::vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); i++) o[i] = (float)v[i];
    return upload(o);
  };
  float *dx_ = f32(x), *dw = f32(w), *dsv = f32(s), *dres = f32(res), *ddy = f32(dy);
  float* y = upload(std::vector<float>(n, NAN));
  float* dxo = upload(std::vector<float>(n, NAN));
  float* dso = upload(std::vector<float>(s.size(), NAN));
  float* rstd = upload(std::vector<float>(rows, NAN));
  NSArgs a{(u64)dsv, DT_F32, soff, sstride, seq, mode, (u64)dres, DT_F32};
  const unsigned grid = (unsigned)std::min<i64>(rows, 3);
  emu_launch(normscale_f, uint3e{grid, 1, 1}, 256, 0, (void*)y, (i64)DT_F32, (void*)rstd, (i64)DT_F32, (const void*)dx_, (i64)DT_F32,
             (const void*)dw, (i64)DT_F32, a, rows, cols, 1e-5);
  NSArgs ga = a;
  ga.res = 0;  // the backward's residual is a gradient to add to (below)
  emu_launch(normscale_grad_f, uint3e{grid, 1, 1}, 256, 0, (void*)dxo, (i64)DT_F32, (const void*)ddy, (i64)DT_F32, (const void*)dx_,
             (i64)DT_F32, (const void*)dw, (i64)DT_F32, (const void*)rstd, (i64)DT_F32, ga, rows, cols);
  // dx added in place into a pending gradient (res's values).
  float* pend = f32(res);
  ga.res = (u64)pend;
  emu_launch(normscale_grad_f, uint3e{grid, 1, 1}, 256, 0, (void*)pend, (i64)DT_F32, (const void*)ddy, (i64)DT_F32, (const void*)dx_,
             (i64)DT_F32, (const void*)dw, (i64)DT_F32, (const void*)rstd, (i64)DT_F32, ga, rows, cols);
  // The factor's gradient with the split the Go side picks for 8 SMs.
  const i64 colBlocks = (cols + 31) / 32, sms = 8;
  const i64 slices = std::max<i64>(1, std::min<i64>((sms * 8 + colBlocks * samples - 1) / (colBlocks * samples), (seq + 255) / 256));
  const i64 per = (seq + slices - 1) / slices;
  float* part = upload(std::vector<float>(samples * slices * cols, NAN));
  emu_launch(normscale_sgrad_part_f, uint3e{(unsigned)colBlocks, (unsigned)(samples * slices), 1}, 256, 0, part, (const void*)ddy,
             (i64)DT_F32, (const void*)dx_, (i64)DT_F32, (const void*)dw, (i64)DT_F32, (const void*)rstd, (i64)DT_F32, seq, slices, per,
             cols);
  emu_launch(normscale_sgrad_fold_f, uint3e{3, 1, 1}, 256, 0, (void*)dso, (i64)s.size(), (const float*)part, a, samples, slices, cols);
  NSRef ref = ns_ref(x, w, s, res, dy, samples, seq, cols, soff, sstride, mode, 1e-5);
  auto back = [](const float* p, i64 n) {
    std::vector<double> g(n);
    for (i64 i = 0; i < n; i++) g[i] = p[i];
    return g;
  };
  char name[160];
  snprintf(name, sizeof name, "%s/y", cname);
  emu_report(name, emu_relerr(back(y, n), ref.y), 1e-5);
  snprintf(name, sizeof name, "%s/dx", cname);
  emu_report(name, emu_relerr(back(dxo, n), ref.dx), 1e-5);
  std::vector<double> acc(n);
  for (i64 i = 0; i < n; i++) acc[i] = res[i] + ref.dx[i];
  snprintf(name, sizeof name, "%s/dx into a pending gradient", cname);
  emu_report(name, emu_relerr(back(pend, n), acc), 1e-5);
  snprintf(name, sizeof name, "%s/ds", cname);
  emu_report(name, emu_relerr(back(dso, (i64)s.size()), ref.ds), 1e-5);
}

// normscale_sgrad_part_bf16 against the generic part kernel on the same
// bf16 operands and slices: the same partials, bit for bit (both add each
// column's terms in the same order), with and without a weight, over row
// counts that leave the four-row step a remainder.
static void sgrad_bf16_case(const char* cname, i64 samples, i64 seq, i64 cols, i64 slices, bool weight) {
  const i64 rows = samples * seq, n = rows * cols;
  std::vector<u16> hx, hdy, hw;
  draw(n, 1.5, 0, hx);
  draw(n, 1, 0, hdy);
  if (weight) draw(cols, 0.2, 1, hw);
  std::vector<float> hr(rows);
  for (i64 r = 0; r < rows; r++) hr[r] = 0.5f + 0.01f * (float)(r % 37);
  u16 *dx_ = upload(hx), *ddy = upload(hdy), *dw = weight ? upload(hw) : nullptr;
  float* rstd = upload(hr);
  const i64 per = (seq + slices - 1) / slices;
  float* want = upload(std::vector<float>(samples * slices * cols, NAN));
  float* got = upload(std::vector<float>(samples * slices * cols, NAN));
  emu_launch(normscale_sgrad_part_f, uint3e{(unsigned)((cols + 31) / 32), (unsigned)(samples * slices), 1}, 256, 0, want,
             (const void*)ddy, (i64)DT_BF16, (const void*)dx_, (i64)DT_BF16, (const void*)dw, (i64)DT_BF16, (const void*)rstd,
             (i64)DT_F32, seq, slices, per, cols);
  emu_launch(normscale_sgrad_part_bf16, uint3e{(unsigned)((cols / 8 + 31) / 32), (unsigned)(samples * slices), 1}, 256, 0, got,
             (const u16*)ddy, (const u16*)dx_, (const u16*)dw, (const float*)rstd, seq, slices, per, cols);
  i64 differ = 0;
  for (i64 i = 0; i < samples * slices * cols; i++)
    if (__float_as_uint(got[i]) != __float_as_uint(want[i])) differ++;
  char name[160];
  snprintf(name, sizeof name, "%s: %lld of %lld partials differ", cname, (long long)differ, (long long)(samples * slices * cols));
  emu_report(name, differ ? 1.0 : 0.0, 0);
}

// QKVNormRope's float64 reference on [rows, (hq+2hkv)·d] with interleaved
// pairs: q, k (normalised, rotated), v, and dqkv from dq, dk, dv.
static void qkv_ref(const std::vector<double>& x, const std::vector<double>& wq, const std::vector<double>& wk, const std::vector<float>& cs,
                    const std::vector<float>& sn, const std::vector<double>& gq, const std::vector<double>& gk,
                    const std::vector<double>& gv, i64 rows, i64 hq, i64 hkv, i64 d, std::vector<double>& q, std::vector<double>& k,
                    std::vector<double>& v, std::vector<double>& dx) {
  const i64 H = hq + 2 * hkv, W = H * d, half = d / 2;
  q.assign(rows * hq * d, 0), k.assign(rows * hkv * d, 0), v.assign(rows * hkv * d, 0), dx.assign(rows * W, 0);
  for (i64 p = 0; p < rows; p++)
    for (i64 h = 0; h < H; h++) {
      const double* xh = &x[p * W + h * d];
      if (h >= hq + hkv) {
        for (i64 j = 0; j < d; j++) {
          v[(p * hkv + h - hq - hkv) * d + j] = xh[j];
          dx[p * W + h * d + j] = gv[(p * hkv + h - hq - hkv) * d + j];
        }
        continue;
      }
      const bool isq = h < hq;
      const std::vector<double>& wt = isq ? wq : wk;
      const i64 head = isq ? p * hq + h : p * hkv + h - hq;
      double ss = 0;
      for (i64 j = 0; j < d; j++) ss += xh[j] * xh[j];
      const double rs = 1 / std::sqrt(ss / d + 1e-6);
      std::vector<double>& out = isq ? q : k;
      const std::vector<double>& g = isq ? gq : gk;
      std::vector<double> gr(d);
      for (i64 i = 0; i < half; i++) {
        const double c = cs[p * half + i], s = sn[p * half + i];
        const double n0 = xh[2 * i] * rs * wt[2 * i], n1 = xh[2 * i + 1] * rs * wt[2 * i + 1];
        out[head * d + 2 * i] = n0 * c - n1 * s;
        out[head * d + 2 * i + 1] = n0 * s + n1 * c;
        const double g0 = g[head * d + 2 * i], g1 = g[head * d + 2 * i + 1];
        gr[2 * i] = (g0 * c + g1 * s) * wt[2 * i];
        gr[2 * i + 1] = (-g0 * s + g1 * c) * wt[2 * i + 1];
      }
      double m = 0;
      for (i64 j = 0; j < d; j++) m += gr[j] * xh[j] * rs;
      m /= d;
      for (i64 j = 0; j < d; j++) dx[p * W + h * d + j] = rs * (gr[j] - xh[j] * rs * m);
    }
}

static void qkv_case(const char* cname, i64 rows, i64 hq, i64 hkv, i64 d, bool vec) {
  const i64 W = (hq + 2 * hkv) * d, half = d / 2;
  std::vector<u16> hx, hwq, hwk, hgq, hgk, hgv;
  auto x = draw(rows * W, 1.3, 0, hx);
  auto wq = draw(d, 0.2, 1, hwq), wk = draw(d, 0.2, 1, hwk);
  auto gq = draw(rows * hq * d, 1, 0, hgq), gk = draw(rows * hkv * d, 1, 0, hgk), gv = draw(rows * hkv * d, 1, 0, hgv);
  std::vector<float> cs(rows * half), sn(rows * half);
  for (i64 i = 0; i < rows * half; i++) {
    const double t = emu_randn() * 3;
    cs[i] = (float)std::cos(t), sn[i] = (float)std::sin(t);
  }
  std::vector<double> q, k, v, dx;
  qkv_ref(x, wq, wk, cs, sn, gq, gk, gv, rows, hq, hkv, d, q, k, v, dx);
  const i64 nq = rows * hq * d, nk = rows * hkv * d;
  float *dcs = upload(cs), *dsn = upload(sn);
  float *rq = upload(std::vector<float>(rows * hq, NAN)), *rk = upload(std::vector<float>(rows * hkv, NAN));
  QKVShape a{1, rows, hq, hkv, d, 1e-6, 1};
  const i64 units = rows * (hq + 2 * hkv);
  std::vector<double> gotq(nq), gotk(nk), gotv(nk), gotdx(rows * W);
  if (vec) {
    int L = 1;
    while (L < d / 8) L *= 2;
    u16 *dx_ = upload(hx), *dwq = upload(hwq), *dwk = upload(hwk);
    u16 *oq = upload(std::vector<u16>(nq, 0xffff)), *ok = upload(std::vector<u16>(nk, 0xffff)), *ov = upload(std::vector<u16>(nk, 0xffff));
    u16 *dgq = upload(hgq), *dgk = upload(hgk), *dgv = upload(hgv), *odx = upload(std::vector<u16>(rows * W, 0xffff));
    const unsigned grid = (unsigned)std::min<i64>((units + 4 * 256 / L - 1) / (4 * 256 / L), 2);
    emu_launch(qkv_norm_rope_bf16, uint3e{grid, 1, 1}, 256, 0, oq, ok, ov, rq, rk, (const u16*)dx_, (const u16*)dwq, (const u16*)dwk,
               (const float*)dcs, (const float*)dsn, a, (i64)L);
    emu_launch(qkv_norm_rope_grad_bf16, uint3e{grid, 1, 1}, 256, 0, odx, (const u16*)dgq, (const u16*)dgk, (const u16*)dgv,
               (const u16*)dx_, (const u16*)dwq, (const u16*)dwk, (const float*)rq, (const float*)rk, (const float*)dcs, (const float*)dsn,
               a, (i64)L);
    gotq = got_bf(oq, nq), gotk = got_bf(ok, nk), gotv = got_bf(ov, nk), gotdx = got_bf(odx, rows * W);
  } else {
    auto f32 = [](const std::vector<double>& v) {
      std::vector<float> o(v.size());
      for (size_t i = 0; i < v.size(); i++) o[i] = (float)v[i];
      return upload(o);
    };
    float *dx_ = f32(x), *dwq = f32(wq), *dwk = f32(wk), *dgq = f32(gq), *dgk = f32(gk), *dgv = f32(gv);
    float *oq = upload(std::vector<float>(nq, NAN)), *ok = upload(std::vector<float>(nk, NAN)), *ov = upload(std::vector<float>(nk, NAN));
    float* odx = upload(std::vector<float>(rows * W, NAN));
    emu_launch(qkv_norm_rope_f, uint3e{2, 1, 1}, 256, 0, (void*)oq, (void*)ok, (void*)ov, (i64)DT_F32, (void*)rq, (void*)rk, (i64)DT_F32,
               (const void*)dx_, (i64)DT_F32, (const void*)dwq, (const void*)dwk, (i64)DT_F32, (const void*)dcs, (const void*)dsn,
               (i64)DT_F32, a);
    emu_launch(qkv_norm_rope_grad_f, uint3e{2, 1, 1}, 256, 0, (void*)odx, (i64)DT_F32, (const void*)dgq, (const void*)dgk,
               (const void*)dgv, (i64)DT_F32, (const void*)dx_, (i64)DT_F32, (const void*)dwq, (const void*)dwk, (i64)DT_F32,
               (const void*)rq, (const void*)rk, (i64)DT_F32, (const void*)dcs, (const void*)dsn, (i64)DT_F32, a);
    for (i64 i = 0; i < nq; i++) gotq[i] = oq[i];
    for (i64 i = 0; i < nk; i++) gotk[i] = ok[i], gotv[i] = ov[i];
    for (i64 i = 0; i < rows * W; i++) gotdx[i] = odx[i];
  }
  const double tol = vec ? 1e-2 : 1e-5;
  char name[160];
  snprintf(name, sizeof name, "%s/q", cname);
  emu_report(name, emu_relerr(gotq, q), tol);
  snprintf(name, sizeof name, "%s/k", cname);
  emu_report(name, emu_relerr(gotk, k), tol);
  snprintf(name, sizeof name, "%s/v", cname);
  emu_report(name, emu_relerr(gotv, v), 0);
  snprintf(name, sizeof name, "%s/dqkv", cname);
  emu_report(name, emu_relerr(gotdx, dx), tol);
}

int main() {
  normscale_generic_case("normscale/f32/37/tanh", 2, 7, 37, NS_TANH);
  normscale_generic_case("normscale/f32/24/1+s", 1, 300, 24, NS_ONEPLUS);
  sgrad_bf16_case("sgrad/bf16/264 cols/w", 2, 77, 264, 3, true);
  sgrad_bf16_case("sgrad/bf16/16 cols", 1, 300, 16, 2, false);
  sgrad_bf16_case("sgrad/bf16/520 cols/w/one slice", 1, 41, 520, 1, true);
  qkv_case("qkv/bf16/d96/24+8+8 heads", 3, 24, 8, 96, true);
  qkv_case("qkv/bf16/d40/3+1+1 heads", 5, 3, 1, 40, true);
  qkv_case("qkv/bf16/d8", 7, 2, 2, 8, true);
  qkv_case("qkv/f32/d6", 5, 2, 1, 6, false);
  qkv_case("qkv/f32/d96", 3, 4, 2, 96, false);
  return emu_failures;
}
#endif

#ifdef EMU_FP8
// common.cuh's FP8 E4M3 conversions, printed for the Go side to compare
// with kernels.F8E4M3FromF32 and F32FromF8E4M3 (TestFusedKernelsEmulated):
// every code decoded, and the encoding of every code's value, of the
// midpoints between neighbours, of values near them and of random floats
// over the whole range.
int main() {
  for (int c = 0; c < 256; c++) printf("DEC %02x %08x\n", c, __float_as_uint(e4m3_to_f32((unsigned char)c)));
  std::vector<float> vals;
  for (int c = 0; c < 256; c++) {
    const float v = e4m3_to_f32((unsigned char)c), w = e4m3_to_f32((unsigned char)((c & 0x80) | ((c & 0x7f) + 1)));
    vals.push_back(v);
    if ((c & 0x7f) < 0x7e) {
      const float m = (v + w) / 2;
      vals.push_back(m);
      vals.push_back(std::nextafter(m, 0.0f));
      vals.push_back(std::nextafter(m, m * 2));
    }
  }
  for (int i = 0; i < 4000; i++) vals.push_back((float)(emu_randn() * std::ldexp(1.0, (int)(emu_randn() * 6))));
  for (float v : {INFINITY, -INFINITY, NAN, -NAN, 448.0f, 464.0f, 1e30f, -1e-30f, 0.0f, -0.0f}) vals.push_back(v);
  for (float v : vals) printf("ENC %08x %02x\n", __float_as_uint(v), f32_to_e4m3(v));
  return 0;
}
#endif

#ifdef EMU_SWIGLU
// elementwise.cu's SwiGLU kernels: bf16 16-byte and generic float, each
// gradient alone and both together.
static void swiglu_case(const char* cname, i64 n, bool vec) {
  std::vector<u16> ha, hb, hg;
  auto a = draw(n, 2, 0, ha), b = draw(n, 1, 0, hb), g = draw(n, 1, 0, hg);
  std::vector<double> y(n), da(n), db(n);
  for (i64 i = 0; i < n; i++) {
    const double s = 1 / (1 + std::exp(-a[i]));
    y[i] = a[i] * s * b[i], da[i] = s * (1 + a[i] * (1 - s)) * g[i] * b[i], db[i] = g[i] * a[i] * s;
  }
  std::vector<double> gy, gda, gdb, gda2;
  if (vec) {
    u16 *pa = upload(ha), *pb = upload(hb), *pg = upload(hg);
    u16 *py = upload(std::vector<u16>(n, 0xffff)), *pda = upload(std::vector<u16>(n, 0xffff)), *pdb = upload(std::vector<u16>(n, 0xffff));
    u16* pda2 = upload(std::vector<u16>(n, 0xffff));
    emu_launch(swiglu_bf16_vec, uint3e{2, 1, 1}, 256, 0, py, (const u16*)pa, (const u16*)pb, n / 8);
    emu_launch(swiglu_grad_bf16_vec, uint3e{2, 1, 1}, 256, 0, pda, pdb, (const u16*)pg, (const u16*)pa, (const u16*)pb, n / 8);
    emu_launch(swiglu_grad_bf16_vec, uint3e{2, 1, 1}, 256, 0, pda2, (u16*)nullptr, (const u16*)pg, (const u16*)pa, (const u16*)pb, n / 8);
    gy = got_bf(py, n), gda = got_bf(pda, n), gdb = got_bf(pdb, n), gda2 = got_bf(pda2, n);
  } else {
    std::vector<float> fa(a.begin(), a.end()), fb(b.begin(), b.end()), fg(g.begin(), g.end());
    float *pa = upload(fa), *pb = upload(fb), *pg = upload(fg);
    float *py = upload(std::vector<float>(n, NAN)), *pda = upload(std::vector<float>(n, NAN)), *pdb = upload(std::vector<float>(n, NAN));
    float* pda2 = upload(std::vector<float>(n, NAN));
    emu_launch(swiglu_f, uint3e{2, 1, 1}, 256, 0, (void*)py, (const void*)pa, (const void*)pb, (i64)DT_F32, n);
    emu_launch(swiglu_grad_f, uint3e{2, 1, 1}, 256, 0, (void*)pda, (void*)pdb, (const void*)pg, (const void*)pa, (const void*)pb,
               (i64)DT_F32, n);
    emu_launch(swiglu_grad_f, uint3e{2, 1, 1}, 256, 0, (void*)pda2, (void*)nullptr, (const void*)pg, (const void*)pa, (const void*)pb,
               (i64)DT_F32, n);
    for (auto [p, o] : {std::pair{py, &gy}, std::pair{pda, &gda}, std::pair{pdb, &gdb}, std::pair{pda2, &gda2}})
      for (i64 i = 0; i < n; i++) o->push_back(p[i]);
  }
  const double tol = vec ? 1e-2 : 1e-5;
  char name[160];
  snprintf(name, sizeof name, "%s/y", cname);
  emu_report(name, emu_relerr(gy, y), tol);
  snprintf(name, sizeof name, "%s/da", cname);
  emu_report(name, emu_relerr(gda, da), tol);
  snprintf(name, sizeof name, "%s/db", cname);
  emu_report(name, emu_relerr(gdb, db), tol);
  snprintf(name, sizeof name, "%s/da alone", cname);
  emu_report(name, emu_relerr(gda2, da), tol);
}

int main() {
  swiglu_case("swiglu/bf16/4104", 4104, true);
  swiglu_case("swiglu/f32/1037", 1037, false);
  return emu_failures;
}
#endif

#ifdef EMU_ADAMW
// reduce.cu's multi-tensor AdamW with its fused tail: the working copy
// (bf16 and fp16, one tensor without) and the zeroed gradient, two tensors
// spanning several chunks, against a float64 update of the same inputs;
// the working copy must be the updated float32 parameter rounded to its
// dtype, each gradient exactly zero, and a skipped update must write
// nothing.
static void adamw_case(const char* cname, bool skip) {
  const i64 ns[3] = {9000, 4096, 77};  // 3 + 1 + 1 chunks of MT_CHUNK
  const int wdts[3] = {DT_BF16, DT_F16, 0};
  const double lr[3] = {1e-3, 2e-3, 5e-4}, wd = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, scale = 0.5;
  const int step = 3;
  std::vector<AdamTensor> desc;
  std::vector<float*> ps, gs, ms, vs;
  std::vector<u16*> ws;
  std::vector<std::vector<float>> p0, g0, m0, v0;
  std::vector<std::vector<u16>> w0;
  const double bc1 = 1 - std::pow(b1, step), bc2s = std::sqrt(1 - std::pow(b2, step));
  i64 chunks = 0;
  for (int k = 0; k < 3; k++) {
    std::vector<float> hp(ns[k]), hg(ns[k]), hm(ns[k]), hv(ns[k]);
    std::vector<u16> hw(ns[k], 0xffff);
    for (i64 i = 0; i < ns[k]; i++) {
      hp[i] = (float)std::sin(0.37 * i + k), hg[i] = (float)std::cos(0.11 * i - k);
      hm[i] = 0.1f * (float)std::sin(0.05 * i), hv[i] = 0.01f * (float)(1 + std::cos(0.07 * i));
    }
    p0.push_back(hp), g0.push_back(hg), m0.push_back(hm), v0.push_back(hv), w0.push_back(hw);
    ps.push_back(upload(hp)), gs.push_back(upload(hg)), ms.push_back(upload(hm)), vs.push_back(upload(hv));
    ws.push_back(wdts[k] ? upload(hw) : nullptr);
    AdamTensor a{};
    a.p = (u64)ps[k], a.g = (u64)gs[k], a.m = (u64)ms[k], a.v = (u64)vs[k];
    a.n = ns[k], a.gdt = DT_F32, a.pdt = DT_F32, a.start = chunks;
    a.decay = 1 - lr[k] * wd, a.step = lr[k] / bc1, a.bc2sqrt = bc2s;
    a.w = (u64)ws[k], a.wdt = wdts[k], a.zero = 1;
    desc.push_back(a);
    chunks += (ns[k] + MT_CHUNK - 1) / MT_CHUNK;
  }
  AdamTensor* dd = upload(desc);
  float* flag = upload(std::vector<float>{skip ? 1.0f : 0.0f});
  float* sc = upload(std::vector<float>{(float)scale});
  AdamScalars s{b1, b2, eps, (u64)sc, DT_F32, (u64)flag, DT_F32};
  emu_launch(adamw, uint3e{2, 1, 1}, 256, 0, (const AdamTensor*)dd, (i64)3, chunks, s);
  for (int k = 0; k < 3; k++) {
    std::vector<double> gotp(ns[k]), wantp(ns[k]);
    double werr = 0, gerr = 0;
    for (i64 i = 0; i < ns[k]; i++) {
      double g = (double)g0[k][i] * scale, p = p0[k][i] * (1 - lr[k] * wd);
      double m = b1 * m0[k][i] + (1 - b1) * g, v = b2 * v0[k][i] + (1 - b2) * g * g;
      wantp[i] = skip ? p0[k][i] : p - lr[k] / bc1 * m / (std::sqrt(v) / bc2s + eps);
      gotp[i] = ps[k][i];
      const float pn = ps[k][i];
      if (ws[k]) {
        const u16 want = skip ? w0[k][i] : wdts[k] == DT_BF16 ? emu_rne_bf16(pn) : emu_rne_f16(pn);
        werr += ws[k][i] != want;
      }
      gerr += skip ? gs[k][i] != g0[k][i] : gs[k][i] != 0.0f;
    }
    char name[160];
    snprintf(name, sizeof name, "%s/tensor %d/params", cname, k);
    emu_report(name, emu_relerr(gotp, wantp), skip ? 0 : 1e-6);
    snprintf(name, sizeof name, "%s/tensor %d/working copy (elements off)", cname, k);
    emu_report(name, werr, 0);
    snprintf(name, sizeof name, "%s/tensor %d/gradient (elements off)", cname, k);
    emu_report(name, gerr, 0);
  }
}

int main() {
  adamw_case("adamw/working+zero", false);
  adamw_case("adamw/skipped", true);
  return emu_failures;
}
#endif
