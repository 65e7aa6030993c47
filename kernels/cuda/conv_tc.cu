// conv_tc.cu: 2-D convolution of bf16 tensors as an implicit GEMM on the
// tensor cores (mma.sync m16n8k16, fp32 accumulation, one rounding to bf16),
// for sm_80 and later. Compiled with tc.cuh.
//
//   y[n, co, oy, ox] = bias[co] + Σ_{ky, kx, ci} w[co, ci, ky, kx] · x[n, ci, oy·s − p + ky, ox·s − p + kx]
//
// is the product C[co][q] = Σ_k A[co][k] · B[q][k] over output pixels
// q = (n, oy, ox) and k = (ky, kx, ci), tap-major, never formed in memory:
// B's rows are read straight from the input at each tap's offset, with
// zeros where the tap falls in the padding. Two small kernels prepare the
// operands so that both are K-contiguous and every copy is 16 bytes:
// conv_tc_weights lays the weights out as A [Cout][KH·KW][Cp] and
// conv_tc_nhwc the input as [N][H][W][Cp], channels zero-padded to Cp, a
// multiple of the 32-wide k tile (the 3-channel input convolution pays for
// 32; every other FLUX VAE layer has a multiple of 32 channels).
//
// A block of 8 warps computes BM output channels × 128 pixels; A and B tiles
// of 32 k stream through shared memory in 4 cp.async stages, rows padded to
// 40 elements so that ldmatrix reads are free of bank conflicts. Blocks that
// share a pixel tile are adjacent in the grid (the channel tile varies
// fastest), so each input tile is read from device memory about once and
// the weights stay in L2.

struct ConvTC {
  i64 N, Cin, H, W, Cout, KH, KW, stride, pad, HO, WO, Cp;
};

// conv_tc_weights writes wp[co][tap][ci] = w[co][ci][tap] for ci < Cin and
// 0 for the padded channels up to Cp.
extern "C" __global__ void conv_tc_weights(u16* wp, const u16* w, ConvTC c) {
  const i64 kk = c.KH * c.KW;
  GRID_STRIDE(i, c.Cout * kk * c.Cp) {
    const i64 ci = i % c.Cp, t = i / c.Cp;
    const i64 tap = t % kk, co = t / kk;
    wp[i] = ci < c.Cin ? w[(co * c.Cin + ci) * kk + tap] : (u16)0;
  }
}

