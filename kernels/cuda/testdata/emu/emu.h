// emu.h: a CPU emulator for the subset of CUDA the kernel files use, so
// that their indexing, tiling and fragment logic can be checked on a
// machine without a GPU (TestKernelsEmulated). Each CUDA thread of a block
// is a fiber (ucontext) in one OS thread; __syncthreads and the warp-wide
// operations (shuffles, ldmatrix, mma.sync) are barriers over the block or
// the warp, with the exchange done when the last thread arrives. Semantics
// follow the PTX ISA's fragment layouts for mma.m16n8k16 (bf16 and fp16)
// and ldmatrix; they are checked against the device-verified attention kernel
// in the same test.
//
// cp.async copies either land at once (EMU_LATE=0) or only when a
// cp.async.wait_group makes them due (EMU_LATE=1): the first exposes a
// stage refilled while another warp still reads it, the second a tile read
// before its wait. Shared memory is filled with 0xff (NaN) before each
// block; device buffers end at a page followed by an inaccessible one, so
// an overrun faults.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <random>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

#ifndef EMU_LATE
#define EMU_LATE 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __CUDA_ARCH__ 800

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

struct uint3e { unsigned x, y, z; };
static uint3e threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) uint4 { u32 x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) uint2 { u32 x, y; };
static inline uint4 make_uint4(u32 x, u32 y, u32 z, u32 w) { return uint4{x, y, z, w}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return float2{x, y}; }

template <class A, class B>
static inline std::common_type_t<A, B> min(A a, B b) { return a < b ? a : b; }
template <class A, class B>
static inline std::common_type_t<A, B> max(A a, B b) { return a > b ? a : b; }

static inline float __uint_as_float(u32 u) { float f; memcpy(&f, &u, 4); return f; }
static inline u32 __float_as_uint(float f) { u32 u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline float __fdividef(float a, float b) { return a / b; }
static inline int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }
static inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }

// ---- fibers and barriers ----
struct EmuCopy { u32 dst; const void* src; bool ok; };
struct EmuFiber {
  ucontext_t ctx;
  uint3e tid;
  bool done;
  const unsigned* wait_gen;  // barrier generation this fiber waits to change
  unsigned wait_val;
  std::vector<EmuCopy> pending;
  std::deque<std::vector<EmuCopy>> groups;
};
static std::vector<EmuFiber> emu_fibers;
static EmuFiber* emu_cur;
static ucontext_t emu_sched;
static const size_t emu_stack_bytes = 512 << 10;
static std::vector<char*> emu_stacks;

alignas(1024) static unsigned char smem_raw[256 << 10];
static size_t emu_smem_bytes;  // dynamic shared memory of the launch

static void emu_fail(const char* what) {
  fprintf(stderr, "EMU FAULT: %s (thread %u, block %u)\n", what, emu_cur ? emu_cur->tid.x : 0u, blockIdx.x);
  exit(3);
}

static inline void __trap() { emu_fail("__trap"); }

// emu_f16 decodes IEEE binary16 (subnormals, Inf and NaN included).
static inline float emu_f16(u32 h) {
  const u32 s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = ldexpf((float)m, -24);
    return s ? -v : v;
  }
  if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));
  return __uint_as_float(s | ((e + 112) << 23) | (m << 13));
}
// emu_rne_f16 rounds a float to binary16, to nearest even: what
// cvt.rn.f16.f32 does (overflow to ±Inf, fp16 subnormals kept).
static inline u16 emu_rne_f16(float f) {
  const u32 x = __float_as_uint(f), ax = x & 0x7fffffffu;
  const u16 sign = (u16)((x >> 16) & 0x8000u);
  if (ax > 0x7f800000u) return sign | 0x7e00u;        // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;       // ≥ 65520 rounds to Inf
  if (ax < 0x38800000u) {                             // below 2⁻¹⁴: subnormal
    return sign | (u16)nearbyintf(__uint_as_float(ax) * 16777216.f);  // exact scaling by 2²⁴
  }
  u32 r = ax - (112u << 23);  // rebias the exponent, then round off 13 bits
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | (u16)(r >> 13);
}
static inline float f16_to_f32(u16 h) { return emu_f16(h); }
static inline u16 f32_to_f16(float f) { return emu_rne_f16(f); }

