package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Unary", testUnary)
	register("UnaryGrad", testUnaryGrad)
	register("UnaryGradReference", testUnaryGradReference)
	register("UnaryInPlace", testUnaryInPlace)
	register("UnaryExtremes", testUnaryExtremes)
	register("Binary", testBinary)
}

// paUnaryOp is one unary function with its float64 reference, derivative
// and an input domain where both are well defined and well conditioned.
type paUnaryOp struct {
	op     kernels.UnaryOp
	name   string
	p      kernels.UnaryParams
	f, df  func(x float64, p kernels.UnaryParams) float64
	domain func(r *rand.Rand, n int) []float64
}

func paNormal(r *rand.Rand, n int) []float64 { return Randn(r, n, 1.5) }

// paPositive keeps x away from 0 for log, sqrt and powers.
func paPositive(r *rand.Rand, n int) []float64 { return paUniform(r, n, 0.2, 4) }

// paAwayFromZero keeps |x| ≥ 0.5 for 1/x and for |x| (whose slope jumps at 0).
func paAwayFromZero(r *rand.Rand, n int) []float64 {
	v := paUniform(r, n, 0.5, 3)
	for i := range v {
		if r.IntN(2) == 0 {
			v[i] = -v[i]
		}
	}
	return v
}

// paDropDomain avoids values within 1e-3 of the keep threshold 0.3, where
// rounding the input to a half type could move it across.
func paDropDomain(r *rand.Rand, n int) []float64 {
	v := paUniform(r, n, 0, 1)
	for i := range v {
		if math.Abs(v[i]-0.3) < 1e-2 {
			v[i] = 0.5
		}
	}
	return v
}

func paSigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

const paGeluK = 0.7978845608028654 // √(2/π)

var paUnaryOps = []paUnaryOp{
	{kernels.Identity, "Identity", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return x },
		func(float64, kernels.UnaryParams) float64 { return 1 }, paNormal},
	{kernels.Neg, "Neg", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return -x },
		func(float64, kernels.UnaryParams) float64 { return -1 }, paNormal},
	{kernels.Abs, "Abs", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return math.Abs(x) },
		func(x float64, _ kernels.UnaryParams) float64 {
			if x < 0 {
				return -1
			}
			return 1
		}, paAwayFromZero},
	{kernels.Exp, "Exp", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return math.Exp(x) },
		func(x float64, _ kernels.UnaryParams) float64 { return math.Exp(x) }, paNormal},
	{kernels.Log, "Log", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return math.Log(x) },
		func(x float64, _ kernels.UnaryParams) float64 { return 1 / x }, paPositive},
	{kernels.Sqrt, "Sqrt", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return math.Sqrt(x) },
		func(x float64, _ kernels.UnaryParams) float64 { return 0.5 / math.Sqrt(x) }, paPositive},
	{kernels.Rsqrt, "Rsqrt", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return 1 / math.Sqrt(x) },
		func(x float64, _ kernels.UnaryParams) float64 { return -0.5 * math.Pow(x, -1.5) }, paPositive},
	{kernels.Recip, "Recip", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return 1 / x },
		func(x float64, _ kernels.UnaryParams) float64 { return -1 / (x * x) }, paAwayFromZero},
	{kernels.Square, "Square", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return x * x },
		func(x float64, _ kernels.UnaryParams) float64 { return 2 * x }, paNormal},
	{kernels.Tanh, "Tanh", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return math.Tanh(x) },
		func(x float64, _ kernels.UnaryParams) float64 { return 1 - math.Tanh(x)*math.Tanh(x) }, paNormal},
	{kernels.Sigmoid, "Sigmoid", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return paSigmoid(x) },
		func(x float64, _ kernels.UnaryParams) float64 { return paSigmoid(x) * (1 - paSigmoid(x)) }, paNormal},
	{kernels.SiLU, "SiLU", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return x * paSigmoid(x) },
		func(x float64, _ kernels.UnaryParams) float64 {
			s := paSigmoid(x)
			return s + x*s*(1-s)
		}, paNormal},
	{kernels.GELUTanh, "GELUTanh", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 {
			return 0.5 * x * (1 + math.Tanh(paGeluK*(x+0.044715*x*x*x)))
		},
		func(x float64, _ kernels.UnaryParams) float64 {
			u := paGeluK * (x + 0.044715*x*x*x)
			du := paGeluK * (1 + 3*0.044715*x*x)
			th := math.Tanh(u)
			return 0.5*(1+th) + 0.5*x*(1-th*th)*du
		}, paNormal},
	{kernels.GELU, "GELU", kernels.UnaryParams{},
		func(x float64, _ kernels.UnaryParams) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) },
		func(x float64, _ kernels.UnaryParams) float64 {
			return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*math.Exp(-x*x/2)/math.Sqrt(2*math.Pi)
		}, paNormal},
	{kernels.Affine, "Affine", kernels.UnaryParams{A: -1.75, B: 0.625},
		func(x float64, p kernels.UnaryParams) float64 { return x*p.A + p.B },
		func(_ float64, p kernels.UnaryParams) float64 { return p.A }, paNormal},
	{kernels.PowScalar, "PowScalar", kernels.UnaryParams{A: 2.5},
		func(x float64, p kernels.UnaryParams) float64 { return math.Pow(x, p.A) },
		func(x float64, p kernels.UnaryParams) float64 { return p.A * math.Pow(x, p.A-1) }, paPositive},
	{kernels.PowScalar, "PowScalar-neg", kernels.UnaryParams{A: -0.5},
		func(x float64, p kernels.UnaryParams) float64 { return math.Pow(x, p.A) },
		func(x float64, p kernels.UnaryParams) float64 { return p.A * math.Pow(x, p.A-1) }, paPositive},
	{kernels.DropoutMask, "DropoutMask", kernels.UnaryParams{A: 0.3, B: 1 / 0.7},
		func(x float64, p kernels.UnaryParams) float64 {
			if x >= p.A {
				return p.B
			}
			return 0
		},
		// Not differentiable in x (a step of a random draw): the gradient
		// is defined as 0.
		func(float64, kernels.UnaryParams) float64 { return 0 }, paDropDomain},
}

