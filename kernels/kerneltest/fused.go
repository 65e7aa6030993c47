package kerneltest

import (
	"fmt"
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("NormScale", testNormScale)
	register("QKVNormRope", testQKVNormRope)
	register("FusedReferenceGradients", testFusedReferenceGradients)
}

// scaleRef is the mode's function and its derivative at s.
func scaleRef(mode kernels.ScaleMode, s float64) (f, df float64) {
	switch mode {
	case kernels.ScaleOnePlus:
		return 1 + s, 1
	case kernels.ScaleTanh:
		t := math.Tanh(s)
		return t, 1 - t*t
	}
	return s, 1
}

// nsShape is one NormScale problem: rows = samples·seq of cols; the factor
// is chunk `chunk` of a [samples, chunks·cols] buffer.
type nsShape struct {
	samples, seq, cols int
	chunk, chunks      int
	mode               kernels.ScaleMode
	factor, res, w     bool
}

func (s nsShape) rows() int { return s.samples * s.seq }

// factorAt is the index of column j of sample b's factor in S.
func (s nsShape) factorAt(b, j int) int { return b*s.chunks*s.cols + s.chunk*s.cols + j }

// normScaleRef is y = res + RMSNorm(x)·w ⊙ f(S) in float64, with the norm
// n and rstd it passes through.
func normScaleRef(sh nsShape, x, w, sv, res []float64, eps float64) (y, n, rstd []float64) {
	n, rstd = rmsNormRef(x, w, sh.rows(), sh.cols, eps)
	y = make([]float64, len(n))
	for r := range sh.rows() {
		for j := range sh.cols {
			i := r*sh.cols + j
			v := n[i]
			if sv != nil {
				f, _ := scaleRef(sh.mode, sv[sh.factorAt(r/sh.seq, j)])
				v *= f
			}
			if res != nil {
				v += res[i]
			}
			y[i] = v
		}
	}
	return y, n, rstd
}

// normScaleGradRef is the closed-form backward: dn = dy⊙f(S), dx =
// RMSNormGrad(dn), and ds (shaped like S, zero outside the chunk) =
// f'(S)·Σ_rows dy⊙n per sample.
func normScaleGradRef(sh nsShape, dy, x, w, sv []float64, eps float64) (dx, ds []float64) {
	_, n, _ := normScaleRef(sh, x, w, nil, nil, eps)
	dn := append([]float64(nil), dy...)
	if sv != nil {
		ds = make([]float64, len(sv))
		for r := range sh.rows() {
			for j := range sh.cols {
				i, k := r*sh.cols+j, sh.factorAt(r/sh.seq, j)
				f, _ := scaleRef(sh.mode, sv[k])
				dn[i] = dy[i] * f
				ds[k] += dy[i] * n[i]
			}
		}
		for b := range sh.samples {
			for j := range sh.cols {
				k := sh.factorAt(b, j)
				_, df := scaleRef(sh.mode, sv[k])
				ds[k] *= df
			}
		}
	}
	dx, _ = rmsNormGradRef(dn, x, w, sh.rows(), sh.cols, eps)
	return dx, ds
}

