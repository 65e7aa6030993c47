package autograd

import (
	"fmt"
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// node is one recorded op: its output, the inputs gradients flow to, the
// activations its backward reads, and the backward rule itself.
type node struct {
	op     string
	out    *Tensor
	inputs []*Tensor
	saved  []*Tensor // tape-owned handles, released once the node has run
	// backward maps the gradient of out to one gradient per input (nil where
	// the input needs none). It runs with recording off.
	backward func(g *Tensor) []*Tensor
	// extra are the further outputs of an op that makes several (q, k and v
	// of QKVNormRope); such a node has backwardN instead of backward, which
	// gets the gradients of out and of each extra output (nil where none
	// arrived) and runs when any of them has one.
	extra     []*Tensor
	backwardN func(gs []*Tensor) []*Tensor
	// reads are the leaves a checkpointed function read without taking
	// them as inputs (noted only while OnGradReady is set).
	reads []*Tensor
}

// recording reports whether an op on these inputs must be put on the tape.
func (e *Engine) recording(inputs ...*Tensor) bool {
	e.noteReads(inputs)
	if !e.gradEnabled || e.err != nil {
		return false
	}
	for _, t := range inputs {
		if t != nil && t.requiresGrad {
			return true
		}
	}
	return false
}

// save returns a tape-owned handle to t's storage, so the backward can read
// t even after the caller releases its own handle.
func (e *Engine) save(t *Tensor) *Tensor {
	if t == nil || t.st == nil {
		return t
	}
	t.st.retain()
	t.st.saves++
	return &Tensor{e: e, shape: t.shape, dtype: t.dtype, st: t.st, Name: t.Name, scale: t.scale, save: true}
}

// rebuildable lets the tape drop t's buffer while only its saves hold it:
// rebuild writes t's values again into a buffer of t's dtype and length,
// reading only what stays alive until every node that saved t has run its
// backward (the producing op's own saves, which its backward, later in
// the pass, releases). Where the buffer cannot be made again the backward
// fails with the allocation's error.
func (e *Engine) rebuildable(t *Tensor, rebuild func(buf kernels.Buffer)) {
	if t == nil || t.st == nil {
		return
	}
	t.st.rebuild, t.st.dtype, t.st.n = rebuild, t.dtype, t.Len()
}

// Recompute lets the tape drop t after the forward, while only the saves of
// the ops that read it hold it, and make it again before the first of
// those ops' backward from what t's own op keeps (one more run of that op
// there). Call it before the forward releases t. It reports whether t's op
// can do that: NormScale (its residual, if any, is then kept too),
// QKVNormRope (q, k and v together: asking for one asks for all three),
// and LoRALinear whose update reads its input x, without a bias. The
// values are the forward's, bit for bit.
func Recompute(t *Tensor) bool {
	if t == nil || t.st == nil || t.recompute == nil || t.released {
		return false
	}
	t.recompute()
	t.recompute = nil
	return true
}

// rebuildableGroup is rebuildable for outputs one kernel writes together
// (run, given a buffer for each of outs in order): rebuilding any of them
// writes all, into the buffers the others still have, into buffers they
// get back if evicted too, or into scratch for those already freed.
func (e *Engine) rebuildableGroup(outs []*Tensor, run func(bufs []kernels.Buffer)) {
	sts := make([]*storage, len(outs))
	for i, t := range outs {
		if t == nil || t.st == nil {
			return
		}
		sts[i] = t.st
	}
	for i, t := range outs {
		e.rebuildable(t, func(buf kernels.Buffer) {
			bufs := make([]kernels.Buffer, len(sts))
			var scratch []kernels.Buffer
			defer func() {
				for _, b := range scratch {
					e.b.Free(b)
				}
			}()
			for j, s := range sts {
				switch {
				case j == i:
					bufs[j] = buf
				case s.buf != nil:
					bufs[j] = s.buf // the same values written again
				default:
					b, err := e.b.Alloc(s.dtype, s.n)
					if err != nil {
						e.failf("backward", "rebuilding a %v tensor of %d elements the tape dropped: %v", s.dtype, s.n, err)
						return
					}
					bufs[j] = b
					if s.rebuild != nil && s.refs > 0 {
						s.buf = b // evicted: back for its saves
					} else {
						scratch = append(scratch, b)
					}
				}
			}
			run(bufs)
		})
	}
}

// materialize gives a saved handle its buffer back when the storage was
// evicted (rebuildable), rebuilding the values; the other holders of the
// storage see the same buffer.
func (e *Engine) materialize(t *Tensor) {
	if t == nil {
		return
	}
	s := t.st
	if s == nil || s.buf != nil || s.rebuild == nil || e.err != nil {
		return
	}
	buf, err := e.b.Alloc(s.dtype, s.n)
	if err != nil {
		e.failf("backward", "rebuilding a %v tensor of %d elements the tape dropped: %v", s.dtype, s.n, err)
		return
	}
	s.buf = buf
	s.rebuild(buf)
}

// record puts a node on the tape and marks out as requiring grad. saved are
// handles returned by save; they are released after the node's backward.
func (e *Engine) record(op string, out *Tensor, inputs []*Tensor, saved []*Tensor, backward func(g *Tensor) []*Tensor) {
	if out.st == nil {
		for _, s := range saved {
			s.Release()
		}
		return
	}
	out.requiresGrad = true
	n := &node{op: op, out: out, inputs: inputs, saved: saved, backward: backward}
	out.node = n
	e.tape = append(e.tape, n)
}

// recordN is record for an op with several outputs (outs[0] is the node's
// out): each output requires grad and points at the one node.
func (e *Engine) recordN(op string, outs []*Tensor, inputs []*Tensor, saved []*Tensor, backward func(gs []*Tensor) []*Tensor) {
	for _, o := range outs {
		if o.st == nil {
			for _, s := range saved {
				s.Release()
			}
			return
		}
	}
	n := &node{op: op, out: outs[0], extra: outs[1:], inputs: inputs, saved: saved, backwardN: backward}
	for _, o := range outs {
		o.requiresGrad = true
		o.node = n
	}
	e.tape = append(e.tape, n)
}

// takeGrads removes the pending gradients of a node's outputs from grads:
// for a single-output node the one gradient, for a multi-output node one
// per output (nil where none arrived). ok is false when none arrived.
func takeGrads(grads map[*Tensor]*Tensor, n *node) (gs []*Tensor, ok bool) {
	for _, o := range append([]*Tensor{n.out}, n.extra...) {
		g, has := grads[o]
		if has {
			delete(grads, o)
			ok = true
		}
		gs = append(gs, g)
	}
	return gs, ok
}

// dropTape releases what the nodes from index start on saved and removes
// them from the tape.
func (e *Engine) dropTape(start int) {
	for _, n := range e.tape[start:] {
		for _, s := range n.saved {
			s.Release()
		}
		n.saved = nil
		for _, o := range append([]*Tensor{n.out}, n.extra...) {
			if o.node == n {
				o.node = nil
			}
		}
	}
	e.tape = e.tape[:start]
	if start == 0 {
		e.dropRecordedCasts()
	}
}

// Backward computes the gradient of the one-element tensor loss with
// respect to every leaf that requires grad, adding it into the leaf's Grad
// (F32, or F64 for F64 leaves). The tape is consumed: each node's saved
// activations are freed as soon as its backward has run.
func (e *Engine) Backward(loss *Tensor) error {
	if !e.live("Backward", loss) {
		return e.Err()
	}
	if loss.Len() != 1 {
		return fmt.Errorf("Backward: loss %v is not a single value", loss)
	}
	if !loss.requiresGrad {
		return fmt.Errorf("Backward: loss %v does not depend on anything that requires grad", loss)
	}
	seed := e.Full(loss.dtype, loss.shape, 1)
	e.backwardFrom(0, map[*Tensor]*Tensor{loss: seed}, nil)
	return e.Err()
}

// backwardFrom runs the tape from its end down to index start with the given
// output gradients, then drops those nodes. Gradients reaching leaves are
// accumulated into their Grad; gradients reaching the tensors in want are
// returned (owned by the caller) instead.
func (e *Engine) backwardFrom(start int, seeds map[*Tensor]*Tensor, want map[*Tensor]bool) map[*Tensor]*Tensor {
	prev := e.SetGradEnabled(false)
	defer e.SetGradEnabled(prev)
	grads := seeds
	e.gradStack = append(e.gradStack, grads)
	e.wantStack = append(e.wantStack, want)
	defer func() {
		e.gradStack = e.gradStack[:len(e.gradStack)-1]
		e.wantStack = e.wantStack[:len(e.wantStack)-1]
	}()
	ready := e.planReady(start)
	for i := len(e.tape) - 1; i >= start && e.err == nil; i-- {
		ready.reportAbove(i)
		n := e.tape[i]
		gs, ok := takeGrads(grads, n)
		if !ok {
			continue
		}
		for _, s := range n.saved {
			e.materialize(s)
		}
		var ins []*Tensor
		if n.backwardN != nil {
			ins = n.backwardN(gs)
		} else {
			ins = n.backward(gs[0])
		}
		for _, g := range gs {
			if g != nil {
				g.Release()
			}
		}
		for j, in := range n.inputs {
			if in == nil || j >= len(ins) || ins[j] == nil || !in.requiresGrad {
				if j < len(ins) && ins[j] != nil {
					ins[j].Release()
				}
				continue
			}
			e.accumulate(grads, in, ins[j], want)
		}
		for _, s := range n.saved {
			s.Release()
		}
		n.saved = nil
	}
	ready.reportAbove(start - 1)
	result := map[*Tensor]*Tensor{}
	for t, g := range grads {
		switch {
		case want[t]:
			result[t] = g
		case t.node != nil && len(e.gradStack) > 1 && e.err == nil:
			// A tensor from before a checkpointed function that the function
			// read without taking it as an input: its gradient belongs to the
			// enclosing backward pass.
			e.accumulate(e.gradStack[len(e.gradStack)-2], t, g, nil)
		default:
			g.Release()
		}
	}
	e.dropTape(start)
	return result
}

// accumulate adds gradient g of tensor in: into the leaf's persistent Grad,
// or into the pending gradient of an intermediate tensor.
func (e *Engine) accumulate(grads map[*Tensor]*Tensor, in, g *Tensor, want map[*Tensor]bool) {
	if !slices.Equal(in.shape, g.shape) {
		e.failf("backward", "gradient %v does not match %v (a backward rule is wrong)", g.shape, in)
		g.Release()
		return
	}
	if in.leaf && !want[in] {
		gd := kernels.F32
		if in.dtype == kernels.F64 {
			gd = kernels.F64
		}
		if in.grad == nil {
			if g.dtype == gd && !shared(g) {
				in.grad = g
			} else {
				in.grad = castTo(g, gd)
				g.Release()
			}
			e.persist(in.grad)
			return
		}
		e.addInto(in.grad, g)
		g.Release()
		return
	}
	if prev, ok := grads[in]; ok {
		// Uses of one tensor in different precisions sum in the wider one,
		// and a shared cast's readers in its source's dtype (gradDType). A
		// single contribution stays as it came: the cast's backward widens it.
		wide := promote(prev.dtype, g.dtype)
		if in.gradDType != 0 {
			wide = promote(wide, in.gradDType)
		}
		prev = castOwned(prev, wide)
		g = castOwned(g, wide)
		if shared(prev) {
			// A backward rule handed this same storage to another input too
			// (Add gives both operands g itself): add into a copy, never
			// into a gradient someone else still holds.
			c := castTo(prev, prev.dtype)
			prev.Release()
			prev = c
		}
		e.addInto(prev, g)
		g.Release()
		grads[in] = prev
		return
	}
	grads[in] = g
}

// gradSink returns leaf t's gradient when a backward rule may add t's
// gradient into it directly — a product with beta = 1, in the gradient's own
// dtype — instead of handing a gradient to the tape, or nil when it may not:
// t is not a leaf that requires grad, the running pass returns t's gradient
// to its caller, t has no gradient yet (the first pass makes it), or the
// gradient's storage is shared. Accumulating there is what accumulate would
// do with the rule's gradient, less a rounding of the gradient to the
// operands' low precision, a temporary and an add pass. It is meant for
// leaves read through at most a cast (autocast's of an fp32 master): the
// cast then receives no gradient from this rule, which is all its backward
// would have carried to t. operand is the product's operand dtype: it
// writes fp32 from fp32 or 16-bit operands and fp64 from fp64 only.
func (e *Engine) gradSink(t *Tensor, operand kernels.DType) *Tensor {
	if e.err != nil || t == nil || !t.leaf || !t.requiresGrad || t.released || len(e.wantStack) == 0 || e.wantStack[len(e.wantStack)-1][t] {
		return nil
	}
	g := t.grad
	if g == nil || g.released || g.st == nil || shared(g) || !slices.Equal(g.shape, t.shape) {
		return nil
	}
	if (g.dtype == kernels.F64) != (operand == kernels.F64) || (g.dtype != kernels.F32 && g.dtype != kernels.F64) {
		return nil
	}
	return g
}

// pendingSink returns the gradient pending for intermediate t in the
// running backward pass when a backward rule may add its contribution
// into it directly — a product with beta = 1 — instead of handing it to
// the tape: another reader's backward has made it, in dtype d (what the
// rule computes; accumulate would sum the two in d too), and no one else
// holds its storage. nil otherwise: the rule makes its own gradient.
func (e *Engine) pendingSink(t *Tensor, d kernels.DType) *Tensor {
	if e.err != nil || t == nil || t.leaf || len(e.gradStack) == 0 || (t.gradDType != 0 && t.gradDType != d) {
		return nil
	}
	prev, ok := e.gradStack[len(e.gradStack)-1][t]
	if !ok || prev.dtype != d || prev.st == nil || prev.released || shared(prev) || !slices.Equal(prev.shape, t.shape) {
		return nil
	}
	return prev
}

// shared reports whether t's storage has other holders than t: adding into
// it in place would change their values too.
func shared(t *Tensor) bool { return t.st != nil && t.st.refs > 1 }

// addInto adds src into dst in place (same shape).
func (e *Engine) addInto(dst, src *Tensor) {
	if !e.live("accumulate", dst, src) {
		return
	}
	e.b.Binary(kernels.Add, dst.st.buf, dst.shape, dst.st.buf, dst.shape, src.st.buf, src.shape)
}

// castOwned returns t converted to d, releasing t when a copy was made.
func castOwned(t *Tensor, d kernels.DType) *Tensor {
	if t.dtype == d {
		return t
	}
	c := castTo(t, d)
	t.Release()
	return c
}

// castTo returns a new tensor holding t converted to d, outside the tape.
func castTo(t *Tensor, d kernels.DType) *Tensor {
	e := t.e
	out := e.newTensor(d, t.shape)
	if e.live("Cast", t) && out.st != nil {
		e.b.Cast(out.st.buf, t.st.buf)
	}
	return out
}

// promote returns the wider of two float dtypes (F64 > F32 > F16/BF16;
// BF16 with F16 gives F32), as PyTorch's type promotion does.
func promote(a, b kernels.DType) kernels.DType {
	if a == b {
		return a
	}
	if a == kernels.F64 || b == kernels.F64 {
		return kernels.F64
	}
	return kernels.F32
}
