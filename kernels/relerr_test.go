package kernels

import (
	"math"
	"testing"
)

func TestRelErr(t *testing.T) {
	inf, nan := math.Inf(1), math.NaN()
	for _, c := range []struct {
		name      string
		got, want []float64
		err       float64
	}{
		{"equal", []float64{1, -2, 3}, []float64{1, -2, 3}, 0},
		{"relative", []float64{3, 4.5}, []float64{3, 4}, 0.1},
		{"zero reference", []float64{3, 4}, []float64{0, 0}, 5},
		{"equal infinities", []float64{inf, 1}, []float64{inf, 1}, 0},
		{"both NaN", []float64{nan, 1}, []float64{nan, 1}, 0},
		{"NaN on one side", []float64{nan, 1}, []float64{1, 1}, inf},
		{"length mismatch", []float64{1}, []float64{1, 1}, inf},
	} {
		got := RelErr(c.got, c.want)
		if math.Abs(got-c.err) > 1e-15 && got != c.err {
			t.Errorf("%s: RelErr = %g, want %g", c.name, got, c.err)
		}
	}
}
