package data

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/newbie-train/newbie-train/kernels"
)

// rng is a counter-based random stream on the engine's Philox generator.
// Every random choice in this package (epoch order, crops, caption variants,
// dropout) is drawn from a stream keyed by the run seed and a purpose string,
// so a choice depends only on what it is for, never on how many draws came
// before it: that is what lets a resumed loader reproduce a batch without
// replaying the run, and what keeps results identical across Go versions
// (math/rand's algorithms are not promised to stay fixed).
type rng struct {
	key  uint64
	ctr  uint64
	word [4]uint32
	used int
}

// newRNG derives a stream from the seed and any number of labels.
func newRNG(seed uint64, labels ...string) *rng {
	h := sha256.New()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	for _, l := range labels {
		binary.LittleEndian.PutUint64(b[:], uint64(len(l)))
		h.Write(b[:])
		h.Write([]byte(l))
	}
	sum := h.Sum(nil)
	return &rng{key: binary.LittleEndian.Uint64(sum), used: 4}
}

// uint32 returns the next 32 random bits.
func (r *rng) uint32() uint32 {
	if r.used == 4 {
		r.word = kernels.RandomWords(r.key, r.ctr)
		r.ctr++
		r.used = 0
	}
	w := r.word[r.used]
	r.used++
	return w
}

// float64 is uniform in [0, 1) with 53 random bits.
func (r *rng) float64() float64 {
	hi := uint64(r.uint32()) >> 5 // 27 bits
	lo := uint64(r.uint32()) >> 6 // 26 bits
	return float64(hi<<26|lo) / (1 << 53)
}

// intn is uniform in [0, n) by rejection, so there is no modulo bias.
func (r *rng) intn(n int) int {
	if n <= 1 {
		return 0
	}
	bound := uint64(n)
	limit := (1 << 32) - (1<<32)%bound
	for {
		v := uint64(r.uint32())
		if v < limit {
			return int(v % bound)
		}
	}
}

// shuffle permutes n elements by Fisher–Yates, calling swap(i, j).
func (r *rng) shuffle(n int, swap func(i, j int)) {
	for i := n - 1; i > 0; i-- {
		swap(i, r.intn(i+1))
	}
}
