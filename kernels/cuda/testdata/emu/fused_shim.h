// fused_shim.h: the few CUDA atomics elementwise.cu uses beyond what emu.h
// gives (its scatter-add kernels; TestFusedKernelsEmulated only runs the
// SwiGLU kernels of that file, but the file must compile whole).
static inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
static inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { unsigned o = *p; if (o == cmp) *p = v; return o; }
