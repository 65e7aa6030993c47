package kernels

// Buffer is a flat array of Len elements of one DType in a backend's memory.
// Only the backend that allocated a buffer may use it.
type Buffer interface {
	DType() DType
	Len() int
}

// MemStats are a backend's memory counters, in bytes.
type MemStats struct {
	Allocated int64 // bytes held by live buffers now
	Peak      int64 // the most Allocated has been since the last ResetPeak
	Reserved  int64 // bytes the backend holds from the device (pools included)
}

// Backend is the set of primitive operations the engine runs on a device.
// See the package comment for the conventions every method follows.
type Backend interface {
	// Name identifies the backend and device, e.g. "cpu" or "cuda:0 (NVIDIA H200)".
	Name() string

	// Alloc returns a buffer of n elements whose contents are unspecified.
	Alloc(d DType, n int) (Buffer, error)
	// Free returns a buffer's memory to the backend. Freeing nil does nothing.
	Free(b Buffer)
	// Upload copies host bytes (little-endian, the buffer's dtype) into dst
	// starting at element off.
	Upload(dst Buffer, off int, src []byte)
	// Download waits for queued work and copies len(dst) bytes from src,
	// starting at element off, to the host. It returns the first failure of
	// any queued op.
	Download(dst []byte, src Buffer, off int) error
	// Sync waits for queued work and returns the first failure since the last
	// Sync, clearing it.
	Sync() error
	// MemStats reports the memory counters; ResetPeak sets Peak to Allocated.
	MemStats() MemStats
	ResetPeak()

	// Fill sets every element of dst to v.
	Fill(dst Buffer, v float64)
	// Cast converts src to dst's dtype elementwise (rounding to nearest even;
	// float→I32 truncates toward zero); lengths must match.
	Cast(dst, src Buffer)
	// Copy2D copies a block of rows×cols elements: row r of the block is
	// src[srcOff+r*srcStride : +cols] → dst[dstOff+r*dstStride : +cols].
	// Slice, concat and strided gathers along any axis are this op. Dtypes may
	// differ (the copy casts).
	Copy2D(dst Buffer, dstOff, dstStride int, src Buffer, srcOff, srcStride int, rows, cols int)
	// Permute writes dst = src transposed: src has shape `shape` (rank ≤ 6)
	// and dst[..] has shape shape[perm[0]], shape[perm[1]], …
	Permute(dst, src Buffer, shape []int, perm []int)

	// Gemm computes C = alpha·op(A)·op(B) + beta·C for each batch (see GemmArgs).
	Gemm(g GemmArgs)

	// Unary computes dst[i] = f(src[i]) for n = dst.Len() elements.
	Unary(op UnaryOp, dst, src Buffer, p UnaryParams)
	// UnaryGrad computes dx[i] = dy[i] · f'(x[i]) for the op's derivative.
	UnaryGrad(op UnaryOp, dx, x, dy Buffer, p UnaryParams)
	// Binary computes dst = a ∘ b with NumPy broadcasting: shapes are given
	// separately, of equal rank, each axis of a and b either equal to dst's or 1.
	Binary(op BinaryOp, dst Buffer, dstShape []int, a Buffer, aShape []int, b Buffer, bShape []int)
	// Reduce reduces src viewed as [outer, axis, inner] over the middle axis
	// into dst viewed as [outer, inner], accumulating in float32 (float64
	// when src or dst is F64) with a fixed order so results are reproducible.
	Reduce(op ReduceOp, dst, src Buffer, outer, axis, inner int)
	// SumSquares writes Σ x² over all listed buffers into dst[0] (F32 or
	// F64), accumulating in float64 so the global norm of many tensors keeps
	// its precision.
	SumSquares(dst Buffer, srcs []Buffer)
	// NonFinite writes 1 into dst[0] if any element of any listed buffer is
	// ±Inf or NaN, and 0 otherwise.
	NonFinite(dst Buffer, srcs []Buffer)

	// Softmax over the last axis of src viewed as [rows, cols].
	Softmax(dst, src Buffer, rows, cols int)
	// SoftmaxGrad computes dx = y ⊙ (dy − Σ y⊙dy) per row.
	SoftmaxGrad(dx, y, dy Buffer, rows, cols int)

	// RMSNorm computes y = x·rstd·w over rows of length cols, with
	// rstd = 1/sqrt(mean(x²)+eps) written to rstd (F32 or F64, [rows]).
	// w may be nil (no affine weight).
	RMSNorm(y, rstd, x, w Buffer, rows, cols int, eps float64)
	// RMSNormGrad computes dx and, when dw is not nil, dw = Σ_rows dy⊙x·rstd
	// (dw is overwritten, F32 or F64).
	RMSNormGrad(dx, dw, dy, x, w, rstd Buffer, rows, cols int)
	// LayerNorm computes y = (x−mean)·rstd·w + b per row; w and b may be nil.
	// mean and rstd ([rows], F32 or F64) are saved for the backward.
	LayerNorm(y, mean, rstd, x, w, b Buffer, rows, cols int, eps float64)
	// LayerNormGrad computes dx and, when not nil, dw and db (overwritten).
	LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd Buffer, rows, cols int)
	// GroupNorm normalises x [n, c, hw] over groups of c/groups channels ×
	// hw, then applies per-channel w and b (either may be nil). mean and rstd
	// are [n, groups].
	GroupNorm(y, mean, rstd, x, w, b Buffer, n, c, hw, groups int, eps float64)
	// GroupNormGrad computes dx and, when not nil, dw and db (overwritten).
	GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd Buffer, n, c, hw, groups int)

	// Attention computes O = softmax(scale·Q·Kᵀ + mask)·V and the per-row
	// log-sum-exp of the scaled, masked scores, without storing the score
	// matrix. See AttentionArgs for layouts and masks.
	Attention(a AttentionArgs, o, lse Buffer)
	// AttentionGrad computes dQ, dK, dV (overwritten) from dO, the forward's
	// inputs, output O and LSE.
	AttentionGrad(a AttentionArgs, o, lse, dO, dQ, dK, dV Buffer)

	// Rope rotates pairs of x [b, s, h, d] by the angles whose cosines and
	// sines are cos, sin [b, s, d/2] (the same for every head). Pair i is
	// (x[2i], x[2i+1]) when Interleaved, else (x[i], x[i+d/2]) (the
	// rotate-half layout). Inverse rotates by the negative angle, which is
	// the backward of the forward rotation.
	Rope(dst, x, cos, sin Buffer, b, s, h, d int, interleaved, inverse bool)

	// NormScale is the sandwich norm of a Next-DiT block with its adaLN
	// scale or tanh gate and the residual add, in one op: see
	// NormScaleArgs. rstd ([Rows], F32 or F64) is saved for the backward.
	NormScale(y, rstd, x, w Buffer, a NormScaleArgs)
	// NormScaleGrad computes dx of NormScale from dy (y's dtype) and, when
	// ds is not nil, the factor's gradient ds, shaped like a.S: the sums over
	// each sample's rows of dy⊙n through the mode's derivative, in S's
	// dtype, in the chunk a.SOff/a.SStride address and zeros elsewhere.
	// The residual's gradient is dy itself; w is taken as frozen (no dw).
	NormScaleGrad(dx, ds, dy, x, w, rstd Buffer, a NormScaleArgs)
	// QKVNormRope splits the fused q/k/v projection into the attention's
	// q, k and v with the per-head q/k RMSNorm and the rotation applied on
	// the way: see QKVArgs.
	QKVNormRope(q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin Buffer, a QKVArgs)
	// QKVNormRopeGrad computes dqkv (every element) from the gradients of
	// q, k (in their dtypes) and v; the norm weights are taken as frozen.
	QKVNormRopeGrad(dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin Buffer, a QKVArgs)

	// SwiGLU computes y = SiLU(a) ⊙ b for a, b and y of one dtype, SiLU(a)
	// rounded to it before the product, as Unary then Binary would store
	// them.
	SwiGLU(y, a, b Buffer)
	// SwiGLUGrad computes, for operands all of one dtype, da = SiLU'(a) ·
	// (dy⊙b) and db = dy ⊙ SiLU(a), each product rounded as the separate
	// ops round it (dy⊙b and SiLU(a) stored first); da or db may be nil,
	// and db may be dy itself (written over it; da may not).
	SwiGLUGrad(da, db, dy, a, b Buffer)

	// Conv2D computes y [n, cout, ho, wo] = conv(x [n, cin, h, w], w [cout,
	// cin, kh, kw]) + bias[cout] (bias may be nil), cross-correlation as in
	// PyTorch.
	Conv2D(y, x, w, bias Buffer, c ConvArgs)
	// Conv2DGrad computes dx, dw and dbias (each may be nil; overwritten).
	Conv2DGrad(dx, dw, dbias, dy, x, w Buffer, c ConvArgs)
	// Upsample2x repeats each pixel of x [n, c, h, w] into a 2×2 block of y.
	Upsample2x(y, x Buffer, n, c, h, w int)
	// Upsample2xGrad sums each 2×2 block of dy into dx.
	Upsample2xGrad(dx, dy Buffer, n, c, h, w int)

	// Gather copies rows of table [rows, dim] selected by ids (I32, [n]) into
	// dst [n, dim]. An id out of range is a failure reported by Sync.
	Gather(dst, table, ids Buffer, dim int)
	// ScatterAdd adds src [n, dim] into rows ids of dst [rows, dim].
	ScatterAdd(dst, src, ids Buffer, dim int)

	// RandNormal fills dst with N(mean, std) values and RandUniform with
	// U[lo, hi) values from a counter-based generator (Philox4x32-10). The
	// value at element i depends only on (seed, offset+i), so every backend
	// produces the same numbers; see RandomCounter.
	RandNormal(dst Buffer, seed, offset uint64, mean, std float64)
	RandUniform(dst Buffer, seed, offset uint64, lo, hi float64)

	// AdamW updates the parameters of every group in place with one fused
	// pass (see AdamWArgs).
	AdamW(a AdamWArgs)
}

