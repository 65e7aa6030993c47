// tc.cuh: tensor-core and asynchronous-copy primitives for sm_80 and later
// (bf16 and fp16 mma.sync, ldmatrix, cp.async). The Go side compiles it in after
// common.cuh for the files fileHeaders names; it is not a translation unit
// of its own.

// smem_u32 is the 32-bit shared-memory address of a generic pointer into
// shared memory (what ldmatrix and cp.async take).
__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// cp16 copies 16 bytes global → shared, or writes zeros when !ok (src is
// then not read, but must still be a valid address expression).
__device__ __forceinline__ void cp16(u32 dst, const void* src, bool ok) {
  int n = ok ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
// cp_wait waits until at most N of this thread's committed copy groups are
// still in flight.
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_wait0() { cp_wait<0>(); }

// ldsm4 loads four 8×8 b16 matrices from shared memory: lanes 8i..8i+7
// give the row addresses of matrix i, which lands in register i.
__device__ __forceinline__ void ldsm4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// ldsm4t is ldsm4 transposed: lane l gets column l/4, rows 2(l%4) and
// 2(l%4)+1 of each matrix.
__device__ __forceinline__ void ldsm4t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// mma16816 is c += a·b for one m16n8k16 tile: bf16 operands (a row-major,
// b column-major fragments), fp32 accumulators.
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// mma16816_f16 is mma16816 on fp16 operands.
__device__ __forceinline__ void mma16816_f16(float* c, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// pack2 rounds two floats to bf16 (round to nearest even), lo in the low half.
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// pack2_f16 is pack2 rounding to fp16 (overflow gives ±Inf, tiny values
// fp16 subnormals).
__device__ __forceinline__ u32 pack2_f16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// mma16816_t and pack2_t pick the element type at compile time (F16: fp16,
// else bf16), so one kernel body serves both; the bf16 instantiation is the
// plain bf16 code.
template <bool F16>
__device__ __forceinline__ void mma16816_t(float* c, const u32* a, u32 b0, u32 b1) {
  if constexpr (F16) mma16816_f16(c, a, b0, b1);
  else mma16816(c, a, b0, b1);
}
template <bool F16>
__device__ __forceinline__ u32 pack2_t(float lo, float hi) {
  if constexpr (F16) return pack2_f16(lo, hi);
  else return pack2(lo, hi);
}

// ex2 is 2ˣ on the special-function unit (relative error ~2⁻²², far below
// a bf16 or fp16 rounding); ex2(−Inf) = 0.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
