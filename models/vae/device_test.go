package vae

import (
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestGoldenCUDA is TestGolden on the GPU backend: fp32 (direct
// convolutions, fp32 GroupNorm fast path) within 1e-5; bf16 (the
// tensor-core convolutions and bf16 GroupNorm+SiLU) within the golden
// README's bf16 5e-2, with bf16 storage alone and under autocast.
func TestGoldenCUDA(t *testing.T) {
	g := openGolden(t)
	kerneltest.OpenCUDA(t)
	for _, c := range []goldenCase{
		{name: "f32", store: kernels.F32, tol: 1e-5},
		{name: "bf16-storage", store: kernels.BF16, input: kernels.BF16, tol: 5e-2},
		{name: "bf16-storage-autocast", store: kernels.BF16, autocast: kernels.BF16, tol: 5e-2},
		{name: "bf16-explicit-attention-chunked", store: kernels.BF16, input: kernels.BF16, chunk: 13, tol: 5e-2},
	} {
		t.Run(c.name, func(t *testing.T) { runGolden(t, ag.New(kerneltest.OpenCUDA(t)), g, c) })
	}
}

// fluxRun encodes img [1, 3, side, side] and decodes z [1, 16, side/8,
// side/8] with the full-width FLUX VAE (random weights from seed 1) in
// dtype d on backend b, and returns the latent and the image.
func fluxRun(t *testing.T, b kernels.Backend, d kernels.DType, img, z []float64, side int) (lat, dec []float64) {
	t.Helper()
	e := ag.New(b)
	m, err := NewRandom(e, FLUX(), Options{DType: d}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	e.NoGrad(func() {
		l, err := m.Latent(e.FromFloat64(d, []int{1, 3, side, side}, img))
		if err != nil {
			t.Fatal(err)
		}
		y, err := m.Decode(e.FromFloat64(d, []int{1, 16, side / 8, side / 8}, z))
		if err != nil {
			t.Fatal(err)
		}
		lat, dec = values(t, l), values(t, y)
	})
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return lat, dec
}

// TestFLUXFastPathsCUDA runs the full-width FLUX VAE in bf16 on the GPU
// against the same network in float32 on the CPU backend (a 64² image and
// an 8² latent: every layer kind of the real model), and with every fast
// path on against all of them off (NEWBIE_TRAIN_CUDA_OFF) at 256².
func TestFLUXFastPathsCUDA(t *testing.T) {
	if os.Getenv("NEWBIE_VAE_FULL") == "" {
		t.Skip("set NEWBIE_VAE_FULL=1 to check the full-width FLUX VAE on the GPU")
	}
	gpu := kerneltest.OpenCUDA(t) // skip before the CPU reference where there is no GPU
	r := rand.New(rand.NewPCG(11, 12))
	uniform := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = 2*r.Float64() - 1
		}
		return v
	}
	const small, big, tol = 64, 256, 5e-2
	img, z := uniform(3*small*small), kerneltest.Randn(r, 16*small*small/64, 1)
	wantLat, wantDec := fluxRun(t, cpu.New(), kernels.F32, img, z, small)
	gotLat, gotDec := fluxRun(t, gpu, kernels.BF16, img, z, small)
	compare := func(what string, got, want []float64) {
		t.Logf("%s: rel err %.3g", what, kernels.RelErr(got, want))
		kerneltest.Check(t, what, got, want, tol)
	}
	compare("latent (GPU bf16 vs CPU fp32)", gotLat, wantLat)
	compare("decoded (GPU bf16 vs CPU fp32)", gotDec, wantDec)

	img, z = uniform(3*big*big), kerneltest.Randn(r, 16*big*big/64, 1)
	fastLat, fastDec := fluxRun(t, kerneltest.OpenCUDA(t), kernels.BF16, img, z, big)
	t.Setenv("NEWBIE_TRAIN_CUDA_OFF", "conv,groupnorm,attn256")
	slowLat, slowDec := fluxRun(t, kerneltest.OpenCUDA(t), kernels.BF16, img, z, big)
	compare("latent (fast vs general kernels)", fastLat, slowLat)
	compare("decoded (fast vs general kernels)", fastDec, slowDec)
}

// TestFLUXSpeedCUDA times the full-size FLUX VAE with random bf16 weights on
// the GPU, in bf16 throughout (as a PyTorch VAE cast to bf16 runs;
// scripts/vae_anchor.py is that anchor) and under bf16 autocast: encode of
// a 1024² image to its latent and decode of a 128² latent, each after two
// warm-up runs, the
// median of NEWBIE_VAE_REPEAT runs (default 5) timed on the host around
// the call and a Sync, input already on the device; peak device memory of
// the timed runs. Set NEWBIE_VAE_BENCH=1.
func TestFLUXSpeedCUDA(t *testing.T) {
	if os.Getenv("NEWBIE_VAE_BENCH") == "" {
		t.Skip("set NEWBIE_VAE_BENCH=1 to time the full-size FLUX VAE on the GPU")
	}
	repeat := 5
	if v := os.Getenv("NEWBIE_VAE_REPEAT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("NEWBIE_VAE_REPEAT=%q is not a positive count", v)
		}
		repeat = n
	}
	be := kerneltest.OpenCUDA(t)
	e := ag.New(be)
	t0 := time.Now()
	m, err := NewRandom(e, FLUX(), Options{DType: kernels.BF16}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	t.Logf("%s: random FLUX VAE in bf16 (%d tensors) in %v", be.Name(), len(m.weights), time.Since(t0).Round(time.Millisecond))
	r := rand.New(rand.NewPCG(1, 2))
	img := make([]float64, 3*1024*1024)
	for i := range img {
		img[i] = 2*r.Float64() - 1
	}
	zv := kerneltest.Randn(r, 16*128*128, 1)
	type input struct{ x, z *ag.Tensor }
	in := map[kernels.DType]input{}
	for _, d := range []kernels.DType{kernels.BF16, kernels.F32} {
		// Kept: every timed run ends its step, which frees the step's other tensors.
		in[d] = input{e.FromFloat64(d, []int{1, 3, 1024, 1024}, img).Keep(), e.FromFloat64(d, []int{1, 16, 128, 128}, zv).Keep()}
		defer in[d].x.Release()
		defer in[d].z.Release()
	}
	// Two ways to run bf16 weights: bf16 throughout (the anchor's way), and
	// float32 inputs under bf16 autocast (norms and softmax in float32, as
	// PyTorch's autocast runs them).
	type op struct {
		name     string
		autocast kernels.DType
		run      func() (*ag.Tensor, error)
		want     []int
	}
	var ops []op
	for _, mode := range []struct {
		name     string
		autocast kernels.DType
		in       input
	}{{"bf16", 0, in[kernels.BF16]}, {"bf16 autocast", kernels.BF16, in[kernels.F32]}} {
		ops = append(ops,
			op{"encode 1024x1024 (" + mode.name + ")", mode.autocast, func() (*ag.Tensor, error) { return m.Latent(mode.in.x) }, []int{1, 16, 128, 128}},
			op{"decode 128x128 latent (" + mode.name + ")", mode.autocast, func() (*ag.Tensor, error) { return m.Decode(mode.in.z) }, []int{1, 3, 1024, 1024}})
	}
	for _, op := range ops {
		e.SetAutocast(op.autocast)
		var times []time.Duration
		var peak int64
		for i := range repeat + 2 {
			if err := be.Sync(); err != nil {
				t.Fatal(err)
			}
			be.ResetPeak()
			start := time.Now()
			var out *ag.Tensor
			e.NoGrad(func() { out, err = op.run() })
			if err == nil {
				err = e.Err()
			}
			if err != nil {
				t.Fatalf("%s: %v", op.name, err)
			}
			if err := be.Sync(); err != nil {
				t.Fatalf("%s: %v", op.name, err)
			}
			el := time.Since(start)
			if !slices.Equal(out.Shape(), op.want) {
				t.Fatalf("%s: shape %v, want %v", op.name, out.Shape(), op.want)
			}
			out.Release()
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
			if i >= 2 {
				times = append(times, el)
				peak = max(peak, be.MemStats().Peak)
			}
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		t.Logf("vae %s: median %.4f s, min %.4f s over %d runs, peak %.2f GiB", op.name,
			times[len(times)/2].Seconds(), times[0].Seconds(), len(times), float64(peak)/(1<<30))
	}
	e.SetAutocast(0)
}
