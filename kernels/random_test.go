package kernels

import (
	"math"
	"testing"
)

// TestPhilox4x32KnownAnswers checks Philox4x32-10 against the known-answer
// vectors published with Random123 (kat_vectors).
func TestPhilox4x32KnownAnswers(t *testing.T) {
	cases := []struct {
		name string
		ctr  [4]uint32
		key  [2]uint32
		want [4]uint32
	}{
		{"zero", [4]uint32{0, 0, 0, 0}, [2]uint32{0, 0},
			[4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{"ones", [4]uint32{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, [2]uint32{0xffffffff, 0xffffffff},
			[4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{"pi", [4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, [2]uint32{0xa4093822, 0x299f31d0},
			[4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Philox4x32(c.ctr, c.key); got != c.want {
				t.Errorf("Philox4x32(%08x, %08x) = %08x, want %08x", c.ctr, c.key, got, c.want)
			}
		})
	}
}

// TestRandomDefinitions checks that RandomWords places the index and seed
// where its comment says, and that UniformAt and NormalAt are the stated
// functions of those words.
func TestRandomDefinitions(t *testing.T) {
	cases := []struct {
		seed, idx uint64
	}{{0, 0}, {1, 2}, {0x0123456789abcdef, 1<<40 + 3}, {math.MaxUint64, math.MaxUint64}}
	for _, c := range cases {
		w := RandomWords(c.seed, c.idx)
		want := Philox4x32([4]uint32{uint32(c.idx), uint32(c.idx >> 32), 0, 0}, [2]uint32{uint32(c.seed), uint32(c.seed >> 32)})
		if w != want {
			t.Errorf("RandomWords(%#x, %#x) = %08x, want %08x", c.seed, c.idx, w, want)
		}
		u := UniformAt(c.seed, c.idx, -2, 3)
		if wantU := -2 + 5*float64(w[0])/(1<<32); u != wantU || u < -2 || u >= 3 {
			t.Errorf("UniformAt = %v, want %v in [-2, 3)", u, wantU)
		}
		u1 := (float64(w[0]) + 0.5) / (1 << 32)
		u2 := (float64(w[1]) + 0.5) / (1 << 32)
		wantN := 1 + 2*math.Sqrt(-2*math.Log(u1))*math.Cos(2*math.Pi*u2)
		if n := NormalAt(c.seed, c.idx, 1, 2); n != wantN || math.IsInf(n, 0) || math.IsNaN(n) {
			t.Errorf("NormalAt = %v, want %v", n, wantN)
		}
	}
}
