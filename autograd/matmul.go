package autograd

import (
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// matDims reads a tensor of rank ≥ 2 as a batch of [rows, cols] matrices.
func matDims(t *Tensor) (batch, rows, cols int) {
	r := len(t.shape)
	return numel(t.shape[:r-2]), t.shape[r-2], t.shape[r-1]
}

// MatMul returns op(a)·op(b), where op transposes the last two axes when
// asked. a is [..., M, K] ([..., K, M] with transA); b is either a single
// matrix [K, N] ([N, K] with transB) shared by every batch, or has a's batch
// axes. Under autocast it runs on autocast-dtype operands with float32
// accumulation and returns the autocast dtype, like PyTorch.
func MatMul(a, b *Tensor, transA, transB bool) *Tensor {
	return matMul("MatMul", a, b, transA, transB, 1)
}

// ScaledLinear returns alpha·x·wᵀ for x [..., in] and w [out, in], with the
// scale applied inside the matrix product (one rounding, no elementwise
// pass over the output, nothing kept for a scaling's backward). The model's
// adapted layers use LoRALinear, which also folds the add into the product.
func ScaledLinear(x, w *Tensor, alpha float64) *Tensor {
	orig := []*Tensor{x, w}
	in := x.e.prepare(lowPrecision, x, w)
	defer releaseCasts(orig, in)
	return matMul("ScaledLinear", in[0], in[1], false, true, alpha)
}

// matMul is MatMul with the product scaled by alpha.
func matMul(name string, a, b *Tensor, transA, transB bool, alpha float64) *Tensor {
	e := a.e
	if !e.live(name, a, b) {
		return e.failed(a.dtype, a.shape)
	}
	if len(a.shape) < 2 || len(b.shape) < 2 {
		e.failf(name, "operands %v and %v must have rank ≥ 2", a.shape, b.shape)
		return e.failed(a.dtype, a.shape)
	}
	ab, am, ak := matDims(a)
	if transA {
		am, ak = ak, am
	}
	bb, bk, bn := matDims(b)
	if transB {
		bk, bn = bn, bk
	}
	shared := len(b.shape) == 2
	if ak != bk || (!shared && (ab != bb || !slices.Equal(a.shape[:len(a.shape)-2], b.shape[:len(b.shape)-2]))) {
		e.failf(name, "shapes %v%s and %v%s do not multiply", a.shape, tflag(transA), b.shape, tflag(transB))
		return e.failed(a.dtype, a.shape)
	}
	orig := []*Tensor{a, b}
	in := e.prepare(lowPrecision, a, b)
	defer releaseCasts(orig, in)
	a, b = in[0], in[1]
	shape := append(append([]int(nil), a.shape[:len(a.shape)-2]...), am, bn)
	out := e.newTensor(a.dtype, shape)
	if out.st == nil {
		return out
	}
	e.gemm(a, transA, b, transB, out, ab, am, bn, ak, false, shared, alpha, 0)
	e.trace(name, out, a, b)
	if e.recording(a, b) {
		// dA reads only B and dB only A: a frozen weight's product keeps no
		// copy of its input.
		needA, needB := a.requiresGrad, b.requiresGrad
		var sa, sb *Tensor
		ad, as, bd, bs := a.dtype, a.shape, b.dtype, b.shape
		if needB {
			sa = e.save(a)
		}
		if needA {
			sb = e.save(b)
		}
		e.record(name, out, []*Tensor{a, b}, []*Tensor{sa, sb}, func(g *Tensor) []*Tensor {
			var ga, gb *Tensor
			if needA {
				ga = e.newTensor(ad, as)
				if !transA { // dA[M,K] = dC·op(B)ᵀ
					e.gemm(g, false, sb, !transB, ga, ab, am, ak, bn, false, shared, alpha, 0)
				} else { // dA[K,M] = op(B)·dCᵀ
					e.gemm(sb, transB, g, true, ga, ab, ak, am, bn, shared, false, alpha, 0)
				}
			}
			if needB {
				gb = e.newTensor(bd, bs)
				switch {
				case shared && !transA && !transB: // dB[K,N] = Aᵀ·dC over all rows
					e.gemm(e.flat(sa), true, e.flat(g), false, gb, 1, ak, bn, ab*am, false, false, alpha, 0)
				case shared && !transA && transB: // dB[N,K] = dCᵀ·A over all rows
					e.gemm(e.flat(g), true, e.flat(sa), false, gb, 1, bn, ak, ab*am, false, false, alpha, 0)
				case shared: // transposed A cannot be flattened: accumulate per batch
					for i := range ab {
						beta := 1.0
						if i == 0 {
							beta = 0
						}
						if !transB {
							e.gemmOne(sa, true != transA, i*am*ak, g, false, i*am*bn, gb, ak, bn, am, alpha, beta)
						} else {
							e.gemmOne(g, true, i*am*bn, sa, transA, i*am*ak, gb, bn, ak, am, alpha, beta)
						}
					}
				case !transB: // dB[K,N] = op(A)ᵀ·dC
					e.gemm(sa, !transA, g, false, gb, ab, ak, bn, am, false, false, alpha, 0)
				default: // dB[N,K] = dCᵀ·op(A)
					e.gemm(g, true, sa, transA, gb, ab, bn, ak, am, false, false, alpha, 0)
				}
			}
			return []*Tensor{ga, gb}
		})
	}
	return out
}

func tflag(t bool) string {
	if t {
		return "ᵀ"
	}
	return ""
}

// flat views a tensor [..., r, c] as one matrix [(...·r), c].
func (e *Engine) flat(t *Tensor) *Tensor {
	return &Tensor{e: e, shape: []int{t.Len() / t.shape[len(t.shape)-1], t.shape[len(t.shape)-1]}, dtype: t.dtype, st: t.st}
}

// gemm queues C = op(A)·op(B) (+beta·C) for batch matrices of [m,n] from
// k-long products. A and B are stored row-major as the flags say; a shared
// operand (one matrix for every batch) uses batch stride 0.
func (e *Engine) gemm(a *Tensor, ta bool, b *Tensor, tb bool, c *Tensor, batch, m, n, k int, sharedA, sharedB bool, alpha, beta float64) {
	strideA, strideB := m*k, k*n
	if sharedA {
		strideA = 0
	}
	if sharedB {
		strideB = 0
	}
	e.gemmAt(a, ta, 0, strideA, b, tb, 0, strideB, c, batch, m, n, k, alpha, beta)
}

// gemmOne queues one product at element offsets into A and B.
func (e *Engine) gemmOne(a *Tensor, ta bool, offA int, b *Tensor, tb bool, offB int, c *Tensor, m, n, k int, alpha, beta float64) {
	e.gemmAt(a, ta, offA, m*k, b, tb, offB, k*n, c, 1, m, n, k, alpha, beta)
}

// gemmAt queues the product with explicit offsets and batch strides; the
// leading dimensions follow from the shapes and transpose flags.
func (e *Engine) gemmAt(a *Tensor, ta bool, offA, strideA int, b *Tensor, tb bool, offB, strideB int, c *Tensor, batch, m, n, k int, alpha, beta float64) {
	if !e.live("gemm", a, b, c) {
		return
	}
	lda, ldb := k, n
	if ta {
		lda = m
	}
	if tb {
		ldb = k
	}
	e.b.Gemm(kernels.GemmArgs{
		TransA: ta, TransB: tb, M: m, N: n, K: k, Batch: batch, Alpha: alpha, Beta: beta,
		A: a.st.buf, OffA: offA, LDA: lda, StrideA: strideA,
		B: b.st.buf, OffB: offB, LDB: ldb, StrideB: strideB,
		C: c.st.buf, LDC: n, StrideC: m * n,
	})
}

// Linear returns x·wᵀ + bias for x [..., in], w [out, in] and bias [out]
// (nil for none), as torch.nn.functional.linear: under autocast all three
// run in the autocast dtype.
func Linear(x, w, bias *Tensor) *Tensor {
	if w != nil && w.scale != nil {
		return quantLinear(x, w, bias)
	}
	e := x.e
	orig := []*Tensor{x, w, bias}
	in := e.prepare(lowPrecision, x, w, bias)
	defer releaseCasts(orig, in)
	if bias != nil && !e.recording(in...) {
		if out, ok := biasedProduct(in[0], in[1], in[2]); ok {
			return out
		}
	}
	y := MatMul(in[0], in[1], false, true)
	if bias == nil {
		return y
	}
	out := Add(y, in[2])
	y.Release()
	return out
}

// biasedProduct is Linear with nothing to record (inference, frozen
// encoders): the bias is broadcast into the output and the product is
// accumulated onto it (beta = 1), one pass over the output fewer than a
// product followed by an add, and one rounding instead of two. It reports
// false for shapes it does not take, which Linear then computes as
// MatMul + Add.
func biasedProduct(x, w, bias *Tensor) (*Tensor, bool) {
	e := x.e
	if !e.live("Linear", x, w, bias) || len(x.shape) < 1 || len(w.shape) != 2 || len(bias.shape) != 1 ||
		x.dtype != w.dtype || bias.dtype != x.dtype {
		return nil, false
	}
	n, k := w.shape[0], w.shape[1]
	if x.shape[len(x.shape)-1] != k || bias.shape[0] != n {
		return nil, false
	}
	rows := x.Len() / k
	shape := append(append([]int(nil), x.shape[:len(x.shape)-1]...), n)
	out := e.newTensor(x.dtype, shape)
	if out.st == nil {
		return out, true
	}
	e.b.Copy2D(out.st.buf, 0, n, bias.st.buf, 0, 0, rows, n)
	e.gemmAt(x, false, 0, rows*k, w, true, 0, 0, out, 1, rows, n, k, 1, 1)
	e.trace("Linear", out, x, w, bias)
	return out, true
}
