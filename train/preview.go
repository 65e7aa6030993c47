package train

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
)

// previews renders sample.prompts with the current LoRA through the same
// pipeline as `newbie-train sample --config` (the model's own sampler, the
// section's seed for every prompt, guidance against the negative prompt),
// so `sample --config` with the saved LoRA makes the same images, and
// writes one PNG per prompt, with its settings in the parameters chunk,
// and a grid of them into <output>/<name>-previews/. With a real model the
// prompts were encoded by Gemma 3 and Jina CLIP before the DiT loaded and
// the images are decoded by the FLUX VAE, loaded for the previews and
// freed after them; with the stand-in encoders they are decoded by the
// stand-in's inverse: block colours, a view of what the latents say, not
// pictures.
// It returns the files written and how many of them are images (the rest
// is the grid).
func (r *run) previews(ctx context.Context) ([]string, int, error) {
	cfg := r.cfg
	if len(cfg.Sample.Prompts) == 0 {
		return nil, 0, nil
	}
	text, notice := pipeline.StandInTextEncoders(r.model.Config()), pipeline.StandInNotice
	var dec pipeline.Decoder = pipeline.StandInDecoder{}
	if r.found != nil {
		if r.previewText.Features == nil {
			return nil, 0, errors.New("the preview prompts were not encoded in the cache step")
		}
		text, notice = r.previewText, "Gemma 3 + Jina CLIP v2"
		v, err := pipeline.LoadVAEDecoder(r.e, r.found.VAE.Path, r.autocast)
		if err != nil {
			return nil, 0, err
		}
		defer v.Release()
		dec = v
	}
	imgs, err := pipeline.ConfigImages(cfg)
	if err != nil {
		return nil, 0, err
	}
	dir := filepath.Join(cfg.Save.Output, cfg.Save.Name+"-previews")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("previews: %w", err)
	}
	r.set.SetTraining(false) // no adapter dropout while sampling
	defer r.set.SetTraining(true)
	gen := pipeline.Generator{Model: r.model, Text: text, Decoder: dec, Autocast: r.autocast}
	settings := pipeline.ConfigSettings(cfg)
	info := pipeline.ModelInfo{
		Name: fmt.Sprintf("%s (step %d of the LoRA in training)", cfg.Save.Name, r.step), Hash: shortHash(r.baseHash),
		Precision: string(r.opt.Precision()), Encoders: notice, Decoder: dec.Name(),
	}
	var paths []string
	var rgbs []data.RGB
	first := ""
	err = gen.Generate(ctx, imgs, settings, func(res pipeline.Result) error {
		p := filepath.Join(dir, fmt.Sprintf("step%08d-%02d.png", r.step, res.Image.Index+1))
		params := pipeline.Parameters(res.Image, settings, info)
		if err := pipeline.WritePNG(p, res.RGB, params); err != nil {
			return err
		}
		if first == "" {
			first = params
		}
		paths = append(paths, p)
		rgbs = append(rgbs, res.RGB)
		return nil
	})
	if err == nil && len(rgbs) > 1 {
		p := filepath.Join(dir, fmt.Sprintf("step%08d-grid.png", r.step))
		if err = pipeline.WritePNG(p, pipeline.Grid(rgbs, 0), first); err == nil {
			paths = append(paths, p)
		}
	}
	return paths, len(rgbs), err
}

// shortHash is a content hash's first 10 hex digits (A1111's AutoV2 form).
func shortHash(h string) string { return h[:min(10, len(h))] }

// renderPreviews renders the previews and logs where they went.
func (r *run) renderPreviews(ctx context.Context) error {
	// The previews are a phase of their own in the table: the training
	// step's peak so far is kept and the counter reset around them.
	be := r.e.Backend()
	r.trainPeak = max(r.trainPeak, be.MemStats().Peak)
	be.ResetPeak()
	t0 := time.Now()
	paths, images, err := r.previews(ctx)
	r.previewTime += time.Since(t0)
	r.previewItems += images
	r.previewPeak = max(r.previewPeak, be.MemStats().Peak)
	be.ResetPeak()
	if err != nil && ctx.Err() != nil {
		// Interrupted: the loop saves a resumable state next; a half-drawn
		// preview is not worth waiting for.
		r.logf("previews at step %d stopped by the interrupt", r.step)
		return nil
	}
	if errors.Is(err, pipeline.ErrOverflow) {
		// An fp16 preview that overflows says so; it does not stop training.
		r.logf("warning: previews at step %d: %v", r.step, err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("previews at step %d: %w", r.step, err)
	}
	if len(paths) > 0 {
		r.logf("previews at step %d: %v", r.step, paths)
	}
	return nil
}