func testNormScale(t *testing.T, b kernels.Backend) {
	// Shapes: a generic width (37), the lane-group widths of the bf16 row
	// kernels (96: one chunk a lane; 264: up to two; 2312: re-read), the
	// modulated block's chunks (scale, then gate, inside a [B, 4·cols]
	// modulation) and the unmodulated refiner's norm-and-residual.
	for ci, sh := range []nsShape{
		{2, 7, 37, 0, 4, kernels.ScaleOnePlus, true, false, true},
		{3, 5, 96, 1, 4, kernels.ScaleTanh, true, true, true},
		{1, 13, 264, 2, 4, kernels.ScaleOnePlus, true, false, false},
		{2, 3, 2312, 3, 4, kernels.ScaleTanh, true, true, true},
		{2, 9, 96, 0, 1, kernels.ScaleAsIs, true, true, true},
		{1, 17, 40, 0, 0, kernels.ScaleAsIs, false, true, true},
		{2, 300, 48, 1, 2, kernels.ScaleTanh, true, true, true}, // many rows a sample: the GPU splits them for ds
	} {
		for _, d := range pbDTypesFor(ci) {
			name := fmt.Sprintf("%v/%dx%dx%d/%v/chunk%dof%d/factor=%v/res=%v/w=%v", d, sh.samples, sh.seq, sh.cols, sh.mode,
				sh.chunk, sh.chunks, sh.factor, sh.res, sh.w)
			t.Run(name, func(t *testing.T) {
				r := Rng(t)
				const eps = 1e-5
				rows, n := sh.rows(), sh.rows()*sh.cols
				st := pbStat(d)
				xb, x := Put(t, b, d, Randn(r, n, 1.5))
				wb, w := pbPutOpt(t, b, d, sh.w, pbShift(Randn(r, sh.cols, 0.2), 1))
				sb, sv := pbPutOpt(t, b, d, sh.factor, Randn(r, sh.samples*max(sh.chunks, 1)*sh.cols, 0.7))
				rb, res := pbPutOpt(t, b, d, sh.res, Randn(r, n, 1))
				a := kernels.NormScaleArgs{Rows: rows, Cols: sh.cols, Eps: eps, S: sb, Seq: sh.seq,
					SOff: sh.chunk * sh.cols, SStride: sh.chunks * sh.cols, Mode: sh.mode, Res: rb}
				yb, rsb := Poisoned(t, b, d, n), Poisoned(t, b, st, rows)
				b.NormScale(yb, rsb, xb, wb, a)
				y, _, rstd := normScaleRef(sh, x, w, sv, res, eps)
				Check(t, "y", Get(t, b, yb), y, Tol(d, d))
				Check(t, "rstd", Get(t, b, rsb), rstd, Tol(d, st))

				dyb, dy := Put(t, b, d, Randn(r, n, 1))
				dxb := Poisoned(t, b, d, n)
				var dsb kernels.Buffer
				if sh.factor {
					dsb = Poisoned(t, b, d, len(sv))
				}
				ga := a
				ga.Res = nil // the backward's Res is a gradient to add to (below)
				b.NormScaleGrad(dxb, dsb, dyb, xb, wb, rsb, ga)
				dx, ds := normScaleGradRef(sh, dy, x, w, sv, eps)
				Check(t, "dx", Get(t, b, dxb), dx, Tol(d, d))
				if sh.factor {
					Check(t, "ds", Get(t, b, dsb), ds, Tol(d, d))
					// The factor's gradient without asking for ds: dx alone.
					dx2 := Poisoned(t, b, d, n)
					b.NormScaleGrad(dx2, nil, dyb, xb, wb, rsb, ga)
					Check(t, "dx without ds", Get(t, b, dx2), dx, Tol(d, d))
				}
				if sh.res {
					// dx added into a gradient already there, in place (a
					// pending gradient of x), with ds beside it.
					pb, pend := Put(t, b, d, Randn(r, n, 0.5))
					ga.Res = pb
					var ds3 kernels.Buffer
					if sh.factor {
						ds3 = Poisoned(t, b, d, len(sv))
					}
					b.NormScaleGrad(pb, ds3, dyb, xb, wb, rsb, ga)
					want := make([]float64, n)
					for i := range want {
						want[i] = pend[i] + dx[i]
					}
					Check(t, "dx into a pending gradient", Get(t, b, pb), want, Tol(d, d))
					if sh.factor {
						Check(t, "ds beside it", Get(t, b, ds3), ds, Tol(d, d))
					}
				}
			})
		}
	}
	// The f32 model under bf16 autocast: x, w and y in F32, the factor in
	// BF16 (an autocast linear's output), dy F32.
	t.Run("mixed/x=F32,S=BF16", func(t *testing.T) {
		r := Rng(t)
		sh := nsShape{2, 5, 24, 1, 4, kernels.ScaleTanh, true, true, true}
		rows, n := sh.rows(), sh.rows()*sh.cols
		xb, x := Put(t, b, kernels.F32, Randn(r, n, 1))
		wb, w := Put(t, b, kernels.F32, pbShift(Randn(r, sh.cols, 0.2), 1))
		sb, sv := Put(t, b, kernels.BF16, Randn(r, sh.samples*sh.chunks*sh.cols, 0.7))
		rb, res := Put(t, b, kernels.F32, Randn(r, n, 1))
		a := kernels.NormScaleArgs{Rows: rows, Cols: sh.cols, Eps: 1e-5, S: sb, Seq: sh.seq, SOff: sh.cols, SStride: 4 * sh.cols, Mode: sh.mode, Res: rb}
		yb, rsb := Poisoned(t, b, kernels.F32, n), Poisoned(t, b, kernels.F32, rows)
		b.NormScale(yb, rsb, xb, wb, a)
		// The factor is rounded to bf16 after tanh: the reference does so too.
		svr := append([]float64(nil), sv...)
		for i, v := range svr {
			svr[i] = math.Atanh(Quantize(kernels.BF16, []float64{math.Tanh(v)})[0])
		}
		y, _, _ := normScaleRef(sh, x, w, svr, res, 1e-5)
		Check(t, "y", Get(t, b, yb), y, Tol(kernels.F32, kernels.F32))
		dyb, dy := Put(t, b, kernels.F32, Randn(r, n, 1))
		dxb, dsb := Poisoned(t, b, kernels.F32, n), Poisoned(t, b, kernels.BF16, len(sv))
		ga := a
		ga.Res = nil
		b.NormScaleGrad(dxb, dsb, dyb, xb, wb, rsb, ga)
		dx, _ := normScaleGradRef(sh, dy, x, w, svr, 1e-5)
		_, ds := normScaleGradRef(sh, dy, x, w, sv, 1e-5)
		Check(t, "dx", Get(t, b, dxb), dx, Tol(kernels.F32, kernels.F32))
		Check(t, "ds", Get(t, b, dsb), ds, Tol(kernels.BF16, kernels.BF16))
	})
}

