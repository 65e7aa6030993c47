package autograd

import (
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// unary applies an elementwise function in the policy's dtype; its gradient
// is dy·f'(x) from the backend's UnaryGrad.
func unary(name string, op kernels.UnaryOp, p precision, x *Tensor, params kernels.UnaryParams) *Tensor {
	e := x.e
	if !e.live(name, x) {
		return e.failed(x.dtype, x.shape)
	}
	if !x.dtype.IsFloat() {
		e.failf(name, "%v is not a float tensor", x)
		return e.failed(x.dtype, x.shape)
	}
	if p != 0 {
		orig := []*Tensor{x}
		in := e.prepare(p, x)
		defer releaseCasts(orig, in)
		x = in[0]
	}
	out := e.newTensor(x.dtype, x.shape)
	if out.st == nil {
		return out
	}
	e.b.Unary(op, out.st.buf, x.st.buf, params)
	e.trace(name, out, x)
	if e.recording(x) && constantSlope(op) {
		// f' does not depend on x: keep nothing, and hand UnaryGrad the
		// gradient in x's place. (The LoRA path's alpha/rank scaling would
		// otherwise hold a copy of every adapted layer's output.)
		xd, xs := x.dtype, x.shape
		e.record(name, out, []*Tensor{x}, nil, func(g *Tensor) []*Tensor {
			dx := e.newTensor(xd, xs)
			if e.live(name+" backward", g) && dx.st != nil {
				e.b.UnaryGrad(op, dx.st.buf, g.st.buf, g.st.buf, params)
			}
			return []*Tensor{dx}
		})
		return out
	}
	if e.recording(x) {
		sx := e.save(x)
		e.record(name, out, []*Tensor{x}, []*Tensor{sx}, func(g *Tensor) []*Tensor {
			dx := e.newTensor(sx.dtype, sx.shape)
			if e.live(name+" backward", g, sx) && dx.st != nil {
				e.b.UnaryGrad(op, dx.st.buf, sx.st.buf, g.st.buf, params)
			}
			return []*Tensor{dx}
		})
	}
	return out
}

// constantSlope reports whether op's derivative is the same at every x.
func constantSlope(op kernels.UnaryOp) bool {
	return op == kernels.Neg || op == kernels.Affine || op == kernels.Identity
}

// Neg returns −x.
func Neg(x *Tensor) *Tensor { return unary("Neg", kernels.Neg, 0, x, kernels.UnaryParams{}) }

// Abs returns |x|.
func Abs(x *Tensor) *Tensor { return unary("Abs", kernels.Abs, 0, x, kernels.UnaryParams{}) }

// Exp returns eˣ, in float32 under autocast.
func Exp(x *Tensor) *Tensor {
	return unary("Exp", kernels.Exp, fullPrecision, x, kernels.UnaryParams{})
}

// Log returns ln x, in float32 under autocast.
func Log(x *Tensor) *Tensor {
	return unary("Log", kernels.Log, fullPrecision, x, kernels.UnaryParams{})
}

// Sqrt returns √x, in float32 under autocast.
func Sqrt(x *Tensor) *Tensor {
	return unary("Sqrt", kernels.Sqrt, fullPrecision, x, kernels.UnaryParams{})
}

// Rsqrt returns 1/√x, in float32 under autocast.
func Rsqrt(x *Tensor) *Tensor {
	return unary("Rsqrt", kernels.Rsqrt, fullPrecision, x, kernels.UnaryParams{})
}

// Recip returns 1/x, in float32 under autocast.
func Recip(x *Tensor) *Tensor {
	return unary("Recip", kernels.Recip, fullPrecision, x, kernels.UnaryParams{})
}

// Square returns x².
func Square(x *Tensor) *Tensor { return unary("Square", kernels.Square, 0, x, kernels.UnaryParams{}) }

// Pow returns xᵃ, in float32 under autocast.
func Pow(x *Tensor, a float64) *Tensor {
	return unary("Pow", kernels.PowScalar, fullPrecision, x, kernels.UnaryParams{A: a})
}

// Tanh returns tanh x.
func Tanh(x *Tensor) *Tensor { return unary("Tanh", kernels.Tanh, 0, x, kernels.UnaryParams{}) }

// Sigmoid returns 1/(1+e⁻ˣ).
func Sigmoid(x *Tensor) *Tensor {
	return unary("Sigmoid", kernels.Sigmoid, 0, x, kernels.UnaryParams{})
}

// SiLU returns x·sigmoid(x).
func SiLU(x *Tensor) *Tensor { return unary("SiLU", kernels.SiLU, 0, x, kernels.UnaryParams{}) }

// GELU returns the exact GELU, x·Φ(x) = ½·x·(1 + erf(x/√2)): PyTorch's
// gelu with approximate="none", the activation of BERT-style encoders
// (XLM-RoBERTa, Jina's text tower). GELUTanh is a different function.
func GELU(x *Tensor) *Tensor {
	return unary("GELU", kernels.GELU, 0, x, kernels.UnaryParams{})
}

// GELUTanh returns the tanh approximation of GELU.
func GELUTanh(x *Tensor) *Tensor {
	return unary("GELUTanh", kernels.GELUTanh, 0, x, kernels.UnaryParams{})
}

// Affine returns x·a + b.
func Affine(x *Tensor, a, b float64) *Tensor {
	return unary("Affine", kernels.Affine, 0, x, kernels.UnaryParams{A: a, B: b})
}

// Scale returns x·a.
func Scale(x *Tensor, a float64) *Tensor { return Affine(x, a, 0) }

// AddScalar returns x + b.
func AddScalar(x *Tensor, b float64) *Tensor { return Affine(x, 1, b) }

// broadcastShapes aligns a and b to a common rank (leading ones) and returns
// the aligned shapes and the result shape, or ok=false when they do not
// broadcast.
func broadcastShapes(a, b []int) (as, bs, out []int, ok bool) {
	r := max(len(a), len(b))
	as, bs, out = make([]int, r), make([]int, r), make([]int, r)
	for i := range r {
		as[i], bs[i] = 1, 1
		if j := i - (r - len(a)); j >= 0 {
			as[i] = a[j]
		}
		if j := i - (r - len(b)); j >= 0 {
			bs[i] = b[j]
		}
		switch {
		case as[i] == bs[i] || bs[i] == 1:
			out[i] = as[i]
		case as[i] == 1:
			out[i] = bs[i]
		default:
			return nil, nil, nil, false
		}
	}
	return as, bs, out, true
}

// binary applies a broadcasting elementwise op in the widest input dtype.
func binary(name string, op kernels.BinaryOp, a, b *Tensor) *Tensor {
	e := a.e
	as, bs, shape, ok := broadcastShapes(a.shape, b.shape)
	if !e.live(name, a, b) {
		return e.failed(promote(a.dtype, b.dtype), a.shape)
	}
	if !ok {
		e.failf(name, "shapes %v and %v do not broadcast", a.shape, b.shape)
		return e.failed(promote(a.dtype, b.dtype), a.shape)
	}
	if !a.dtype.IsFloat() || !b.dtype.IsFloat() {
		e.failf(name, "%v and %v must be float tensors", a, b)
		return e.failed(a.dtype, shape)
	}
	orig := []*Tensor{a, b}
	in := e.prepare(promoted, a, b)
	defer releaseCasts(orig, in)
	a, b = in[0], in[1]
	out := e.newTensor(a.dtype, shape)
	if out.st == nil {
		return out
	}
	e.b.Binary(op, out.st.buf, shape, a.st.buf, as, b.st.buf, bs)
	e.trace(name, out, a, b)
	if e.recording(a, b) {
		var sa, sb *Tensor
		if op == kernels.Mul || op == kernels.Div {
			sa, sb = e.save(a), e.save(b)
		}
		aShape, bShape := a.shape, b.shape
		ad, bd := a.dtype, b.dtype
		needA, needB := a.requiresGrad, b.requiresGrad
		saved := []*Tensor{}
		if sa != nil {
			saved = []*Tensor{sa, sb}
		}
		e.record(name, out, []*Tensor{a, b}, saved, func(g *Tensor) []*Tensor {
			var ga, gb *Tensor
			switch op {
			case kernels.Add:
				if needA {
					ga = sumTo(g, aShape, ad)
				}
				if needB {
					gb = sumTo(g, bShape, bd)
				}
			case kernels.Sub:
				if needA {
					ga = sumTo(g, aShape, ad)
				}
				if needB {
					t := sumTo(g, bShape, bd)
					gb = e.rawUnary(kernels.Neg, t, kernels.UnaryParams{})
					t.Release()
				}
			case kernels.Mul:
				if needA {
					t := e.rawBinary(kernels.Mul, g, sb)
					ga = sumTo(t, aShape, ad)
					t.Release()
				}
				if needB {
					t := e.rawBinary(kernels.Mul, g, sa)
					gb = sumTo(t, bShape, bd)
					t.Release()
				}
			case kernels.Div:
				if needA {
					t := e.rawBinary(kernels.Div, g, sb)
					ga = sumTo(t, aShape, ad)
					t.Release()
				}
				if needB {
					// d(a/b)/db = −a/b²: (g·a)/b/b, negated.
					t1 := e.rawBinary(kernels.Mul, g, sa)
					t2 := e.rawBinary(kernels.Div, t1, sb)
					t3 := e.rawBinary(kernels.Div, t2, sb)
					t4 := sumTo(t3, bShape, bd)
					gb = e.rawUnary(kernels.Neg, t4, kernels.UnaryParams{})
					for _, t := range []*Tensor{t1, t2, t3, t4} {
						t.Release()
					}
				}
			default:
				e.failf(name, "has no gradient")
			}
			return []*Tensor{ga, gb}
		})
	}
	return out
}

// Add returns a + b with broadcasting.
func Add(a, b *Tensor) *Tensor { return binary("Add", kernels.Add, a, b) }

// Sub returns a − b with broadcasting.
func Sub(a, b *Tensor) *Tensor { return binary("Sub", kernels.Sub, a, b) }

// Mul returns a ⊙ b with broadcasting.
func Mul(a, b *Tensor) *Tensor { return binary("Mul", kernels.Mul, a, b) }

// Div returns a / b with broadcasting.
func Div(a, b *Tensor) *Tensor { return binary("Div", kernels.Div, a, b) }

// rawUnary applies op outside the tape (backward rules use it).
func (e *Engine) rawUnary(op kernels.UnaryOp, x *Tensor, p kernels.UnaryParams) *Tensor {
	out := e.newTensor(x.dtype, x.shape)
	if e.live("backward", x) && out.st != nil {
		e.b.Unary(op, out.st.buf, x.st.buf, p)
	}
	return out
}

// rawBinary applies a broadcasting op outside the tape; the result has the
// wider dtype of the two.
func (e *Engine) rawBinary(op kernels.BinaryOp, a, b *Tensor) *Tensor {
	as, bs, shape, ok := broadcastShapes(a.shape, b.shape)
	if !ok {
		e.failf("backward", "shapes %v and %v do not broadcast", a.shape, b.shape)
		return e.failed(a.dtype, a.shape)
	}
	out := e.newTensor(promote(a.dtype, b.dtype), shape)
	if e.live("backward", a, b) && out.st != nil {
		e.b.Binary(op, out.st.buf, shape, a.st.buf, as, b.st.buf, bs)
	}
	return out
}

// sumTo sums g over the axes along which a tensor of shape was broadcast
// (and over leading axes it lacks), giving a tensor of exactly shape and
// dtype d.
func sumTo(g *Tensor, shape []int, d kernels.DType) *Tensor {
	e := g.e
	if slices.Equal(g.shape, shape) {
		if g.dtype == d {
			return e.alias(g, shape)
		}
		return castTo(g, d)
	}
	r := len(g.shape)
	aligned := make([]int, r)
	for i := range r {
		aligned[i] = 1
		if j := i - (r - len(shape)); j >= 0 {
			aligned[i] = shape[j]
		}
	}
	cur := g
	curShape := append([]int(nil), g.shape...)
	acc := promote(g.dtype, kernels.F32)
	for ax := 0; ax < r; ax++ {
		if aligned[ax] != 1 || curShape[ax] == 1 {
			continue
		}
		outer, inner := numel(curShape[:ax]), numel(curShape[ax+1:])
		next := curShape
		next = append([]int(nil), next...)
		next[ax] = 1
		red := e.newTensor(acc, next)
		if e.live("backward", cur) && red.st != nil {
			e.b.Reduce(kernels.Sum, red.st.buf, cur.st.buf, outer, curShape[ax], inner)
		}
		if cur != g {
			cur.Release()
		}
		cur, curShape = red, next
	}
	res := castTo(cur, d)
	if cur != g {
		cur.Release()
	}
	res.shape = append([]int(nil), shape...)
	return res
}

// alias returns a new step handle on t's storage with the given shape (same
// number of elements): a view, with no tape node.
func (e *Engine) alias(t *Tensor, shape []int) *Tensor {
	a := &Tensor{e: e, shape: append([]int(nil), shape...), dtype: t.dtype, st: t.st}
	if t.st != nil {
		t.st.retain()
		e.scopes[len(e.scopes)-1] = append(e.scopes[len(e.scopes)-1], a)
	}
	return a
}