struct EmuBar { int arrived = 0; unsigned gen = 0; };
static EmuBar emu_block_bar, emu_warp_bar[32];

static void emu_yield() { swapcontext(&emu_cur->ctx, &emu_sched); }

// emu_wait arrives at b (n threads) and returns once all n have; the last
// to arrive runs last() first.
template <class F>
static void emu_wait(EmuBar& b, int n, F last) {
  unsigned g = b.gen;
  if (++b.arrived == n) {
    last();
    b.arrived = 0;
    b.gen++;
    return;
  }
  emu_cur->wait_gen = &b.gen;
  emu_cur->wait_val = g;
  while (b.gen == g) emu_yield();
  emu_cur->wait_gen = nullptr;
}
static void emu_wait(EmuBar& b, int n) { emu_wait(b, n, [] {}); }

static inline int emu_lane() { return (int)(threadIdx.x & 31); }
static inline int emu_warp() { return (int)(threadIdx.x >> 5); }
static void __syncthreads() { emu_wait(emu_block_bar, (int)blockDim.x); }

// Per-warp exchange slots.
struct EmuWarp {
  u64 v[32];
  u32 a[32][4], b[32][2];
  float A[16][16], B[16][8];
};
static EmuWarp emu_warps[32];

template <class T>
static T __shfl_xor_sync(unsigned, T v, int mask) {
  EmuWarp& w = emu_warps[emu_warp()];
  static_assert(sizeof(T) <= 8, "shuffle of a wide type");
  u64 bits = 0;
  memcpy(&bits, &v, sizeof(T));
  w.v[emu_lane()] = bits;
  emu_wait(emu_warp_bar[emu_warp()], 32);
  u64 o = w.v[emu_lane() ^ mask];
  emu_wait(emu_warp_bar[emu_warp()], 32);
  T r;
  memcpy(&r, &o, sizeof(T));
  return r;
}
static bool __any_sync(unsigned, bool p) {
  EmuWarp& w = emu_warps[emu_warp()];
  w.v[emu_lane()] = p;
  emu_wait(emu_warp_bar[emu_warp()], 32);
  bool any = false;
  for (int i = 0; i < 32; i++) any = any || w.v[i];
  emu_wait(emu_warp_bar[emu_warp()], 32);
  return any;
}

// ---- shared memory, cp.async ----
static inline u32 smem_u32(const void* p) {
  const unsigned char* c = (const unsigned char*)p;
  if (c < smem_raw || c >= smem_raw + sizeof(smem_raw)) emu_fail("smem_u32 of a pointer outside dynamic shared memory");
  return (u32)(c - smem_raw);
}
static void emu_check_smem(u32 addr, u32 bytes, const char* what) {
  if ((size_t)addr + bytes > emu_smem_bytes) {
    fprintf(stderr, "EMU FAULT: %s at shared byte %u (+%u) past the launch's %zu\n", what, addr, bytes, emu_smem_bytes);
    exit(3);
  }
}
static void emu_apply(const EmuCopy& c) {
  if (c.ok) memcpy(smem_raw + c.dst, c.src, 16);
  else memset(smem_raw + c.dst, 0, 16);
}
static inline void cp16(u32 dst, const void* src, bool ok) {
  if (dst % 16) emu_fail("cp.async to a shared address not 16-byte aligned");
  if (ok && ((uintptr_t)src % 16)) emu_fail("cp.async from a global address not 16-byte aligned");
  emu_check_smem(dst, 16, "cp.async");
  EmuCopy c{dst, src, ok};
  if (ok) {
    volatile unsigned char probe = *(const unsigned char*)src;  // fault now on a bad source
    (void)probe;
    probe = *((const unsigned char*)src + 15);
  }
  if (EMU_LATE) emu_cur->pending.push_back(c);
  else emu_apply(c);
}
static inline void cp_commit() {
  emu_cur->groups.push_back(emu_cur->pending);
  emu_cur->pending.clear();
}
static void emu_cp_wait(size_t n) {
  while (emu_cur->groups.size() > n) {
    for (auto& c : emu_cur->groups.front()) emu_apply(c);
    emu_cur->groups.pop_front();
  }
}
template <int N>
static inline void cp_wait() { emu_cp_wait(N); }
static inline void cp_wait0() { emu_cp_wait(0); }

