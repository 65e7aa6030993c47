package autograd

import (
	"fmt"
	"slices"

	"github.com/newbie-train/newbie-train/kernels"
)

// storage is a device buffer shared by the tensors that view it (a tensor
// and its reshapes) and by the tape nodes that saved it. It is freed when
// the last reference goes.
type storage struct {
	e    *Engine
	buf  kernels.Buffer
	refs int
	// saves is how many of refs are the tape's (Engine.save). rebuild, when
	// set, writes the values again into a buffer of dtype and n elements:
	// once only the tape's saves hold the storage its buffer is freed
	// (evict), and the backward makes it again before a node that saved it
	// runs (Engine.materialize).
	saves   int
	rebuild func(buf kernels.Buffer)
	dtype   kernels.DType
	n       int
}

func (s *storage) retain() { s.refs++ }

func (s *storage) drop() {
	s.refs--
	if s.refs == 0 {
		if s.buf != nil {
			s.e.b.Free(s.buf)
		}
		s.buf, s.rebuild = nil, nil
	}
}

// evict frees a rebuildable storage's buffer when the tape's saves are all
// that hold it: the values come back in the backward, rebuilt.
func (s *storage) evict() {
	if s.rebuild != nil && s.buf != nil && s.refs > 0 && s.refs == s.saves {
		s.e.b.Free(s.buf)
		s.buf = nil
	}
}

// Tensor is an n-dimensional, contiguous, row-major array on the engine's
// backend. Tensors are immutable values as far as ops are concerned: every
// op returns a new tensor (parameters and gradients are updated in place
// only by optimizers, outside the tape).
type Tensor struct {
	e     *Engine
	shape []int
	dtype kernels.DType
	st    *storage // nil for a failed tensor

	released bool
	kept     bool
	cached   bool // a per-step weight cast owned by the engine's cache
	save     bool // a handle the tape holds (Engine.save)

	requiresGrad bool
	leaf         bool    // created by the user, not by an op
	grad         *Tensor // accumulated gradient of a leaf that requires grad
	node         *node   // the op that produced this tensor, when recorded
	// scale, for an fp8 weight (dtype F8E4M3), is its per-row float32
	// scale: the weight is q·scale[row] (see QuantizeFP8).
	scale *Tensor
	// gradDType, when set, is the dtype this tensor's gradient is summed in:
	// a cast to a narrower dtype sums its readers' gradients in the source's
	// dtype, as if each reader had made its own cast (see Cast).
	gradDType kernels.DType
	// recompute, set by an op that can make its output again from what
	// its node keeps, makes the output rebuildable (Recompute).
	recompute func()
	// working, for a leaf, is a copy of it in a lower dtype that its owner
	// keeps equal to Cast(leaf, working's dtype) (SetWorking): the optimizer
	// writes it in the pass that updates the master.
	working *Tensor

	// Name labels parameters in errors and checkpoints.
	Name string
}

// SetWorking declares w the working copy of leaf t in w's dtype: from now
// on a cast of t to that dtype (autocast's, once per step, and again inside
// every checkpointed recompute) reads w instead of converting t, with the
// gradient still flowing to t. The caller promises that w holds exactly
// what the cast would make whenever an op reads it — the optimizer writes
// it in the same pass that updates t (optim.Param.Working), and whoever
// writes t otherwise (loading, resuming) refreshes it before the next
// forward (optim.Optimizer.RefreshWorking). t owns w from then on:
// releasing t releases w. nil removes it (and leaves it to the caller).
func (t *Tensor) SetWorking(w *Tensor) error {
	switch {
	case w == nil:
		t.working = nil
		return nil
	case !t.leaf:
		return fmt.Errorf("SetWorking: %v is not a leaf", t)
	case w.e != t.e || !slices.Equal(w.shape, t.shape) || w.st == nil || w.released:
		return fmt.Errorf("SetWorking: %v cannot be the working copy of %v", w, t)
	case w.dtype == t.dtype || !w.dtype.IsFloat():
		return fmt.Errorf("SetWorking: a working copy of %v must be of another float dtype, got %v", t, w.dtype)
	}
	t.working = w
	return nil
}

