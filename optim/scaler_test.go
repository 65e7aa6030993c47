package optim

import (
	"math"
	"strings"
	"testing"
)

// TestScalerSequences walks the scaler through overflow (true) and clean
// (false) steps and checks scale, growth tracker and skipped count after each
// against GradScaler's rules, worked out by hand.
func TestScalerSequences(t *testing.T) {
	type want struct {
		scale   float64
		tracker int
		skipped int64
	}
	dyn := func(interval int) ScalerConfig {
		c := DefaultScalerConfig(ScaleDynamic)
		c.GrowthInterval = interval
		return c
	}
	for _, tc := range []struct {
		name  string
		cfg   ScalerConfig
		steps []bool
		want  []want
	}{
		{
			name:  "dynamic: overflow at the initial scale backs off",
			cfg:   DefaultScalerConfig(ScaleDynamic),
			steps: []bool{true, true, false, true, false, false},
			want: []want{
				{32768, 0, 1}, {16384, 0, 2}, {16384, 1, 2}, {8192, 0, 3}, {8192, 1, 3}, {8192, 2, 3},
			},
		},
		{
			name:  "dynamic: grows after interval clean steps, tracker resets",
			cfg:   dyn(3),
			steps: []bool{false, false, false, false, false, false, false},
			want: []want{
				{65536, 1, 0}, {65536, 2, 0}, {131072, 0, 0}, {131072, 1, 0}, {131072, 2, 0}, {262144, 0, 0}, {262144, 1, 0},
			},
		},
		{
			name:  "dynamic: an overflow resets the run of clean steps",
			cfg:   dyn(3),
			steps: []bool{false, false, true, false, false, false},
			want: []want{
				{65536, 1, 0}, {65536, 2, 0}, {32768, 0, 1}, {32768, 1, 1}, {32768, 2, 1}, {65536, 0, 1},
			},
		},
		{
			name: "dynamic: never grows past float32 range",
			cfg: ScalerConfig{Mode: ScaleDynamic, InitScale: math.Ldexp(1, 127), GrowthFactor: 2,
				BackoffFactor: 0.5, GrowthInterval: 1},
			steps: []bool{false, false, true, false},
			want: []want{
				{math.Ldexp(1, 127), 0, 0}, {math.Ldexp(1, 127), 0, 0}, {math.Ldexp(1, 126), 0, 1}, {math.Ldexp(1, 127), 0, 1},
			},
		},
		{
			name:  "static: scale fixed, skips counted",
			cfg:   ScalerConfig{Mode: ScaleStatic, InitScale: 1024},
			steps: []bool{false, true, true, false},
			want:  []want{{1024, 0, 0}, {1024, 0, 1}, {1024, 0, 2}, {1024, 0, 2}},
		},
		{
			name:  "off: scale 1, skips counted",
			cfg:   ScalerConfig{Mode: ScaleOff},
			steps: []bool{true, false, true},
			want:  []want{{1, 0, 1}, {1, 0, 1}, {1, 0, 2}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewScaler(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, found := range tc.steps {
				s.Update(found)
				got := want{s.Scale(), s.GrowthTracker(), s.Skipped()}
				if got != tc.want[i] {
					t.Fatalf("after step %d (overflow %v): scale %g tracker %d skipped %d, want %+v",
						i+1, found, got.scale, got.tracker, got.skipped, tc.want[i])
				}
			}
		})
	}
}

// TestScaler2000 checks GradScaler's default interval: the scale doubles on
// the 2000th clean step, not the 1999th.
func TestScaler2000(t *testing.T) {
	s, err := NewScaler(DefaultScalerConfig(ScaleDynamic))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1999; i++ {
		s.Update(false)
	}
	if s.Scale() != 65536 || s.GrowthTracker() != 1999 {
		t.Fatalf("after 1999 clean steps: scale %g tracker %d, want 65536 and 1999", s.Scale(), s.GrowthTracker())
	}
	s.Update(false)
	if s.Scale() != 131072 || s.GrowthTracker() != 0 {
		t.Fatalf("after 2000 clean steps: scale %g tracker %d, want 131072 and 0", s.Scale(), s.GrowthTracker())
	}
	if inv := s.InvScale(); inv != 1.0/131072 {
		t.Fatalf("inverse scale %g, want %g", inv, 1.0/131072)
	}
}

func TestScalerConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  ScalerConfig
		want string
	}{
		{ScalerConfig{Mode: ScaleDynamic, InitScale: 0, GrowthFactor: 2, BackoffFactor: 0.5, GrowthInterval: 1}, "init_scale"},
		{ScalerConfig{Mode: ScaleStatic, InitScale: 1e39}, "init_scale"},
		{ScalerConfig{Mode: ScaleDynamic, InitScale: 1, GrowthFactor: 1, BackoffFactor: 0.5, GrowthInterval: 1}, "growth_factor"},
		{ScalerConfig{Mode: ScaleDynamic, InitScale: 1, GrowthFactor: 2, BackoffFactor: 1, GrowthInterval: 1}, "backoff_factor"},
		{ScalerConfig{Mode: ScaleDynamic, InitScale: 1, GrowthFactor: 2, BackoffFactor: 0.5, GrowthInterval: 0}, "growth_interval"},
		{ScalerConfig{Mode: ScaleDefault}, "resolve"},
	} {
		_, err := NewScaler(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one naming %s", tc.cfg, err, tc.want)
		}
	}
}

// TestScalerState checks the state round-trip and that a state from another
// mode, or a malformed one, is refused without changing the scaler.
func TestScalerState(t *testing.T) {
	a, _ := NewScaler(DefaultScalerConfig(ScaleDynamic))
	for _, f := range []bool{true, false, false, true, false} {
		a.Update(f)
	}
	b, _ := NewScaler(DefaultScalerConfig(ScaleDynamic))
	if err := b.SetState(a.State()); err != nil {
		t.Fatal(err)
	}
	if a.State() != b.State() {
		t.Fatalf("round trip: %+v != %+v", b.State(), a.State())
	}
	off, _ := NewScaler(ScalerConfig{Mode: ScaleOff})
	if err := off.SetState(a.State()); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("dynamic state into an off scaler: %v, want a mode error", err)
	}
	bad := a.State()
	bad.Scale = 0.1 // not a float32 value
	if err := b.SetState(bad); err == nil {
		t.Error("scale 0.1 accepted")
	}
	bad = a.State()
	bad.GrowthTracker = 2000
	if err := b.SetState(bad); err == nil {
		t.Error("growth tracker 2000 accepted with interval 2000")
	}
	if a.State() != b.State() {
		t.Fatalf("a refused state changed the scaler: %+v", b.State())
	}
}
