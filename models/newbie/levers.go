package newbie

import (
	"fmt"
	"strings"
)

// MemoryLevers are what a training step gives back for memory beyond its
// weights: how many of the transformer blocks it checkpoints (their
// whole forward run again in the backward) and what the blocks it keeps
// recompute there instead of keeping (nextdit.Options). Every setting
// gives the same gradients; they differ in memory and time.
type MemoryLevers struct {
	// CheckpointBlocks is how many blocks are checkpointed: 0 none, the
	// model's Blocks every one.
	CheckpointBlocks int
	// RecomputeNorms recomputes the kept blocks' norm outputs;
	// RecomputeFFNBlocks the feed-forward inputs of that many blocks.
	RecomputeNorms     bool
	RecomputeFFNBlocks int
}

// LeverLadder lists the levers in the order checkpoint_blocks auto tries
// them for a model of blocks blocks, the least time given for the memory
// taken back first: nothing; the norms recomputed (a pass over each
// norm's input); with them the feed-forward inputs of one block after
// another (the w1 and w3 products again, about a quarter of a block's
// forward for its two widest tensors); then one checkpointed block after
// another with both levers on for the rest, up to every block (where the
// levers do nothing, every tape being rebuilt).
func LeverLadder(blocks int) []MemoryLevers {
	ladder := []MemoryLevers{{}}
	for f := 0; f <= blocks; f++ {
		ladder = append(ladder, MemoryLevers{RecomputeNorms: true, RecomputeFFNBlocks: f})
	}
	for k := 1; k < blocks; k++ {
		ladder = append(ladder, MemoryLevers{CheckpointBlocks: k, RecomputeNorms: true, RecomputeFFNBlocks: blocks})
	}
	return append(ladder, MemoryLevers{CheckpointBlocks: blocks})
}

// On returns s with the levers set.
func (l MemoryLevers) On(s TrainShape) TrainShape {
	s.Checkpoint, s.CheckpointBlocks = l.CheckpointBlocks > 0, l.CheckpointBlocks
	s.RecomputeNorms, s.RecomputeFFNBlocks = l.RecomputeNorms, l.RecomputeFFNBlocks
	return s
}

// Describe says what the levers do on a model of blocks blocks, as the
// trainer's log and the bench print it.
func (l MemoryLevers) Describe(blocks int) string {
	parts := []string{fmt.Sprintf("%d of %d blocks checkpointed", min(l.CheckpointBlocks, blocks), blocks)}
	if l.RecomputeNorms {
		parts = append(parts, "the norms recomputed in the backward")
	}
	switch f := l.RecomputeFFNBlocks; {
	case f >= blocks && l.CheckpointBlocks > 0:
		parts = append(parts, "the other blocks' feed-forward inputs recomputed")
	case f >= blocks:
		parts = append(parts, "every block's feed-forward inputs recomputed")
	case f > 0:
		parts = append(parts, fmt.Sprintf("the feed-forward inputs of %d recomputed", f))
	}
	return strings.Join(parts, ", ")
}
