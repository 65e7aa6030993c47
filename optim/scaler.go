package optim

import (
	"errors"
	"fmt"
	"math"
)

// ScalerMode chooses how the loss scale moves.
type ScalerMode uint8

// Loss scaler modes. The zero value asks for the precision's default.
const (
	ScaleDefault ScalerMode = iota // dynamic for fp16, off otherwise
	ScaleOff                       // scale fixed at 1
	ScaleStatic                    // scale fixed at InitScale
	ScaleDynamic                   // GradScaler: back off on overflow, grow after clean runs
)

// String names the mode as configs spell it.
func (m ScalerMode) String() string {
	switch m {
	case ScaleDefault:
		return "default"
	case ScaleOff:
		return "off"
	case ScaleStatic:
		return "static"
	case ScaleDynamic:
		return "dynamic"
	}
	return fmt.Sprintf("ScalerMode(%d)", uint8(m))
}

// ParseScalerMode reads "off", "static", "dynamic" or "" / "default".
func ParseScalerMode(s string) (ScalerMode, error) {
	switch s {
	case "", "default":
		return ScaleDefault, nil
	case "off":
		return ScaleOff, nil
	case "static":
		return ScaleStatic, nil
	case "dynamic":
		return ScaleDynamic, nil
	}
	return 0, fmt.Errorf("unknown loss scaler mode %q (want off, static or dynamic)", s)
}

// ScalerConfig configures the loss scaler; the field names and defaults are
// torch.amp.GradScaler's.
type ScalerConfig struct {
	Mode           ScalerMode
	InitScale      float64 // starting (dynamic) or fixed (static) scale
	GrowthFactor   float64 // scale ×= this after GrowthInterval clean steps
	BackoffFactor  float64 // scale ×= this on a step with a non-finite gradient
	GrowthInterval int     // clean steps in a row before growing
}

// DefaultScalerConfig returns GradScaler's defaults in the given mode:
// init 65536, growth ×2 every 2000 clean steps, backoff ×0.5.
func DefaultScalerConfig(mode ScalerMode) ScalerConfig {
	return ScalerConfig{Mode: mode, InitScale: 65536, GrowthFactor: 2, BackoffFactor: 0.5, GrowthInterval: 2000}
}

// Validate checks the config as GradScaler would, naming the bad field.
func (c ScalerConfig) Validate() error {
	var errs []error
	switch c.Mode {
	case ScaleOff:
		return nil
	case ScaleStatic, ScaleDynamic:
	default:
		return fmt.Errorf("loss scaler mode %v: resolve the default before building a scaler", c.Mode)
	}
	if !(c.InitScale > 0) || c.InitScale > math.MaxFloat32 {
		errs = append(errs, fmt.Errorf("init_scale = %g: want a positive float32 value", c.InitScale))
	}
	if c.Mode == ScaleDynamic {
		if !(c.GrowthFactor > 1) || math.IsInf(c.GrowthFactor, 0) {
			errs = append(errs, fmt.Errorf("growth_factor = %g: want a finite value > 1", c.GrowthFactor))
		}
		if !(c.BackoffFactor > 0 && c.BackoffFactor < 1) {
			errs = append(errs, fmt.Errorf("backoff_factor = %g: want 0 < backoff_factor < 1", c.BackoffFactor))
		}
		if c.GrowthInterval < 1 {
			errs = append(errs, fmt.Errorf("growth_interval = %d: want ≥ 1", c.GrowthInterval))
		}
	}
	return errors.Join(errs...)
}

// Scaler is the loss scaler. Its scale is a float32, as GradScaler's is, and
// its update follows GradScaler's rule (torch's _amp_update_scale_):
//
//   - a step with a non-finite gradient multiplies the scale by the backoff
//     factor and resets the growth tracker;
//   - a clean step increments the tracker; when it reaches the growth
//     interval the scale is multiplied by the growth factor, unless that
//     would leave float32 range, and the tracker resets.
//
// Only the dynamic mode moves the scale; every mode counts skipped steps.
type Scaler struct {
	cfg     ScalerConfig
	scale   float32
	tracker int
	skipped int64
}

// NewScaler validates cfg and returns a scaler at its initial scale.
func NewScaler(cfg ScalerConfig) (*Scaler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("loss scaler: %w", err)
	}
	s := &Scaler{cfg: cfg, scale: 1}
	if cfg.Mode != ScaleOff {
		s.scale = float32(cfg.InitScale)
	}
	return s, nil
}

// Mode is the scaler's mode.
func (s *Scaler) Mode() ScalerMode { return s.cfg.Mode }

// Scale is the factor the loss (the seed of the backward) is multiplied by.
func (s *Scaler) Scale() float64 { return float64(s.scale) }

// InvScale is 1/scale as GradScaler computes it (in float64, then rounded
// to float32), the factor that unscales the gradients.
func (s *Scaler) InvScale() float64 { return float64(float32(1 / float64(s.scale))) }

// GrowthTracker is the number of clean steps since the last growth or
// backoff.
func (s *Scaler) GrowthTracker() int { return s.tracker }

// Skipped is the number of steps skipped for non-finite gradients.
func (s *Scaler) Skipped() int64 { return s.skipped }

// Update records the outcome of one step: foundInf says a non-finite
// gradient was seen (and the step skipped).
func (s *Scaler) Update(foundInf bool) {
	if foundInf {
		s.skipped++
	}
	if s.cfg.Mode != ScaleDynamic {
		return
	}
	if foundInf {
		s.scale = float32(float64(s.scale) * s.cfg.BackoffFactor)
		s.tracker = 0
		return
	}
	s.tracker++
	if s.tracker == s.cfg.GrowthInterval {
		if grown := float32(float64(s.scale) * s.cfg.GrowthFactor); !math.IsInf(float64(grown), 0) {
			s.scale = grown
		}
		s.tracker = 0
	}
}

// ScalerState is what a checkpoint stores of the scaler.
type ScalerState struct {
	Mode          string  // "off", "static" or "dynamic"
	Scale         float64 // the current scale (a float32 value)
	GrowthTracker int
	Skipped       int64
}

// State exports the scaler's state.
func (s *Scaler) State() ScalerState {
	return ScalerState{Mode: s.cfg.Mode.String(), Scale: float64(s.scale), GrowthTracker: s.tracker, Skipped: s.skipped}
}

// SetState restores a state saved by State. A state from another mode is
// refused: an fp16 run's scale means nothing to an unscaled run.
func (s *Scaler) SetState(st ScalerState) error {
	if st.Mode != s.cfg.Mode.String() {
		return fmt.Errorf("loss scaler state was saved in mode %q, this run's scaler is %q", st.Mode, s.cfg.Mode)
	}
	if !(st.Scale > 0) || st.Scale > math.MaxFloat32 || float64(float32(st.Scale)) != st.Scale {
		return fmt.Errorf("loss scaler state: scale %g is not a positive float32 value", st.Scale)
	}
	if st.GrowthTracker < 0 || (s.cfg.Mode == ScaleDynamic && st.GrowthTracker >= s.cfg.GrowthInterval) {
		return fmt.Errorf("loss scaler state: growth tracker %d outside [0, %d)", st.GrowthTracker, s.cfg.GrowthInterval)
	}
	if st.Skipped < 0 {
		return fmt.Errorf("loss scaler state: %d skipped steps", st.Skipped)
	}
	s.scale, s.tracker, s.skipped = float32(st.Scale), st.GrowthTracker, st.Skipped
	return nil
}
