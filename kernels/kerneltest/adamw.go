package kerneltest

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() { register("AdamW", testAdamW) }

// adamwTensor is one parameter tensor of an AdamW case: its size, the dtype of
// its gradient and its own learning rate and weight decay.
type adamwTensor struct {
	n       int
	grad    kernels.DType
	lr, wd  float64
	gradStd float64
}

// adamwRef is the textbook AdamW update (PyTorch's torch.optim.AdamW,
// decoupled decay first) in float64, one element at a time, written apart
// from any backend.
func adamwRef(p, g, m, v []float64, lr, wd, b1, b2, eps float64, step int, scale float64) {
	bc1 := 1 - math.Pow(b1, float64(step))
	bc2 := 1 - math.Pow(b2, float64(step))
	for j := range p {
		gj := g[j] * scale
		p[j] -= lr * wd * p[j]
		m[j] = b1*m[j] + (1-b1)*gj
		v[j] = b2*v[j] + (1-b2)*gj*gj
		mhat := m[j] / bc1
		vhat := v[j] / bc2
		p[j] -= lr * mhat / (math.Sqrt(vhat) + eps)
	}
}

func testAdamW(t *testing.T, b kernels.Backend) {
	// 33333 elements make the CPU backend split one tensor over several
	// goroutines, so a chunk boundary falls inside a tensor.
	mixed := []adamwTensor{
		{n: 7, grad: kernels.F32, lr: 1e-2, wd: 0.1, gradStd: 1},
		{n: 13, grad: kernels.BF16, lr: 3e-3, wd: 0, gradStd: 1e-3},
		{n: 1, grad: kernels.F16, lr: 5e-2, wd: 0.01, gradStd: 10},
		{n: 100, grad: kernels.BF16, lr: 1e-3, wd: 0.05, gradStd: 0.3},
		{n: 33333, grad: kernels.F32, lr: 2e-4, wd: 0.02, gradStd: 2},
	}
	f64 := []adamwTensor{
		{n: 37, grad: kernels.F64, lr: 1e-2, wd: 0.1, gradStd: 1},
		{n: 13, grad: kernels.F32, lr: 1e-3, wd: 0, gradStd: 1e-2},
	}
	for _, tc := range []struct {
		name      string
		param     kernels.DType
		tensors   []adamwTensor
		b1, b2    float64
		eps       float64
		step      int
		gradScale kernels.DType // 0: no GradScale buffer
		scale     float64
		skip      kernels.DType // 0: no Skip buffer
		skipValue float64
	}{
		{name: "f32/first step", param: kernels.F32, tensors: mixed, b1: 0.9, b2: 0.999, eps: 1e-8, step: 1},
		{name: "f32/step 7 scaled", param: kernels.F32, tensors: mixed, b1: 0.9, b2: 0.999, eps: 1e-8, step: 7,
			gradScale: kernels.F32, scale: 1.0 / 3000, skip: kernels.F32, skipValue: 0},
		{name: "f32/betas eps", param: kernels.F32, tensors: mixed, b1: 0.8, b2: 0.95, eps: 1e-6, step: 123,
			gradScale: kernels.F32, scale: 0.37, skip: kernels.I32, skipValue: 0},
		{name: "f32/skip", param: kernels.F32, tensors: mixed, b1: 0.9, b2: 0.999, eps: 1e-8, step: 3,
			gradScale: kernels.F32, scale: 0.5, skip: kernels.F32, skipValue: 1},
		{name: "f32/skip nan flag", param: kernels.F32, tensors: mixed, b1: 0.9, b2: 0.999, eps: 1e-8, step: 3,
			skip: kernels.F32, skipValue: math.NaN()},
		{name: "f64/step 5 scaled", param: kernels.F64, tensors: f64, b1: 0.9, b2: 0.999, eps: 1e-8, step: 5,
			gradScale: kernels.F64, scale: 1.0 / 65536, skip: kernels.F64, skipValue: 0},
		{name: "f64/skip", param: kernels.F64, tensors: f64, b1: 0.9, b2: 0.999, eps: 1e-8, step: 5,
			skip: kernels.F64, skipValue: -2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Rng(t)
			var a kernels.AdamWArgs
			a.Beta1, a.Beta2, a.Eps, a.Step = tc.b1, tc.b2, tc.eps, tc.step
			type host struct{ p, g, m, v []float64 }
			hosts := make([]host, len(tc.tensors))
			for i, ts := range tc.tensors {
				p, hp := Put(t, b, tc.param, Randn(r, ts.n, 1))
				g, hg := Put(t, b, ts.grad, Randn(r, ts.n, ts.gradStd))
				m, hm := Put(t, b, tc.param, Randn(r, ts.n, 0.1))
				vRaw := Randn(r, ts.n, 0.1)
				for j := range vRaw {
					vRaw[j] *= vRaw[j] // second moments are non-negative
				}
				v, hv := Put(t, b, tc.param, vRaw)
				a.Params = append(a.Params, p)
				a.Grads = append(a.Grads, g)
				a.M = append(a.M, m)
				a.V = append(a.V, v)
				a.LR = append(a.LR, ts.lr)
				a.WeightDecay = append(a.WeightDecay, ts.wd)
				hosts[i] = host{hp, hg, hm, hv}
			}
			scale := 1.0
			if tc.gradScale != 0 {
				var q []float64
				a.GradScale, q = Put(t, b, tc.gradScale, []float64{tc.scale})
				scale = q[0]
			}
			if tc.skip != 0 {
				a.Skip, _ = Put(t, b, tc.skip, []float64{tc.skipValue})
			}
			b.AdamW(a)
			if err := b.Sync(); err != nil {
				t.Fatalf("AdamW: %v", err)
			}
			skipped := tc.skip != 0 && tc.skipValue != 0
			tol := Tol(tc.param, tc.param)
			if skipped {
				tol = 0 // a skipped step must leave every bit as it was
			}
			for i, ts := range tc.tensors {
				h := hosts[i]
				wantP := append([]float64(nil), h.p...)
				wantM := append([]float64(nil), h.m...)
				wantV := append([]float64(nil), h.v...)
				if !skipped {
					adamwRef(wantP, h.g, wantM, wantV, ts.lr, ts.wd, tc.b1, tc.b2, tc.eps, tc.step, scale)
				}
				Check(t, "params "+strconv.Itoa(i), Get(t, b, a.Params[i]), wantP, tol)
				Check(t, "m "+strconv.Itoa(i), Get(t, b, a.M[i]), wantM, tol)
				Check(t, "v "+strconv.Itoa(i), Get(t, b, a.V[i]), wantV, tol)
			}
		})
	}

	// Working copies and zeroed gradients in the update's pass give the bits
	// of the update followed by one Cast and one Fill per tensor; a skipped
	// update writes neither.
	for _, param := range []kernels.DType{kernels.F32, kernels.F64} {
		for _, skip := range []float64{0, 1} {
			t.Run("working and zeroed/"+param.String()+"/skip "+strconv.FormatFloat(skip, 'g', -1, 64), func(t *testing.T) {
				works := []kernels.DType{kernels.BF16, kernels.F16, kernels.F32, 0} // 0: no working copy
				sizes := []int{7, 33333, 100, 13}
				type set struct {
					a            kernels.AdamWArgs
					work, grads0 [][]float64
				}
				build := func() set {
					r := Rng(t) // the same values for both sets
					s := set{a: kernels.AdamWArgs{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 4}}
					s.a.Skip, _ = Put(t, b, kernels.F32, []float64{skip})
					for i, n := range sizes {
						p, _ := Put(t, b, param, Randn(r, n, 1))
						g, hg := Put(t, b, kernels.F32, Randn(r, n, 0.5))
						m, _ := Put(t, b, param, Randn(r, n, 0.1))
						vRaw := Randn(r, n, 0.1)
						for j := range vRaw {
							vRaw[j] *= vRaw[j]
						}
						v, _ := Put(t, b, param, vRaw)
						s.a.Params, s.a.Grads, s.a.M, s.a.V = append(s.a.Params, p), append(s.a.Grads, g), append(s.a.M, m), append(s.a.V, v)
						s.a.LR, s.a.WeightDecay = append(s.a.LR, 1e-3*float64(i+1)), append(s.a.WeightDecay, 0.01)
						var w kernels.Buffer
						if works[i] != 0 {
							w = Poisoned(t, b, works[i], n)
							s.work = append(s.work, Get(t, b, w))
						} else {
							s.work = append(s.work, nil)
						}
						s.a.Working = append(s.a.Working, w)
						s.grads0 = append(s.grads0, hg)
					}
					return s
				}
				apart, fused := build(), build()
				plain := apart.a
				plain.Working = nil
				b.AdamW(plain)
				if skip == 0 {
					for i, w := range apart.a.Working {
						if w != nil {
							b.Cast(w, apart.a.Params[i])
						}
						b.Fill(apart.a.Grads[i], 0)
					}
				}
				fused.a.ZeroGrads = true
				b.AdamW(fused.a)
				if err := b.Sync(); err != nil {
					t.Fatalf("AdamW: %v", err)
				}
				for i := range sizes {
					name := strconv.Itoa(i)
					Check(t, "params "+name, Get(t, b, fused.a.Params[i]), Get(t, b, apart.a.Params[i]), 0)
					Check(t, "grads "+name, Get(t, b, fused.a.Grads[i]), Get(t, b, apart.a.Grads[i]), 0)
					if skip != 0 {
						Check(t, "grads kept "+name, Get(t, b, fused.a.Grads[i]), fused.grads0[i], 0)
					}
					if w := fused.a.Working[i]; w != nil {
						Check(t, "working "+name, Get(t, b, w), Get(t, b, apart.a.Working[i]), 0)
						if skip != 0 {
							Check(t, "working untouched "+name, Get(t, b, w), fused.work[i], 0)
						}
					}
				}
			})
		}
	}

	// Arguments that disagree with the buffers are failures reported by
	// Sync, and nothing is written.
	t.Run("bad arguments", func(t *testing.T) {
		r := Rng(t)
		p, hp := Put(t, b, kernels.F32, Randn(r, 13, 1))
		g7, _ := Put(t, b, kernels.F32, Randn(r, 7, 1))
		g13, _ := Put(t, b, kernels.F32, Randn(r, 13, 1))
		m, _ := Put(t, b, kernels.F32, Randn(r, 13, 0.1))
		v, _ := Put(t, b, kernels.F32, Randn(r, 13, 0.1))
		mBF, _ := Put(t, b, kernels.BF16, Randn(r, 13, 0.1))
		ok := kernels.AdamWArgs{Params: []kernels.Buffer{p}, Grads: []kernels.Buffer{g13}, M: []kernels.Buffer{m}, V: []kernels.Buffer{v},
			LR: []float64{1e-3}, WeightDecay: []float64{0}, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1}
		for _, bad := range []struct {
			name string
			edit func(a *kernels.AdamWArgs)
		}{
			{"grad length", func(a *kernels.AdamWArgs) { a.Grads = []kernels.Buffer{g7} }},
			{"missing lr", func(a *kernels.AdamWArgs) { a.LR = nil }},
			{"step 0", func(a *kernels.AdamWArgs) { a.Step = 0 }},
			{"bf16 moment", func(a *kernels.AdamWArgs) { a.M = []kernels.Buffer{mBF} }},
			{"beta2 of 1", func(a *kernels.AdamWArgs) { a.Beta2 = 1 }},
			{"working count", func(a *kernels.AdamWArgs) { a.Working = []kernels.Buffer{nil, nil} }},
			{"working length", func(a *kernels.AdamWArgs) { a.Working = []kernels.Buffer{g7} }},
		} {
			a := ok
			bad.edit(&a)
			b.AdamW(a)
			err := b.Sync()
			if err == nil || !strings.Contains(err.Error(), "AdamW") {
				t.Errorf("%s: Sync returned %v, want a failure naming AdamW", bad.name, err)
			}
			Check(t, bad.name+": params untouched", Get(t, b, p), hp, 0)
		}
	})
}
