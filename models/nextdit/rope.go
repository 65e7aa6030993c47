package nextdit

import (
	"math"
)

// ropeTables holds the host-computed cosines and sines of the three RoPE
// tables one forward needs, each [B, S, head/2] flattened.
type ropeTables struct {
	capCos, capSin     []float64 // caption refiner: [B, L, hd/2]
	imgCos, imgSin     []float64 // noise refiner: [B, N, hd/2]
	jointCos, jointSin []float64 // joint blocks: [B, S, hd/2]
}

// ropeFreqs returns, for each of the head's hd/2 rotation pairs, the axis it
// belongs to and its frequency θ^(−2j/d_axis) (upstream precompute_freqs_cis,
// axes concatenated in order).
func ropeFreqs(c Config) (axis []int, freq []float64) {
	for a, d := range c.AxesDims {
		for j := 0; j < d/2; j++ {
			axis = append(axis, a)
			freq = append(freq, 1/math.Pow(RopeTheta, float64(2*j)/float64(d)))
		}
	}
	return axis, freq
}

// fillRope writes the cos/sin of position pos for one token at dst offset.
func fillRope(cos, sin []float64, off int, pos [3]int, axis []int, freq []float64) {
	for i := range freq {
		a := float64(pos[axis[i]]) * freq[i]
		cos[off+i], sin[off+i] = math.Cos(a), math.Sin(a)
	}
}

// buildRope computes the tables for a batch whose samples have capLens
// caption tokens (padded to l), an image of ht×wt tokens, and joint length s.
// Caption token i sits at (i,0,0) and image token (r,c) at (cap_len,r,c).
// Padded caption positions get cos = sin = 0, as upstream's zero-filled
// cap_freqs_cis gives (their keys are masked, so only the value matters for
// parity); padded joint positions sit at (0,0,0).
func buildRope(c Config, capLens []int, l, ht, wt, s int) ropeTables {
	axis, freq := ropeFreqs(c)
	h := len(freq)
	b, n := len(capLens), ht*wt
	t := ropeTables{
		capCos: make([]float64, b*l*h), capSin: make([]float64, b*l*h),
		imgCos: make([]float64, b*n*h), imgSin: make([]float64, b*n*h),
		jointCos: make([]float64, b*s*h), jointSin: make([]float64, b*s*h),
	}
	for bi, cl := range capLens {
		for i := range cl {
			fillRope(t.capCos, t.capSin, (bi*l+i)*h, [3]int{i, 0, 0}, axis, freq)
			fillRope(t.jointCos, t.jointSin, (bi*s+i)*h, [3]int{i, 0, 0}, axis, freq)
		}
		for r := range ht {
			for col := range wt {
				k := r*wt + col
				p := [3]int{cl, r, col}
				fillRope(t.imgCos, t.imgSin, (bi*n+k)*h, p, axis, freq)
				fillRope(t.jointCos, t.jointSin, (bi*s+cl+k)*h, p, axis, freq)
			}
		}
		for i := cl + n; i < s; i++ {
			fillRope(t.jointCos, t.jointSin, (bi*s+i)*h, [3]int{0, 0, 0}, axis, freq)
		}
	}
	return t
}

// timestepEmbedding is upstream's sinusoidal embedding of t into TimeFreqDim
// values per sample: [cos(t·f_j) for j < half; sin(t·f_j)] with
// f_j = exp(−ln(10000)·j/half), computed in float64 on the host.
func timestepEmbedding(t []float64) []float64 {
	half := TimeFreqDim / 2
	out := make([]float64, len(t)*TimeFreqDim)
	for b, tv := range t {
		for j := range half {
			f := math.Exp(-math.Log(10000) * float64(j) / float64(half))
			out[b*TimeFreqDim+j] = math.Cos(tv * f)
			out[b*TimeFreqDim+half+j] = math.Sin(tv * f)
		}
	}
	return out
}
