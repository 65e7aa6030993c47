package cuda

import "github.com/newbie-train/newbie-train/kernels"

// Gemm computes C = alpha·op(A)·op(B) + beta·C per batch with cuBLAS.
// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the call
// passes B as cuBLAS's first operand and A as its second, with the same
// transpose flags and leading dimensions: no copies.
func (c *Backend) Gemm(g kernels.GemmArgs) {
	if !c.enter("Gemm") {
		c.leave()
		return
	}
	defer c.leave()
	const op = "Gemm"
	a, b, cc := c.fbuf(op, "A", g.A, -1), c.fbuf(op, "B", g.B, -1), c.fbuf(op, "C", g.C, -1)
	if a == nil || b == nil || cc == nil {
		return
	}
	if g.M < 0 || g.N < 0 || g.K < 0 || g.Batch < 1 {
		c.failf("%s: bad shape M=%d N=%d K=%d Batch=%d", op, g.M, g.N, g.K, g.Batch)
		return
	}
	if a.dt != b.dt {
		c.failf("%s: A is %v but B is %v (operands must share one dtype)", op, a.dt, b.dt)
		return
	}
	var inType, compute int
	f64 := false
	switch a.dt {
	case kernels.F32:
		inType, compute = cudaR32F, cublasCompute32F
		if cc.dt != kernels.F32 {
			c.failf("%s: F32 operands need an F32 C, got %v", op, cc.dt)
			return
		}
	case kernels.BF16, kernels.F16:
		inType, compute = cudaR16BF, cublasCompute32F
		if a.dt == kernels.F16 {
			inType = cudaR16F
		}
		if cc.dt != kernels.F32 && cc.dt != kernels.BF16 && cc.dt != kernels.F16 {
			c.failf("%s: %v operands need an F32, BF16 or F16 C, got %v", op, a.dt, cc.dt)
			return
		}
	case kernels.F64:
		inType, compute, f64 = cudaR64F, cublasCompute64F, true
		if cc.dt != kernels.F64 {
			c.failf("%s: F64 operands need an F64 C, got %v", op, cc.dt)
			return
		}
	default:
		c.failf("%s: operand dtype %v is not F32, BF16, F16 or F64", op, a.dt)
		return
	}
	outType := map[kernels.DType]int{kernels.F32: cudaR32F, kernels.BF16: cudaR16BF, kernels.F16: cudaR16F, kernels.F64: cudaR64F}[cc.dt]
	ar, ac := g.M, g.K
	if g.TransA {
		ar, ac = g.K, g.M
	}
	br, bc := g.K, g.N
	if g.TransB {
		br, bc = g.N, g.K
	}
	if !c.extentOK(op, "A", a, g.OffA, g.LDA, g.StrideA, ar, ac, g.Batch) ||
		!c.extentOK(op, "B", b, g.OffB, g.LDB, g.StrideB, br, bc, g.Batch) ||
		!c.extentOK(op, "C", cc, g.OffC, g.LDC, g.StrideC, g.M, g.N, g.Batch) {
		return
	}
	if g.Batch > 1 && g.StrideC == 0 && g.M*g.N > 0 {
		c.failf("%s: StrideC 0 with %d batches would write one C from every batch", op, g.Batch)
		return
	}
	if g.M == 0 || g.N == 0 {
		return
	}
	if c.thinGemm(g, a, b, cc) {
		return
	}
	ta, tb := uintptr(cublasOpN), uintptr(cublasOpN)
	if g.TransB {
		ta = cublasOpT
	}
	if g.TransA {
		tb = cublasOpT
	}
	esz := uint64(a.dt.Size())
	aPtr := b.ptr + uint64(g.OffB)*esz
	bPtr := a.ptr + uint64(g.OffA)*esz
	cPtr := cc.ptr + uint64(g.OffC)*uint64(cc.dt.Size())
	// cuBLAS has no bf16×bf16→fp16 (or fp16→bf16) product: run those into
	// an fp32 copy of C and round once on the way back (exact for the
	// elements the product does not touch).
	mixed := (a.dt == kernels.BF16 && cc.dt == kernels.F16) || (a.dt == kernels.F16 && cc.dt == kernels.BF16)
	var tmp uint64
	if mixed {
		var tsize int64
		var err error
		tmp, tsize, err = c.alloc.get(int64(cc.n) * 4)
		if err != nil {
			c.failf("%s: fp32 staging of C: %v", op, err)
			return
		}
		defer c.alloc.put(tmp, tsize)
		c.launch("cast_f", c.grid1(cc.n, blockSize), blockSize, 0, tmp, int(kernels.F32), cc.ptr, dt(cc), cc.n)
		cPtr, outType = tmp+uint64(g.OffC)*4, cudaR32F
	}
	ldA, ldB := max(g.LDB, 1), max(g.LDA, 1)
	algo := uintptr(uint32(defaultAlgo))
	var r int32
	if g.Batch == 1 {
		r = c.blasCall("cublasGemmEx", &c.l.blas.gemmEx, 6, 13, g.Alpha, g.Beta, f64, c.blas, ta, tb, uintptr(g.N), uintptr(g.M), uintptr(g.K), 0,
			uintptr(aPtr), uintptr(inType), uintptr(ldA), uintptr(bPtr), uintptr(inType), uintptr(ldB),
			0, uintptr(cPtr), uintptr(outType), uintptr(max(g.LDC, 1)), uintptr(compute), algo)
	} else {
		r = c.blasCall("cublasGemmStridedBatchedEx", &c.l.blas.gemmStridedBatchedEx, 6, 15, g.Alpha, g.Beta, f64, c.blas, ta, tb, uintptr(g.N), uintptr(g.M), uintptr(g.K), 0,
			uintptr(aPtr), uintptr(inType), uintptr(ldA), uintptr(int64(g.StrideB)),
			uintptr(bPtr), uintptr(inType), uintptr(ldB), uintptr(int64(g.StrideA)),
			0, uintptr(cPtr), uintptr(outType), uintptr(max(g.LDC, 1)), uintptr(int64(g.StrideC)),
			uintptr(g.Batch), uintptr(compute), algo)
	}
	if r == 0 && mixed {
		c.launch("cast_f", c.grid1(cc.n, blockSize), blockSize, 0, cc.ptr, dt(cc), tmp, int(kernels.F32), cc.n)
	}
	if r != 0 {
		c.failf("%s: cublasGemm%sEx (M=%d N=%d K=%d batch %d, %v→%v): cuBLAS status %d", op,
			map[bool]string{true: "StridedBatched", false: ""}[g.Batch > 1], g.M, g.N, g.K, g.Batch, a.dt, cc.dt, r)
	}
}

