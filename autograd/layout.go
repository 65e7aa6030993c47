package autograd

// Reshape returns a view of x with a new shape of the same size; one
// dimension may be −1 and is inferred. No data moves.
func Reshape(x *Tensor, shape []int) *Tensor {
	e := x.e
	shape = append([]int(nil), shape...)
	infer, known := -1, 1
	for i, s := range shape {
		if s == -1 && infer < 0 {
			infer = i
		} else {
			known *= s
		}
	}
	if infer >= 0 && known > 0 {
		shape[infer] = x.Len() / known
	}
	if !e.live("Reshape", x) {
		return e.failed(x.dtype, shape)
	}
	if numel(shape) != x.Len() {
		e.failf("Reshape", "cannot view %v as %v", x, shape)
		return e.failed(x.dtype, shape)
	}
	out := e.alias(x, shape)
	if e.recording(x) {
		src := x.shape
		e.record("Reshape", out, []*Tensor{x}, nil, func(g *Tensor) []*Tensor {
			return []*Tensor{e.alias(g, src)}
		})
	}
	return out
}

// Permute returns x with its axes reordered: axis i of the result is axis
// perm[i] of x (rank ≤ 6).
func Permute(x *Tensor, perm ...int) *Tensor {
	e := x.e
	if !e.live("Permute", x) {
		return e.failed(x.dtype, x.shape)
	}
	if len(perm) != len(x.shape) || len(perm) > 6 {
		e.failf("Permute", "permutation %v does not fit %v", perm, x)
		return e.failed(x.dtype, x.shape)
	}
	seen := make([]bool, len(perm))
	shape := make([]int, len(perm))
	inv := make([]int, len(perm))
	for i, p := range perm {
		if p < 0 || p >= len(perm) || seen[p] {
			e.failf("Permute", "%v is not a permutation", perm)
			return e.failed(x.dtype, x.shape)
		}
		seen[p] = true
		shape[i] = x.shape[p]
		inv[p] = i
	}
	out := e.newTensor(x.dtype, shape)
	if out.st == nil {
		return out
	}
	e.b.Permute(out.st.buf, x.st.buf, x.shape, perm)
	if e.recording(x) {
		e.record("Permute", out, []*Tensor{x}, nil, func(g *Tensor) []*Tensor {
			dx := e.newTensor(g.dtype, x.shape)
			if e.live("Permute backward", g) && dx.st != nil {
				e.b.Permute(dx.st.buf, g.st.buf, g.shape, inv)
			}
			return []*Tensor{dx}
		})
	}
	return out
}

// Slice returns x[..., start:end, ...] along axis.
func Slice(x *Tensor, axis, start, end int) *Tensor {
	e := x.e
	if axis < 0 {
		axis += len(x.shape)
	}
	if !e.live("Slice", x) {
		return e.failed(x.dtype, x.shape)
	}
	if axis < 0 || axis >= len(x.shape) || start < 0 || end > x.shape[axis] || start > end {
		e.failf("Slice", "[%d:%d] on axis %d is outside %v", start, end, axis, x)
		return e.failed(x.dtype, x.shape)
	}
	shape := append([]int(nil), x.shape...)
	shape[axis] = end - start
	outer, inner := numel(x.shape[:axis]), numel(x.shape[axis+1:])
	out := e.newTensor(x.dtype, shape)
	if out.st == nil {
		return out
	}
	e.b.Copy2D(out.st.buf, 0, (end-start)*inner, x.st.buf, start*inner, x.shape[axis]*inner, outer, (end-start)*inner)
	if e.recording(x) {
		src := x.shape
		full := x.shape[axis]
		e.record("Slice", out, []*Tensor{x}, nil, func(g *Tensor) []*Tensor {
			dx := e.Zeros(g.dtype, src)
			if e.live("Slice backward", g) && dx.st != nil {
				e.b.Copy2D(dx.st.buf, start*inner, full*inner, g.st.buf, 0, (end-start)*inner, outer, (end-start)*inner)
			}
			return []*Tensor{dx}
		})
	}
	return out
}

// Concat joins tensors along axis; all other axes must match. The result
// has the widest dtype of the inputs.
func Concat(axis int, xs ...*Tensor) *Tensor {
	if len(xs) == 0 {
		return nil
	}
	e := xs[0].e
	if axis < 0 {
		axis += len(xs[0].shape)
	}
	if !e.live("Concat", xs...) {
		return e.failed(xs[0].dtype, xs[0].shape)
	}
	shape := append([]int(nil), xs[0].shape...)
	if axis < 0 || axis >= len(shape) {
		e.failf("Concat", "axis %d out of range for %v", axis, xs[0])
		return e.failed(xs[0].dtype, shape)
	}
	shape[axis] = 0
	for _, x := range xs {
		ok := len(x.shape) == len(shape)
		for i := range x.shape {
			if ok && i != axis && x.shape[i] != shape[i] {
				ok = false
			}
		}
		if !ok {
			e.failf("Concat", "%v does not match %v off axis %d", x, xs[0], axis)
			return e.failed(xs[0].dtype, shape)
		}
		shape[axis] += x.shape[axis]
	}
	orig := xs
	xs = e.prepare(promoted, xs...)
	defer releaseCasts(orig, xs)
	outer, inner := numel(shape[:axis]), numel(shape[axis+1:])
	out := e.newTensor(xs[0].dtype, shape)
	if out.st == nil {
		return out
	}
	at := 0
	for _, x := range xs {
		e.b.Copy2D(out.st.buf, at*inner, shape[axis]*inner, x.st.buf, 0, x.shape[axis]*inner, outer, x.shape[axis]*inner)
		at += x.shape[axis]
	}
	if e.recording(xs...) {
		inputs := append([]*Tensor(nil), xs...)
		e.record("Concat", out, inputs, nil, func(g *Tensor) []*Tensor {
			grads := make([]*Tensor, len(inputs))
			at := 0
			for i, x := range inputs {
				if x.requiresGrad {
					gx := e.newTensor(x.dtype, x.shape)
					if e.live("Concat backward", g) && gx.st != nil {
						e.b.Copy2D(gx.st.buf, 0, x.shape[axis]*inner, g.st.buf, at*inner, shape[axis]*inner, outer, x.shape[axis]*inner)
					}
					grads[i] = gx
				}
				at += x.shape[axis]
			}
			return grads
		})
	}
	return out
}