// Shape returns the tensor's shape (do not modify it).
func (t *Tensor) Shape() []int { return t.shape }

// DType returns the element type.
func (t *Tensor) DType() kernels.DType { return t.dtype }

// Len is the number of elements.
func (t *Tensor) Len() int { return numel(t.shape) }

// Engine returns the engine the tensor belongs to.
func (t *Tensor) Engine() *Engine { return t.e }

// Buffer returns the device buffer holding the tensor's elements, for
// optimizers and checkpoint code that work below the tape. It is nil for a
// released or failed tensor.
func (t *Tensor) Buffer() kernels.Buffer {
	if t.st == nil || t.released {
		return nil
	}
	return t.st.buf
}

// RequiresGrad reports whether gradients flow to or through this tensor.
func (t *Tensor) RequiresGrad() bool { return t.requiresGrad }

// Grad returns the gradient accumulated into a leaf that requires grad (nil
// before the first backward). It has the leaf's shape and is F32 (F64 for an
// F64 leaf), whatever dtype the forward ran in.
func (t *Tensor) Grad() *Tensor { return t.grad }

// ZeroGrad sets a leaf's accumulated gradient to zero in place, so the next
// backward starts from zero while optimizers keep a stable buffer.
func (t *Tensor) ZeroGrad() {
	if t.grad != nil && t.grad.st != nil && !t.grad.released {
		t.e.b.Fill(t.grad.st.buf, 0)
	}
}

// Keep exempts a step tensor from being freed by EndStep (a value to read
// after the step, a tensor carried to the next step). Release frees it.
func (t *Tensor) Keep() *Tensor {
	t.kept = true
	return t
}

// Release drops this handle's reference to the device buffer now; the buffer
// is freed once the tape no longer needs it either. Using a released tensor
// in an op is an error. Releasing twice does nothing.
func (t *Tensor) Release() {
	if t == nil || t.released {
		return
	}
	t.released = true
	if t.st != nil {
		if t.save {
			t.st.saves--
		}
		t.st.drop()
		if !t.save {
			// The forward letting go: the tape's saves may be all that is
			// left. (Not when a save goes: a storage rebuilt for one
			// reader's backward stays for the next reader's.)
			t.st.evict()
		}
	}
	if t.grad != nil {
		t.grad.Release()
		t.grad = nil
	}
	if t.scale != nil && t.leaf {
		t.scale.Release() // the weight's own scales go with it
	}
	if t.working != nil {
		t.working.Release() // so does its working copy
		t.working = nil
	}
}

// String describes the tensor for error messages.
func (t *Tensor) String() string {
	name := t.Name
	if name == "" {
		name = "tensor"
	}
	return fmt.Sprintf("%s%v %v", name, t.shape, t.dtype)
}

func numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// newTensor allocates an uninitialised tensor in the current scope. On an
// allocation failure it records the error and returns a failed tensor.
func (e *Engine) newTensor(d kernels.DType, shape []int) *Tensor {
	t := e.allocTensor(d, shape, e.b.Alloc)
	if t.st != nil {
		e.scopes[len(e.scopes)-1] = append(e.scopes[len(e.scopes)-1], t)
	}
	return t
}

// newConstant allocates an uninitialised tensor outside every scope: it
// lives until released, packed where the backend can
// (kernels.ConstantArena).
func (e *Engine) newConstant(d kernels.DType, shape []int) *Tensor {
	alloc := e.b.Alloc
	if ca, ok := e.b.(kernels.ConstantArena); ok {
		alloc = ca.AllocConstant
	}
	return e.allocTensor(d, shape, alloc)
}

