package newbie

import (
	"context"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
)

// TestPhasesCUDA runs the tiny model's three phases on the GPU: every
// phase's measured peak (the caching allocator's counter, with its size
// classes) is within the estimate for the largest batch that ran, which
// rounds every weight to the allocator's classes and allows for the
// activations' rounding.
func TestPhasesCUDA(t *testing.T) {
	be, err := kernels.Open("cuda", 0)
	if err != nil {
		t.Skipf("no CUDA device, GPU test skipped: %v", err)
	}
	m, err := Discover(tinyModel(t, LayoutHF), Sources{})
	if err != nil {
		t.Fatal(err)
	}
	phases, _, err := EncodePhases(context.Background(), ag.New(be), m, Options{ImageBatch: 2, TextBatch: 4}, 4, 256)
	if err != nil {
		t.Fatal(err)
	}
	for _, ph := range phases {
		used := ph.Peak - ph.Base
		t.Logf("%s: peak %d, estimate for the largest batch %s", ph.Estimate.Phase, used, ph.Largest)
		if used > ph.Largest.Total {
			t.Errorf("%s: peak %d above the estimate %d", ph.Estimate.Phase, used, ph.Largest.Total)
		}
	}
}
