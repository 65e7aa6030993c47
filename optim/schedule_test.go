package optim

import (
	"math"
	"strings"
	"testing"
)

// TestScheduleBoundaries checks each schedule at its boundary steps: start
// of warmup, end of warmup, the middle of the decay, restarts, the end of the
// run and past it.
func TestScheduleBoundaries(t *testing.T) {
	type at struct {
		step   int
		factor float64
	}
	for _, tc := range []struct {
		name  string
		s     Schedule
		warm  int
		check []at
	}{
		{"zero value is constant 1", Schedule{}, 0, []at{{0, 1}, {7, 1}, {1e6, 1}}},
		{"constant with warmup", Schedule{Kind: Constant, WarmupSteps: 4}, 4,
			[]at{{0, 0}, {1, 0.25}, {3, 0.75}, {4, 1}, {1000, 1}}},
		{"linear", Schedule{Kind: Linear, TotalSteps: 13, WarmupSteps: 3}, 3,
			[]at{{0, 0}, {2, 2.0 / 3}, {3, 1}, {8, 0.5}, {12, 0.1}, {13, 0}, {20, 0}}},
		{"linear with floor", Schedule{Kind: Linear, TotalSteps: 13, WarmupSteps: 3, MinRatio: 0.2}, 3,
			[]at{{0, 0}, {3, 1}, {8, 0.6}, {13, 0.2}, {99, 0.2}}},
		{"cosine, warmup ratio rounded up", Schedule{Kind: Cosine, TotalSteps: 38, WarmupRatio: 0.1}, 4,
			[]at{{0, 0}, {2, 0.5}, {4, 1}, {21, 0.5}, {38, 0}, {50, 0}}},
		{"cosine with floor", Schedule{Kind: Cosine, TotalSteps: 21, WarmupSteps: 1, MinRatio: 0.1}, 1,
			[]at{{0, 0}, {1, 1}, {11, 0.55}, {21, 0.1}}},
		{"cosine, three cycles with hard restarts", Schedule{Kind: Cosine, TotalSteps: 31, WarmupSteps: 1, Cycles: 3}, 1,
			[]at{{1, 1}, {6, 0.5}, {10, 0.5 * (1 + math.Cos(math.Pi*0.9))}, {11, 1}, {16, 0.5}, {21, 1}, {26, 0.5}, {31, 0}}},
		{"cosine without warmup", Schedule{Kind: Cosine, TotalSteps: 7}, 0,
			[]at{{0, 1}, {7, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.s.Kind != "" {
				if err := tc.s.Validate(); err != nil {
					t.Fatal(err)
				}
			}
			if w := tc.s.Warmup(); w != tc.warm {
				t.Errorf("warmup %d steps, want %d", w, tc.warm)
			}
			for _, c := range tc.check {
				if got := tc.s.Factor(c.step); math.Abs(got-c.factor) > 1e-12 {
					t.Errorf("factor at step %d = %.15g, want %.15g", c.step, got, c.factor)
				}
			}
		})
	}
}

func TestScheduleErrors(t *testing.T) {
	for _, tc := range []struct {
		s    Schedule
		want string
	}{
		{Schedule{Kind: "step"}, "unknown lr schedule"},
		{Schedule{Kind: Linear}, "total_steps"},
		{Schedule{Kind: Cosine, TotalSteps: 10, WarmupSteps: 2, WarmupRatio: 0.1}, "not both"},
		{Schedule{Kind: Constant, WarmupRatio: 0.1}, "needs total_steps"},
		{Schedule{Kind: Linear, TotalSteps: 5, WarmupSteps: 6}, "longer than total_steps"},
		{Schedule{Kind: Cosine, TotalSteps: 5, MinRatio: 1.5}, "min_lr_ratio"},
		{Schedule{Kind: Linear, TotalSteps: 5, Cycles: 2}, "cosine schedule only"},
		{Schedule{Kind: Cosine, TotalSteps: 5, WarmupRatio: math.NaN()}, "warmup_ratio"},
	} {
		err := tc.s.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.s, err, tc.want)
		}
	}
}