// allocTensor is newTensor and newConstant: a tensor whose buffer comes
// from alloc, or a failed one with the error recorded.
func (e *Engine) allocTensor(d kernels.DType, shape []int, alloc func(kernels.DType, int) (kernels.Buffer, error)) *Tensor {
	t := &Tensor{e: e, shape: append([]int(nil), shape...), dtype: d}
	for _, s := range shape {
		if s < 0 {
			e.failf("alloc", "negative dimension in shape %v", shape)
			return t
		}
	}
	buf, err := alloc(d, numel(shape))
	if err != nil {
		e.fail(fmt.Errorf("alloc %v%v: %w", d, shape, err))
		return t
	}
	t.st = &storage{e: e, buf: buf, refs: 1}
	return t
}

// ReserveConstants tells the backend that count constants of n bytes in
// all (a model's weights, loaded next) follow, so that a backend which
// packs them (kernels.ConstantArena) makes room for all of them at once.
func (e *Engine) ReserveConstants(n int64, count int) {
	if ca, ok := e.b.(kernels.ConstantArena); ok {
		ca.ReserveConstants(n, count)
	}
}

// persist removes t from the step's scopes: it lives until Release.
func (e *Engine) persist(t *Tensor) {
	for si := range e.scopes {
		s := e.scopes[si]
		for i := len(s) - 1; i >= 0; i-- {
			if s[i] == t {
				e.scopes[si] = append(s[:i], s[i+1:]...)
				return
			}
		}
	}
}

// FromFloat64 returns a step tensor of dtype d holding values (rounded to d).
func (e *Engine) FromFloat64(d kernels.DType, shape []int, values []float64) *Tensor {
	if len(values) != numel(shape) {
		e.failf("FromFloat64", "%d values for shape %v (%d elements)", len(values), shape, numel(shape))
		return &Tensor{e: e, shape: append([]int(nil), shape...), dtype: d}
	}
	t := e.newTensor(d, shape)
	if t.st != nil {
		e.b.Upload(t.st.buf, 0, kernels.EncodeF64(d, values))
	}
	return t
}

// FromInt32 returns a step tensor of dtype I32 (token ids, positions).
func (e *Engine) FromInt32(shape []int, values []int32) *Tensor {
	if len(values) != numel(shape) {
		e.failf("FromInt32", "%d values for shape %v", len(values), shape)
		return &Tensor{e: e, shape: append([]int(nil), shape...), dtype: kernels.I32}
	}
	t := e.newTensor(kernels.I32, shape)
	if t.st != nil {
		e.b.Upload(t.st.buf, 0, kernels.EncodeI32(values))
	}
	return t
}

// Full returns a step tensor with every element v.
func (e *Engine) Full(d kernels.DType, shape []int, v float64) *Tensor {
	t := e.newTensor(d, shape)
	if t.st != nil {
		e.b.Fill(t.st.buf, v)
	}
	return t
}

// Zeros returns a step tensor of zeros.
func (e *Engine) Zeros(d kernels.DType, shape []int) *Tensor { return e.Full(d, shape, 0) }

// ConstantBytes is Constant for values already encoded in dtype d
// (little-endian), uploaded as they are: loading a bf16 weight file into
// bf16 storage then needs no float64 copy of each tensor on the host.
func (e *Engine) ConstantBytes(name string, d kernels.DType, shape []int, raw []byte) *Tensor {
	if len(raw) != numel(shape)*d.Size() {
		e.failf("ConstantBytes", "%s: %d bytes for %v %v", name, len(raw), d, shape)
		return e.failed(d, shape)
	}
	t := e.newConstant(d, shape)
	if t.st != nil {
		e.b.Upload(t.st.buf, 0, raw)
	}
	t.Name = name
	t.leaf = true
	return t
}

// ConstantConverted is ConstantBytes for values encoded in dtype from and
// stored in dtype d: they are uploaded as they are into a buffer of their
// own dtype and converted by the backend's Cast, rounded once to d (a GPU
// converts a model's weights in milliseconds where the host takes seconds:
// a bf16 file loaded for fp16 sampling or training). The buffer in from
// lives only for the conversion.
func (e *Engine) ConstantConverted(name string, d kernels.DType, shape []int, raw []byte, from kernels.DType) *Tensor {
	if from == d {
		return e.ConstantBytes(name, d, shape, raw)
	}
	if len(raw) != numel(shape)*from.Size() {
		e.failf("ConstantConverted", "%s: %d bytes for %v %v", name, len(raw), from, shape)
		return e.failed(d, shape)
	}
	src := e.allocTensor(from, shape, e.b.Alloc)
	if src.st == nil {
		return e.failed(d, shape)
	}
	defer src.Release()
	e.b.Upload(src.st.buf, 0, raw)
	t := e.newConstant(d, shape)
	if t.st != nil {
		e.b.Cast(t.st.buf, src.st.buf)
	}
	t.Name = name
	t.leaf = true
	return t
}

