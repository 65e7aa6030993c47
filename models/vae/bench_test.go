package vae

import (
	"math/rand/v2"
	"slices"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// tinyConfig is a small valid architecture for tests without the golden
// files.
func tinyConfig(t testing.TB) Config {
	t.Helper()
	c, err := ParseConfig(`{"in_channels": 3, "out_channels": 3, "layers_per_block": 1, "latent_channels": 16, "norm_num_groups": 32,
		"use_quant_conv": false, "use_post_quant_conv": false, "block_out_channels": [32, 64, 32, 64],
		"down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
		"up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}`)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestNewRandom: random weights are a pure function of the seed, and the
// model runs end to end with the right shapes.
func TestNewRandom(t *testing.T) {
	cfg := tinyConfig(t)
	rng := kerneltest.Rng(t)
	img := kerneltest.Randn(rng, 3*8*24, 0.5)
	run := func(seed uint64) ([]float64, string) {
		e := newEngine()
		m, err := NewRandom(e, cfg, Options{}, seed)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Release()
		var lat, dec *ag.Tensor
		e.NoGrad(func() {
			if lat, err = m.Latent(e.FromFloat64(kernels.F32, []int{1, 3, 8, 24}, img)); err != nil {
				t.Fatal(err)
			}
			if dec, err = m.Decode(m.Denormalize(lat)); err != nil {
				t.Fatal(err)
			}
		})
		if s := lat.Shape(); !slices.Equal(s, []int{1, 16, 1, 3}) {
			t.Fatalf("latent shape %v", s)
		}
		if s := dec.Shape(); !slices.Equal(s, []int{1, 3, 8, 24}) {
			t.Fatalf("decoded shape %v", s)
		}
		return values(t, lat), m.WeightsHash()
	}
	a, ha := run(7)
	b, hb := run(7)
	c, hc := run(8)
	if kernels.RelErr(a, b) != 0 || ha != hb {
		t.Error("the same seed gave different weights")
	}
	if kernels.RelErr(c, a) < 1e-3 || hc == ha {
		t.Error("different seeds gave the same weights")
	}
}

// benchFLUX builds the full-width FLUX architecture with random weights.
func benchFLUX(b *testing.B, checkpoint bool) (*ag.Engine, *VAE) {
	b.Helper()
	e := newEngine()
	m, err := NewRandom(e, FLUX(), Options{DType: kernels.F32, Checkpoint: checkpoint}, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Release)
	return e, m
}

// BenchmarkEncodeFLUX128 encodes one 128×128 image with the full-width
// FLUX encoder on the CPU backend (float32, no tape).
func BenchmarkEncodeFLUX128(b *testing.B) {
	e, m := benchFLUX(b, false)
	img := kerneltest.Randn(rand.New(rand.NewPCG(1, 2)), 3*128*128, 0.5)
	b.ResetTimer()
	for range b.N {
		e.NoGrad(func() {
			x := e.FromFloat64(kernels.F32, []int{1, 3, 128, 128}, img)
			lat, err := m.Latent(x)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := lat.Values(); err != nil {
				b.Fatal(err)
			}
		})
		if err := e.EndStep(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeFLUX128 decodes a 16×16 latent to a 128×128 image with the
// full-width FLUX decoder on the CPU backend (float32, no tape).
func BenchmarkDecodeFLUX128(b *testing.B) {
	e, m := benchFLUX(b, false)
	z := kerneltest.Randn(rand.New(rand.NewPCG(3, 4)), 16*16*16, 1)
	b.ResetTimer()
	for range b.N {
		e.NoGrad(func() {
			y, err := m.Decode(e.FromFloat64(kernels.F32, []int{1, 16, 16, 16}, z))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := y.Values(); err != nil {
				b.Fatal(err)
			}
		})
		if err := e.EndStep(); err != nil {
			b.Fatal(err)
		}
	}
}
