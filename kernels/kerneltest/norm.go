package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("RMSNorm", testRMSNorm)
	register("LayerNorm", testLayerNorm)
	register("GroupNorm", testGroupNorm)
	register("NormReferenceGradients", testNormReferenceGradients)
}

// pbDTypes are the operand dtypes the norm, attention, rope, conv and
// upsample cases run in: F64 (the backend's exact path), F32 (training
// master precision) and BF16 (autocast operands).
var pbDTypes = []kernels.DType{kernels.F64, kernels.F32, kernels.BF16}

// pbDTypesFor is pbDTypes for the case with index i of a table, plus F16
// for the first case: fp16 training (with the loss scaler) uses the same
// ops, and one case per op is enough to show half precision is wired.
func pbDTypesFor(i int) []kernels.DType {
	if i == 0 {
		return append(append([]kernels.DType(nil), pbDTypes...), kernels.F16)
	}
	return pbDTypes
}

// pbStat is the dtype of saved statistics (rstd, mean, LSE) for operands of
// dtype d: F64 for F64, F32 otherwise, as the interface prescribes.
func pbStat(d kernels.DType) kernels.DType {
	if d == kernels.F64 {
		return kernels.F64
	}
	return kernels.F32
}

// pbNumGrad returns the central finite-difference gradient of f at x with
// step h, restoring x afterwards.
func pbNumGrad(f func() float64, x []float64, h float64) []float64 {
	g := make([]float64, len(x))
	for i := range x {
		x0 := x[i]
		x[i] = x0 + h
		fp := f()
		x[i] = x0 - h
		fm := f()
		x[i] = x0
		g[i] = (fp - fm) / (2 * h)
	}
	return g
}

// pbDot is Σ a⊙b, the scalar loss ⟨y, G⟩ whose gradient with respect to y
// is G: finite differences of it check a reference backward fed dy = G.
func pbDot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// pbShift returns v with c added to every element, so a normalisation sees
// inputs whose mean is far from zero (cancellation is what a naive
// E[x²]−E[x]² variance gets wrong).
func pbShift(v []float64, c float64) []float64 {
	for i := range v {
		v[i] += c
	}
	return v
}

// rmsNormRef is y = x·r·w per row with r = 1/sqrt(mean(x²)+eps); w nil means
// all ones.
func rmsNormRef(x, w []float64, rows, cols int, eps float64) (y, rstd []float64) {
	y = make([]float64, rows*cols)
	rstd = make([]float64, rows)
	for r := 0; r < rows; r++ {
		var ss float64
		for j := 0; j < cols; j++ {
			ss += x[r*cols+j] * x[r*cols+j]
		}
		rstd[r] = 1 / math.Sqrt(ss/float64(cols)+eps)
		for j := 0; j < cols; j++ {
			y[r*cols+j] = x[r*cols+j] * rstd[r] * pbAt(w, j)
		}
	}
	return y, rstd
}

// pbAt is w[i], or 1 when w is nil (an absent affine weight).
func pbAt(w []float64, i int) float64 {
	if w == nil {
		return 1
	}
	return w[i]
}

// rmsNormGradRef is the closed-form backward: with x̂ = x·r and g = dy⊙w,
// dx = r·(g − x̂·mean(g⊙x̂)) and dw = Σ_rows dy⊙x̂.
func rmsNormGradRef(dy, x, w []float64, rows, cols int, eps float64) (dx, dw []float64) {
	_, rstd := rmsNormRef(x, w, rows, cols, eps)
	dx = make([]float64, rows*cols)
	dw = make([]float64, cols)
	for r := 0; r < rows; r++ {
		var m float64
		for j := 0; j < cols; j++ {
			i := r*cols + j
			m += dy[i] * pbAt(w, j) * x[i] * rstd[r]
		}
		m /= float64(cols)
		for j := 0; j < cols; j++ {
			i := r*cols + j
			xh := x[i] * rstd[r]
			dx[i] = rstd[r] * (dy[i]*pbAt(w, j) - xh*m)
			dw[j] += dy[i] * xh
		}
	}
	return dx, dw
}

