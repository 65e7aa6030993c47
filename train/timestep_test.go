package train

import (
	"math"
	"testing"
)

func TestShiftMuMatchesReference(t *testing.T) {
	// The golden training run records μ = 0.4675 for a 64-token latent.
	if got := ShiftMu(64); math.Abs(got-0.4675) > 1e-12 {
		t.Errorf("ShiftMu(64) = %v, want 0.4675", got)
	}
	for _, c := range []struct {
		tokens int
		want   float64
	}{{256, 0.5}, {4096, 1.15}} {
		if got := ShiftMu(c.tokens); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("ShiftMu(%d) = %v, want %v", c.tokens, got, c.want)
		}
	}
}

func TestShiftTime(t *testing.T) {
	// μ = 0 leaves t unchanged; μ > 0 moves t toward noise (smaller t).
	for _, v := range []float64{0.1, 0.5, 0.9} {
		if got := ShiftTime(v, 0); math.Abs(got-v) > 1e-12 {
			t.Errorf("ShiftTime(%v, 0) = %v", v, got)
		}
		if got := ShiftTime(v, 1.15); !(got < v) {
			t.Errorf("ShiftTime(%v, 1.15) = %v, not toward noise", v, got)
		}
	}
	// Closed form at t = 0.5: 1 − eᵘ/(eᵘ + 1).
	if got, want := ShiftTime(0.5, 1), 1-math.E/(math.E+1); math.Abs(got-want) > 1e-15 {
		t.Errorf("ShiftTime(0.5, 1) = %v, want %v", got, want)
	}
}

func TestTimestepSamplerDeterministicAndInRange(t *testing.T) {
	for _, s := range []TimestepSampler{{Kind: LognormShift}, {Kind: Uniform}, {Kind: LogitNormal, Mean: 0.2, Std: 1.3}} {
		a := s.Sample(42, 17, 5, 4096)
		b := s.Sample(42, 17, 5, 4096)
		c := s.Sample(42, 18, 5, 4096)
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s: same seed and step gave %v and %v", s.Kind, a[i], b[i])
			}
			if !(a[i] >= 0 && a[i] <= 1) {
				t.Fatalf("%s: t = %v outside [0,1]", s.Kind, a[i])
			}
		}
		if a[0] == c[0] {
			t.Errorf("%s: steps 17 and 18 drew the same t", s.Kind)
		}
	}
	// The shifted sampler's mean moves toward noise as images grow.
	mean := func(tokens int) float64 {
		s := TimestepSampler{Kind: LognormShift}
		sum := 0.0
		for step := range 2000 {
			sum += s.Sample(1, step, 1, tokens)[0]
		}
		return sum / 2000
	}
	if small, large := mean(256), mean(4096); !(large < small) {
		t.Errorf("mean t at 4096 tokens %v is not below 256 tokens %v", large, small)
	}
	if err := (TimestepSampler{Kind: "bogus"}).Validate(); err == nil {
		t.Error("an unknown sampler validated")
	}
}
