package train

import (
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// TestReplayGoldenTrajectory replays the reference LoRA training run (eight
// AdamW steps with clipping) through the trainer's step and compares every
// loss and the final LoRA tensors.
func TestReplayGoldenTrajectory(t *testing.T) {
	traj := goldentest.Path(t, "nextdit", "tiny.train.golden.safetensors")
	weights := goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
	for _, c := range []struct {
		name              string
		dt, autocast      kernels.DType
		lossTol, finalTol float64
	}{
		{"float64", kernels.F64, 0, 1e-6, 1e-5},
		{"float32", kernels.F32, 0, 1e-5, 1e-4},
	} {
		t.Run(c.name, func(t *testing.T) {
			rep, err := Replay(cpu.New(), weights, traj, c.dt, c.autocast)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("losses %v\nreference %v\nworst loss error %.3g, grad norm %.3g, final LoRA %.3g",
				rep.Losses, rep.RefLosses, rep.LossErr, rep.GradNormErr, rep.MaxFinalErr)
			if !(rep.LossErr < c.lossTol) {
				t.Errorf("loss error %.3g > %.3g", rep.LossErr, c.lossTol)
			}
			if !(rep.MaxFinalErr < c.finalTol) {
				for n, e := range rep.FinalErr {
					if !(e < c.finalTol) {
						t.Errorf("final %s: error %.3g > %.3g", n, e, c.finalTol)
					}
				}
			}
		})
	}
}
