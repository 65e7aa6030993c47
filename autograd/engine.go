// Package autograd is the training engine: tensors on one backend, a tape
// recorded during the forward pass, Backward from a scalar, no-grad regions,
// autocast (PyTorch's CUDA policy), activation checkpointing and explicit
// lifetimes for device memory.
//
// All tensors of a computation belong to one Engine. Ops are functions of
// tensors (Add(a, b), MatMul(a, b), …) that queue work on the engine's
// backend and, when gradients are wanted, record a node on the tape.
//
// Errors are sticky, as on the backend: an op given tensors of the wrong
// shape records the first such error on the engine and returns a tensor
// marked failed; later ops on failed tensors do nothing. Engine.Err, Backward,
// Values and EndStep report it. So model code reads straight, and the first
// mistake is what is reported.
//
// Memory: a tensor's device buffer is freed when nothing needs it. Tensors
// created during a step belong to the step; EndStep frees every one not kept
// (Keep) or already released (Release). The tape holds the activations its
// backward needs and frees each as soon as its node's backward has run, so
// after Backward and EndStep the backend's allocated bytes are back to what
// the parameters, optimizer state and kept tensors hold.
package autograd

import (
	"errors"
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// Engine owns the tape, the autocast state and the lifetime of step tensors
// for one backend. It is used by one goroutine at a time.
type Engine struct {
	b kernels.Backend

	err error

	gradEnabled bool
	autocast    kernels.DType // 0: off
	castCache   map[castKey]*Tensor
	ckptDepth   int // > 0 while a checkpointed function runs

	tape      []*node
	gradHook  *gradHook             // OnGradReady's callback, nil when unset
	gradStack []map[*Tensor]*Tensor // pending gradients of each running backward pass
	wantStack []map[*Tensor]bool    // the tensors each running pass returns gradients for
	scopes    [][]*Tensor           // tensors created in each open scope; scopes[0] is the step

	rngSeed   uint64
	rngOffset uint64

	// Trace, when set, is called for every op with the dtypes it ran in:
	// tests use it to see the autocast policy at work.
	Trace func(op string, in []kernels.DType, out kernels.DType)
}

// New returns an engine over backend b with gradients enabled and autocast off.
func New(b kernels.Backend) *Engine {
	return &Engine{b: b, gradEnabled: true, castCache: map[castKey]*Tensor{}, scopes: [][]*Tensor{nil}}
}

// Backend returns the backend the engine runs on.
func (e *Engine) Backend() kernels.Backend { return e.b }

// Err returns the first error recorded by an op or the backend, if any,
// without clearing it.
func (e *Engine) Err() error {
	if e.err == nil {
		if err := e.b.Sync(); err != nil {
			e.err = err
		}
	}
	return e.err
}

// fail records the first error of the engine.
func (e *Engine) fail(err error) {
	if e.err == nil {
		e.err = err
	}
}

// failf records a formatted error naming the op.
func (e *Engine) failf(op, format string, args ...any) {
	e.fail(fmt.Errorf("%s: %s", op, fmt.Sprintf(format, args...)))
}

// SetGradEnabled turns tape recording on or off and returns the previous
// setting, so a caller can restore it.
func (e *Engine) SetGradEnabled(on bool) bool {
	prev := e.gradEnabled
	e.gradEnabled = on
	return prev
}

// GradEnabled reports whether ops are being recorded.
func (e *Engine) GradEnabled() bool { return e.gradEnabled }

// NoGrad runs f with recording off (evaluation, weight updates).
func (e *Engine) NoGrad(f func()) {
	prev := e.SetGradEnabled(false)
	defer e.SetGradEnabled(prev)
	f()
}

// SetAutocast sets the low-precision dtype that matrix products and
// attention run in (kernels.BF16 or kernels.F16), or turns autocast off with
// 0, and returns the previous setting.
func (e *Engine) SetAutocast(d kernels.DType) kernels.DType {
	prev := e.autocast
	if d != 0 && d != kernels.BF16 && d != kernels.F16 {
		e.failf("SetAutocast", "autocast dtype must be BF16 or F16, got %v", d)
		return prev
	}
	e.autocast = d
	return prev
}

// Autocast returns the autocast dtype, or 0 when autocast is off.
func (e *Engine) Autocast() kernels.DType { return e.autocast }

// SeedRandom sets the seed and counter offset of the engine's random draws
// (dropout, noise). Draws are counter-based: the same seed and offset give
// the same numbers on every backend, and a checkpointed function replays its
// draws exactly when recomputed.
func (e *Engine) SeedRandom(seed, offset uint64) { e.rngSeed, e.rngOffset = seed, offset }

// RandomState returns the seed and the counter offset of the next draw, for
// saving with a training state.
func (e *Engine) RandomState() (seed, offset uint64) { return e.rngSeed, e.rngOffset }

// takeRandom reserves n counters and returns the offset of the first.
func (e *Engine) takeRandom(n int) uint64 {
	off := e.rngOffset
	e.rngOffset += uint64(n)
	return off
}

// EndStep ends a training step: it drops the tape (freeing what it saved),
// the per-step cache of weight casts and every tensor created since the last
// EndStep that was neither kept nor released. It returns the first error of
// the step and clears it, so the next step starts clean.
func (e *Engine) EndStep() error {
	e.dropTape(0)
	for k, c := range e.castCache {
		c.Release()
		delete(e.castCache, k)
	}
	for len(e.scopes) > 1 {
		e.popScope(nil)
	}
	for _, t := range e.scopes[0] {
		if !t.kept {
			t.Release()
		}
	}
	e.scopes[0] = nil
	err := e.Err()
	e.err = nil
	return err
}

// pushScope opens a nested lifetime scope: tensors created until the
// matching popScope belong to it.
func (e *Engine) pushScope() { e.scopes = append(e.scopes, nil) }

// popScope closes the innermost scope, releasing its tensors except those in
// keep, which move to the enclosing scope.
func (e *Engine) popScope(keep []*Tensor) {
	top := e.scopes[len(e.scopes)-1]
	e.scopes = e.scopes[:len(e.scopes)-1]
	parent := len(e.scopes) - 1
	kept := map[*Tensor]bool{}
	for _, k := range keep {
		kept[k] = true
	}
	for _, t := range top {
		if kept[t] {
			e.scopes[parent] = append(e.scopes[parent], t)
		} else {
			t.Release()
		}
	}
}

// ErrFailedInput is wrapped by errors of ops that were handed a tensor an
// earlier op failed to produce.
var ErrFailedInput = errors.New("input tensor comes from a failed op")
