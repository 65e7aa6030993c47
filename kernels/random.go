package kernels

import "math"

// Philox4x32 is the Philox4x32-10 counter-based generator (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011): it maps a 128-bit
// counter and a 64-bit key to four independent 32-bit words.
func Philox4x32(ctr [4]uint32, key [2]uint32) [4]uint32 {
	const (
		m0 = 0xD2511F53
		m1 = 0xCD9E8D57
		w0 = 0x9E3779B9
		w1 = 0xBB67AE85
	)
	for round := 0; round < 10; round++ {
		p0 := uint64(m0) * uint64(ctr[0])
		p1 := uint64(m1) * uint64(ctr[2])
		ctr = [4]uint32{
			uint32(p1>>32) ^ ctr[1] ^ key[0],
			uint32(p1),
			uint32(p0>>32) ^ ctr[3] ^ key[1],
			uint32(p0),
		}
		key[0] += w0
		key[1] += w1
	}
	return ctr
}

// RandomWords returns the four Philox words for element index idx of a draw
// with the given seed: the counter is idx (low 64 bits) and the key is seed.
// Every backend derives element idx = offset+i of RandNormal/RandUniform from
// these words, so draws are reproducible across backends and can be resumed
// at any offset.
func RandomWords(seed, idx uint64) [4]uint32 {
	return Philox4x32([4]uint32{uint32(idx), uint32(idx >> 32), 0, 0}, [2]uint32{uint32(seed), uint32(seed >> 32)})
}

// UniformAt is element idx of a U[lo, hi) draw: lo + (hi−lo)·w0/2³², computed
// in float64.
func UniformAt(seed, idx uint64, lo, hi float64) float64 {
	w := RandomWords(seed, idx)
	return lo + (hi-lo)*(float64(w[0])/4294967296.0)
}

// NormalAt is element idx of a N(mean, std) draw by the Box–Muller transform
// of two words, computed in float64: u1 = (w0+½)/2³² ∈ (0,1),
// u2 = (w1+½)/2³², z = √(−2 ln u1)·cos(2π u2).
func NormalAt(seed, idx uint64, mean, std float64) float64 {
	w := RandomWords(seed, idx)
	u1 := (float64(w[0]) + 0.5) / 4294967296.0
	u2 := (float64(w[1]) + 0.5) / 4294967296.0
	return mean + std*math.Sqrt(-2*math.Log(u1))*math.Cos(2*math.Pi*u2)
}