// GemmArgs describes a batched, strided, row-major matrix product
// C[M,N] = alpha·op(A)·op(B) + beta·C, for Batch matrices. op(A) is [M,K]:
// A is stored [M,K] (row stride LDA ≥ K) or, with TransA, [K,M] (LDA ≥ M);
// likewise op(B) is [K,N]. A and B must share one dtype (F32, BF16, F16 or
// F64); products accumulate in float32 (float64 for F64) and C may be F32,
// BF16 or F16 for BF16/F16 operands, F32 for F32 operands, F64 for F64.
// Offsets and batch strides are in elements; a stride of 0 reuses one matrix
// for every batch.
type GemmArgs struct {
	TransA, TransB bool
	M, N, K        int
	Batch          int
	Alpha, Beta    float64

	A                  Buffer
	OffA, LDA, StrideA int
	B                  Buffer
	OffB, LDB, StrideB int
	C                  Buffer
	OffC, LDC, StrideC int
}

// UnaryOp names an elementwise function.
type UnaryOp uint8

// Unary functions. Those that take parameters read them from UnaryParams.
const (
	Identity    UnaryOp = iota + 1 // x (a cast when dtypes differ)
	Neg                            // −x
	Abs                            // |x|
	Exp                            // eˣ
	Log                            // ln x
	Sqrt                           // √x
	Rsqrt                          // 1/√x
	Recip                          // 1/x
	Square                         // x²
	Tanh                           // tanh x
	Sigmoid                        // 1/(1+e⁻ˣ)
	SiLU                           // x·sigmoid(x)
	GELUTanh                       // 0.5x(1+tanh(√(2/π)(x+0.044715x³)))
	Affine                         // x·A + B
	PowScalar                      // xᴬ
	DropoutMask                    // x ≥ A ? B : 0 (x uniform in [0,1): keep-mask scaled by B)
	GELU                           // x·Φ(x) = ½x(1+erf(x/√2)), the exact GELU (PyTorch's approximate="none")

	// LastUnary is the highest UnaryOp, for range checks.
	LastUnary = GELU
)

