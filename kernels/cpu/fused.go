package cpu

import "github.com/newbie-train/newbie-train/kernels"

// The fused ops run as their definitions, the compositions of primitives in
// package kernels: the reference backend then gives the very bits the
// separate ops gave, and the GPU's one-pass kernels are checked against it.

// operand is one buffer of a fused op with the length it must have; stat
// marks saved statistics (F32 or F64), optional one that may be nil.
type operand struct {
	name           string
	b              kernels.Buffer
	n              int
	stat, optional bool
}

// operands checks a fused op's buffers in order, recording the first
// failure; it reports whether the op may run.
func (c *Backend) operands(op string, ops ...operand) bool {
	for _, o := range ops {
		switch {
		case o.b == nil && o.optional:
		case o.b == nil:
			c.fail("%s: operand %s is nil", op, o.name)
			return false
		case o.stat:
			if c.statArg(op, o.name, o.b, o.n) == nil {
				return false
			}
		default:
			if c.floatArg(op, o.name, o.b, o.n) == nil {
				return false
			}
		}
	}
	return true
}

// normScaleOperands checks NormScale's arguments and its factor and
// residual operands, followed by ops.
func (c *Backend) normScaleOperands(op string, a kernels.NormScaleArgs, ops ...operand) bool {
	if err := a.Check(); err != nil {
		c.fail("%s: %v", op, err)
		return false
	}
	sLen := 0
	if a.S != nil {
		sLen = a.S.Len()
	}
	return c.operands(op, append([]operand{
		{name: "S", b: a.S, n: sLen, optional: true},
		{name: "Res", b: a.Res, n: a.Rows * a.Cols, optional: true},
	}, ops...)...)
}

// NormScale computes res + RMSNorm(x)·w ⊙ f(s) (see kernels.NormScaleArgs).
func (c *Backend) NormScale(y, rstd, x, w kernels.Buffer, a kernels.NormScaleArgs) {
	const op = "NormScale"
	n := a.Rows * a.Cols
	if !c.normScaleOperands(op, a, operand{name: "y", b: y, n: n}, operand{name: "rstd", b: rstd, n: a.Rows, stat: true},
		operand{name: "x", b: x, n: n}, operand{name: "w", b: w, n: a.Cols, optional: true}) {
		return
	}
	if err := kernels.ComposeNormScale(c, y, rstd, x, w, a); err != nil {
		c.fail("%s: %v", op, err)
	}
}

// NormScaleGrad computes dx and, when asked, the factor's gradient ds.
func (c *Backend) NormScaleGrad(dx, ds, dy, x, w, rstd kernels.Buffer, a kernels.NormScaleArgs) {
	const op = "NormScaleGrad"
	if ds != nil && a.S == nil {
		c.fail("%s: ds asked for without a factor S", op)
		return
	}
	n, sLen := a.Rows*a.Cols, 0
	if a.S != nil {
		sLen = a.S.Len()
	}
	if !c.normScaleOperands(op, a, operand{name: "dx", b: dx, n: n}, operand{name: "ds", b: ds, n: sLen, optional: true},
		operand{name: "dy", b: dy, n: n}, operand{name: "x", b: x, n: n}, operand{name: "w", b: w, n: a.Cols, optional: true},
		operand{name: "rstd", b: rstd, n: a.Rows, stat: true}) {
		return
	}
	if err := kernels.ComposeNormScaleGrad(c, dx, ds, dy, x, w, rstd, a); err != nil {
		c.fail("%s: %v", op, err)
	}
}

