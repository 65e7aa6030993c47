package train

import (
	"fmt"
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// TimestepSampling names how training draws t (t = 1 is data, t = 0 noise).
type TimestepSampling string

// The timestep samplers. LognormShift is upstream NewBie's: t = sigmoid(z),
// z ~ N(0, 1), then shifted toward noise by μ, which grows with the image's
// token count (ShiftMu).
const (
	LognormShift TimestepSampling = "lognorm_shift"
	Uniform      TimestepSampling = "uniform"
	LogitNormal  TimestepSampling = "logit_normal"
)

// TimestepSampler draws the per-sample timesteps of each step from the
// counter-based generator, so a draw depends only on (seed, step, sample)
// and a resumed run draws the same values.
type TimestepSampler struct {
	Kind TimestepSampling
	// Mean and Std of z for LogitNormal (t = sigmoid(Mean + Std·z)).
	Mean, Std float64
}

// timestepStream separates the timestep draws from the noise draws that
// share the run's seed.
const timestepStream = 0x7469_6d65_7374_6570 // "timestep"

// ShiftMu is μ for an image of n tokens: linear from 0.5 at 256 tokens to
// 1.15 at 4096 (upstream's shift, fixed by the image's latent size).
func ShiftMu(tokens int) float64 {
	return 0.5 + (1.15-0.5)*float64(tokens-256)/float64(4096-256)
}

// ShiftTime moves t toward noise (t = 0): t ← 1 − eᵘ/(eᵘ + 1/(1−t) − 1).
func ShiftTime(t, mu float64) float64 {
	if t >= 1 {
		return 1
	}
	if t <= 0 {
		return 0
	}
	em := math.Exp(mu)
	return 1 - em/(em+1/(1-t)-1)
}

// Validate reports a sampler that cannot draw.
func (s TimestepSampler) Validate() error {
	switch s.Kind {
	case LognormShift, Uniform:
		return nil
	case LogitNormal:
		if !(s.Std > 0) {
			return fmt.Errorf("timestep sampling %s needs std > 0, got %g", s.Kind, s.Std)
		}
		return nil
	}
	return fmt.Errorf("unknown timestep sampling %q (want %s, %s or %s)", s.Kind, LognormShift, Uniform, LogitNormal)
}

// Sample returns the timesteps of the batch drawn at step for samples of
// imageTokens tokens each.
func (s TimestepSampler) Sample(seed uint64, step, batch, imageTokens int) []float64 {
	ts := make([]float64, batch)
	for i := range ts {
		idx := uint64(step)*uint64(batch) + uint64(i)
		switch s.Kind {
		case Uniform:
			ts[i] = kernels.UniformAt(seed^timestepStream, idx, 0, 1)
		case LogitNormal:
			ts[i] = sigmoid(kernels.NormalAt(seed^timestepStream, idx, s.Mean, s.Std))
		default:
			t := sigmoid(kernels.NormalAt(seed^timestepStream, idx, 0, 1))
			ts[i] = ShiftTime(t, ShiftMu(imageTokens))
		}
	}
	return ts
}

func sigmoid(z float64) float64 { return 1 / (1 + math.Exp(-z)) }