// ---- ldmatrix, mma.sync ----
static inline u32 emu_ld32(u32 addr) { u32 v; memcpy(&v, smem_raw + addr, 4); return v; }
static inline u16 emu_ld16(u32 addr) { u16 v; memcpy(&v, smem_raw + addr, 2); return v; }

static void emu_ldsm(u32 addr, u32* r, bool trans) {
  if (addr % 16) emu_fail("ldmatrix row address not 16-byte aligned");
  emu_check_smem(addr, 16, "ldmatrix");
  EmuWarp& w = emu_warps[emu_warp()];
  const int l = emu_lane();
  w.v[l] = addr;
  emu_wait(emu_warp_bar[emu_warp()], 32);
  for (int i = 0; i < 4; i++) {
    if (!trans) {
      r[i] = emu_ld32((u32)w.v[8 * i + l / 4] + 4 * (l % 4));
    } else {
      // Lane l holds elements (2(l%4), l/4) and (2(l%4)+1, l/4) of matrix i.
      u16 lo = emu_ld16((u32)w.v[8 * i + 2 * (l % 4)] + 2 * (l / 4));
      u16 hi = emu_ld16((u32)w.v[8 * i + 2 * (l % 4) + 1] + 2 * (l / 4));
      r[i] = (u32)lo | ((u32)hi << 16);
    }
  }
  emu_wait(emu_warp_bar[emu_warp()], 32);
}
static inline void ldsm4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  u32 r[4];
  emu_ldsm(addr, r, false);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
static inline void ldsm4t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  u32 r[4];
  emu_ldsm(addr, r, true);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

static inline float emu_bf(u32 half) { return __uint_as_float(half << 16); }

// emu_mma is D = A·B + C for m16n8k16 with elements decoded by dec,
// fragments as the PTX ISA gives them: lane l = 4g + t holds A (g,
// 2t..2t+1), (g+8, ·), (g, 2t+8..), (g+8, 2t+8..); B (k 2t..2t+1, n g),
// (k 2t+8..2t+9, n g); C (g, 2t..2t+1), (g+8, 2t..2t+1).
template <float (*dec)(u32)>
static void emu_mma(float* c, const u32* a, u32 b0, u32 b1) {
  EmuWarp& w = emu_warps[emu_warp()];
  const int l = emu_lane();
  for (int i = 0; i < 4; i++) w.a[l][i] = a[i];
  w.b[l][0] = b0;
  w.b[l][1] = b1;
  emu_wait(emu_warp_bar[emu_warp()], 32, [&w] {
    for (int L = 0; L < 32; L++) {
      const int g = L >> 2, t = L & 3;
      for (int e = 0; e < 2; e++) {
        const int sh = 16 * e;
        w.A[g][2 * t + e] = dec((w.a[L][0] >> sh) & 0xffff);
        w.A[g + 8][2 * t + e] = dec((w.a[L][1] >> sh) & 0xffff);
        w.A[g][2 * t + 8 + e] = dec((w.a[L][2] >> sh) & 0xffff);
        w.A[g + 8][2 * t + 8 + e] = dec((w.a[L][3] >> sh) & 0xffff);
        w.B[2 * t + e][g] = dec((w.b[L][0] >> sh) & 0xffff);
        w.B[2 * t + 8 + e][g] = dec((w.b[L][1] >> sh) & 0xffff);
      }
    }
  });
  const int g = l >> 2, t = l & 3;
  for (int e = 0; e < 4; e++) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float s = c[e];
    for (int k = 0; k < 16; k++) s = fmaf(w.A[row][k], w.B[k][col], s);
    c[e] = s;
  }
  emu_wait(emu_warp_bar[emu_warp()], 32);
}
// mma16816 is the bf16 product, mma16816_f16 the fp16 one.
static void mma16816(float* c, const u32* a, u32 b0, u32 b1) { emu_mma<emu_bf>(c, a, b0, b1); }
static void mma16816_f16(float* c, const u32* a, u32 b0, u32 b1) { emu_mma<emu_f16>(c, a, b0, b1); }

