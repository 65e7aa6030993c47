package cpu

import (
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// Elementwise ops: Unary, UnaryGrad and Binary. Each goroutine walks its
// share of the elements in chunks of ewChunk, widening the inputs into stack
// scratch (float32, or float64 when the output is F64), applying the op, and
// rounding once on store. Because every chunk is read whole before it is
// written, the output may alias an input exactly.

// ewChunk is the number of elements converted per step: small enough for
// stack scratch in L1, large enough to amortise the per-chunk dispatch.
const ewChunk = 512

// floatOperand checks that b is a live float buffer of n elements.
func (c *Backend) floatOperand(op, name string, b kernels.Buffer, n int) *buffer {
	cb := c.buf(op, name, b)
	if cb == nil {
		return nil
	}
	if !cb.dt.IsFloat() {
		c.fail("%s: operand %s is %v, not a float dtype", op, name, cb.dt)
		return nil
	}
	if n >= 0 && cb.n != n {
		c.fail("%s: operand %s has %d elements, want %d", op, name, cb.n, n)
		return nil
	}
	return cb
}

// unaryKnown reports whether op is one of the defined unary functions.
func unaryKnown(op kernels.UnaryOp) bool { return op >= kernels.Identity && op <= kernels.LastUnary }

// Unary computes dst[i] = f(src[i]) for every element; src and dst may have
// different float dtypes and may be the same buffer.
func (c *Backend) Unary(op kernels.UnaryOp, dst, src kernels.Buffer, p kernels.UnaryParams) {
	d := c.floatOperand("Unary", "dst", dst, -1)
	if d == nil {
		return
	}
	s := c.floatOperand("Unary", "src", src, d.n)
	if s == nil {
		return
	}
	if !unaryKnown(op) {
		c.fail("Unary: unknown op %d", op)
		return
	}
	kernels.ParallelFor(d.n, elemGrain, func(lo, hi int) {
		if wide(d) {
			unaryRange[float64](op, p, d, s, lo, hi)
		} else {
			unaryRange[float32](op, p, d, s, lo, hi)
		}
	})
}

// unaryRange computes elements [lo, hi) of Unary in T, a chunk at a time.
func unaryRange[T realT](op kernels.UnaryOp, p kernels.UnaryParams, d, s *buffer, lo, hi int) {
	var in, out [ewChunk]T
	for i := lo; i < hi; i += ewChunk {
		m := min(ewChunk, hi-i)
		readReal(in[:m], s, i)
		unaryApply(op, p, out[:m], in[:m])
		writeReal(d, i, out[:m])
	}
}

// sigmoid is 1/(1+e⁻ˣ). In float64 the one formula is safe everywhere: for
// very negative x, e⁻ˣ overflows to +Inf and the quotient is the correct 0.
// It is kept branch-free and small so the compiler inlines it: a branchy,
// called version measured 2–3× slower in SiLU.
func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// geluK is √(2/π), the slope of the tanh argument in the GELU approximation.
const geluK = 0.7978845608028654

// unaryApply writes f(in[i]) to out[i]. Transcendentals are evaluated in
// float64 and rounded to T, which is at least as accurate as a float32
// device library.
func unaryApply[T realT](op kernels.UnaryOp, p kernels.UnaryParams, out, in []T) {
	out = out[:len(in)]
	switch op {
	case kernels.Identity:
		copy(out, in)
	case kernels.Neg:
		for i, x := range in {
			out[i] = -x
		}
	case kernels.Abs:
		for i, x := range in {
			out[i] = T(math.Abs(float64(x)))
		}
	case kernels.Exp:
		for i, x := range in {
			out[i] = T(math.Exp(float64(x)))
		}
	case kernels.Log:
		for i, x := range in {
			out[i] = T(math.Log(float64(x)))
		}
	case kernels.Sqrt:
		for i, x := range in {
			out[i] = T(math.Sqrt(float64(x)))
		}
	case kernels.Rsqrt:
		for i, x := range in {
			out[i] = T(1 / math.Sqrt(float64(x)))
		}
	case kernels.Recip:
		for i, x := range in {
			out[i] = 1 / x
		}
	case kernels.Square:
		for i, x := range in {
			out[i] = x * x
		}
	case kernels.Tanh:
		for i, x := range in {
			out[i] = T(math.Tanh(float64(x)))
		}
	case kernels.Sigmoid:
		for i, x := range in {
			out[i] = T(sigmoid(float64(x)))
		}
	case kernels.SiLU:
		for i, x := range in {
			out[i] = T(float64(x) * sigmoid(float64(x)))
		}
	case kernels.GELUTanh:
		for i, x := range in {
			v := float64(x)
			out[i] = T(0.5 * v * (1 + math.Tanh(geluK*(v+0.044715*v*v*v))))
		}
	case kernels.GELU:
		for i, x := range in {
			v := float64(x)
			out[i] = T(0.5 * v * (1 + math.Erf(v/math.Sqrt2)))
		}
	case kernels.Affine:
		a, b := T(p.A), T(p.B)
		for i, x := range in {
			out[i] = x*a + b
		}
	case kernels.PowScalar:
		for i, x := range in {
			out[i] = T(math.Pow(float64(x), p.A))
		}
	case kernels.DropoutMask:
		keep, scale := T(p.A), T(p.B)
		for i, x := range in {
			if x >= keep {
				out[i] = scale
			} else {
				out[i] = 0
			}
		}
	}
}

// UnaryGrad computes dx[i] = dy[i]·f'(x[i]). The derivatives are those of
// the forward functions above: Abs uses sign(x) with 0 at 0 (as PyTorch),
// Affine gives A, PowScalar A·x^(A−1), and DropoutMask gives 0 everywhere: the
// mask is a step function of a random draw, not of anything trained, so no
// gradient flows through it (the gradient of the masked activation flows
// through the Mul that applies the mask instead). dx may alias x or dy.
func (c *Backend) UnaryGrad(op kernels.UnaryOp, dx, x, dy kernels.Buffer, p kernels.UnaryParams) {
	d := c.floatOperand("UnaryGrad", "dx", dx, -1)
	if d == nil {
		return
	}
	xs := c.floatOperand("UnaryGrad", "x", x, d.n)
	if xs == nil {
		return
	}
	g := c.floatOperand("UnaryGrad", "dy", dy, d.n)
	if g == nil {
		return
	}
	if !unaryKnown(op) {
		c.fail("UnaryGrad: unknown op %d", op)
		return
	}
	kernels.ParallelFor(d.n, elemGrain, func(lo, hi int) {
		if wide(d) {
			unaryGradRange[float64](op, p, d, xs, g, lo, hi)
		} else {
			unaryGradRange[float32](op, p, d, xs, g, lo, hi)
		}
	})
}

// unaryGradRange computes elements [lo, hi) of UnaryGrad in T, a chunk at
// a time.
func unaryGradRange[T realT](op kernels.UnaryOp, p kernels.UnaryParams, d, xs, g *buffer, lo, hi int) {
	var xv, gv [ewChunk]T
	for i := lo; i < hi; i += ewChunk {
		m := min(ewChunk, hi-i)
		readReal(xv[:m], xs, i)
		readReal(gv[:m], g, i)
		unaryGradApply(op, p, gv[:m], xv[:m])
		writeReal(d, i, gv[:m])
	}
}

// unaryGradApply replaces g[i] (holding dy) by dy·f'(x[i]).
func unaryGradApply[T realT](op kernels.UnaryOp, p kernels.UnaryParams, g, x []T) {
	g = g[:len(x)]
	switch op {
	case kernels.Identity:
	case kernels.Neg:
		for i := range x {
			g[i] = -g[i]
		}
	case kernels.Abs:
		for i, v := range x {
			switch {
			case v > 0:
			case v < 0:
				g[i] = -g[i]
			default:
				g[i] = 0
			}
		}
	case kernels.Exp:
		for i, v := range x {
			g[i] = T(float64(g[i]) * math.Exp(float64(v)))
		}
	case kernels.Log:
		for i, v := range x {
			g[i] = g[i] / v
		}
	case kernels.Sqrt:
		for i, v := range x {
			g[i] = T(float64(g[i]) * 0.5 / math.Sqrt(float64(v)))
		}
	case kernels.Rsqrt:
		for i, v := range x {
			w := float64(v)
			g[i] = T(float64(g[i]) * -0.5 / (w * math.Sqrt(w)))
		}
	case kernels.Recip:
		for i, v := range x {
			g[i] = -g[i] / (v * v)
		}
	case kernels.Square:
		for i, v := range x {
			g[i] = 2 * v * g[i]
		}
	case kernels.Tanh:
		for i, v := range x {
			t := math.Tanh(float64(v))
			g[i] = T(float64(g[i]) * (1 - t*t))
		}
	case kernels.Sigmoid:
		for i, v := range x {
			s := sigmoid(float64(v))
			g[i] = T(float64(g[i]) * s * (1 - s))
		}
	case kernels.SiLU:
		for i, v := range x {
			w := float64(v)
			s := sigmoid(w)
			g[i] = T(float64(g[i]) * s * (1 + w*(1-s)))
		}
	case kernels.GELUTanh:
		for i, v := range x {
			w := float64(v)
			t := math.Tanh(geluK * (w + 0.044715*w*w*w))
			d := 0.5*(1+t) + 0.5*w*(1-t*t)*geluK*(1+3*0.044715*w*w)
			g[i] = T(float64(g[i]) * d)
		}
	case kernels.GELU:
		for i, v := range x {
			w := float64(v)
			d := 0.5*(1+math.Erf(w/math.Sqrt2)) + w*math.Exp(-0.5*w*w)/math.Sqrt(2*math.Pi)
			g[i] = T(float64(g[i]) * d)
		}
	case kernels.Affine:
		a := T(p.A)
		for i := range x {
			g[i] *= a
		}
	case kernels.PowScalar:
		for i, v := range x {
			g[i] = T(float64(g[i]) * p.A * math.Pow(float64(v), p.A-1))
		}
	case kernels.DropoutMask:
		clear(g)
	}
}

// binaryKnown reports whether op is one of the defined binary functions.
func binaryKnown(op kernels.BinaryOp) bool { return op >= kernels.Add && op <= kernels.Minimum }

// maxBinaryRank bounds the rank Binary takes, so index arithmetic can live
// in fixed arrays.
const maxBinaryRank = 8

// Binary computes dst = a ∘ b with NumPy broadcasting over equal-rank
// shapes. Axes along which neither operand broadcasts differently are merged
// first, so the inner loop runs over the longest possible contiguous stretch.
// dst may alias a or b when that operand has dst's shape.
func (c *Backend) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	if !binaryKnown(op) {
		c.fail("Binary: unknown op %d", op)
		return
	}
	rank := len(dstShape)
	if len(aShape) != rank || len(bShape) != rank || rank > maxBinaryRank {
		c.fail("Binary: shapes dst %v, a %v, b %v must have one rank ≤ %d", dstShape, aShape, bShape, maxBinaryRank)
		return
	}
	n, na, nb := 1, 1, 1
	for k := 0; k < rank; k++ {
		e := dstShape[k]
		if e < 0 || (aShape[k] != e && aShape[k] != 1) || (bShape[k] != e && bShape[k] != 1) {
			c.fail("Binary: shapes a %v and b %v do not broadcast to dst %v (axis %d)", aShape, bShape, dstShape, k)
			return
		}
		n *= e
		na *= aShape[k]
		nb *= bShape[k]
	}
	d := c.floatOperand("Binary", "dst", dst, n)
	if d == nil {
		return
	}
	x := c.floatOperand("Binary", "a", a, na)
	if x == nil {
		return
	}
	y := c.floatOperand("Binary", "b", b, nb)
	if y == nil {
		return
	}
	if n == 0 {
		return
	}
	if (x == d && na != n) || (y == d && nb != n) {
		c.fail("Binary: dst aliases a broadcast operand")
		return
	}

	// Row-major strides of a and b over dst's axes (0 where broadcast),
	// dropping axes of extent 1 and merging neighbours that stay contiguous.
	var ext, sa, sb [maxBinaryRank]int
	axes := 0
	strA, strB := 1, 1
	var rawExt, rawA, rawB [maxBinaryRank]int
	for k := rank - 1; k >= 0; k-- {
		rawExt[k] = dstShape[k]
		if aShape[k] != 1 {
			rawA[k] = strA
		}
		if bShape[k] != 1 {
			rawB[k] = strB
		}
		strA *= aShape[k]
		strB *= bShape[k]
	}
	for k := 0; k < rank; k++ {
		if rawExt[k] == 1 {
			continue
		}
		if axes > 0 && sa[axes-1] == rawA[k]*rawExt[k] && sb[axes-1] == rawB[k]*rawExt[k] {
			ext[axes-1] *= rawExt[k]
			sa[axes-1], sb[axes-1] = rawA[k], rawB[k]
			continue
		}
		ext[axes], sa[axes], sb[axes] = rawExt[k], rawA[k], rawB[k]
		axes++
	}
	if axes == 0 { // every extent is 1: a single element
		ext[0], sa[0], sb[0] = 1, 0, 0
		axes = 1
	}
	inner := ext[axes-1]
	chunks := (inner + ewChunk - 1) / ewChunk
	units := (n / inner) * chunks
	grain := max(1, elemGrain/min(inner, ewChunk))
	bc := binaryCall{op: op, d: d, x: x, y: y, axes: axes, ext: ext, sa: sa, sb: sb, chunks: chunks}
	kernels.ParallelFor(units, grain, func(lo, hi int) {
		if wide(d) {
			binaryUnits[float64](bc, lo, hi)
		} else {
			binaryUnits[float32](bc, lo, hi)
		}
	})
}