// groupNormRef normalises x [n, ch, hw] over groups of ch/groups channels
// (biased variance, as PyTorch) and applies per-channel w and b (nil: 1, 0).
// LayerNorm over rows of cols is the case ch = cols, hw = 1, groups = 1.
func groupNormRef(x, w, b []float64, n, ch, hw, groups int, eps float64) (y, mean, rstd []float64) {
	cpg := ch / groups
	m := cpg * hw
	y = make([]float64, len(x))
	mean = make([]float64, n*groups)
	rstd = make([]float64, n*groups)
	for g := 0; g < n*groups; g++ {
		blk := x[g*m : (g+1)*m]
		var s float64
		for _, v := range blk {
			s += v
		}
		mu := s / float64(m)
		var ss float64
		for _, v := range blk {
			ss += (v - mu) * (v - mu)
		}
		mean[g], rstd[g] = mu, 1/math.Sqrt(ss/float64(m)+eps)
		for e := range blk {
			c := (g%groups)*cpg + e/hw
			bias := 0.0
			if b != nil {
				bias = b[c]
			}
			y[g*m+e] = (blk[e]-mu)*rstd[g]*pbAt(w, c) + bias
		}
	}
	return y, mean, rstd
}

// groupNormGradRef is the closed-form backward over each block of m
// elements: dx = r·(g − mean(g) − x̂·mean(g⊙x̂)) with g = dy·w[c],
// dw[c] = Σ dy·x̂ and db[c] = Σ dy.
func groupNormGradRef(dy, x, w []float64, n, ch, hw, groups int, eps float64) (dx, dw, db []float64) {
	_, mean, rstd := groupNormRef(x, w, nil, n, ch, hw, groups, eps)
	cpg := ch / groups
	m := cpg * hw
	dx = make([]float64, len(x))
	dw = make([]float64, ch)
	db = make([]float64, ch)
	for g := 0; g < n*groups; g++ {
		var sg, sgx float64
		for e := 0; e < m; e++ {
			c := (g%groups)*cpg + e/hw
			i := g*m + e
			xh := (x[i] - mean[g]) * rstd[g]
			sg += dy[i] * pbAt(w, c)
			sgx += dy[i] * pbAt(w, c) * xh
			dw[c] += dy[i] * xh
			db[c] += dy[i]
		}
		sg /= float64(m)
		sgx /= float64(m)
		for e := 0; e < m; e++ {
			c := (g%groups)*cpg + e/hw
			i := g*m + e
			xh := (x[i] - mean[g]) * rstd[g]
			dx[i] = rstd[g] * (dy[i]*pbAt(w, c) - sg - xh*sgx)
		}
	}
	return dx, dw, db
}

// pbPutOpt is Put for an optional operand: when present is false it returns
// a nil buffer and nil values.
func pbPutOpt(t *testing.T, b kernels.Backend, d kernels.DType, present bool, v []float64) (kernels.Buffer, []float64) {
	t.Helper()
	if !present {
		return nil, nil
	}
	return Put(t, b, d, v)
}

// pbPoisonOpt is Poisoned for an optional output.
func pbPoisonOpt(t *testing.T, b kernels.Backend, d kernels.DType, n int, present bool) kernels.Buffer {
	t.Helper()
	if !present {
		return nil
	}
	return Poisoned(t, b, d, n)
}