// Param returns a trainable leaf that lives until released: its values are
// the master copy (F32 for training; F64 in gradient checks) and its
// gradient, allocated here as zeros so optimizers hold a stable buffer,
// accumulates in the same dtype across backward passes.
func (e *Engine) Param(name string, d kernels.DType, shape []int, values []float64) *Tensor {
	t := e.FromFloat64(d, shape, values)
	e.persist(t)
	t.Name = name
	t.leaf = true
	t.requiresGrad = true
	gd := kernels.F32
	if d == kernels.F64 {
		gd = kernels.F64
	}
	t.grad = e.Zeros(gd, shape)
	e.persist(t.grad)
	return t
}

// Constant returns a leaf without gradient that lives until released
// (frozen base weights, fixed tables).
func (e *Engine) Constant(name string, d kernels.DType, shape []int, values []float64) *Tensor {
	if len(values) != numel(shape) {
		e.failf("Constant", "%s: %d values for shape %v (%d elements)", name, len(values), shape, numel(shape))
		return e.failed(d, shape)
	}
	t := e.newConstant(d, shape)
	if t.st != nil {
		e.b.Upload(t.st.buf, 0, kernels.EncodeF64(d, values))
	}
	t.Name = name
	t.leaf = true
	return t
}

// Input marks a step tensor as a leaf whose gradient is wanted (gradient
// checks, input gradients in parity tests) and returns it.
func (t *Tensor) Input() *Tensor {
	t.leaf = true
	t.requiresGrad = true
	return t
}

// Values waits for the backend and returns the tensor's elements as float64.
// This is the one way data leaves the device; call it once per log interval.
func (t *Tensor) Values() ([]float64, error) {
	if err := t.e.Err(); err != nil {
		return nil, err
	}
	if t.st == nil || t.released {
		return nil, fmt.Errorf("read %v: tensor was released", t)
	}
	raw := make([]byte, t.Len()*t.dtype.Size())
	if err := t.e.b.Download(raw, t.st.buf, 0); err != nil {
		return nil, fmt.Errorf("read %v: %w", t, err)
	}
	v := kernels.DecodeF64(t.dtype, raw)
	if t.scale != nil { // an fp8 weight: its values are q·scale[row]
		s, err := t.scale.Values()
		if err != nil {
			return nil, err
		}
		cols := t.shape[len(t.shape)-1]
		for i := range v {
			v[i] = float64(float32(v[i]) * float32(s[i/cols]))
		}
	}
	return v, nil
}

// Item returns the single value of a one-element tensor.
func (t *Tensor) Item() (float64, error) {
	if t.Len() != 1 {
		return 0, fmt.Errorf("Item of %v: not a single value", t)
	}
	v, err := t.Values()
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// live reports whether t can be read by an op; it records why not.
func (e *Engine) live(op string, ts ...*Tensor) bool {
	if e.err != nil {
		return false
	}
	for _, t := range ts {
		if t == nil {
			continue
		}
		if t.e != e {
			e.failf(op, "%v belongs to another engine", t)
			return false
		}
		if t.st == nil {
			e.fail(fmt.Errorf("%s: %w", op, ErrFailedInput))
			return false
		}
		if t.released {
			e.failf(op, "%v was released", t)
			return false
		}
	}
	return true
}

// failed returns a failed tensor of the given shape and dtype: what an op
// returns when it cannot run.
func (e *Engine) failed(d kernels.DType, shape []int) *Tensor {
	return &Tensor{e: e, shape: append([]int(nil), shape...), dtype: d}
}
