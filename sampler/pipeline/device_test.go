package pipeline

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/models/vae"
	"github.com/newbie-train/newbie-train/optim"
	"github.com/newbie-train/newbie-train/sampler"
)

// openCUDA opens the GPU backend, or skips where there is none.
func openCUDA(tb testing.TB) kernels.Backend {
	tb.Helper()
	b, err := kernels.Open("cuda", 0)
	if err != nil {
		tb.Skipf("no CUDA device, GPU test skipped: %v", err)
	}
	return b
}

// randomWeights is a nextdit.Source of seeded random weights for the full
// model (linear weights N(0, 1/fan_in), biases N(0, 0.02²), norm weights
// 1 + N(0, 0.1²), as nextdit.NewRandom draws them) generated on demand, in
// parallel and by counter, so the same weights load in every storage dtype
// in seconds rather than the minute a sequential draw of 3.5 billion takes.
type randomWeights struct {
	cfg    nextdit.Config
	shapes map[string][]int
	index  map[string]int
	names  []string
}

func newRandomWeights(cfg nextdit.Config) *randomWeights {
	r := &randomWeights{cfg: cfg, shapes: map[string][]int{}, index: map[string]int{}}
	for i, p := range cfg.Params() {
		r.shapes[p.Name], r.index[p.Name] = p.Shape, i
		r.names = append(r.names, p.Name)
	}
	return r
}

func (r *randomWeights) Names() []string { return r.names }

func (r *randomWeights) Info(name string) (safetensors.TensorInfo, bool) {
	s, ok := r.shapes[name]
	return safetensors.TensorInfo{Name: name, DType: safetensors.F32, Shape: s}, ok
}

func (r *randomWeights) Metadata() map[string]string {
	return map[string]string{"config": r.cfg.JSON()}
}

func (r *randomWeights) Float32(name string) ([]float32, error) {
	s, ok := r.shapes[name]
	if !ok {
		return nil, fmt.Errorf("random weights: no %s", name)
	}
	n := 1
	for _, d := range s {
		n *= d
	}
	mean, std := 0.0, 0.02
	switch {
	case len(s) == 2:
		std = 1 / math.Sqrt(float64(s[1]))
	case !strings.HasSuffix(name, ".bias"):
		mean, std = 1, 0.1
	}
	out := make([]float32, n)
	stream := uint64(r.index[name]+1) * 0x9e3779b97f4a7c15
	eachRange(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = float32(kernels.NormalAt(stream, uint64(i), mean, std))
		}
	})
	return out, nil
}

// eachRange runs fn over [0, n) cut into one range per core, in parallel.
func eachRange(n int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(w*n/workers, (w+1)*n/workers)
		}()
	}
	wg.Wait()
}

// Encoded gives a weight's values already in a storage dtype's bytes (the
// loader's encodedSource): the loader would otherwise widen 3.5B values to
// float64 on one core to store an fp16 or fp32 model, minutes of the
// precision test's time limit.
func (r *randomWeights) Encoded(name string, d safetensors.DType) ([]byte, error) {
	v, err := r.Float32(name)
	if err != nil {
		return nil, err
	}
	put := map[safetensors.DType]func(b []byte, x float32){
		safetensors.BF16: func(b []byte, x float32) { binary.LittleEndian.PutUint16(b, kernels.BF16FromF32(x)) },
		safetensors.F16:  func(b []byte, x float32) { binary.LittleEndian.PutUint16(b, kernels.F16FromF32(x)) },
		safetensors.F32:  func(b []byte, x float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(x)) },
	}[d]
	if put == nil {
		return nil, fmt.Errorf("random weights: %s wanted as %s", name, d)
	}
	size := d.Size()
	out := make([]byte, size*len(v))
	eachRange(len(v), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			put(out[size*i:], v[i])
		}
	})
	return out, nil
}

func (r *randomWeights) Float64(name string) ([]float64, error) {
	v, err := r.Float32(name)
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out, nil
}

func (r *randomWeights) BF16(name string) ([]uint16, error) {
	v, err := r.Float32(name)
	if err != nil {
		return nil, err
	}
	out := make([]uint16, len(v))
	for i, x := range v {
		out[i] = kernels.BF16FromF32(x)
	}
	return out, nil
}

