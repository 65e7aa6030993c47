package newbie

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
)

// EncodePhases runs the cache step's three phases over n generated images
// of side×side pixels (SampleImage) and their captions (SampleCaption):
// the VAE over the images, Gemma 3 over the captions behind NewBie's
// system prompt, Jina CLIP over the raw captions, one phase after the
// other, each freed before the next. It returns the phases' statistics
// and the truncation counts: the numbers the device run's table prints.
func EncodePhases(ctx context.Context, e *ag.Engine, m *Model, o Options, n, side int) ([]PhaseStats, []Truncations, error) {
	o.MaxImagePixels = max(o.MaxImagePixels, side*side)
	p, err := NewPipeline(e, m, o)
	if err != nil {
		return nil, nil, err
	}
	batch := max(p.o.ImageBatch, 1)
	err = p.WithVAE(func(enc data.ImageEncoder) error {
		for start := 0; start < n; start += batch {
			imgs := make([]data.RGB, 0, batch)
			for i := start; i < min(start+batch, n); i++ {
				imgs = append(imgs, SampleImage(i, side, side))
			}
			if _, err := enc.EncodeImages(ctx, imgs); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	captions := make([]string, n)
	features := make([]string, n)
	for i := range captions {
		captions[i] = SampleCaption(i)
		features[i] = data.FeatureText(data.GemmaSystemPrompt, captions[i])
	}
	if err := p.WithGemma(func(enc data.TextEncoder) error { _, err := enc.EncodeTexts(ctx, features); return err }); err != nil {
		return nil, nil, err
	}
	if err := p.WithJina(func(enc data.TextEncoder) error { _, err := enc.EncodeTexts(ctx, captions); return err }); err != nil {
		return nil, nil, err
	}
	return p.Phases(), p.Truncations(), nil
}

// WritePhaseTable prints phases as a table: time to load and to encode,
// throughput, the plan's estimate made before the phase (for the largest
// batch the options allow), the same estimate for the largest batch that
// ran, the measured peak (all above what the device held before), their
// ratio, and what the allocator reserved.
func WritePhaseTable(w io.Writer, phases []PhaseStats) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\titems\tload s\tencode s\titems/s\tplan GiB\testimate GiB\tpeak GiB\testimate/peak\treserved GiB\t")
	gib := func(n int64) string { return fmt.Sprintf("%.3f", float64(n)/(1<<30)) }
	for _, ph := range phases {
		used := ph.Peak - ph.Base
		rate, ratio := 0.0, 0.0
		if ph.Run > 0 {
			rate = float64(ph.Items) / ph.Run.Seconds()
		}
		if used > 0 {
			ratio = float64(ph.Largest.Total) / float64(used)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.1f\t%s\t%s\t%s\t%.3f\t%s\t\n", ph.Estimate.Phase, ph.Items, ph.Load.Seconds(), ph.Run.Seconds(),
			rate, gib(ph.Estimate.Total), gib(ph.Largest.Total), gib(used), ratio, gib(ph.Reserved))
	}
	return tw.Flush()
}
