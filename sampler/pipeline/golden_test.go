package pipeline

import (
	"context"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// TestReplayGolden: every trajectory point and final sample of upstream's
// midpoint, Euler and DPM-Solver++ runs, in float64 and float32.
func TestReplayGolden(t *testing.T) {
	weights := goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
	path := goldentest.Path(t, "sampler", "tiny.sample.golden.safetensors")
	for _, dt := range []kernels.DType{kernels.F64, kernels.F32} {
		rs, err := ReplayGolden(context.Background(), cpu.New(), weights, path, dt)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			t.Log(dt, r)
		}
		if err := rs.Err(); err != nil {
			t.Errorf("%v: %v", dt, err)
		}
	}
}