func testRMSNorm(t *testing.T, b kernels.Backend) {
	// Autocast feeds norms bf16 activations with fp32 weights and wants fp32
	// out: mixed dtypes are computed in float32 and rounded once, so the
	// result is as exact as an all-F32 run on the same values.
	t.Run("mixed/x=BF16,w=F32,y=F32,dx=BF16", func(t *testing.T) {
		r := Rng(t)
		const rows, cols, eps = 13, 37, 1e-6
		xb, x := Put(t, b, kernels.BF16, Randn(r, rows*cols, 1))
		wb, w := Put(t, b, kernels.F32, pbShift(Randn(r, cols, 0.2), 1))
		yb, rb := Poisoned(t, b, kernels.F32, rows*cols), Poisoned(t, b, kernels.F32, rows)
		b.RMSNorm(yb, rb, xb, wb, rows, cols, eps)
		y, _ := rmsNormRef(x, w, rows, cols, eps)
		Check(t, "y", Get(t, b, yb), y, Tol(kernels.F32, kernels.F32))
		dyb, dy := Put(t, b, kernels.F32, Randn(r, rows*cols, 1))
		dxb, dwb := Poisoned(t, b, kernels.BF16, rows*cols), Poisoned(t, b, kernels.F32, cols)
		b.RMSNormGrad(dxb, dwb, dyb, xb, wb, rb, rows, cols)
		dx, dw := rmsNormGradRef(dy, x, w, rows, cols, eps)
		Check(t, "dx", Get(t, b, dxb), dx, Tol(kernels.BF16, kernels.BF16))
		Check(t, "dw", Get(t, b, dwb), dw, Tol(kernels.F32, kernels.F32))
	})
	for ci, sz := range []struct {
		rows, cols int
		weight, dw bool
	}{
		{13, 100, true, true},
		{7, 37, false, true},
		{1, 7, true, false},
		{37, 13, false, false},
		{129, 300, true, true}, // big enough that the backend splits rows and columns over cores
		{1500, 40, true, true}, // many rows, few columns (q/k norms): GPUs split the rows for dw
	} {
		for _, d := range pbDTypesFor(ci) {
			name := fmt.Sprintf("%v/%dx%d/w=%v/dw=%v", d, sz.rows, sz.cols, sz.weight, sz.dw)
			t.Run(name, func(t *testing.T) {
				r := Rng(t)
				const eps = 1e-6
				n := sz.rows * sz.cols
				st := pbStat(d)
				xb, x := Put(t, b, d, Randn(r, n, 1.5))
				wb, w := pbPutOpt(t, b, d, sz.weight, pbShift(Randn(r, sz.cols, 0.2), 1))
				yb := Poisoned(t, b, d, n)
				rb := Poisoned(t, b, st, sz.rows)
				b.RMSNorm(yb, rb, xb, wb, sz.rows, sz.cols, eps)
				y, rstd := rmsNormRef(x, w, sz.rows, sz.cols, eps)
				Check(t, "y", Get(t, b, yb), y, Tol(d, d))
				Check(t, "rstd", Get(t, b, rb), rstd, Tol(d, st))

				dyb, dy := Put(t, b, d, Randn(r, n, 1))
				dxb := Poisoned(t, b, d, n)
				dwb := pbPoisonOpt(t, b, st, sz.cols, sz.dw)
				b.RMSNormGrad(dxb, dwb, dyb, xb, wb, rb, sz.rows, sz.cols)
				dx, dw := rmsNormGradRef(dy, x, w, sz.rows, sz.cols, eps)
				Check(t, "dx", Get(t, b, dxb), dx, Tol(d, d))
				if sz.dw {
					Check(t, "dw", Get(t, b, dwb), dw, Tol(d, st))
				}
			})
		}
	}
}

