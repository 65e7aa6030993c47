package newbie

import (
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// TestLeverLadder: the ladder starts with nothing given back and ends with
// every block checkpointed, and on the full model at 1024² no step of its
// recompute part (the norms, then one feed-forward after another) takes
// more memory than the one before, and the whole part gives a quarter back
// at least.
func TestLeverLadder(t *testing.T) {
	c, err := nextdit.Preset("newbie-exp0.1")
	if err != nil {
		t.Fatal(err)
	}
	n := c.Blocks()
	ladder := LeverLadder(n)
	if len(ladder) != 1+(n+1)+(n-1)+1 {
		t.Fatalf("%d rungs for %d blocks", len(ladder), n)
	}
	if ladder[0] != (MemoryLevers{}) || ladder[len(ladder)-1] != (MemoryLevers{CheckpointBlocks: n}) {
		t.Fatalf("ladder from %+v to %+v", ladder[0], ladder[len(ladder)-1])
	}
	shape := TrainShape{Batch: 1, LatentH: 128, LatentW: 128, CaptionTokens: 256, Rank: 32, DType: kernels.BF16, Autocast: kernels.BF16}
	first, prev := int64(-1), int64(-1)
	for _, l := range ladder {
		if l.CheckpointBlocks > 0 {
			break
		}
		est, err := EstimateTrain(c, l.On(shape), nil)
		if err != nil {
			t.Fatal(err)
		}
		if prev >= 0 && est.Total > prev {
			t.Errorf("%s: %d B, more than the rung before (%d B)", l.Describe(n), est.Total, prev)
		}
		if first < 0 {
			first = est.Total
		}
		prev = est.Total
	}
	if prev > first*3/4 {
		t.Errorf("the recompute levers take %d B down to %d B: want a quarter back at least", first, prev)
	}
	for _, tc := range []struct {
		l    MemoryLevers
		want string
	}{
		{MemoryLevers{}, "0 of 40 blocks checkpointed"},
		{MemoryLevers{RecomputeNorms: true, RecomputeFFNBlocks: 20}, "0 of 40 blocks checkpointed, the norms recomputed in the backward, the feed-forward inputs of 20 recomputed"},
		{MemoryLevers{CheckpointBlocks: 3, RecomputeNorms: true, RecomputeFFNBlocks: 40}, "3 of 40 blocks checkpointed, the norms recomputed in the backward, the other blocks' feed-forward inputs recomputed"},
	} {
		if got := tc.l.Describe(n); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.l, got, tc.want)
		}
	}
}