// UnaryParams are the scalar parameters of the unary ops that take them.
type UnaryParams struct{ A, B float64 }

// BinaryOp names an elementwise function of two operands.
type BinaryOp uint8

// Binary functions.
const (
	Add BinaryOp = iota + 1
	Sub
	Mul
	Div
	Maximum
	Minimum
)

// ReduceOp names a reduction over one axis.
type ReduceOp uint8

// Reductions.
const (
	Sum ReduceOp = iota + 1
	Mean
	SumSq
	Max
)

// AttentionArgs describes scaled dot-product attention over grouped-query
// heads. Q is [B, Sq, Hq, D], K and V are [B, Sk, Hkv, D] (Hq a multiple of
// Hkv: query head h reads kv head h/(Hq/Hkv)); O is [B, Sq, Hq, D] and LSE
// [B, Hq, Sq] (F32, or F64 for F64 inputs). Q, K and V share one dtype;
// scores and softmax statistics are float32 (float64 for F64). D ≤ 256.
//
// Masks: KeyLens (host, len B, may be nil) lets query rows of sample b see
// only keys j < KeyLens[b] (right padding); Causal hides keys j > i; Window > 0
// hides keys j ≤ i−Window (sliding-window attention) and requires Causal
// (a window without it is a failure). A row
// that sees no key gets O = 0 and LSE = −Inf, and gradient 0.
type AttentionArgs struct {
	Q, K, V    Buffer
	B, Sq, Sk  int
	Hq, Hkv, D int
	Scale      float64
	KeyLens    []int32
	Causal     bool
	Window     int
}