// paEwPairs are the (input, output) dtype pairs elementwise ops run in:
// each dtype on its own, and the autocast mixes.
var paEwPairs = [][2]kernels.DType{
	{kernels.F64, kernels.F64}, {kernels.F32, kernels.F32}, {kernels.BF16, kernels.BF16},
	{kernels.F16, kernels.F16}, {kernels.BF16, kernels.F32}, {kernels.F32, kernels.BF16},
	{kernels.F16, kernels.F32}, {kernels.F32, kernels.F64},
}

func testUnary(t *testing.T, b kernels.Backend) {
	for _, u := range paUnaryOps {
		for _, p := range paEwPairs {
			t.Run(fmt.Sprintf("%s/%v->%v", u.name, p[0], p[1]), func(t *testing.T) {
				const n = 101
				src, x := Put(t, b, p[0], u.domain(Rng(t), n))
				dst := Poisoned(t, b, p[1], n)
				b.Unary(u.op, dst, src, u.p)
				want := make([]float64, n)
				for i, v := range x {
					want[i] = u.f(v, u.p)
				}
				Check(t, "Unary "+u.name, Get(t, b, dst), want, Tol(p[0], p[1]))
			})
		}
	}
}

func testUnaryGrad(t *testing.T, b kernels.Backend) {
	for _, u := range paUnaryOps {
		for _, p := range paEwPairs {
			t.Run(fmt.Sprintf("%s/%v->%v", u.name, p[0], p[1]), func(t *testing.T) {
				const n = 101
				r := Rng(t)
				xb, x := Put(t, b, p[0], u.domain(r, n))
				gb, g := Put(t, b, p[0], Randn(r, n, 1))
				dx := Poisoned(t, b, p[1], n)
				b.UnaryGrad(u.op, dx, xb, gb, u.p)
				want := make([]float64, n)
				for i, v := range x {
					want[i] = g[i] * u.df(v, u.p)
				}
				Check(t, "UnaryGrad "+u.name, Get(t, b, dx), want, Tol(p[0], p[1]))
			})
		}
	}
}

// testUnaryGradReference checks the reference derivatives above against
// central differences of the reference functions, so a wrong formula in
// this file cannot make a wrong backend pass.
func testUnaryGradReference(t *testing.T, _ kernels.Backend) {
	for _, u := range paUnaryOps {
		if u.op == kernels.DropoutMask {
			continue // a step function: its defined gradient is 0
		}
		x := u.domain(Rng(t), 37)
		for _, v := range x {
			const h = 1e-6
			num := (u.f(v+h, u.p) - u.f(v-h, u.p)) / (2 * h)
			if d := u.df(v, u.p); math.Abs(num-d) > 1e-6*(1+math.Abs(d)) {
				t.Errorf("%s'(%g) = %g, finite difference %g", u.name, v, d, num)
			}
		}
	}
}

