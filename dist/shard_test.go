package dist

import (
	"slices"
	"testing"
)

// TestShardInvariants: for every world size and global batch length, the
// ranks' shards in rank order are the global batch in order, and no two
// differ in length by more than one.
func TestShardInvariants(t *testing.T) {
	for world := 1; world <= 7; world++ {
		for n := 0; n <= 23; n++ {
			global := make([]int, n)
			for i := range global {
				global[i] = 100 + i
			}
			var union []int
			minLen, maxLen := n+1, -1
			for r := range world {
				s := Shard(global, r, world)
				union = append(union, s...)
				minLen, maxLen = min(minLen, len(s)), max(maxLen, len(s))
			}
			if !slices.Equal(union, global) {
				t.Fatalf("world %d, %d batches: the shards in rank order are %v", world, n, union)
			}
			if maxLen-minLen > 1 {
				t.Fatalf("world %d, %d batches: shard lengths from %d to %d", world, n, minLen, maxLen)
			}
		}
	}
	if Shard([]int{1, 2}, 2, 2) != nil || Shard([]int{1, 2}, -1, 2) != nil {
		t.Fatal("a rank outside the job got a shard")
	}
	// One batch per rank: rank r takes global[r], the order the sum adds.
	for r := range 4 {
		if s := Shard([]int{0, 1, 2, 3}, r, 4); len(s) != 1 || s[0] != r {
			t.Fatalf("rank %d of 4 took %v", r, s)
		}
	}
}

// TestResumeAcrossWorldSizes runs a schedule in three legs, each resumed
// from the position the one before saved: 1 rank × 2 micro-batches, then 2
// ranks × 1, then 3 ranks × 2. Every batch of the sequence is taken once,
// in order, and each rank takes its shard of each step.
func TestResumeAcrossWorldSizes(t *testing.T) {
	legs := []struct{ world, accum, steps int }{{1, 2, 3}, {2, 1, 4}, {3, 2, 2}}
	var pos int64 // the saved cursor
	var taken []int64
	for _, leg := range legs {
		for range leg.steps {
			global, after, err := StepBatches(pos, leg.world, leg.accum)
			if err != nil {
				t.Fatal(err)
			}
			for r := range leg.world {
				mine := Shard(global, r, leg.world)
				if len(mine) != leg.accum {
					t.Fatalf("world %d: rank %d takes %d micro-batches, want %d", leg.world, r, len(mine), leg.accum)
				}
				for j, p := range mine {
					if want := pos + int64(r*leg.accum+j); p != want {
						t.Fatalf("world %d: rank %d micro-batch %d is batch %d, want %d", leg.world, r, j, p, want)
					}
				}
				taken = append(taken, mine...)
			}
			pos = after
		}
	}
	want := int64(1*2*3 + 2*1*4 + 3*2*2)
	if pos != want || int64(len(taken)) != want {
		t.Fatalf("ended at position %d having taken %d batches, want %d", pos, len(taken), want)
	}
	for i, p := range taken {
		if p != int64(i) {
			t.Fatalf("batch %d of the run is position %d: the sequence has a gap or a repeat", i, p)
		}
	}
	if _, _, err := StepBatches(0, 0, 1); err == nil {
		t.Fatal("a step of 0 ranks was laid out")
	}
	if _, _, err := StepBatches(-1, 1, 1); err == nil {
		t.Fatal("a negative position was accepted")
	}
}
