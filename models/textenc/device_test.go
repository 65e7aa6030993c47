package textenc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
)

// openCUDA opens the GPU backend, or skips the test where there is none.
func openCUDA(t *testing.T) kernels.Backend {
	t.Helper()
	b, err := kernels.Open("cuda", 0)
	if err != nil {
		t.Skipf("no CUDA device, GPU test skipped: %v", err)
	}
	return b
}

// graphStats is the backend's graph counters (zero where it has no graphs).
func graphStats(b kernels.Backend) kernels.GraphStats {
	if g, ok := b.(kernels.Graphs); ok {
		return g.GraphStats()
	}
	return kernels.GraphStats{}
}

// randomWeight is a kept device tensor of N(mean, std²) draws in dtype d.
func randomWeight(e *ag.Engine, d kernels.DType, shape []int, mean, std float64) *ag.Tensor {
	n := e.Normal(d, shape)
	w := ag.Affine(n, std, mean)
	n.Release()
	return w.Keep()
}

// randomGemma builds a Gemma of architecture cfg with random bf16 weights
// made on the device (norm weights, stored as 1+w, in float32 near 1).
func randomGemma(e *ag.Engine, cfg Config) *Gemma {
	g := &Gemma{e: e, cfg: cfg, opts: Options{DType: kernels.BF16}, w: map[string]*ag.Tensor{}}
	for _, p := range cfg.Params() {
		switch {
		case isNorm(p.Name):
			g.w[p.Name] = randomWeight(e, kernels.F32, p.Shape, 1, 0.05)
		default:
			g.w[p.Name] = randomWeight(e, kernels.BF16, p.Shape, 0, 1/math.Sqrt(float64(p.Shape[len(p.Shape)-1])))
		}
	}
	return g
}

// randomJina builds a Jina text tower of architecture cfg with random bf16
// weights made on the device, under the names LoadJina gives them.
func randomJina(e *ag.Engine, cfg JinaConfig) *Jina {
	j := &Jina{e: e, cfg: cfg, dtype: kernels.BF16, task: cfg.DefaultTask, w: map[string]*ag.Tensor{}}
	h := cfg.HiddenSize
	mat := func(name string, out, in int) {
		j.w[name+".weight"] = randomWeight(e, kernels.BF16, []int{out, in}, 0, 1/math.Sqrt(float64(in)))
		j.w[name+".bias"] = randomWeight(e, kernels.BF16, []int{out}, 0, 0.02)
	}
	norm := func(name string) {
		j.w[name+".weight"] = randomWeight(e, kernels.BF16, []int{h}, 1, 0.05)
		j.w[name+".bias"] = randomWeight(e, kernels.BF16, []int{h}, 0, 0.02)
	}
	j.w["word_embeddings"] = randomWeight(e, kernels.BF16, []int{cfg.VocabSize, h}, 0, 0.5)
	j.w["token_type_0"] = randomWeight(e, kernels.BF16, []int{h}, 0, 0.5)
	norm("emb_ln")
	for i := range cfg.NumLayers {
		p := fmt.Sprintf("encoder.layers.%d.", i)
		for _, n := range []string{"mixer.q", "mixer.k", "mixer.v", "mixer.out_proj"} {
			mat(p+n, h, h)
		}
		mat(p+"mlp.fc1", cfg.IntermediateSize, h)
		mat(p+"mlp.fc2", h, cfg.IntermediateSize)
		norm(p + "norm1")
		norm(p + "norm2")
	}
	return j
}