static inline float ex2(float x) { return exp2f(x); }

static inline u16 emu_rne_bf16(float f) {
  u32 b = __float_as_uint(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x0040u);
  b += 0x7fffu + ((b >> 16) & 1u);
  return (u16)(b >> 16);
}
static inline u32 pack2(float lo, float hi) { return (u32)emu_rne_bf16(lo) | ((u32)emu_rne_bf16(hi) << 16); }
// common.cuh's conversions, which are cvt instructions on the GPU.
static inline u16 f32_to_bf16(float f) { return emu_rne_bf16(f); }
static inline u32 bf16x2_pack(float lo, float hi) { return pack2(lo, hi); }
static inline u32 pack2_f16(float lo, float hi) { return (u32)emu_rne_f16(lo) | ((u32)emu_rne_f16(hi) << 16); }
static inline void red2(float* p, float x, float y) { p[0] += x; p[1] += y; }

// ---- launches ----
static std::function<void()> emu_body;
static void emu_entry() {
  emu_body();
  emu_cp_wait(0);
  emu_cur->done = true;
  swapcontext(&emu_cur->ctx, &emu_sched);
}

// emu_launch runs kernel(args...) over grid × block threads, one block
// after another, with smem bytes of dynamic shared memory.
template <class K, class... A>
static void emu_launch(K kernel, uint3e grid, unsigned block, size_t smem, A... args) {
  if (smem > sizeof(smem_raw)) emu_fail("dynamic shared memory beyond the emulator's");
  if (block % 32) emu_fail("block size not a multiple of 32");
  gridDim = grid;
  blockDim = uint3e{block, 1, 1};
  emu_smem_bytes = smem;
  while (emu_stacks.size() < block) emu_stacks.push_back((char*)malloc(emu_stack_bytes));
  emu_body = [=] { kernel(args...); };
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        blockIdx = uint3e{bx, by, bz};
        memset(smem_raw, 0xff, sizeof(smem_raw));
        emu_block_bar = EmuBar{};
        for (auto& b : emu_warp_bar) b = EmuBar{};
        emu_fibers.assign(block, EmuFiber{});
        for (unsigned t = 0; t < block; t++) {
          EmuFiber& f = emu_fibers[t];
          f.tid = uint3e{t, 0, 0};
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = emu_stacks[t];
          f.ctx.uc_stack.ss_size = emu_stack_bytes;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, emu_entry, 0);
        }
        for (;;) {
          bool any = false, ran = false;
          for (auto& f : emu_fibers) {
            if (f.done) continue;
            any = true;
            if (f.wait_gen && *f.wait_gen == f.wait_val) continue;  // still blocked
            ran = true;
            emu_cur = &f;
            threadIdx = f.tid;
            swapcontext(&emu_sched, &f.ctx);
          }
          if (!any) break;
          if (!ran) emu_fail("deadlock: every live thread waits at a barrier others never reach");
        }
        emu_cur = nullptr;
      }
}

// ---- host helpers ----
// emu_dev allocates n elements of T ending at a page boundary, with an
// inaccessible page after it.
template <class T>
static T* emu_dev(size_t n) {
  const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  const size_t bytes = (n * sizeof(T) + 15) / 16 * 16;
  const size_t span = (bytes + pg - 1) / pg * pg + pg;
  unsigned char* base = (unsigned char*)mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) emu_fail("mmap");
  mprotect(base + span - pg, pg, PROT_NONE);
  return (T*)(base + span - pg - bytes);
}

static std::mt19937_64 emu_rng(12345);
static double emu_randn() {
  static std::normal_distribution<double> d(0, 1);
  return d(emu_rng);
}
static float emu_bf16_value(u16 h) { return __uint_as_float((u32)h << 16); }

// emu_relerr is ‖got − want‖ / ‖want‖ (NaN if any got is NaN).
static double emu_relerr(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); i++) {
    if (std::isnan(got[i])) return NAN;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

static int emu_failures;
static void emu_report(const char* name, double err, double tol) {
  const bool ok = err <= tol;
  printf("%s %s relerr %.3g tol %.3g\n", ok ? "PASS" : "FAIL", name, err, tol);
  if (!ok) emu_failures++;
}