// qkvOperands checks QKVNormRope's shapes and the operands of its
// forward (grad false) or backward, given in the methods' order.
func (c *Backend) qkvOperands(op string, a kernels.QKVArgs, grad bool, bufs ...kernels.Buffer) bool {
	if err := a.Check(); err != nil {
		c.fail("%s: %v", op, err)
		return false
	}
	rows := a.B * a.S
	q, kv := rows*a.Hq*a.D, rows*a.Hkv*a.D
	tables := []operand{{name: "cos", n: rows * a.D / 2}, {name: "sin", n: rows * a.D / 2}}
	var ops []operand
	if grad {
		ops = append([]operand{{name: "dqkv", n: rows * a.Width()}, {name: "dq", n: q}, {name: "dk", n: kv}, {name: "dv", n: kv},
			{name: "qkv", n: rows * a.Width()}, {name: "wq", n: a.D, optional: true}, {name: "wk", n: a.D, optional: true},
			{name: "rstdQ", n: rows * a.Hq, stat: true}, {name: "rstdK", n: rows * a.Hkv, stat: true}}, tables...)
	} else {
		ops = append([]operand{{name: "q", n: q}, {name: "k", n: kv}, {name: "v", n: kv},
			{name: "rstdQ", n: rows * a.Hq, stat: true}, {name: "rstdK", n: rows * a.Hkv, stat: true},
			{name: "qkv", n: rows * a.Width()}, {name: "wq", n: a.D, optional: true}, {name: "wk", n: a.D, optional: true}}, tables...)
	}
	for i := range ops {
		ops[i].b = bufs[i]
	}
	return c.operands(op, ops...)
}

// QKVNormRope splits qkv into q, k, v with the q/k norms and the rotation.
func (c *Backend) QKVNormRope(q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin kernels.Buffer, a kernels.QKVArgs) {
	const op = "QKVNormRope"
	if !c.qkvOperands(op, a, false, q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin) {
		return
	}
	if err := kernels.ComposeQKVNormRope(c, q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin, a); err != nil {
		c.fail("%s: %v", op, err)
	}
}

// QKVNormRopeGrad computes dqkv from the gradients of q, k and v.
func (c *Backend) QKVNormRopeGrad(dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin kernels.Buffer, a kernels.QKVArgs) {
	const op = "QKVNormRopeGrad"
	if !c.qkvOperands(op, a, true, dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin) {
		return
	}
	if err := kernels.ComposeQKVNormRopeGrad(c, dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin, a); err != nil {
		c.fail("%s: %v", op, err)
	}
}

// swigluOperands checks that the SwiGLU operands are float buffers of one
// dtype and length (nil ones skipped).
func (c *Backend) swigluOperands(op string, n int, bufs map[string]kernels.Buffer, order ...string) bool {
	var dt kernels.DType
	for _, name := range order {
		b := bufs[name]
		if b == nil {
			continue
		}
		cb := c.floatArg(op, name, b, n)
		if cb == nil {
			return false
		}
		if dt != 0 && cb.dt != dt {
			c.fail("%s: operand %s is %v, the others %v (SwiGLU takes one dtype)", op, name, cb.dt, dt)
			return false
		}
		dt = cb.dt
	}
	return true
}

// SwiGLU computes y = SiLU(a) ⊙ b.
func (c *Backend) SwiGLU(y, a, b kernels.Buffer) {
	const op = "SwiGLU"
	if a == nil || b == nil || y == nil {
		c.fail("%s: y, a and b are required", op)
		return
	}
	if !c.swigluOperands(op, a.Len(), map[string]kernels.Buffer{"y": y, "a": a, "b": b}, "y", "a", "b") {
		return
	}
	if err := kernels.ComposeSwiGLU(c, y, a, b); err != nil {
		c.fail("%s: %v", op, err)
	}
}

// SwiGLUGrad computes da and db of SwiGLU.
func (c *Backend) SwiGLUGrad(da, db, dy, a, b kernels.Buffer) {
	const op = "SwiGLUGrad"
	if dy == nil || a == nil || b == nil {
		c.fail("%s: dy, a and b are required", op)
		return
	}
	if !c.swigluOperands(op, a.Len(), map[string]kernels.Buffer{"da": da, "db": db, "dy": dy, "a": a, "b": b}, "da", "db", "dy", "a", "b") {
		return
	}
	if err := kernels.ComposeSwiGLUGrad(c, da, db, dy, a, b); err != nil {
		c.fail("%s: %v", op, err)
	}
}