// testLayerNorm runs LayerNorm over rows with inputs offset from zero.
func testLayerNorm(t *testing.T, b kernels.Backend) {
	for ci, sz := range []struct {
		rows, cols     int
		weight, bias   bool
		dw, db, offset bool
	}{
		{13, 37, true, true, true, true, true},
		{7, 100, false, true, false, true, false},
		{37, 7, true, false, true, false, true},
		{1, 13, false, false, false, false, true},
		{129, 300, true, true, true, true, true},
		{1500, 24, true, true, true, true, true},
	} {
		for _, d := range pbDTypesFor(ci) {
			name := fmt.Sprintf("%v/%dx%d/w=%v/b=%v", d, sz.rows, sz.cols, sz.weight, sz.bias)
			t.Run(name, func(t *testing.T) {
				r := Rng(t)
				const eps = 1e-5
				n := sz.rows * sz.cols
				st := pbStat(d)
				xv := Randn(r, n, 0.7)
				if sz.offset {
					pbShift(xv, 3)
				}
				xb, x := Put(t, b, d, xv)
				wb, w := pbPutOpt(t, b, d, sz.weight, pbShift(Randn(r, sz.cols, 0.2), 1))
				bb, bias := pbPutOpt(t, b, d, sz.bias, Randn(r, sz.cols, 0.5))
				yb := Poisoned(t, b, d, n)
				mb := Poisoned(t, b, st, sz.rows)
				rb := Poisoned(t, b, st, sz.rows)
				b.LayerNorm(yb, mb, rb, xb, wb, bb, sz.rows, sz.cols, eps)
				y, mean, rstd := groupNormRef(x, w, bias, sz.rows, sz.cols, 1, 1, eps)
				Check(t, "y", Get(t, b, yb), y, Tol(d, d))
				Check(t, "mean", Get(t, b, mb), mean, Tol(d, st))
				Check(t, "rstd", Get(t, b, rb), rstd, Tol(d, st))

				dyb, dy := Put(t, b, d, Randn(r, n, 1))
				dxb := Poisoned(t, b, d, n)
				dwb := pbPoisonOpt(t, b, st, sz.cols, sz.dw)
				dbb := pbPoisonOpt(t, b, st, sz.cols, sz.db)
				b.LayerNormGrad(dxb, dwb, dbb, dyb, xb, wb, mb, rb, sz.rows, sz.cols)
				dx, dw, db := groupNormGradRef(dy, x, w, sz.rows, sz.cols, 1, 1, eps)
				Check(t, "dx", Get(t, b, dxb), dx, Tol(d, d))
				if sz.dw {
					Check(t, "dw", Get(t, b, dwb), dw, Tol(d, st))
				}
				if sz.db {
					Check(t, "db", Get(t, b, dbb), db, Tol(d, st))
				}
			})
		}
	}
}

func testGroupNorm(t *testing.T, b kernels.Backend) {
	for ci, sz := range []struct {
		n, ch, hw, groups int
		affine, grads     bool
	}{
		{2, 12, 13, 4, true, true},
		{1, 6, 37, 1, false, true},
		{3, 10, 7, 10, true, false},
		{2, 9, 1, 3, true, true},
		{4, 8, 1100, 2, true, true},
		// The VAE's 32 groups on sides that are multiples of 8 (the CUDA
		// backend's multi-block kernels), the second with groups long
		// enough to be split over several blocks.
		{1, 64, 1024, 32, true, true},
		{1, 32, 16384, 8, true, false},
	} {
		for _, d := range pbDTypesFor(ci) {
			name := fmt.Sprintf("%v/n%d_c%d_hw%d_g%d/affine=%v", d, sz.n, sz.ch, sz.hw, sz.groups, sz.affine)
			t.Run(name, func(t *testing.T) {
				r := Rng(t)
				const eps = 1e-6
				n := sz.n * sz.ch * sz.hw
				ng := sz.n * sz.groups
				st := pbStat(d)
				xb, x := Put(t, b, d, pbShift(Randn(r, n, 2), -1.5))
				wb, w := pbPutOpt(t, b, d, sz.affine, pbShift(Randn(r, sz.ch, 0.3), 1))
				bb, bias := pbPutOpt(t, b, d, sz.affine, Randn(r, sz.ch, 0.5))
				yb := Poisoned(t, b, d, n)
				mb := Poisoned(t, b, st, ng)
				rb := Poisoned(t, b, st, ng)
				b.GroupNorm(yb, mb, rb, xb, wb, bb, sz.n, sz.ch, sz.hw, sz.groups, eps)
				y, mean, rstd := groupNormRef(x, w, bias, sz.n, sz.ch, sz.hw, sz.groups, eps)
				Check(t, "y", Get(t, b, yb), y, Tol(d, d))
				Check(t, "mean", Get(t, b, mb), mean, Tol(d, st))
				Check(t, "rstd", Get(t, b, rb), rstd, Tol(d, st))

				dyb, dy := Put(t, b, d, Randn(r, n, 1))
				dxb := Poisoned(t, b, d, n)
				dwb := pbPoisonOpt(t, b, st, sz.ch, sz.grads)
				dbb := pbPoisonOpt(t, b, st, sz.ch, sz.grads)
				b.GroupNormGrad(dxb, dwb, dbb, dyb, xb, wb, mb, rb, sz.n, sz.ch, sz.hw, sz.groups)
				dx, dw, db := groupNormGradRef(dy, x, w, sz.n, sz.ch, sz.hw, sz.groups, eps)
				Check(t, "dx", Get(t, b, dxb), dx, Tol(d, d))
				if sz.grads {
					Check(t, "dw", Get(t, b, dwb), dw, Tol(d, st))
					Check(t, "db", Get(t, b, dbb), db, Tol(d, st))
				}
			})
		}
	}
}

