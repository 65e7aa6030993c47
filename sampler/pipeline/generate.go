package pipeline

import (
	"context"
	"fmt"
	"math"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/sampler"
)

// Settings are how every image of a run is sampled.
type Settings struct {
	// Sampler is the method, steps (upstream's num_sampling_steps) and time
	// shift; its Observe is the generator's own.
	Sampler sampler.Options
	// Guidance is the CFG scale, truncation and renorm.
	Guidance sampler.Guidance
	// SystemPrompt goes before prompts (and non-empty negative prompts) for
	// the caption-feature encoder; see FeatureTexts.
	SystemPrompt string
}

// Validate checks the settings.
func (s Settings) Validate() error {
	if err := s.Sampler.Validate(); err != nil {
		return err
	}
	return s.Guidance.Validate()
}

// Image is one image to make.
type Image struct {
	// Index is its prompt's place in the run's list, from 0.
	Index            int
	Prompt, Negative string
	// Seed draws the starting noise (see Noise).
	Seed uint64
	// Width and Height in pixels, positive multiples of 16 (the VAE's 8
	// times the DiT's patch 2).
	Width, Height int
}

// SizeMultiple is what image sides must be multiples of.
const SizeMultiple = 16

// CheckSize reports a width or height the model cannot make.
func CheckSize(w, h int) error {
	if w <= 0 || h <= 0 || w%SizeMultiple != 0 || h%SizeMultiple != 0 {
		return fmt.Errorf("size %dx%d: width and height must be positive multiples of %d (the VAE's ×8 and the DiT's 2×2 patches)", w, h, SizeMultiple)
	}
	return nil
}

// Noise is the starting latent [16, H/8, W/8] of a seed: standard normal
// draws of the counter-based Philox generator, element i from counter i,
// so a seed gives the same noise on every backend and in every batch (not
// the noise torch.randn gives for it).
func Noise(seed uint64, c, h, w int) []float64 {
	out := make([]float64, c*h*w)
	for i := range out {
		out[i] = kernels.NormalAt(seed, uint64(i), 0, 1)
	}
	return out
}

// Generator makes images with one model on its engine.
type Generator struct {
	Model   *nextdit.Model
	Text    data.TextEncoders
	Decoder Decoder
	// Autocast is the dtype matrix products and attention run in (BF16 or
	// F16), or 0 for the weights' dtype. In fp16 (autocast or storage) every
	// evaluation is watched for overflow (see ErrOverflow).
	Autocast kernels.DType
	// BatchSize is the most images of one size evaluated together; 0 or 1
	// makes them one at a time.
	BatchSize int
	// Progress, when set, is called after every sampler step.
	Progress func(Progress)
}

// Progress is where a run stands after a sampler step.
type Progress struct {
	// Batch are the images being sampled; Done of Total are finished.
	Batch       []Image
	Done, Total int
	Step, Steps int
	// Elapsed since the run began, and the estimated time left.
	Elapsed, ETA time.Duration
}

// Result is one finished image.
type Result struct {
	Image  Image
	Latent data.Latent
	RGB    data.RGB
}

// Generate makes every image, batching neighbours of one size, and calls
// done with each as soon as its batch is decoded. A cancelled ctx stops it
// within one model evaluation with ctx's error; images already handed to
// done stay done.
func (g *Generator) Generate(ctx context.Context, imgs []Image, s Settings, done func(Result) error) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, im := range imgs {
		if err := CheckSize(im.Width, im.Height); err != nil {
			return fmt.Errorf("pipeline: image %d: %w", im.Index, err)
		}
	}
	batches := split(imgs, max(g.BatchSize, 1))
	e := g.Model.Engine()
	prev := e.SetAutocast(g.Autocast)
	defer e.SetAutocast(prev)
	start := time.Now()
	units, total := 0, len(batches)*s.Sampler.NumSteps()
	finished := 0
	for _, b := range batches {
		s := s
		s.Sampler.Observe = func(step, steps int, _ *ag.Tensor) error {
			units++
			if g.Progress != nil {
				el := time.Since(start)
				g.Progress(Progress{Batch: b, Done: finished, Total: len(imgs), Step: step, Steps: steps,
					Elapsed: el, ETA: time.Duration(float64(el) / float64(units) * float64(total-units))})
			}
			return nil
		}
		rs, err := g.batch(ctx, b, s)
		if serr := e.EndStep(); err == nil && serr != nil {
			err = fmt.Errorf("pipeline: %w", serr)
		}
		if err != nil {
			return err
		}
		for _, r := range rs {
			if err := done(r); err != nil {
				return err
			}
			finished++
		}
	}
	return nil
}

// split groups neighbouring images of one size into batches of at most n.
func split(imgs []Image, n int) [][]Image {
	var out [][]Image
	for i, im := range imgs {
		if i > 0 {
			last := out[len(out)-1]
			if len(last) < n && last[0].Width == im.Width && last[0].Height == im.Height {
				out[len(out)-1] = append(last, im)
				continue
			}
		}
		out = append(out, []Image{im})
	}
	return out
}

// batch samples and decodes images of one size together.
func (g *Generator) batch(ctx context.Context, imgs []Image, s Settings) ([]Result, error) {
	m := g.Model
	cfg := m.Config()
	prompts := make([]string, len(imgs))
	negatives := make([]string, len(imgs))
	for i, im := range imgs {
		prompts[i], negatives[i] = im.Prompt, im.Negative
	}
	c, err := Encode(ctx, g.Text, s.SystemPrompt, prompts, negatives, cfg.ClipTextDim)
	if err != nil {
		return nil, err
	}
	e := m.Engine()
	state := kernels.F32
	if m.Options().DType == kernels.F64 {
		state = kernels.F64
	}
	var watch *overflowWatch
	if g.Autocast == kernels.F16 || m.Options().DType == kernels.F16 {
		watch = newOverflowWatch(e, cfg)
		defer watch.release()
	}
	bd, err := bind(m, c, state, state, watch)
	if err != nil {
		return nil, err
	}
	defer bd.release()
	lc, lh, lw := cfg.InChannels, imgs[0].Height/8, imgs[0].Width/8
	n := lc * lh * lw
	noise := make([]float64, 0, len(imgs)*n)
	for _, im := range imgs {
		noise = append(noise, Noise(im.Seed, lc, lh, lw)...)
	}
	x0 := e.FromFloat64(state, []int{len(imgs), lc, lh, lw}, noise)
	defer x0.Release()
	x, err := sampler.Sample(ctx, x0, sampler.Guided(bd.conditional(), s.Guidance), s.Sampler)
	if err != nil {
		return nil, err
	}
	vals, err := x.Values()
	x.Release()
	if err != nil {
		return nil, err
	}
	lats := make([]data.Latent, len(imgs))
	for i := range imgs {
		d := make([]float32, n)
		for j, v := range vals[i*n : (i+1)*n] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("pipeline: image %d (seed %d): the sample has non-finite values", imgs[i].Index, imgs[i].Seed)
			}
			d[j] = float32(v)
		}
		lats[i] = data.Latent{Data: d, C: lc, H: lh, W: lw}
	}
	rgbs, err := g.Decoder.DecodeLatents(ctx, lats)
	if err != nil {
		return nil, err
	}
	out := make([]Result, len(imgs))
	for i, im := range imgs {
		out[i] = Result{Image: im, Latent: lats[i], RGB: rgbs[i]}
	}
	return out, nil
}
