package optim

import (
	"errors"
	"fmt"
	"math"
)

// ScheduleKind names the shape of the learning-rate curve after warmup.
type ScheduleKind string

// Schedule kinds, spelled as transformers' and diffusers' get_scheduler.
const (
	Constant ScheduleKind = "constant"
	Linear   ScheduleKind = "linear"
	Cosine   ScheduleKind = "cosine"
)

// Schedule scales every group's learning rate by Factor(step), where step
// counts the optimizer updates already applied (0 for the first update), as
// transformers' LambdaLR schedules do; a step skipped by the loss scaler does
// not advance it (as accelerate does).
//
// Warmup ramps the factor linearly from 0 at step 0 to 1 at step W (so the
// very first update has lr 0, exactly as in transformers). After warmup:
// Constant stays at 1; Linear falls to the floor at TotalSteps; Cosine
// follows half a cosine down to the floor at TotalSteps, or with Cycles > 1
// that many cosines with hard restarts. The floor is MinRatio of the base lr
// (transformers' min_lr_rate): factor = MinRatio + (1−MinRatio)·decay.
// Past TotalSteps the factor stays at the floor.
type Schedule struct {
	Kind        ScheduleKind
	TotalSteps  int     // optimizer steps of the run; needed by Linear, Cosine and WarmupRatio
	WarmupSteps int     // warmup length in steps …
	WarmupRatio float64 // … or as a fraction of TotalSteps (rounded up); not both
	MinRatio    float64 // floor as a fraction of the base lr, in [0, 1]
	Cycles      int     // Cosine only: number of cosine cycles (0 or 1: no restart)
}

// Validate checks the schedule, naming the bad field.
func (s Schedule) Validate() error {
	var errs []error
	switch s.Kind {
	case Constant, Linear, Cosine:
	default:
		return fmt.Errorf("unknown lr schedule %q (want constant, linear or cosine)", string(s.Kind))
	}
	if s.TotalSteps < 0 {
		errs = append(errs, fmt.Errorf("total_steps = %d: want ≥ 0", s.TotalSteps))
	}
	if (s.Kind == Linear || s.Kind == Cosine) && s.TotalSteps < 1 {
		errs = append(errs, fmt.Errorf("total_steps = %d: a %s schedule needs the run's length", s.TotalSteps, s.Kind))
	}
	if s.WarmupSteps < 0 {
		errs = append(errs, fmt.Errorf("warmup_steps = %d: want ≥ 0", s.WarmupSteps))
	}
	if !(s.WarmupRatio >= 0 && s.WarmupRatio <= 1) {
		errs = append(errs, fmt.Errorf("warmup_ratio = %g: want 0 ≤ warmup_ratio ≤ 1", s.WarmupRatio))
	}
	if s.WarmupSteps > 0 && s.WarmupRatio > 0 {
		errs = append(errs, fmt.Errorf("warmup_steps = %d and warmup_ratio = %g: give one, not both", s.WarmupSteps, s.WarmupRatio))
	}
	if s.WarmupRatio > 0 && s.TotalSteps < 1 {
		errs = append(errs, fmt.Errorf("warmup_ratio = %g needs total_steps", s.WarmupRatio))
	}
	if s.Kind != Constant && s.TotalSteps > 0 && s.Warmup() > s.TotalSteps {
		errs = append(errs, fmt.Errorf("warmup of %d steps is longer than total_steps = %d", s.Warmup(), s.TotalSteps))
	}
	if !(s.MinRatio >= 0 && s.MinRatio <= 1) {
		errs = append(errs, fmt.Errorf("min_lr_ratio = %g: want 0 ≤ min_lr_ratio ≤ 1", s.MinRatio))
	}
	if s.Cycles < 0 {
		errs = append(errs, fmt.Errorf("cycles = %d: want ≥ 0", s.Cycles))
	}
	if s.Cycles > 1 && s.Kind != Cosine {
		errs = append(errs, fmt.Errorf("cycles = %d: restarts apply to the cosine schedule only", s.Cycles))
	}
	return errors.Join(errs...)
}

// Warmup is the warmup length in steps: WarmupSteps, or
// ⌈WarmupRatio·TotalSteps⌉ as transformers rounds it.
func (s Schedule) Warmup() int {
	if s.WarmupRatio > 0 {
		return int(math.Ceil(s.WarmupRatio * float64(s.TotalSteps)))
	}
	return s.WarmupSteps
}

// Factor is the multiplier of the base learning rates for the update that
// follows step applied updates. A zero Schedule (no Kind) is constant 1.
func (s Schedule) Factor(step int) float64 {
	w := s.Warmup()
	if step < w {
		return float64(step) / float64(w)
	}
	if s.Kind == Constant || s.Kind == "" {
		return 1
	}
	span := s.TotalSteps - w
	if span <= 0 || step >= s.TotalSteps {
		return s.MinRatio
	}
	progress := float64(step-w) / float64(span)
	var decay float64
	switch s.Kind {
	case Linear:
		decay = 1 - progress
	case Cosine:
		if s.Cycles > 1 {
			// Position within the current cycle, in integers so a restart
			// lands exactly on its step instead of a rounding away from it.
			progress = float64((step-w)*s.Cycles%span) / float64(span)
		}
		decay = 0.5 * (1 + math.Cos(math.Pi*progress))
	}
	return s.MinRatio + (1-s.MinRatio)*decay
}