// fullSetup is the full model with random weights in a precision, bound to
// one random cond + uncond caption pair of the given length.
type fullSetup struct {
	e     *ag.Engine
	m     *nextdit.Model
	bd    *bound
	watch *overflowWatch
}

func newFullSetup(tb testing.TB, b kernels.Backend, preset string, p optim.Precision, capTokens int) *fullSetup {
	tb.Helper()
	cfg, err := nextdit.Preset(preset)
	if err != nil {
		tb.Fatal(err)
	}
	storage, autocast, err := DTypes(p)
	if err != nil {
		tb.Fatal(err)
	}
	e := ag.New(b)
	m, err := nextdit.LoadFile(e, newRandomWeights(cfg), cfg, nextdit.Options{DType: storage})
	if err != nil {
		tb.Fatal(err)
	}
	e.SetAutocast(autocast)
	c := &Conditioning{B: 1, L: capTokens, D: cfg.CapFeatDim, Lens: []int{capTokens, capTokens}, P: cfg.ClipTextDim}
	c.Feats = Noise(101, 2, capTokens, cfg.CapFeatDim)
	c.Pooled = Noise(102, 1, 2, cfg.ClipTextDim)
	s := &fullSetup{e: e, m: m}
	if storage == kernels.F16 {
		s.watch = newOverflowWatch(e, cfg)
	}
	if s.bd, err = bind(m, c, kernels.F32, kernels.F32, s.watch); err != nil {
		tb.Fatal(err)
	}
	return s
}

func (s *fullSetup) release() {
	s.bd.release()
	if s.watch != nil {
		s.watch.release()
	}
	s.m.Release()
	s.e.EndStep()
}

// BenchmarkCFGEvaluation times one guided model evaluation of the full
// NewBie model (random bf16 weights, bf16 autocast): a 1024² image (4096
// image tokens) with cond + uncond captions of 256 tokens each, batch 2, as
// every sampler step of `newbie-train sample` runs it. GPU only.
func BenchmarkCFGEvaluation(b *testing.B) {
	be := openCUDA(b)
	s := newFullSetup(b, be, "newbie-exp0.1", optim.BF16, 256)
	defer s.release()
	x := s.e.FromFloat64(kernels.F32, []int{1, 16, 128, 128}, Noise(1, 16, 128, 128)).Keep()
	defer x.Release()
	eval := s.bd.conditional()
	run := func() {
		vc, vu, err := eval(x, 0.5, true)
		if err != nil {
			b.Fatal(err)
		}
		vc.Release()
		vu.Release()
		if err := s.e.Err(); err != nil {
			b.Fatal(err)
		}
	}
	run() // compile kernels, fill the allocator
	be.ResetPeak()
	b.ResetTimer()
	for range b.N {
		run()
	}
	b.StopTimer()
	b.ReportMetric(float64(be.MemStats().Peak)/(1<<30), "peak-GiB")
}

// inferResult is one precision's line of TestInferPrecisions.
type inferResult struct {
	Precision string  `json:"precision"`
	Steps     int     `json:"euler_steps"`
	SPerImage float64 `json:"s_per_image"`
	SPerEval  float64 `json:"s_per_eval"`
	PeakGiB   float64 `json:"peak_gib"`
	Finite    bool    `json:"finite"`
	Error     string  `json:"error,omitempty"`
	latent    []float64
}

// vaeResult is the decode of an inferResult's latent, printed after it.
type vaeResult struct {
	Precision string  `json:"vae_decode_precision"`
	Seconds   float64 `json:"vae_decode_s"`
	Finite    bool    `json:"vae_finite"`
}