// qkvRef is q, k and v of QKVNormRope in float64, with the rstd of each
// head.
func qkvRef(a kernels.QKVArgs, qkv, wq, wk, cos, sin []float64) (q, k, v, rq, rk []float64) {
	rows, w := a.B*a.S, a.Width()
	part := func(off, heads int) []float64 {
		out := make([]float64, rows*heads*a.D)
		for p := range rows {
			copy(out[p*heads*a.D:(p+1)*heads*a.D], qkv[p*w+off:p*w+off+heads*a.D])
		}
		return out
	}
	xq, xk := part(0, a.Hq), part(a.Hq*a.D, a.Hkv)
	nq, rq := rmsNormRef(xq, wq, rows*a.Hq, a.D, a.Eps)
	nk, rk := rmsNormRef(xk, wk, rows*a.Hkv, a.D, a.Eps)
	q = ropeRef(nq, cos, sin, a.B, a.S, a.Hq, a.D, a.Interleaved, false)
	k = ropeRef(nk, cos, sin, a.B, a.S, a.Hkv, a.D, a.Interleaved, false)
	return q, k, part((a.Hq+a.Hkv)*a.D, a.Hkv), rq, rk
}

// qkvGradRef is dqkv: the inverse rotations, the norms' backward and dv,
// each into its heads' columns.
func qkvGradRef(a kernels.QKVArgs, dq, dk, dv, qkv, wq, wk, cos, sin []float64) []float64 {
	rows, w := a.B*a.S, a.Width()
	out := make([]float64, rows*w)
	for _, h := range []struct {
		g, wt     []float64
		heads, at int
	}{{dq, wq, a.Hq, 0}, {dk, wk, a.Hkv, a.Hq * a.D}} {
		n := h.heads * a.D
		x := make([]float64, rows*n)
		for p := range rows {
			copy(x[p*n:(p+1)*n], qkv[p*w+h.at:p*w+h.at+n])
		}
		gr := ropeRef(h.g, cos, sin, a.B, a.S, h.heads, a.D, a.Interleaved, true)
		dx, _ := rmsNormGradRef(gr, x, h.wt, rows*h.heads, a.D, a.Eps)
		for p := range rows {
			copy(out[p*w+h.at:p*w+h.at+n], dx[p*n:(p+1)*n])
		}
	}
	nv, at := a.Hkv*a.D, (a.Hq+a.Hkv)*a.D
	for p := range rows {
		copy(out[p*w+at:p*w+at+nv], dv[p*nv:(p+1)*nv])
	}
	return out
}

