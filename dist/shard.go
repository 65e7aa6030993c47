package dist

import "fmt"

// Shard returns the part of a step's global batch that rank takes of a job
// of world ranks: a contiguous run, the ranks' runs in rank order making up
// global in order, their lengths differing by at most one (the first
// len(global) % world ranks take one more).
//
// With one batch per rank, rank r takes global[r], and the rank-order sum
// of the gradients (rank 0 + rank 1 + …) adds them in the order a single
// process accumulating the whole global batch would: that is what makes N
// ranks give the same LoRA as one process with N micro-batches.
func Shard[T any](global []T, rank, world int) []T {
	if world < 1 || rank < 0 || rank >= world {
		return nil
	}
	lo, hi := shardBounds(len(global), rank, world)
	return global[lo:hi:hi]
}

// shardBounds is rank's run [lo, hi) of n items.
func shardBounds(n, rank, world int) (lo, hi int) {
	base, extra := n/world, n%world
	lo = rank*base + min(rank, extra)
	hi = lo + base
	if rank < extra {
		hi++
	}
	return lo, hi
}

// StepBatches lays out one optimizer step in the global batch sequence —
// the sequence of batches every rank's loader produces, the same on every
// rank. A step that begins at position next takes world × accum
// consecutive batches (accum micro-batches per rank; Shard splits them)
// and the next step begins at after.
//
// The position is the run's whole cursor: it is the same on every rank and
// does not depend on the world size, so a state saved by N ranks resumes
// with any other number, each batch of the sequence still taken exactly
// once and in order.
func StepBatches(next int64, world, accum int) (global []int64, after int64, err error) {
	if world < 1 || accum < 1 {
		return nil, next, fmt.Errorf("dist: a step of %d ranks × %d micro-batches", world, accum)
	}
	if next < 0 {
		return nil, next, fmt.Errorf("dist: batch position %d is negative", next)
	}
	n := world * accum
	global = make([]int64, n)
	for i := range global {
		global[i] = next + int64(i)
	}
	return global, next + int64(n), nil
}
