package autograd

// Checkpoint runs fn on inputs without keeping its intermediate activations
// and, in the backward, runs it again with recording on to get the
// gradients: memory for compute, per transformer block. fn must be a pure
// function of its inputs and of parameters (leaves); random draws inside it
// are replayed exactly (the generator's offset is restored), and the
// autocast setting at the call is used again. The gradients equal those of
// calling fn directly. Inside a checkpointed function a nested Checkpoint
// just calls fn: the enclosing one already bounds what is kept, and
// recomputing twice would only cost time.
func Checkpoint(fn func(in []*Tensor) *Tensor, inputs ...*Tensor) *Tensor {
	e := inputs[0].e
	if !e.live("Checkpoint", inputs...) {
		return e.failed(inputs[0].dtype, inputs[0].shape)
	}
	if e.ckptDepth > 0 {
		return fn(inputs)
	}
	recording := e.gradEnabled
	rngOffset := e.rngOffset
	autocast := e.autocast

	e.pushScope()
	e.ckptDepth++
	e.beginReads()
	prev := e.SetGradEnabled(false)
	out := fn(inputs)
	e.SetGradEnabled(prev)
	reads := e.endReads()
	e.ckptDepth--
	e.popScope([]*Tensor{out})
	if !recording || out == nil || out.st == nil {
		return out
	}

	saved := make([]*Tensor, len(inputs))
	for i, in := range inputs {
		saved[i] = e.save(in)
	}
	needs := make([]bool, len(inputs))
	for i, in := range inputs {
		needs[i] = in.requiresGrad
	}
	e.record("Checkpoint", out, append([]*Tensor(nil), inputs...), saved, func(g *Tensor) []*Tensor {
		e.pushScope()
		e.ckptDepth++
		prevGrad := e.SetGradEnabled(true)
		prevCast := e.SetAutocast(autocast)
		after := e.rngOffset
		e.rngOffset = rngOffset

		detached := make([]*Tensor, len(saved))
		want := map[*Tensor]bool{}
		for i, s := range saved {
			d := e.alias(s, s.shape)
			d.requiresGrad = needs[i]
			detached[i] = d
			want[d] = true
		}
		start := len(e.tape)
		y := fn(detached)

		e.rngOffset = after
		e.SetAutocast(prevCast)
		var grads map[*Tensor]*Tensor
		if y != nil && y.requiresGrad {
			seed := g
			if y.dtype != g.dtype {
				seed = castTo(g, y.dtype)
			} else {
				seed = e.alias(g, g.shape)
			}
			grads = e.backwardFrom(start, map[*Tensor]*Tensor{y: seed}, want)
		} else {
			e.dropTape(start)
		}
		e.SetGradEnabled(prevGrad)
		e.ckptDepth--

		out := make([]*Tensor, len(detached))
		keep := []*Tensor{}
		if len(e.gradStack) > 0 {
			// Gradients handed to the enclosing pass (tensors fn read without
			// taking them as inputs) must outlive the recompute's scope.
			for _, pending := range e.gradStack[len(e.gradStack)-1] {
				keep = append(keep, pending)
			}
		}
		for i, d := range detached {
			if gi, ok := grads[d]; ok {
				out[i] = gi
				keep = append(keep, gi)
			}
		}
		e.popScope(keep)
		return out
	})
	if out.node != nil {
		out.node.reads = reads
	}
	return out
}