// testUnaryInPlace runs Unary and UnaryGrad with the output aliasing an
// input, which the conventions allow.
func testUnaryInPlace(t *testing.T, b kernels.Backend) {
	for _, d := range paFloats {
		t.Run(d.String(), func(t *testing.T) {
			const n = 1001
			r := Rng(t)
			buf, x := Put(t, b, d, Randn(r, n, 1))
			b.Unary(kernels.SiLU, buf, buf, kernels.UnaryParams{})
			want := make([]float64, n)
			for i, v := range x {
				want[i] = v * paSigmoid(v)
			}
			Check(t, "Unary in place", Get(t, b, buf), want, Tol(d, d))

			xb, x2 := Put(t, b, d, Randn(r, n, 1))
			gb, g := Put(t, b, d, Randn(r, n, 1))
			b.UnaryGrad(kernels.Tanh, gb, xb, gb, kernels.UnaryParams{})
			for i, v := range x2 {
				want[i] = g[i] * (1 - math.Tanh(v)*math.Tanh(v))
			}
			Check(t, "UnaryGrad into dy", Get(t, b, gb), want, Tol(d, d))
		})
	}
}

// testUnaryExtremes feeds the saturating functions inputs far out in their
// tails, where a naive formula overflows to Inf/Inf = NaN.
func testUnaryExtremes(t *testing.T, b kernels.Backend) {
	x := []float64{-100, -30, -5, -0.5, 0, 0.5, 5, 30, 100}
	for _, u := range paUnaryOps {
		switch u.op {
		case kernels.Sigmoid, kernels.SiLU, kernels.Tanh, kernels.GELUTanh:
		default:
			continue
		}
		for _, d := range []kernels.DType{kernels.F64, kernels.F32, kernels.BF16} {
			t.Run(u.name+"/"+d.String(), func(t *testing.T) {
				src, q := Put(t, b, d, x)
				dst := Poisoned(t, b, d, len(x))
				b.Unary(u.op, dst, src, u.p)
				want := make([]float64, len(q))
				for i, v := range q {
					want[i] = u.f(v, u.p)
				}
				Check(t, "Unary "+u.name, Get(t, b, dst), want, Tol(d, d))
				gb, g := Put(t, b, d, Randn(Rng(t), len(x), 1))
				dx := Poisoned(t, b, d, len(x))
				b.UnaryGrad(u.op, dx, src, gb, u.p)
				for i, v := range q {
					want[i] = g[i] * u.df(v, u.p)
				}
				Check(t, "UnaryGrad "+u.name, Get(t, b, dx), want, Tol(d, d))
			})
		}
	}
}

// paBinaryRef evaluates a ∘ b with broadcasting by explicit multi-indices.
func paBinaryRef(op kernels.BinaryOp, dShape []int, a []float64, aShape []int, bv []float64, bShape []int) []float64 {
	n := 1
	for _, e := range dShape {
		n *= e
	}
	out := make([]float64, n)
	rank := len(dShape)
	idx := make([]int, rank)
	for lin := 0; lin < n; lin++ {
		rem := lin
		for k := rank - 1; k >= 0; k-- {
			idx[k] = rem % dShape[k]
			rem /= dShape[k]
		}
		ia, ib := 0, 0
		for k := 0; k < rank; k++ {
			ka, kb := idx[k], idx[k]
			if aShape[k] == 1 {
				ka = 0
			}
			if bShape[k] == 1 {
				kb = 0
			}
			ia = ia*aShape[k] + ka
			ib = ib*bShape[k] + kb
		}
		x, y := a[ia], bv[ib]
		switch op {
		case kernels.Add:
			out[lin] = x + y
		case kernels.Sub:
			out[lin] = x - y
		case kernels.Mul:
			out[lin] = x * y
		case kernels.Div:
			out[lin] = x / y
		case kernels.Maximum:
			out[lin] = math.Max(x, y)
		case kernels.Minimum:
			out[lin] = math.Min(x, y)
		}
	}
	return out
}

