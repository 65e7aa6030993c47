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

// sameTraining fails t unless two runs' losses and final adapters (got,
// labelled how; want, labelled other) agree bit for bit.
func sameTraining(t *testing.T, how, other string, gotLoss []float64, got [][]float64, wantLoss []float64, want [][]float64) {
	t.Helper()
	for i := range wantLoss {
		if math.Float64bits(gotLoss[i]) != math.Float64bits(wantLoss[i]) {
			t.Fatalf("step %d: loss %v %s, %v %s", i+1, gotLoss[i], how, wantLoss[i], other)
		}
	}
	for k := range want {
		for i := range want[k] {
			if math.Float64bits(got[k][i]) != math.Float64bits(want[k][i]) {
				t.Fatalf("adapter tensor %d[%d]: %v %s, %v %s", k, i, got[k][i], how, want[k][i], other)
			}
		}
	}
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
	sameTraining(t, "with working copies", "with casts", l1, f1, l0, f0)
	adapters := len(f0)
	t.Logf("fp32 → bf16 casts over %d steps: %d with casts, %d with working copies (%d adapter tensors)", steps, withCasts.casts, withWorking.casts, adapters)
	// The working run casts each master once, when the copies are made;
	// every step's casts of them (one each, and again for the adapters read
	// inside a checkpoint's recompute) are gone.
	if saved := withCasts.casts - (withWorking.casts - adapters); saved < steps*adapters {
		t.Errorf("%d casts with working copies against %d with casts: want at least %d a step fewer", withWorking.casts, withCasts.casts, adapters)
	}
}

// TestRecomputeNormsSameTraining: with the blocks' norm outputs dropped
// after the forward and recomputed in the backward
// (nextdit.Options.RecomputeNorms), and then the feed-forwards' inputs of
// some blocks too (RecomputeFFNBlocks), training gives the losses and final
// adapters of keeping them, bit for bit, at a lower peak each time.
func TestRecomputeNormsSameTraining(t *testing.T) {
	const steps = 3
	kept := cpu.New()
	l0, _, f0 := tinyLoRARun(t, tinyRun{be: kept}, steps)
	prev, prevName := kept.MemStats().Peak, "kept"
	for _, c := range []struct {
		name string
		how  tinyRun
	}{
		{"the norms recomputed", tinyRun{recomputeNorms: true}},
		{"the norms and 3 blocks' feed-forward inputs recomputed", tinyRun{recomputeNorms: true, recomputeFFNBlocks: 3}},
	} {
		be := cpu.New()
		c.how.be = be
		l1, _, f1 := tinyLoRARun(t, c.how, steps)
		sameTraining(t, "with "+c.name, "with everything kept", l1, f1, l0, f0)
		peak := be.MemStats().Peak
		t.Logf("peak %d B with %s (%d B less than %s)", peak, c.name, prev-peak, prevName)
		if peak >= prev {
			t.Errorf("peak %d B with %s, %d B with %s: want lower", peak, c.name, prev, prevName)
		}
		prev, prevName = peak, c.name
	}
	// With fp8 base weights, whose dequantisation the feed-forward's
	// rebuild runs again.
	l2, _, f2 := tinyLoRARun(t, tinyRun{fp8: true}, steps)
	l3, _, f3 := tinyLoRARun(t, tinyRun{fp8: true, recomputeNorms: true, recomputeFFNBlocks: 8}, steps)
	sameTraining(t, "with fp8 base weights and everything recomputed", "with fp8 base weights and everything kept", l3, f3, l2, f2)
}
