package autograd

// OnGradReady sets f to be called during every Backward, once for each
// leaf that requires grad, as soon as the leaf's gradient for that pass is
// final: every node that could add to it has run. Data-parallel training
// uses it to sum gradients across processes while the rest of the backward
// still runs.
//
// f runs on Backward's goroutine with recording off, after the additions
// into the gradient are queued; it may queue more work on the backend (a
// sum of leaf.Grad()'s buffer) but must not record ops. Leaves come in the
// order their gradients finish; a leaf the pass never reaches is not
// reported. The leaves a checkpointed function reads are noted while it
// runs in the forward pass, so set the hook before the forward. nil removes
// the hook.
func (e *Engine) OnGradReady(f func(leaf *Tensor)) {
	if f == nil {
		e.gradHook = nil
		return
	}
	e.gradHook = &gradHook{ready: f}
}

// gradHook is the OnGradReady callback and the note of the leaves the
// running checkpointed function reads.
type gradHook struct {
	ready      func(*Tensor)
	collecting bool
	reads      []*Tensor
	seen       map[*Tensor]bool
}

// noteReads records the leaves among an op's inputs while a checkpointed
// function runs without recording: its node takes none of them as inputs,
// yet its backward (the recompute) adds to their gradients.
func (e *Engine) noteReads(inputs []*Tensor) {
	h := e.gradHook
	if h == nil || !h.collecting {
		return
	}
	for _, t := range inputs {
		if t != nil && t.leaf && t.requiresGrad && !h.seen[t] {
			h.seen[t] = true
			h.reads = append(h.reads, t)
		}
	}
}

// beginReads starts noting reads (a checkpointed function's forward);
// endReads stops and returns them.
func (e *Engine) beginReads() {
	if h := e.gradHook; h != nil {
		h.collecting, h.reads, h.seen = true, nil, map[*Tensor]bool{}
	}
}

func (e *Engine) endReads() []*Tensor {
	h := e.gradHook
	if h == nil {
		return nil
	}
	reads := h.reads
	h.collecting, h.reads, h.seen = false, nil, nil
	return reads
}

// readyPlan knows, for one backward pass over tape[start:], after which
// node each leaf's gradient is final: the lowest-indexed node that takes it
// as an input or read it, as the pass runs the tape from its end.
type readyPlan struct {
	e     *Engine
	ready func(*Tensor)
	at    map[int][]*Tensor // node index → the leaves it finishes
	above int               // nodes from here on have run and been reported
}

// planReady returns the plan of an outermost backward pass when a hook is
// set (nil otherwise: a recompute's inner pass reports nothing itself, its
// leaves are the enclosing node's).
func (e *Engine) planReady(start int) *readyPlan {
	if e.gradHook == nil || len(e.gradStack) != 1 {
		return nil
	}
	p := &readyPlan{e: e, ready: e.gradHook.ready, at: map[int][]*Tensor{}, above: len(e.tape)}
	seen := map[*Tensor]bool{}
	for i := start; i < len(e.tape); i++ {
		n := e.tape[i]
		for _, ts := range [2][]*Tensor{n.inputs, n.reads} {
			for _, t := range ts {
				if t != nil && t.leaf && t.requiresGrad && !seen[t] {
					seen[t] = true
					p.at[i] = append(p.at[i], t)
				}
			}
		}
	}
	return p
}

// reportAbove reports the leaves finished by the nodes above index i, all
// of which have run. Nothing is reported once the pass has failed.
func (p *readyPlan) reportAbove(i int) {
	if p == nil {
		return
	}
	for p.above > i+1 && p.e.err == nil {
		p.above--
		for _, t := range p.at[p.above] {
			p.ready(t)
		}
	}
}
