package nextdit

import (
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// BenchmarkTrainStep times one forward and backward of a small Next-DiT
// (dim 384, 4 joint layers, a 32×32 latent = 256 image tokens, a 40-token
// caption) on the CPU backend, with every weight trainable in fp32, with
// and without bf16 autocast and per-block checkpointing.
func BenchmarkTrainStep(b *testing.B) {
	cfg := Config{
		PatchSize: 2, InChannels: 16, Dim: 384, NLayers: 4, NRefinerLayers: 1,
		NHeads: 4, NKVHeads: 2, MultipleOf: 64, NormEps: 1e-5, QKNorm: true,
		CapFeatDim: 256, AxesDims: []int{32, 32, 32}, AxesLens: []int{512, 64, 64},
		ClipTextDim: 128,
	}
	cases := []struct {
		name       string
		autocast   kernels.DType
		checkpoint bool
	}{
		{"fp32", 0, false},
		{"bf16-autocast", kernels.BF16, false},
		{"fp32-checkpointed", 0, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			be := cpu.New()
			e := ag.New(be)
			m, err := NewRandom(e, cfg, Options{DType: kernels.F32, Checkpoint: c.checkpoint}, 7)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := m.SetTrainable(func(string) bool { return true }, kernels.F32); err != nil {
				b.Fatal(err)
			}
			const batch, l = 2, 40
			fill := func(shape []int, seed uint64) *ag.Tensor {
				n := 1
				for _, s := range shape {
					n *= s
				}
				v := make([]float64, n)
				for i := range v {
					v[i] = kernels.NormalAt(seed, uint64(i), 0, 1)
				}
				return e.FromFloat64(kernels.F32, shape, v)
			}
			be.ResetPeak()
			b.ResetTimer()
			for range b.N {
				e.SetAutocast(c.autocast)
				in := Inputs{
					X: fill([]int{batch, 16, 32, 32}, 1), T: []float64{0.3, 0.8},
					CapFeats: fill([]int{batch, l, cfg.CapFeatDim}, 2), CapLens: []int{l, 25},
					ClipPooled: fill([]int{batch, cfg.ClipTextDim}, 3),
				}
				y, err := m.Forward(in)
				if err != nil {
					b.Fatal(err)
				}
				loss := ag.MeanAll(ag.Square(y))
				e.SetAutocast(0)
				if err := e.Backward(loss); err != nil {
					b.Fatal(err)
				}
				if err := e.EndStep(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(be.MemStats().Peak)/(1<<20), "peakMiB")
		})
	}
}