// TestInferPrecisions is the --infer timing of the PyTorch anchor
// (torch_nextdit_lora.py --infer N --precision P) on our engine: N Euler
// steps (an unshifted grid of N+1 points) of one 1024² image with CFG 5,
// each evaluation batch 2 (cond + uncond, 256 caption tokens each), the
// full model with the same random weights stored in each precision, from
// the same noise; seconds per image, per evaluation and peak GPU memory of
// the DiT sampling (weights included, as torch.cuda.max_memory_allocated
// counts them), then a FLUX VAE decode (random weights) of the latent.
// It prints one JSON line per precision and the final latent's relative
// difference of fp16 and bf16 from fp32. GPU only; set
// NEWBIE_TRAIN_INFER_STEPS=N (e.g. 50) to run it. NEWBIE_TRAIN_INFER_SMOKE=1
// runs the same code on the CPU with the tiny model at 128² instead, to
// check it without a GPU. NEWBIE_TRAIN_INFER_LATENTS=DIR keeps each final
// latent as DIR/P.f64 and compares with those already there, so that each
// precision can run in a process of its own (a hang or a crash in one
// then costs none of the others' figures). Progress goes to stderr every
// ten steps.
func TestInferPrecisions(t *testing.T) {
	steps, _ := strconv.Atoi(os.Getenv("NEWBIE_TRAIN_INFER_STEPS"))
	if steps < 1 {
		t.Skip("set NEWBIE_TRAIN_INFER_STEPS=50 to time sampling per precision on the GPU")
	}
	preset, side, capTokens := "newbie-exp0.1", 128, 256
	var be kernels.Backend
	if os.Getenv("NEWBIE_TRAIN_INFER_SMOKE") == "1" {
		preset, side, capTokens, be = "tiny", 16, 16, cpu.New()
	} else {
		be = openCUDA(t)
	}
	opts := sampler.Options{Method: sampler.Euler, Steps: steps + 1, Shift: 1}
	var start time.Time
	opts.Observe = func(step, n int, _ *ag.Tensor) error {
		if step%10 == 0 || step == n {
			fmt.Fprintf(os.Stderr, "infer: step %d/%d queued at %.2f s\n", step, n, time.Since(start).Seconds())
		}
		return nil
	}
	latents := os.Getenv("NEWBIE_TRAIN_INFER_LATENTS")
	guide := sampler.Guidance{Scale: 5}
	results := map[optim.Precision]*inferResult{}
	precisions := []optim.Precision{optim.BF16, optim.FP16, optim.FP32}
	if only := os.Getenv("NEWBIE_TRAIN_INFER_PRECISIONS"); only != "" { // e.g. "bf16,fp32"
		precisions = nil
		for _, p := range strings.Split(only, ",") {
			precisions = append(precisions, optim.Precision(p))
		}
	}
	for _, p := range precisions {
		r := &inferResult{Precision: string(p), Steps: steps}
		results[p] = r
		s := newFullSetup(t, be, preset, p, capTokens)
		v := sampler.Guided(s.bd.conditional(), guide)
		x0 := s.e.FromFloat64(kernels.F32, []int{1, 16, side, side}, Noise(1, 16, side, side)).Keep()
		warm, err := sampler.Sample(context.Background(), x0, v, sampler.Options{Method: sampler.Euler, Steps: 3, Shift: 1})
		if err == nil {
			warm.Release()
			err = s.e.Err()
		}
		if err == nil {
			be.ResetPeak()
			start = time.Now()
			var x *ag.Tensor
			if x, err = sampler.Sample(context.Background(), x0, v, opts); err == nil {
				r.latent, err = x.Values()
				r.SPerImage = time.Since(start).Seconds()
				r.SPerEval = r.SPerImage / float64(steps)
				r.PeakGiB = float64(be.MemStats().Peak) / (1 << 30)
				x.Release()
			}
		}
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Finite = finite(r.latent)
		}
		x0.Release()
		s.release()
		// The sampling line first: a slow decode (the FLUX VAE's
		// convolutions have no fp16 or fp32 fast path) must not hide it.
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
		if latents != "" && r.latent != nil {
			if err := writeLatent(latents, p, r.latent); err != nil {
				t.Error(err)
			}
		}
		if r.latent != nil && preset != "tiny" { // the full VAE takes minutes on the CPU
			sec, ok := decodeTime(t, be, p, r.latent, side)
			vae, _ := json.Marshal(vaeResult{Precision: r.Precision, Seconds: sec, Finite: ok})
			fmt.Println(string(vae))
		}
	}
	final := func(p optim.Precision) []float64 {
		if r := results[p]; r != nil {
			return r.latent
		}
		if latents == "" {
			return nil
		}
		l, err := readLatent(latents, p)
		if err != nil && !os.IsNotExist(err) {
			t.Error(err)
		}
		return l
	}
	ref := final(optim.FP32)
	for _, p := range []optim.Precision{optim.BF16, optim.FP16} {
		if got := final(p); ref != nil && got != nil && (results[p] != nil || results[optim.FP32] != nil) {
			if len(got) != len(ref) {
				t.Errorf("%s latent has %d values, fp32's %d", p, len(got), len(ref))
				continue
			}
			fmt.Printf("{\"final_latent_rel_diff_vs_fp32\":{\"precision\":%q,\"rel_diff\":%.4g}}\n", p, kernels.RelErr(got, ref))
		}
	}
}