func testQKVNormRope(t *testing.T, b kernels.Backend) {
	// 96 is the model's head (12 chunks: 16 lanes on the GPU's bf16 path),
	// 40 and 8 other lane widths, 6 and the rotate-half layout the generic
	// kernels.
	for ci, sz := range []struct {
		b, s, hq, hkv, d int
		interleaved, w   bool
	}{
		{2, 5, 3, 1, 96, true, true},
		{1, 13, 4, 2, 40, true, true},
		{3, 3, 2, 2, 8, true, false},
		{1, 7, 2, 1, 6, true, true},
		{2, 4, 2, 1, 16, false, true},
		{1, 37, 24, 8, 96, true, true}, // the model's heads
	} {
		for _, d := range pbDTypesFor(ci) {
			name := fmt.Sprintf("%v/b%d_s%d_hq%d_hkv%d_d%d/interleaved=%v/w=%v", d, sz.b, sz.s, sz.hq, sz.hkv, sz.d, sz.interleaved, sz.w)
			t.Run(name, func(t *testing.T) {
				r := Rng(t)
				a := kernels.QKVArgs{B: sz.b, S: sz.s, Hq: sz.hq, Hkv: sz.hkv, D: sz.d, Eps: 1e-6, Interleaved: sz.interleaved}
				rows := a.B * a.S
				st := pbStat(d)
				xb, x := Put(t, b, d, Randn(r, rows*a.Width(), 1.3))
				wqb, wq := pbPutOpt(t, b, d, sz.w, pbShift(Randn(r, a.D, 0.2), 1))
				wkb, wk := pbPutOpt(t, b, d, sz.w, pbShift(Randn(r, a.D, 0.2), 1))
				cosv, sinv := ropeTables(r, rows*a.D/2)
				cb, cosq := Put(t, b, st, cosv)
				sb, sinq := Put(t, b, st, sinv)
				nq, nk := rows*a.Hq*a.D, rows*a.Hkv*a.D
				qb, kb, vb := Poisoned(t, b, d, nq), Poisoned(t, b, d, nk), Poisoned(t, b, d, nk)
				rqb, rkb := Poisoned(t, b, st, rows*a.Hq), Poisoned(t, b, st, rows*a.Hkv)
				b.QKVNormRope(qb, kb, vb, rqb, rkb, xb, wqb, wkb, cb, sb, a)
				q, k, v, rq, rk := qkvRef(a, x, wq, wk, cosq, sinq)
				Check(t, "q", Get(t, b, qb), q, Tol(d, d))
				Check(t, "k", Get(t, b, kb), k, Tol(d, d))
				Check(t, "v", Get(t, b, vb), v, 0)
				Check(t, "rstdQ", Get(t, b, rqb), rq, Tol(d, st))
				Check(t, "rstdK", Get(t, b, rkb), rk, Tol(d, st))

				dqb, dq := Put(t, b, d, Randn(r, nq, 1))
				dkb, dk := Put(t, b, d, Randn(r, nk, 1))
				dvb, dv := Put(t, b, d, Randn(r, nk, 1))
				db := Poisoned(t, b, d, rows*a.Width())
				b.QKVNormRopeGrad(db, dqb, dkb, dvb, xb, wqb, wkb, rqb, rkb, cb, sb, a)
				Check(t, "dqkv", Get(t, b, db), qkvGradRef(a, dq, dk, dv, x, wq, wk, cosq, sinq), Tol(d, d))
			})
		}
	}
}