// binaryCall is a validated Binary with its merged axes.
type binaryCall struct {
	op      kernels.BinaryOp
	d, x, y *buffer
	axes    int
	ext     [maxBinaryRank]int
	sa, sb  [maxBinaryRank]int
	chunks  int // pieces of at most ewChunk the inner axis is cut into
}

// binaryUnits computes work units [lo, hi): unit u is piece u%chunks of
// row u/chunks of the merged inner axis.
func binaryUnits[T realT](bc binaryCall, lo, hi int) {
	var xv, yv [ewChunk]T
	inner := bc.ext[bc.axes-1]
	for u := lo; u < hi; u++ {
		row, piece := u/bc.chunks, u%bc.chunks
		offA, offB := 0, 0
		r := row
		for k := bc.axes - 2; k >= 0; k-- {
			i := r % bc.ext[k]
			r /= bc.ext[k]
			offA += i * bc.sa[k]
			offB += i * bc.sb[k]
		}
		j0 := piece * ewChunk
		m := min(ewChunk, inner-j0)
		ewOperand(bc.x, xv[:m], offA, j0, bc.sa[bc.axes-1])
		ewOperand(bc.y, yv[:m], offB, j0, bc.sb[bc.axes-1])
		binaryApply(bc.op, xv[:m], yv[:m])
		writeReal(bc.d, row*inner+j0, xv[:m])
	}
}

// ewOperand loads elements j0… of an operand's row starting at base: a run
// when the inner stride is 1, one value repeated when it is 0 (broadcast).
func ewOperand[T realT](b *buffer, dst []T, base, j0, stride int) {
	if stride != 0 {
		readReal(dst, b, base+j0)
		return
	}
	readReal(dst[:1], b, base)
	v := dst[0]
	for i := range dst {
		dst[i] = v
	}
}

// binaryApply replaces x[i] by x[i] ∘ y[i]. Maximum and Minimum propagate
// NaN, as torch.maximum does.
func binaryApply[T realT](op kernels.BinaryOp, x, y []T) {
	y = y[:len(x)]
	switch op {
	case kernels.Add:
		for i := range x {
			x[i] += y[i]
		}
	case kernels.Sub:
		for i := range x {
			x[i] -= y[i]
		}
	case kernels.Mul:
		for i := range x {
			x[i] *= y[i]
		}
	case kernels.Div:
		for i := range x {
			x[i] /= y[i]
		}
	case kernels.Maximum:
		for i, v := range y {
			if v > x[i] || v != v {
				x[i] = v
			}
		}
	case kernels.Minimum:
		for i, v := range y {
			if v < x[i] || v != v {
				x[i] = v
			}
		}
	}
}
