package dist

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// PlanBuckets groups gradients into buckets for summing, the way PyTorch's
// DDP does: in reverse registration order (the backward produces the
// gradients of the last-registered parameters first), each bucket taking
// gradients until it holds at least capBytes, gradients never split.
// sizes are the gradients' sizes in bytes in registration order; each
// bucket lists gradient indices in the order they were added. A capBytes
// of zero or less puts every gradient in a bucket of its own.
func PlanBuckets(sizes []int64, capBytes int64) [][]int {
	order := make([]int, len(sizes))
	for i := range order {
		order[i] = len(sizes) - 1 - i
	}
	return planInOrder(sizes, order, capBytes)
}

// planInOrder groups the gradients into buckets of at least capBytes
// taking them in order (a permutation of their indices).
func planInOrder(sizes []int64, order []int, capBytes int64) [][]int {
	var out [][]int
	var cur []int
	var bytes int64
	for _, i := range order {
		cur = append(cur, i)
		bytes += sizes[i]
		if bytes >= capBytes {
			out = append(out, cur)
			cur, bytes = nil, 0
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// Reducer sums a step's gradients over the ranks bucket by bucket, each
// bucket as soon as the backward has finished all its gradients, so the
// sums are queued while the rest of the backward still runs. Buckets are
// summed in plan order whatever order their gradients finish in: every
// rank then makes the same collective calls in the same order, which is
// what lets them meet.
//
// The gradients are summed in place; dividing by the number of ranks (or
// of micro-batches) is the optimizer's business.
type Reducer struct {
	comm     Communicator
	grads    []kernels.Buffer
	buckets  [][]int
	bucketOf []int
	left     []int  // gradients of each bucket not yet ready this step
	ready    []bool // gradient ready this step
	seen     []int  // the gradients in the order they were ready this step
	lastSeen []int  // … and in the last finished step
	next     int    // the first bucket not yet summed this step
	capBytes int64
	err      error
}

// NewReducer plans buckets of at least capBytes over grads (registration
// order) and returns a Reducer that sums them through comm. The buffers
// must stay the same for the Reducer's life (a parameter's gradient buffer
// is allocated once).
func NewReducer(comm Communicator, grads []kernels.Buffer, capBytes int64) (*Reducer, error) {
	sizes := make([]int64, len(grads))
	for i, g := range grads {
		if g == nil {
			return nil, fmt.Errorf("dist: reducer: gradient %d has no buffer", i)
		}
		if d := g.DType(); d != kernels.F32 && d != kernels.BF16 {
			return nil, fmt.Errorf("dist: reducer: gradient %d is %v; sums are of F32 or BF16 buffers", i, d)
		}
		sizes[i] = int64(g.Len() * g.DType().Size())
	}
	r := &Reducer{comm: comm, grads: grads, bucketOf: make([]int, len(grads)), ready: make([]bool, len(grads)), capBytes: capBytes}
	r.setPlan(PlanBuckets(sizes, capBytes))
	return r, nil
}

func (r *Reducer) setPlan(buckets [][]int) {
	r.buckets = buckets
	r.left = make([]int, len(r.buckets))
	for b, idx := range r.buckets {
		for _, i := range idx {
			r.bucketOf[i] = b
		}
	}
	r.reset()
}

// Buckets returns the plan: each bucket's gradient indices.
func (r *Reducer) Buckets() [][]int { return r.buckets }

// Order is the order the gradients were reported ready in during the last
// finished step (indices; those never reported are left out).
func (r *Reducer) Order() []int { return r.lastSeen }

// Replan groups the gradients into buckets anew, in order — the order
// their backward finishes them, as Order observed it (gradients it leaves
// out go last): the plan PyTorch DDP rebuilds after its first iteration.
// Registration order seldom is the backward's (a model's earlier blocks may
// run later), and a bucket waits for every bucket planned before it, so a
// plan in the backward's order sums each bucket as soon as it is complete.
// Every rank must replan with the same order, between steps.
func (r *Reducer) Replan(order []int) error {
	n := len(r.grads)
	placed := make([]bool, n)
	var full []int
	for _, i := range order {
		if i < 0 || i >= n || placed[i] {
			return fmt.Errorf("dist: reducer: replan: %v is not an order of %d gradients", order, n)
		}
		placed[i] = true
		full = append(full, i)
	}
	for i := n - 1; i >= 0; i-- {
		if !placed[i] {
			full = append(full, i)
		}
	}
	sizes := make([]int64, n)
	for i, g := range r.grads {
		sizes[i] = int64(g.Len() * g.DType().Size())
	}
	r.setPlan(planInOrder(sizes, full, r.capBytes))
	return nil
}

func (r *Reducer) reset() {
	for b, idx := range r.buckets {
		r.left[b] = len(idx)
	}
	clear(r.ready)
	r.next = 0
}

// Ready marks gradient i as final for this step (the backward will add
// nothing more to it) and sums every bucket that is now complete and next
// in plan order.
func (r *Reducer) Ready(i int) error {
	if r.err != nil {
		return r.err
	}
	if i < 0 || i >= len(r.grads) {
		return fmt.Errorf("dist: reducer: gradient %d is not one of its %d", i, len(r.grads))
	}
	if r.ready[i] {
		r.err = fmt.Errorf("dist: reducer: gradient %d was reported ready twice in one step (is the parameter used by two backward passes without Finish between them?)", i)
		return r.err
	}
	r.ready[i] = true
	r.seen = append(r.seen, i)
	r.left[r.bucketOf[i]]--
	for r.next < len(r.buckets) && r.left[r.next] == 0 {
		if err := r.sum(r.next); err != nil {
			return err
		}
		r.next++
	}
	return nil
}

// Finish sums the buckets still waiting — their gradients not reported
// ready are taken as they are, as for a parameter the step did not reach —
// and makes the Reducer ready for the next step. It returns the first
// error of the step.
func (r *Reducer) Finish() error {
	for ; r.err == nil && r.next < len(r.buckets); r.next++ {
		r.sum(r.next)
	}
	err := r.err
	r.err = nil
	r.reset()
	r.lastSeen, r.seen = r.seen, r.lastSeen[:0]
	return err
}

func (r *Reducer) sum(b int) error {
	bufs := make([]kernels.Buffer, len(r.buckets[b]))
	for k, i := range r.buckets[b] {
		bufs[k] = r.grads[i]
	}
	if err := r.comm.AllReduceSum(bufs...); err != nil {
		r.err = fmt.Errorf("dist: reducer: bucket %d of %d: %w", b, len(r.buckets), err)
	}
	return r.err
}