// testFusedReferenceGradients checks the fused ops' reference backwards
// against central differences of their reference forwards.
func testFusedReferenceGradients(t *testing.T, _ kernels.Backend) {
	r := Rng(t)
	const h, tol, eps = 1e-6, 1e-7, 1e-3
	for _, mode := range []kernels.ScaleMode{kernels.ScaleAsIs, kernels.ScaleOnePlus, kernels.ScaleTanh} {
		t.Run("NormScale/"+mode.String(), func(t *testing.T) {
			sh := nsShape{2, 3, 5, 1, 3, mode, true, true, true}
			n := sh.rows() * sh.cols
			x, w, g := Randn(r, n, 1), pbShift(Randn(r, sh.cols, 0.3), 1), Randn(r, n, 1)
			sv, res := Randn(r, sh.samples*sh.chunks*sh.cols, 0.5), Randn(r, n, 1)
			loss := func() float64 { y, _, _ := normScaleRef(sh, x, w, sv, res, eps); return pbDot(y, g) }
			dx, ds := normScaleGradRef(sh, g, x, w, sv, eps)
			Check(t, "dx", dx, pbNumGrad(loss, x, h), tol)
			Check(t, "ds", ds, pbNumGrad(loss, sv, h), tol)
			Check(t, "dres", g, pbNumGrad(loss, res, h), tol)
		})
	}
	for _, il := range []bool{true, false} {
		t.Run(fmt.Sprintf("QKVNormRope/interleaved=%v", il), func(t *testing.T) {
			a := kernels.QKVArgs{B: 2, S: 2, Hq: 2, Hkv: 1, D: 4, Eps: eps, Interleaved: il}
			rows := a.B * a.S
			x := Randn(r, rows*a.Width(), 1)
			wq, wk := pbShift(Randn(r, a.D, 0.3), 1), pbShift(Randn(r, a.D, 0.3), 1)
			cos, sin := ropeTables(r, rows*a.D/2)
			gq, gk, gv := Randn(r, rows*a.Hq*a.D, 1), Randn(r, rows*a.Hkv*a.D, 1), Randn(r, rows*a.Hkv*a.D, 1)
			loss := func() float64 {
				q, k, v, _, _ := qkvRef(a, x, wq, wk, cos, sin)
				return pbDot(q, gq) + pbDot(k, gk) + pbDot(v, gv)
			}
			Check(t, "dqkv", qkvGradRef(a, gq, gk, gv, x, wq, wk, cos, sin), pbNumGrad(loss, x, h), tol)
		})
	}
}

func init() { register("SwiGLU", testSwiGLU) }

// silu and its derivative in float64.
func siluRef(x float64) (y, dy float64) {
	s := 1 / (1 + math.Exp(-x))
	return x * s, s * (1 + x*(1-s))
}

// testSwiGLU checks y = SiLU(a)·b, da = SiLU'(a)·dy·b and db = dy·SiLU(a)
// against float64, with each gradient asked for alone as well, and db
// written over dy.
func testSwiGLU(t *testing.T, b kernels.Backend) {
	for ci, n := range []int{37, 8 * 13, 4096 + 8} {
		for _, d := range pbDTypesFor(ci) {
			t.Run(fmt.Sprintf("%v/n%d", d, n), func(t *testing.T) {
				r := Rng(t)
				ab, a := Put(t, b, d, Randn(r, n, 2))
				vb, v := Put(t, b, d, Randn(r, n, 1))
				gb, g := Put(t, b, d, Randn(r, n, 1))
				y, da, db := make([]float64, n), make([]float64, n), make([]float64, n)
				for i := range y {
					s, ds := siluRef(a[i])
					y[i], da[i], db[i] = s*v[i], ds*g[i]*v[i], g[i]*s
				}
				yb := Poisoned(t, b, d, n)
				b.SwiGLU(yb, ab, vb)
				Check(t, "y", Get(t, b, yb), y, Tol(d, d))
				dab, dbb := Poisoned(t, b, d, n), Poisoned(t, b, d, n)
				b.SwiGLUGrad(dab, dbb, gb, ab, vb)
				Check(t, "da", Get(t, b, dab), da, Tol(d, d))
				Check(t, "db", Get(t, b, dbb), db, Tol(d, d))
				only := Poisoned(t, b, d, n)
				b.SwiGLUGrad(only, nil, gb, ab, vb)
				Check(t, "da alone", Get(t, b, only), da, Tol(d, d))
				b.SwiGLUGrad(nil, only, gb, ab, vb)
				Check(t, "db alone", Get(t, b, only), db, Tol(d, d))
				// db into dy's own storage (the backward of
				// SwiGLULoRALinear reuses its dg so).
				inPlace, _ := Put(t, b, d, g)
				da2 := Poisoned(t, b, d, n)
				b.SwiGLUGrad(da2, inPlace, inPlace, ab, vb)
				Check(t, "da beside db in dy", Get(t, b, da2), da, Tol(d, d))
				Check(t, "db in dy", Get(t, b, inPlace), db, Tol(d, d))
			})
		}
	}
}