// writeLatent keeps a final latent as DIR/P.f64 (little-endian float64).
func writeLatent(dir string, p optim.Precision, v []float64) error {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	path := dir + "/" + string(p) + ".f64"
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("keep the %s latent: %w", p, err)
	}
	return nil
}

// readLatent reads what writeLatent kept; the error satisfies
// os.IsNotExist where that precision has not run.
func readLatent(dir string, p optim.Precision) ([]float64, error) {
	path := dir + "/" + string(p) + ".f64"
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("read %s: %d bytes is not a whole number of float64 values", path, len(b))
	}
	v := make([]float64, len(b)/8)
	for i := range v {
		v[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return v, nil
}

// decodeTime decodes a latent with a random FLUX VAE in the precision's
// autocast (fp32 weights) and returns the seconds and whether the image is
// finite.
func decodeTime(t *testing.T, be kernels.Backend, p optim.Precision, latent []float64, side int) (float64, bool) {
	_, autocast, _ := DTypes(p)
	e := ag.New(be)
	v, err := vae.NewRandom(e, vae.FLUX(), vae.Options{}, 5)
	if err != nil {
		t.Logf("VAE: %v", err)
		return 0, false
	}
	defer v.Release()
	d := NewVAEDecoder(v, autocast)
	lat := data.Latent{C: 16, H: side, W: side, Data: make([]float32, len(latent))}
	for i, x := range latent {
		lat.Data[i] = float32(x)
	}
	if _, err := d.DecodeLatents(context.Background(), []data.Latent{lat}); err != nil { // warm-up
		t.Logf("VAE decode: %v", err)
		return 0, false
	}
	start := time.Now()
	imgs, err := d.DecodeLatents(context.Background(), []data.Latent{lat})
	if err != nil {
		t.Logf("VAE decode: %v", err)
		return 0, false
	}
	sec := time.Since(start).Seconds()
	ok := true
	for _, x := range imgs[0].Pix {
		ok = ok && !math.IsNaN(float64(x)) && !math.IsInf(float64(x), 0)
	}
	return sec, ok
}

func finite(v []float64) bool {
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}

// TestRandomWeights: the random source loads in every storage dtype with
// the same values (up to the dtype's rounding) and the scales it promises.
func TestRandomWeights(t *testing.T) {
	cfg, _ := nextdit.Preset("tiny")
	src := newRandomWeights(cfg)
	var ref []float64
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
		m, err := nextdit.LoadFile(ag.New(cpu.New()), src, cfg, nextdit.Options{DType: dt})
		if err != nil {
			t.Fatal(err)
		}
		v, err := m.Weight("layers.0.feed_forward.w1.weight").Values()
		if err != nil {
			t.Fatal(err)
		}
		if ref == nil {
			ref = v
			var ss float64
			for _, x := range v {
				ss += x * x
			}
			if std, want := math.Sqrt(ss/float64(len(v))), 1/math.Sqrt(float64(cfg.Dim)); math.Abs(std/want-1) > 0.05 {
				t.Errorf("w1 std %.4g, want %.4g", std, want)
			}
		} else if e := kernels.RelErr(v, ref); !(e < 4e-3) {
			t.Errorf("%v weights differ from f32 by %.3g", dt, e)
		}
		m.Release()
	}
}