// conv_tc_nhwc writes xt [N][HW][Cp] from x [N][C][HW], channels ≥ C zero:
// a block moves 64 pixels × 32 channels through shared memory, reading rows
// of pixels and writing 16-byte runs of channels.
extern "C" __global__ void __launch_bounds__(256) conv_tc_nhwc(u16* xt, const u16* x, i64 N, i64 C, i64 HW, i64 Cp) {
  __shared__ u16 tile[32][64 + 2];
  const i64 p0 = (i64)blockIdx.x * 64, c0 = (i64)blockIdx.y * 32, n = blockIdx.z;
  const int t = threadIdx.x;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int ch = i * 4 + (t >> 6), px = t & 63;
    const i64 cg = c0 + ch, p = p0 + px;
    tile[ch][px] = (cg < C && p < HW) ? x[(n * C + cg) * HW + p] : (u16)0;
  }
  __syncthreads();
  const int px = t >> 2, q = t & 3;
  const i64 p = p0 + px;
  if (p < HW) {
    u32 v[4];
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = (u32)tile[q * 8 + 2 * j][px] | ((u32)tile[q * 8 + 2 * j + 1][px] << 16);
    *(uint4*)(xt + (n * HW + p) * Cp + c0 + q * 8) = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// conv_tc_body: BM output channels (WM warps along them) × 128 pixels per
// block; each warp owns a (BM/WM) × (128/(8/WM)) tile of MT × NT mma tiles.
template <int BM, int WM>
__device__ void conv_tc_body(u16* y, const u16* xt, const u16* wp, const void* bias, i64 bdt, ConvTC c) {
  constexpr int BN = 128, BK = 32, LD = BK + 8, S = 4, NTH = 256;
  constexpr int WN = 8 / WM, WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8;
  constexpr int ACH = (BM * 4 + NTH - 1) / NTH;  // A chunks per thread (some idle when BM < 64)
  static_assert(WM * WN == 8 && MT >= 1 && NT >= 2 && NT % 2 == 0, "conv_tc: bad warp tiling");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  u16* sA = (u16*)smem_raw;    // S stages of BM × LD
  u16* sB = sA + S * BM * LD;  // S stages of BN × LD
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const int g = lane >> 2, tg = lane & 3, cc = tid & 3;
  const i64 ctiles = (c.Cout + BM - 1) / BM;
  const i64 co0 = ((i64)blockIdx.x % ctiles) * BM, q0 = ((i64)blockIdx.x / ctiles) * BN;
  const i64 hwo = c.HO * c.WO, P = c.N * hwo;
  const i64 ktot = c.KH * c.KW * c.Cp, KT = ktot / BK;

  // This thread's two B rows (pixels q0 + r, r = tid/4 and tid/4 + 64):
  // the pixel offset of their image in xt and the input coordinates of
  // their window's top-left tap.
  i64 bimg[2];
  int biy[2], bix[2];
  bool bok[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    const i64 q = q0 + (tid >> 2) + 64 * i;
    bok[i] = q < P;
    const i64 qq = bok[i] ? q : 0;
    const i64 n = qq / hwo, r = qq - n * hwo;
    const i64 oy = r / c.WO, ox = r - oy * c.WO;
    bimg[i] = n * c.H * c.W;
    biy[i] = (int)(oy * c.stride - c.pad);
    bix[i] = (int)(ox * c.stride - c.pad);
  }

  // load queues k tile kt (tap ky, kx; channels ci0..ci0+31) into stage st.
  auto load = [&](int st, i64 kt, int ky, int kx, i64 ci0) {
    const u32 a = smem_u32(sA + st * BM * LD), b = smem_u32(sB + st * BN * LD);
#pragma unroll
    for (int it = 0; it < ACH; it++) {
      const int ch = tid + it * NTH;
      if (ch < BM * 4) {
        const int r = ch >> 2;
        const bool ok = co0 + r < c.Cout;
        const u16* src = ok ? wp + (co0 + r) * ktot + kt * BK + cc * 8 : wp;
        cp16(a + (u32)((r * LD + cc * 8) * 2), src, ok);
      }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int r = (tid >> 2) + 64 * i;
      const int iy = biy[i] + ky, ix = bix[i] + kx;
      const bool ok = bok[i] && iy >= 0 && iy < c.H && ix >= 0 && ix < c.W;
      const u16* src = ok ? xt + (bimg[i] + (i64)iy * c.W + ix) * c.Cp + ci0 + cc * 8 : xt;
      cp16(b + (u32)((r * LD + cc * 8) * 2), src, ok);
    }
  };
  // The next tile to load, as (tap row, tap column, first channel).
  int lky = 0, lkx = 0;
  i64 lci = 0;
  auto advance = [&]() {
    lci += BK;
    if (lci == c.Cp) {
      lci = 0;
      if (++lkx == c.KW) {
        lkx = 0;
        ++lky;
      }
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;

#pragma unroll
  for (int s = 0; s < S - 1; s++) {
    if (s < KT) {
      load(s, s, lky, lkx, lci);
      advance();
    }
    cp_commit();
  }
  for (i64 kt = 0; kt < KT; kt++) {
    // Groups committed so far: S−1+kt; with at most S−2 in flight, tile kt
    // has landed. The barrier also tells that every warp is done with the
    // stage computed last iteration, which the next load refills.
    cp_wait<S - 2>();
    __syncthreads();
    const i64 nk = kt + S - 1;
    if (nk < KT) {
      load((int)(nk % S), nk, lky, lkx, lci);
      advance();
    }
    cp_commit();
    const int st = (int)(kt % S);
    const u32 a = smem_u32(sA + st * BM * LD), b = smem_u32(sB + st * BN * LD);
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      u32 af[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
        ldsm4(a + (u32)(((wm * WTM + mt * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8) * 2), af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
#pragma unroll
      for (int np = 0; np < NT / 2; np++) {
        u32 b0, b1, b2, b3;
        ldsm4(b + (u32)(((wn * WTN + np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8) * 2), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816(acc[mt][2 * np], af[mt], b0, b1);
          mma16816(acc[mt][2 * np + 1], af[mt], b2, b3);
        }
      }
    }
  }
  cp_wait<0>();

  // Epilogue: accumulator element (row g or g+8, columns 2tg and 2tg+1) of
  // each mma tile, plus the bias, rounded once into y [N][Cout][HO·WO].
  // Column pairs start at even pixels, so with an even HO·WO both lie in
  // one image and one 4-byte store takes them.
  const bool pair = (hwo & 1) == 0;
  i64 yoff[NT];  // offset of pixel column 2tg of n-tile nt, channel 0
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    const i64 q = q0 + wn * WTN + nt * 8 + tg * 2;
    const i64 n = q / hwo;
    yoff[nt] = q < P ? n * c.Cout * hwo + (q - n * hwo) : -1;
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      const i64 co = co0 + wm * WTM + mt * 16 + g + hf * 8;
      if (co >= c.Cout) continue;
      const float bv = bias ? ld<float>(bias, (int)bdt, co) : 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        if (yoff[nt] < 0) continue;
        const float v0 = acc[mt][nt][2 * hf] + bv, v1 = acc[mt][nt][2 * hf + 1] + bv;
        if (pair) {
          *(u32*)(y + yoff[nt] + co * hwo) = pack2(v0, v1);
        } else {
          y[yoff[nt] + co * hwo] = f32_to_bf16(v0);
          const i64 q1 = q0 + wn * WTN + nt * 8 + tg * 2 + 1;
          if (q1 < P) {
            const i64 n1 = q1 / hwo;
            y[n1 * c.Cout * hwo + co * hwo + (q1 - n1 * hwo)] = f32_to_bf16(v1);
          }
        }
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(256, 2) conv_tc128(u16* y, const u16* xt, const u16* wp, const void* bias, i64 bdt, ConvTC c) {
  conv_tc_body<128, 2>(y, xt, wp, bias, bdt, c);
}
extern "C" __global__ void __launch_bounds__(256, 2) conv_tc64(u16* y, const u16* xt, const u16* wp, const void* bias, i64 bdt, ConvTC c) {
  conv_tc_body<64, 2>(y, xt, wp, bias, bdt, c);
}
extern "C" __global__ void __launch_bounds__(256, 2) conv_tc32(u16* y, const u16* xt, const u16* wp, const void* bias, i64 bdt, ConvTC c) {
  conv_tc_body<32, 1>(y, xt, wp, bias, bdt, c);
}
extern "C" __global__ void __launch_bounds__(256, 2) conv_tc16(u16* y, const u16* xt, const u16* wp, const void* bias, i64 bdt, ConvTC c) {
  conv_tc_body<16, 1>(y, xt, wp, bias, bdt, c);
}