// ConvArgs gives the shapes of a 2-D convolution (NCHW, square stride and
// symmetric zero padding). Output sides are (H+2·Pad−KH)/Stride+1.
type ConvArgs struct {
	N, Cin, H, W int
	Cout, KH, KW int
	Stride, Pad  int
}

// OutH is the output height of the convolution.
func (c ConvArgs) OutH() int { return (c.H+2*c.Pad-c.KH)/c.Stride + 1 }

// OutW is the output width of the convolution.
func (c ConvArgs) OutW() int { return (c.W+2*c.Pad-c.KW)/c.Stride + 1 }

// AdamWArgs is one fused AdamW update (PyTorch semantics, decoupled weight
// decay) over Params[i] with Grads[i], first moments M[i] and second moments
// V[i]. Params, M and V are F32 (F64 in checks); Grads any float dtype.
//
//	g  = grad · GradScale[0]           (GradScale nil: 1)
//	p -= LR[i]·WeightDecay[i]·p
//	m  = β1·m + (1−β1)·g
//	v  = β2·v + (1−β2)·g²
//	p -= LR[i] · (m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + Eps)
//
// When Skip is not nil and Skip[0] ≠ 0 nothing changes (the loss scaler found
// a non-finite gradient), so the decision never leaves the device.
//
// Working, when not nil, has one entry per tensor: a buffer (or nil) that
// receives the updated parameter in its own dtype, rounded as Cast rounds
// (autocast's low-precision copy of a master weight), and ZeroGrads sets
// each gradient to zero once read, ready for the next step to accumulate
// into: the same pass does what one Cast and one Fill per tensor would
// (a LoRA on NewBie has 478 of each). A skipped update writes neither.
type AdamWArgs struct {
	Params, Grads, M, V []Buffer
	LR, WeightDecay     []float64 // per tensor
	Beta1, Beta2, Eps   float64
	Step                int // t, counting from 1
	GradScale, Skip     Buffer
	Working             []Buffer
	ZeroGrads           bool
}
