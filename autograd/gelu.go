package autograd

import (
	"math"
	"sync"

	"github.com/newbie-train/newbie-train/kernels"
)

// GELU returns the exact GELU, x·Φ(x) = ½·x·(1 + erf(x/√2)): PyTorch's
// torch.nn.functional.gelu with approximate="none", the "gelu" of BERT-style
// encoders (XLM-RoBERTa, Jina's text tower). GELUTanh is the tanh
// approximation, a different function.
//
// It computes in float64 for an F64 x and in float32 otherwise (PyTorch
// computes a bf16 gelu in float32 too) and returns x's dtype. The backends
// have no erf, so GELU is composed of elementwise ops, with the rational
// form of erfc that Weideman (SIAM J. Numer. Anal. 31, 1994) uses for the
// complex error function:
//
//	gelu(x) = ½·(x + |x|) − ½·|x|·erfc(z),  z = |x|/√2,
//	erfc(z) = e^(−z²) · p(Z) / (L + z),    Z = (L − z)/(L + z) ∈ (−1, 1],
//
// where p is a polynomial fitted once (Chebyshev interpolation of
// (L+z)·e^(z²)·erfc(z) in Z, from math.Erfc) with L = 3: degree 19 in
// float64, 10 in float32, and 7 for bf16 and fp16 inputs, whose float32
// result is then rounded to 8 or 11 bits. Against math.Erf, the error per
// element is below 1e-15 (float64), 1e-7 (float32) and 2e-7 (before the
// 16-bit rounding) times max(1, |x|) for every x (TestGELU). ½·(x + |x|)
// is exact, so negative inputs keep their small values to full relative
// precision. The gradient follows the composition.
//
// It costs about 27 elementwise passes (33 in float32, 50 in float64) where
// a fused kernel would take one: fine for a frozen encoder on the CPU; on a
// GPU a backend GELU op would replace the composition without changing any
// caller.
func GELU(x *Tensor) *Tensor {
	e := x.e
	if !e.live("GELU", x) {
		return e.failed(x.dtype, x.shape)
	}
	if !x.dtype.IsFloat() {
		e.failf("GELU", "%v is not a float tensor", x)
		return e.failed(x.dtype, x.shape)
	}
	work, poly := kernels.F32, geluPoly().f32
	switch x.dtype {
	case kernels.F64:
		work, poly = kernels.F64, geluPoly().f64
	case kernels.BF16, kernels.F16:
		poly = geluPoly().half
	}
	xf := Cast(x, work)
	a := Abs(xf)
	// r = 1/(L + z), Z = (L − z)/(L + z) = 2L·r − 1.
	s := Affine(a, 1/math.Sqrt2, geluL)
	r := Recip(s)
	s.Release()
	z := Affine(r, 2*geluL, -1)
	n := len(poly)
	p := Affine(z, poly[n-1], poly[n-2])
	for k := n - 3; k >= 0; k-- {
		m := Mul(p, z)
		p.Release()
		p = AddScalar(m, poly[k])
		m.Release()
	}
	z.Release()
	pr := Mul(p, r)
	p.Release()
	r.Release()
	sq := Square(a)
	ng := Scale(sq, -0.5)
	sq.Release()
	ex := Exp(ng)
	ng.Release()
	erfc := Mul(pr, ex)
	pr.Release()
	ex.Release()
	tail := Mul(a, erfc)
	erfc.Release()
	relu2 := Add(xf, a) // exactly 2x or 0
	a.Release()
	if xf != x {
		xf.Release()
	}
	d := Sub(relu2, tail)
	relu2.Release()
	tail.Release()
	y := Scale(d, 0.5)
	d.Release()
	if y.dtype == x.dtype {
		return y
	}
	out := Cast(y, x.dtype)
	y.Release()
	return out
}

// geluL is Weideman's L: the centre of the map z ↦ Z. With L = 3 the
// polynomial converges fastest among the values tried (1.5 to 4).
const geluL = 3

// geluPolys are p's monomial coefficients in Z (lowest first) for each
// precision.
type geluPolys struct{ half, f32, f64 []float64 }

var geluPoly = sync.OnceValue(func() geluPolys {
	return geluPolys{half: geluFit(8), f32: geluFit(11), f64: geluFit(20)}
})

// geluFit interpolates f(Z) = (L+z)·e^(z²)·erfc(z) at n Chebyshev points of
// [−1, 1] and returns the interpolant's monomial coefficients. They stay
// below 1.1 in magnitude, so Horner's rule in Z (|Z| ≤ 1) loses nothing to
// cancellation.
func geluFit(n int) []float64 {
	f := func(zz float64) float64 {
		z := geluL * (1 - zz) / (1 + zz)
		return (geluL + z) * erfcx(z)
	}
	cheb := make([]float64, n)
	for j := range n {
		var s float64
		for k := range n {
			th := math.Pi * (float64(k) + 0.5) / float64(n)
			s += f(math.Cos(th)) * math.Cos(float64(j)*th)
		}
		cheb[j] = 2 * s / float64(n)
	}
	cheb[0] /= 2
	// Σ c_j T_j(Z) in powers of Z, with T_{j+1} = 2Z·T_j − T_{j−1}.
	mono := make([]float64, n)
	prev, cur := make([]float64, n), make([]float64, n)
	prev[0], cur[1] = 1, 1
	mono[0] = cheb[0]
	for k := range mono {
		mono[k] += cheb[1] * cur[k]
	}
	for j := 2; j < n; j++ {
		next := make([]float64, n)
		for k := 0; k+1 < n; k++ {
			next[k+1] = 2 * cur[k]
		}
		for k := range next {
			next[k] -= prev[k]
			mono[k] += cheb[j] * next[k]
		}
		prev, cur = cur, next
	}
	return mono
}

// erfcx is the scaled complementary error function e^(z²)·erfc(z) for
// z ≥ 0: directly below 25, from its asymptotic series above (where e^(z²)
// would overflow and eight terms are exact to rounding).
func erfcx(z float64) float64 {
	if z < 25 {
		return math.Exp(z*z) * math.Erfc(z)
	}
	sum, term := 1.0, 1.0
	for k := 1; k <= 8; k++ {
		term *= -float64(2*k-1) / (2 * z * z)
		sum += term
	}
	return sum / (z * math.SqrtPi)
}
