package train

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/sampler"
)

// previewSeedStream separates the preview noise from other draws.
const previewSeedStream = 0x70726576 // "prev"

// previews renders sample.prompts with the current LoRA — the model's own
// sampler (shifted grid, midpoint or Euler, guidance against the negative
// prompt) from the same noise every time — and writes one PNG per prompt
// into <output>/<name>-previews/. With the stand-in encoders the images are
// decoded by the stand-in's inverse: block colours, a view of what the
// latents say, not pictures.
func (r *run) previews() ([]string, error) {
	cfg := r.cfg
	s := cfg.Sample
	if len(s.Prompts) == 0 {
		return nil, nil
	}
	mc := r.model.Config()
	text := data.NewStandInTextEncoder(mc.CapFeatDim, mc.ClipTextDim, 64)
	dir := filepath.Join(cfg.Save.Output, cfg.Save.Name+"-previews")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("previews: %w", err)
	}
	res := s.Resolution
	if res == 0 {
		res = cfg.Data.Resolution
	}
	side := res / 8
	prevAutocast := r.e.SetAutocast(r.autocast)
	defer r.e.SetAutocast(prevAutocast)
	r.set.SetTraining(false) // no adapter dropout while sampling
	defer r.set.SetTraining(true)

	var paths []string
	for pi, prompt := range s.Prompts {
		cond, err := r.conditioning(text, prompt)
		if err != nil {
			return nil, err
		}
		uncond, err := r.conditioning(text, s.NegativePrompt)
		if err != nil {
			return nil, err
		}
		noise := make([]float64, 16*side*side)
		for i := range noise {
			noise[i] = kernels.NormalAt(s.Seed^previewSeedStream, uint64(pi*len(noise)+i), 0, 1)
		}
		x0 := r.e.FromFloat64(kernels.F32, []int{1, 16, side, side}, noise)
		v := sampler.Guided(r.velocity(cond), r.velocity(uncond), sampler.Guidance{Scale: s.CFG})
		x, err := sampler.Sample(x0, v, sampler.Options{Steps: s.Steps, Method: sampler.Method(s.Sampler), Shift: s.TimeShift})
		if err != nil {
			r.e.EndStep()
			return nil, fmt.Errorf("preview %d: %w", pi+1, err)
		}
		vals, err := x.Values()
		r.e.EndStep()
		if err != nil {
			return nil, err
		}
		lat := data.Latent{C: 16, H: side, W: side, Data: make([]float32, len(vals))}
		for i, f := range vals {
			lat.Data[i] = float32(f)
		}
		img, err := (&data.StandInVAE{}).DecodeLatent(lat)
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, fmt.Sprintf("step%08d-%02d.png", r.step, pi+1))
		if err := writeRGB(p, img); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// renderPreviews renders the previews and logs where they went.
func (r *run) renderPreviews(ctx context.Context) error {
	paths, err := r.previews()
	if err != nil {
		return fmt.Errorf("previews at step %d: %w", r.step, err)
	}
	if len(paths) > 0 {
		r.logf("previews at step %d: %v", r.step, paths)
	}
	return nil
}

// conditioning is one prompt's text inputs, as the training batches carry
// them (Gemma text with the system prompt, CLIP text without).
type conditioning struct {
	feats  []float64
	tokens int
	pooled []float64
}

func (r *run) conditioning(enc data.TextEncoder, prompt string) (conditioning, error) {
	sys := r.cfg.Data.Caption.SystemPrompt
	if sys == "" {
		sys = data.GemmaSystemPrompt
	}
	es, err := enc.EncodeTexts(context.Background(), []string{data.FeatureText(sys, prompt), data.PooledText(prompt)})
	if err != nil {
		return conditioning{}, err
	}
	c := conditioning{tokens: es[0].Tokens, feats: make([]float64, len(es[0].Features)), pooled: make([]float64, len(es[1].Pooled))}
	for i, v := range es[0].Features {
		c.feats[i] = float64(v)
	}
	for i, v := range es[1].Pooled {
		c.pooled[i] = float64(v)
	}
	return c, nil
}

// velocity is the model's velocity for one prompt's conditioning.
func (r *run) velocity(c conditioning) sampler.Velocity {
	mc := r.model.Config()
	return func(x *ag.Tensor, t []float64) (*ag.Tensor, error) {
		in := nextdit.Inputs{
			X: x, T: t,
			CapFeats: r.e.FromFloat64(kernels.F32, []int{1, c.tokens, mc.CapFeatDim}, c.feats),
			CapLens:  []int{c.tokens},
		}
		if mc.ClipTextDim > 0 {
			in.ClipPooled = r.e.FromFloat64(kernels.F32, []int{1, mc.ClipTextDim}, c.pooled)
		}
		v, err := r.model.Forward(in)
		in.CapFeats.Release()
		if in.ClipPooled != nil {
			in.ClipPooled.Release()
		}
		if err != nil {
			return nil, err
		}
		return ag.Cast(v, kernels.F32), nil
	}
}

// writeRGB writes a [3, H, W] image in [−1, 1] as a PNG, atomically.
func writeRGB(path string, img data.RGB) error {
	out := image.NewRGBA(image.Rect(0, 0, img.W, img.H))
	plane := img.W * img.H
	to8 := func(v float32) uint8 { return uint8(max(0, min(255, (v+1)*127.5+0.5))) }
	for y := range img.H {
		for x := range img.W {
			i := y*img.W + x
			out.SetRGBA(x, y, color.RGBA{to8(img.Pix[i]), to8(img.Pix[plane+i]), to8(img.Pix[2*plane+i]), 255})
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".preview-*.png")
	if err != nil {
		return err
	}
	if err := png.Encode(tmp, out); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