func testBinary(t *testing.T, b kernels.Backend) {
	ops := []struct {
		op   kernels.BinaryOp
		name string
	}{
		{kernels.Add, "Add"}, {kernels.Sub, "Sub"}, {kernels.Mul, "Mul"},
		{kernels.Div, "Div"}, {kernels.Maximum, "Maximum"}, {kernels.Minimum, "Minimum"},
	}
	shapes := []struct{ d, a, b []int }{
		{[]int{7, 13}, []int{7, 13}, []int{7, 13}},
		{[]int{7, 13}, []int{7, 1}, []int{1, 13}},
		{[]int{3, 4, 5}, []int{3, 1, 5}, []int{1, 4, 5}},
		{[]int{3, 4, 5}, []int{3, 4, 5}, []int{1, 1, 1}},
		{[]int{3, 4, 5}, []int{1, 1, 5}, []int{3, 4, 1}},
		{[]int{2, 3, 4, 5}, []int{2, 1, 4, 1}, []int{1, 3, 1, 5}},
		{[]int{2, 1, 7}, []int{2, 1, 7}, []int{1, 1, 7}},
		{[]int{5, 1300}, []int{5, 1300}, []int{1, 1300}},      // rows longer than one chunk
		{[]int{2, 37, 24}, []int{2, 37, 24}, []int{2, 1, 24}}, // adaLN scale over tokens (GPU 16-byte path)
		{[]int{2, 37, 24}, []int{1, 1, 24}, []int{2, 37, 24}}, // the broadcast operand on the left
		{[]int{6, 40}, []int{6, 40}, []int{6, 40}},            // equal shapes, a multiple of 8
		{[]int{}, []int{}, []int{}},
	}
	dts := [][3]kernels.DType{ // a, b, dst
		{kernels.F64, kernels.F64, kernels.F64},
		{kernels.F32, kernels.F32, kernels.F32},
		{kernels.BF16, kernels.BF16, kernels.BF16},
		{kernels.F16, kernels.F16, kernels.F16},
		{kernels.F32, kernels.BF16, kernels.F32},
		{kernels.BF16, kernels.F16, kernels.BF16},
		{kernels.BF16, kernels.F32, kernels.F64},
	}
	for _, o := range ops {
		for _, s := range shapes {
			for _, dt := range dts {
				t.Run(fmt.Sprintf("%s/%v%v%v/%v,%v->%v", o.name, s.a, s.b, s.d, dt[0], dt[1], dt[2]), func(t *testing.T) {
					r := Rng(t)
					count := func(sh []int) int {
						n := 1
						for _, e := range sh {
							n *= e
						}
						return n
					}
					av := Randn(r, count(s.a), 1)
					bvals := Randn(r, count(s.b), 1)
					if o.op == kernels.Div {
						bvals = paAwayFromZero(r, count(s.b))
					}
					ab, a := Put(t, b, dt[0], av)
					bb, bq := Put(t, b, dt[1], bvals)
					dst := Poisoned(t, b, dt[2], count(s.d))
					b.Binary(o.op, dst, s.d, ab, s.a, bb, s.b)
					want := paBinaryRef(o.op, s.d, a, s.a, bq, s.b)
					Check(t, "Binary "+o.name, Get(t, b, dst), want, max(Tol(dt[0], dt[2]), Tol(dt[1], dt[2])))
				})
			}
		}
	}
	t.Run("in-place", func(t *testing.T) {
		// dst aliases a (the full-shape operand); b broadcasts.
		for _, d := range paFloats {
			r := Rng(t)
			ab, a := Put(t, b, d, Randn(r, 7*13, 1))
			bb, bq := Put(t, b, d, Randn(r, 13, 1))
			b.Binary(kernels.Mul, ab, []int{7, 13}, ab, []int{7, 13}, bb, []int{1, 13})
			Check(t, "Binary in place "+d.String(), Get(t, b, ab), paBinaryRef(kernels.Mul, []int{7, 13}, a, []int{7, 13}, bq, []int{1, 13}), Tol(d, d))
		}
	})
	t.Run("NaN", func(t *testing.T) {
		// Maximum and Minimum propagate NaN from either side, like torch.
		ab, _ := Put(t, b, kernels.F32, []float64{math.NaN(), 1, 2})
		bb, _ := Put(t, b, kernels.F32, []float64{0, math.NaN(), 1})
		for _, op := range []kernels.BinaryOp{kernels.Maximum, kernels.Minimum} {
			dst := Poisoned(t, b, kernels.F32, 3)
			b.Fill(dst, 7)
			b.Binary(op, dst, []int{3}, ab, []int{3}, bb, []int{3})
			got := Get(t, b, dst)
			if !math.IsNaN(got[0]) || !math.IsNaN(got[1]) || math.IsNaN(got[2]) {
				t.Errorf("op %d: got %v, want [NaN NaN finite]", op, got)
			}
		}
	})
}
