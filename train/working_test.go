package train

import (
	"math"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// castCounting is a CPU backend that counts fp32 → bf16 casts.
type castCounting struct {
	*cpu.Backend
	casts int
}

func (c *castCounting) Cast(dst, src kernels.Buffer) {
	if src.DType() == kernels.F32 && dst.DType() == kernels.BF16 {
		c.casts++
	}
	c.Backend.Cast(dst, src)
}

// TestWorkingCopiesSameTraining: training through the adapters' working
// copies (written by AdamW as it updates the masters, read by the forward
// in place of autocast's casts) gives the losses and final adapters of
// training with the casts, bit for bit, with the casts of the masters gone.
func TestWorkingCopiesSameTraining(t *testing.T) {
	const steps = 4
	withCasts, withWorking := &castCounting{Backend: cpu.New()}, &castCounting{Backend: cpu.New()}
	l0, _, f0 := tinyLoRARun(t, tinyRun{be: withCasts}, steps)
	l1, _, f1 := tinyLoRARun(t, tinyRun{be: withWorking, working: true}, steps)
	for i := range l0 {
		if math.Float64bits(l0[i]) != math.Float64bits(l1[i]) {
			t.Fatalf("step %d: loss %v with working copies, %v with casts", i+1, l1[i], l0[i])
		}
	}
	for k := range f0 {
		for i := range f0[k] {
			if math.Float64bits(f0[k][i]) != math.Float64bits(f1[k][i]) {
				t.Fatalf("adapter tensor %d[%d]: %v with working copies, %v with casts", k, i, f1[k][i], f0[k][i])
			}
		}
	}
	adapters := len(f0)
	t.Logf("fp32 → bf16 casts over %d steps: %d with casts, %d with working copies (%d adapter tensors)", steps, withCasts.casts, withWorking.casts, adapters)
	// The working run casts each master once, when the copies are made;
	// every step's casts of them (one each, and again for the adapters read
	// inside a checkpoint's recompute) are gone.
	if saved := withCasts.casts - (withWorking.casts - adapters); saved < steps*adapters {
		t.Errorf("%d casts with working copies against %d with casts: want at least %d a step fewer", withWorking.casts, withCasts.casts, adapters)
	}
}

// TestRecomputeNormsSameTraining: with the blocks' pre-norm outputs dropped
// after the forward and recomputed in the backward
// (nextdit.Options.RecomputeNorms), training gives the losses and final
// adapters of keeping them, bit for bit, at a lower peak.
func TestRecomputeNormsSameTraining(t *testing.T) {
	const steps = 3
	kept, redone := cpu.New(), cpu.New()
	l0, _, f0 := tinyLoRARun(t, tinyRun{be: kept}, steps)
	l1, _, f1 := tinyLoRARun(t, tinyRun{be: redone, recomputeNorms: true}, steps)
	for i := range l0 {
		if math.Float64bits(l0[i]) != math.Float64bits(l1[i]) {
			t.Fatalf("step %d: loss %v with the norms recomputed, %v kept", i+1, l1[i], l0[i])
		}
	}
	for k := range f0 {
		for i := range f0[k] {
			if math.Float64bits(f0[k][i]) != math.Float64bits(f1[k][i]) {
				t.Fatalf("adapter tensor %d[%d]: %v with the norms recomputed, %v kept", k, i, f1[k][i], f0[k][i])
			}
		}
	}
	pk, pr := kept.MemStats().Peak, redone.MemStats().Peak
	t.Logf("peak %d B with the norms kept, %d B recomputed (%d B less)", pk, pr, pk-pr)
	if pr >= pk {
		t.Errorf("peak %d B with the norms recomputed, %d B kept: want lower", pr, pk)
	}
}