// blasCall makes a cuBLAS call whose arguments alphaAt and betaAt are
// host pointers to the scalars alpha and beta (float64 when f64, else
// float32): now, or, inside a graph region, as a recorded op (status 0;
// a failure then surfaces from the segment). Callers hold c.mu.
func (c *Backend) blasCall(name string, s *sym, alphaAt, betaAt int, alpha, beta float64, f64 bool, args ...uintptr) int32 {
	if c.plan.active() {
		c.queue(&opRecord{kind: opBlas, name: name, blas: s, bargs: args, alphaAt: alphaAt, betaAt: betaAt, alpha: alpha, beta: beta, f64: f64})
		return 0
	}
	args[alphaAt] = c.hostScalar(argAreaBytes-32, alpha, f64)
	args[betaAt] = c.hostScalar(argAreaBytes-16, beta, f64)
	return s.call(args...)
}

// defaultAlgo is CUBLAS_GEMM_DEFAULT as the 32-bit pattern C receives.
var defaultAlgo = int32(cublasGemmDefault)

// extentOK checks that batch matrices of rows×cols with leading dimension
// ld, offset off and batch stride fit in b.
func (c *Backend) extentOK(op, name string, b *buffer, off, ld, stride, rows, cols, batch int) bool {
	if off < 0 || stride < 0 || (rows > 0 && ld < cols) || (rows > 1 && ld < 1) {
		c.failf("%s: operand %s has offset %d, leading dimension %d, stride %d for a %d×%d matrix", op, name, off, ld, stride, rows, cols)
		return false
	}
	if rows == 0 || cols == 0 {
		return true
	}
	last := off + (batch-1)*stride + (rows-1)*ld + cols
	if last > b.n {
		c.failf("%s: operand %s needs %d elements (offset %d, %d×%d, ld %d, %d batches of stride %d) but has %d", op, name, last, off, rows, cols, ld, batch, stride, b.n)
		return false
	}
	return true
}
