package train

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/newbie-train/newbie-train/sampler/pipeline"
)

// previews renders sample.prompts with the current LoRA through the same
// pipeline as `newbie-train sample --config` (the model's own sampler, the
// section's seed for every prompt, guidance against the negative prompt),
// so `sample --config` with the saved LoRA makes the same images, and
// writes one PNG per prompt, with its settings in the parameters chunk,
// into <output>/<name>-previews/. With the stand-in encoders the images are
// decoded by the stand-in's inverse: block colours, a view of what the
// latents say, not pictures.
func (r *run) previews(ctx context.Context) ([]string, error) {
	cfg := r.cfg
	if len(cfg.Sample.Prompts) == 0 {
		return nil, nil
	}
	text, notice, err := pipeline.TextEncoders(r.model.Config())
	if err != nil {
		return nil, err
	}
	imgs, err := pipeline.ConfigImages(cfg)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.Save.Output, cfg.Save.Name+"-previews")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("previews: %w", err)
	}
	r.set.SetTraining(false) // no adapter dropout while sampling
	defer r.set.SetTraining(true)
	dec := pipeline.StandInDecoder{}
	gen := pipeline.Generator{Model: r.model, Text: text, Decoder: dec, Autocast: r.autocast}
	settings := pipeline.ConfigSettings(cfg)
	info := pipeline.ModelInfo{
		Name: fmt.Sprintf("%s (step %d of the LoRA in training)", cfg.Save.Name, r.step), Hash: shortHash(r.baseHash),
		Precision: string(r.opt.Precision()), Encoders: notice, Decoder: dec.Name(),
	}
	var paths []string
	err = gen.Generate(ctx, imgs, settings, func(res pipeline.Result) error {
		p := filepath.Join(dir, fmt.Sprintf("step%08d-%02d.png", r.step, res.Image.Index+1))
		if err := pipeline.WritePNG(p, res.RGB, pipeline.Parameters(res.Image, settings, info)); err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	return paths, err
}

// shortHash is a content hash's first 10 hex digits (A1111's AutoV2 form).
func shortHash(h string) string { return h[:min(10, len(h))] }

// renderPreviews renders the previews and logs where they went.
func (r *run) renderPreviews(ctx context.Context) error {
	paths, err := r.previews(ctx)
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