// TestEncodeThroughputCUDA builds the full-size encoders NewBie uses with
// random bf16 weights on the GPU — Gemma 3 4B (34 layers, hidden 2560;
// PenultimateHidden runs 33 of them) and Jina CLIP v2's text tower (24
// layers, hidden 1024; Pooled) — and measures encode throughput (tokens/s,
// the median of 5 timed batches after 2 warm-ups) and peak device memory
// (weights included, as torch.cuda.max_memory_allocated counts them) at
// batch 8 × 512 and 8 × 64 tokens, every token real. The PyTorch figures
// to set beside these come from scripts/torch_gemma3_encode.py and
// scripts/torch_jina_encode.py in the same call (scripts/device/enc.sh).
// It needs NEWBIE_ENC_BENCH=1.
func TestEncodeThroughputCUDA(t *testing.T) {
	if os.Getenv("NEWBIE_ENC_BENCH") == "" {
		t.Skip("set NEWBIE_ENC_BENCH=1 to measure the full-size encoders on the GPU")
	}
	be := openCUDA(t)
	e := ag.New(be)
	gib := func(n int64) float64 { return float64(n) / (1 << 30) }
	type encoder struct {
		name   string
		vocab  int
		encode func(ids [][]int32) (*ag.Tensor, error)
	}
	measure := func(t *testing.T, enc encoder, weights int64) {
		r := rand.New(rand.NewPCG(5, 9))
		for _, shape := range [][2]int{{8, 512}, {8, 64}} {
			b, l := shape[0], shape[1]
			ids := make([][]int32, b)
			for i := range ids {
				ids[i] = make([]int32, l)
				for k := range ids[i] {
					ids[i][k] = int32(r.IntN(enc.vocab))
				}
			}
			var times []time.Duration
			var first []float64
			graphs := graphStats(be)
			be.ResetPeak()
			for it := range 7 {
				t0 := time.Now()
				out, err := enc.encode(ids)
				if err != nil {
					t.Fatal(err)
				}
				if err := be.Sync(); err != nil {
					t.Fatal(err)
				}
				if it >= 2 {
					times = append(times, time.Since(t0))
				}
				// The first forward runs plainly, the last replays the
				// graphs captured in between: both must give the same
				// bits.
				if it == 0 || it == 6 {
					v, err := out.Values()
					if err != nil {
						t.Fatal(err)
					}
					for _, x := range v {
						if math.IsNaN(x) || math.IsInf(x, 0) {
							t.Fatalf("%s: output has %g", enc.name, x)
						}
					}
					if it == 0 {
						first = v
					} else if !slices.Equal(first, v) {
						t.Errorf("%s %dx%d: the seventh forward differs from the first (relative %.3g); graphs: %v",
							enc.name, b, l, kernels.RelErr(v, first), graphStats(be).Sub(graphs))
					}
				}
				out.Release()
				if err := e.EndStep(); err != nil {
					t.Fatal(err)
				}
			}
			slices.Sort(times)
			med := times[len(times)/2]
			peak := be.MemStats().Peak
			fmt.Printf("go %s bf16 %s batch %d x %d: %.0f tokens/s (%.2f ms/batch), peak %.2f GiB (weights %.2f GiB); %v\n",
				enc.name, be.Name(), b, l, float64(b*l)/med.Seconds(), float64(med.Microseconds())/1000, gib(peak), gib(weights), graphStats(be).Sub(graphs))
		}
	}

	t.Run("gemma3-4b", func(t *testing.T) {
		cfg := Gemma4BConfig()
		e.SeedRandom(1, 0)
		g := randomGemma(e, cfg)
		defer g.Release()
		if err := be.Sync(); err != nil {
			t.Fatal(err)
		}
		measure(t, encoder{"gemma3-4b hidden_states[-2]", cfg.VocabSize, func(ids [][]int32) (*ag.Tensor, error) {
			return g.PenultimateHidden(ids, nil)
		}}, be.MemStats().Allocated)
	})
	t.Run("jina-clip-v2", func(t *testing.T) {
		cfg := JinaCLIPv2Config()
		e.SeedRandom(2, 0)
		j := randomJina(e, cfg)
		defer j.Release()
		if err := be.Sync(); err != nil {
			t.Fatal(err)
		}
		measure(t, encoder{"jina-clip-v2 pooled", cfg.VocabSize, func(ids [][]int32) (*ag.Tensor, error) {
			return j.Pooled(ids, nil)
		}}, be.MemStats().Allocated)
	})
}