// testNormReferenceGradients checks the closed-form reference backwards
// above against central differences of the reference forwards, so a wrong
// formula cannot pass by agreeing with an equally wrong backend. It needs no
// backend: the references are plain float64 code.
func testNormReferenceGradients(t *testing.T, _ kernels.Backend) {
	r := Rng(t)
	const h, tol = 1e-6, 1e-7
	t.Run("RMSNorm", func(t *testing.T) {
		rows, cols := 3, 5
		x, w, g := Randn(r, rows*cols, 1), pbShift(Randn(r, cols, 0.3), 1), Randn(r, rows*cols, 1)
		loss := func() float64 { y, _ := rmsNormRef(x, w, rows, cols, 1e-3); return pbDot(y, g) }
		dx, dw := rmsNormGradRef(g, x, w, rows, cols, 1e-3)
		Check(t, "dx", dx, pbNumGrad(loss, x, h), tol)
		Check(t, "dw", dw, pbNumGrad(loss, w, h), tol)
	})
	for _, sz := range []struct{ n, ch, hw, groups int }{{2, 4, 3, 2}, {3, 5, 1, 1}} {
		t.Run(fmt.Sprintf("GroupNorm/n%d_c%d_hw%d_g%d", sz.n, sz.ch, sz.hw, sz.groups), func(t *testing.T) {
			n := sz.n * sz.ch * sz.hw
			x, g := pbShift(Randn(r, n, 1), 2), Randn(r, n, 1)
			w, bias := pbShift(Randn(r, sz.ch, 0.3), 1), Randn(r, sz.ch, 1)
			loss := func() float64 {
				y, _, _ := groupNormRef(x, w, bias, sz.n, sz.ch, sz.hw, sz.groups, 1e-3)
				return pbDot(y, g)
			}
			dx, dw, db := groupNormGradRef(g, x, w, sz.n, sz.ch, sz.hw, sz.groups, 1e-3)
			Check(t, "dx", dx, pbNumGrad(loss, x, h), tol)
			Check(t, "dw", dw, pbNumGrad(loss, w, h), tol)
			Check(t, "db", db, pbNumGrad(loss, bias, h), tol)
		})
	}
}

// pbRand draws n values uniform in [lo, hi) (rotary angles, attention
// masks' lengths).
func pbRand(r *rand.Rand, n int, lo, hi float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + (hi-lo)*r.Float64()
	}
	return v
}
