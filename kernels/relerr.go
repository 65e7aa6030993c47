package kernels

import "math"

// RelErr is ‖got−want‖/‖want‖ over float64 (‖got−want‖ when want is all
// zero, so a zero reference still catches a non-zero result). Equal values,
// equal infinities included, add nothing to the difference; a NaN on one side only or
// a length mismatch gives +Inf, which no tolerance accepts.
func RelErr(got, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		if got[i] == want[i] {
			if !math.IsInf(want[i], 0) {
				den += want[i] * want[i]
			}
			continue
		}
		d := got[i] - want[i]
		if math.IsNaN(d) {
			if math.IsNaN(got[i]) && math.IsNaN(want[i]) {
				continue
			}
			return math.Inf(1)
		}
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
