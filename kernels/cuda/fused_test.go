package cuda

import (
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// fusedCrossCases are TestAgainstCPU's cases for the fused ops of
// fused_norm.cu: each shape that picks a different kernel (the generic
// ones, the bf16 row kernels with one, two or re-read chunks a lane, the
// bf16 QKV kernels) in each dtype, and each once more with the fused
// kernels off (NEWBIE_TRAIN_CUDA_OFF=fused), which runs the compositions of primitives.
func fusedCrossCases() []xcase {
	var cs []xcase
	// without runs a case with the named fast paths off (on the CUDA
	// backend; the CPU has none).
	without := func(off map[string]bool, run func(e *env) [][]float64) func(e *env) [][]float64 {
		return func(e *env) [][]float64 {
			if g, ok := e.b.(*Backend); ok {
				prev := g.off
				g.off = off
				defer func() { g.off = prev }()
			}
			return run(e)
		}
	}
	add := func(name string, tol float64, run func(e *env) [][]float64) {
		cs = append(cs, xcase{name, tol, run})
		cs = append(cs, xcase{name + "/composed", tol, without(map[string]bool{fastFused: true}, run)})
	}
	for _, d := range []kernels.DType{f32, bf16, f64} {
		tol := kerneltest.Tol(d, d)
		st := f32
		if d == f64 {
			st = f64
		}
		for _, sh := range []struct {
			samples, seq, cols, chunk int
			mode                      kernels.ScaleMode
			res                       bool
		}{{2, 7, 37, 1, kernels.ScaleTanh, true}, {3, 5, 96, 0, kernels.ScaleOnePlus, false}, {1, 9, 264, 3, kernels.ScaleTanh, true},
			{2, 3, 2312, 2, kernels.ScaleOnePlus, true}, {1, 600, 64, 1, kernels.ScaleTanh, true},
			// Wide rows of many slices for the factor's column pass.
			{2, 301, 2304, 1, kernels.ScaleTanh, true}} {
			name := "NormScale/" + d.String() + "/" + itoa(sh.samples) + "x" + itoa(sh.seq) + "x" + itoa(sh.cols) + "/" + sh.mode.String()
			run := func(e *env) [][]float64 {
				rows, n := sh.samples*sh.seq, sh.samples*sh.seq*sh.cols
				x, w, s, dy := e.randn(d, n), e.randn(d, sh.cols), e.randn(d, sh.samples*4*sh.cols), e.randn(d, n)
				var res kernels.Buffer
				if sh.res {
					res = e.randn(d, n)
				}
				a := kernels.NormScaleArgs{Rows: rows, Cols: sh.cols, Eps: 1e-5, S: s, Seq: sh.seq, SOff: sh.chunk * sh.cols,
					SStride: 4 * sh.cols, Mode: sh.mode, Res: res}
				y, r := e.poison(d, n), e.poison(st, rows)
				e.b.NormScale(y, r, x, w, a)
				dx, ds := e.poison(d, n), e.poison(d, s.Len())
				e.b.NormScaleGrad(dx, ds, dy, x, w, r, a)
				// No factor, no weight: the refiner's norm with its residual.
				plain := kernels.NormScaleArgs{Rows: rows, Cols: sh.cols, Eps: 1e-5, Res: res}
				y2, r2, dx2 := e.poison(d, n), e.poison(st, rows), e.poison(d, n)
				e.b.NormScale(y2, r2, x, nil, plain)
				e.b.NormScaleGrad(dx2, nil, dy, x, nil, r2, plain)
				return [][]float64{e.get(y), e.get(r), e.get(dx), e.get(ds), e.get(y2), e.get(r2), e.get(dx2)}
			}
			add(name, tol, run)
		}
		for _, sz := range []struct {
			b, s, hq, hkv, d int
			interleaved      bool
		}{{2, 5, 3, 1, 96, true}, {1, 37, 24, 8, 96, true}, {1, 13, 4, 2, 40, true}, {3, 3, 2, 2, 8, true}, {2, 4, 2, 1, 16, false}, {1, 5, 2, 1, 6, true}} {
			name := "QKVNormRope/" + d.String() + "/b" + itoa(sz.b) + "_s" + itoa(sz.s) + "_h" + itoa(sz.hq) + "_" + itoa(sz.hkv) + "_d" + itoa(sz.d)
			if !sz.interleaved {
				name += "/rotate-half"
			}
			add(name, tol, func(e *env) [][]float64 {
				a := kernels.QKVArgs{B: sz.b, S: sz.s, Hq: sz.hq, Hkv: sz.hkv, D: sz.d, Eps: 1e-6, Interleaved: sz.interleaved}
				rows := a.B * a.S
				nq, nk := rows*a.Hq*a.D, rows*a.Hkv*a.D
				qkv, wq, wk := e.randn(d, rows*a.Width()), e.randn(d, a.D), e.randn(d, a.D)
				cos, sin := e.randn(st, rows*a.D/2), e.randn(st, rows*a.D/2)
				q, k, v, rq, rk := e.poison(d, nq), e.poison(d, nk), e.poison(d, nk), e.poison(st, rows*a.Hq), e.poison(st, rows*a.Hkv)
				e.b.QKVNormRope(q, k, v, rq, rk, qkv, wq, wk, cos, sin, a)
				dq, dk, dv, dqkv := e.randn(d, nq), e.randn(d, nk), e.randn(d, nk), e.poison(d, rows*a.Width())
				e.b.QKVNormRopeGrad(dqkv, dq, dk, dv, qkv, wq, wk, rq, rk, cos, sin, a)
				return [][]float64{e.get(q), e.get(k), e.get(v), e.get(rq), e.get(rk), e.get(dqkv)}
			})
		}
	}
	for _, d := range []kernels.DType{f32, bf16, f64} {
		for _, n := range []int{37, 4096 + 8} {
			add("SwiGLU/"+d.String()+"/n"+itoa(n), kerneltest.Tol(d, d), func(e *env) [][]float64 {
				a, b, g := e.randn(d, n), e.randn(d, n), e.randn(d, n)
				y, da, db, da2 := e.poison(d, n), e.poison(d, n), e.poison(d, n), e.poison(d, n)
				e.b.SwiGLU(y, a, b)
				e.b.SwiGLUGrad(da, db, g, a, b)
				e.b.SwiGLUGrad(da2, nil, g, a, b)
				return [][]float64{e.get(y), e.get(da), e.get(db), e.get(da2)}
			})
		}
	}
	return cs
}

// TestCrossCasesRunOnCPU runs every TestAgainstCPU case body on the CPU
// backend alone, so a case with bad arguments is caught on a machine
// without a GPU rather than in the one device run that would compare it.
func TestCrossCasesRunOnCPU(t *testing.T) {
	for i, tc := range crossCases() {
		if _, err := runCase(t, cpu.New(), uint64(i+1), tc.run); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
