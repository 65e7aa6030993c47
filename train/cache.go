package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
)

// cacheStep is the encode cache of a run or of `newbie-train cache`: the
// dataset through the image encoder and both text encoders, either the
// real ones of a found model — one at a time on the engine, freed before
// the DiT loads — or the stand-ins.
type cacheStep struct {
	cfg   *configs.Config
	ds    *data.Dataset
	mc    nextdit.Config
	found *newbie.Model // nil: the stand-ins
	e     *ag.Engine    // the real encoders' engine (unused by the stand-ins)
	log   io.Writer
	// previews, when set, are encoded too (sample.prompts, before the DiT
	// is loaded) and answered from memory afterwards.
	previews []pipeline.Image
	system   string
}

// cacheResult is what the cache step leaves the run.
type cacheResult struct {
	encoded *data.Encoded
	// previewText answers the previews' texts (nil Features without
	// previews or with the stand-ins, which are cheap to call again).
	previewText data.TextEncoders
	// phases are the real encoders' phases, in order; stats what the
	// cache build did.
	phases []newbie.PhaseStats
	stats  data.CacheStats
}

// run fills the cache with progress and an ETA, and with the real encoders
// logs each phase's time and peak.
func (s cacheStep) run(ctx context.Context) (*cacheResult, error) {
	res := &cacheResult{}
	var vae data.ImageEncoder
	var text data.TextEncoders
	var p *newbie.Pipeline
	if s.found == nil {
		fmt.Fprintln(s.log, "encoders: the stand-in VAE and "+pipeline.StandInNotice+"; give model.path for the real ones")
		vae, text = &data.StandInVAE{}, pipeline.StandInTextEncoders(s.mc)
	} else {
		b := largestBucket(s.ds)
		var err error
		p, err = newbie.NewPipeline(s.e, s.found, newbie.Options{MaxImagePixels: b.W * b.H, Budget: MemoryBudget(s.cfg), Log: s.log})
		if err != nil {
			return nil, err
		}
		for _, part := range []newbie.Part{newbie.PartVAE, newbie.PartGemma, newbie.PartJina} {
			fmt.Fprintf(s.log, "encoders: %s %s (%s)\n", part.Title(), p.Identity(part), describePart(s.found, part))
		}
		vae, text = p.ImageEncoder(), p.TextEncoders()
	}
	// The previews' prompts ride along the cache's first call to each real
	// encoder, so no encoder is loaded again for them.
	var ride [2]*alongside
	if p != nil && len(s.previews) > 0 {
		feat, pool := pipeline.PromptTexts(s.system, s.previews)
		ride = [2]*alongside{{TextEncoder: text.Features, extra: feat}, {TextEncoder: text.Pooled, extra: pool}}
		text = data.TextEncoders{Features: ride[0], Pooled: ride[1]}
	}
	last := time.Time{}
	builder := data.CacheBuilder{
		VAE: vae, Text: text,
		Progress: func(pr data.Progress) {
			if time.Since(last) > 2*time.Second || pr.Done == pr.Total {
				last = time.Now()
				fmt.Fprintln(s.log, pr)
			}
		},
		Warn: func(w string) { fmt.Fprintln(s.log, "warning:", w) },
	}
	encoded, stats, err := builder.Build(ctx, s.ds)
	if err == nil && p != nil && len(s.previews) > 0 {
		// What rode along is answered from memory; what did not (every
		// caption was cached) is encoded now.
		res.previewText, err = pipeline.PrepareTexts(ctx, text, s.system, s.previews, s.mc.ClipTextDim)
		if err != nil {
			err = fmt.Errorf("previews: %w", err)
		}
	}
	if p != nil {
		err = errors.Join(err, p.Close())
		for _, t := range p.Truncations() {
			if w := t.Warning(); w != "" {
				fmt.Fprintln(s.log, "warning:", w)
			}
		}
		res.phases = p.Phases()
	}
	if err != nil {
		return nil, err
	}
	res.encoded = encoded
	res.stats = stats
	fmt.Fprintf(s.log, "encode cache %s: %d latents encoded, %d reused; %d caption features encoded, %d reused; %d pooled encoded, %d reused; %d damaged entries re-encoded\n",
		s.cfg.Data.Cache, stats.LatentsEncoded, stats.LatentsReused, stats.FeaturesEncoded, stats.FeaturesReused, stats.PooledEncoded, stats.PooledReused, len(stats.Damaged))
	return res, nil
}

// largestBucket is the dataset's bucket of the most pixels, what the
// memory plans assume.
func largestBucket(ds *data.Dataset) data.Bucket {
	var b data.Bucket
	for _, it := range ds.Items {
		if it.Bucket.W*it.Bucket.H > b.W*b.H {
			b = it.Bucket
		}
	}
	return b
}

// alongside is a text encoder whose first call also encodes extra texts
// (one load of a real encoder serves both) and which then answers those
// from memory.
type alongside struct {
	data.TextEncoder
	extra []string
	got   map[string]data.TextEncoding
}

// EncodeTexts implements data.TextEncoder.
func (a *alongside) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	if a.got == nil && len(a.extra) > 0 {
		all := append([]string(nil), texts...)
		for _, t := range a.extra {
			if !slices.Contains(texts, t) {
				all = append(all, t)
			}
		}
		es, err := a.TextEncoder.EncodeTexts(ctx, all)
		if err != nil {
			return nil, err
		}
		if len(es) != len(all) {
			return nil, fmt.Errorf("%s returned %d encodings for %d texts", a.Identity(), len(es), len(all))
		}
		a.got = map[string]data.TextEncoding{}
		for i, t := range all {
			a.got[t] = es[i]
		}
		return es[:len(texts)], nil
	}
	out := make([]data.TextEncoding, len(texts))
	var rest []string
	var at []int
	for i, t := range texts {
		if e, ok := a.got[t]; ok {
			out[i] = e
		} else {
			rest, at = append(rest, t), append(at, i)
		}
	}
	if len(rest) == 0 {
		return out, nil
	}
	es, err := a.TextEncoder.EncodeTexts(ctx, rest)
	if err != nil {
		return nil, err
	}
	if len(es) != len(rest) {
		return nil, fmt.Errorf("%s returned %d encodings for %d texts", a.Identity(), len(es), len(rest))
	}
	for j, i := range at {
		out[i] = es[j]
	}
	return out, nil
}

// describePart is a found part's file, layout and dtype for the log.
func describePart(m *newbie.Model, part newbie.Part) string {
	w := m.PartWeights(part)
	return fmt.Sprintf("%s, %s, %s, %s", w.Path, w.Format, w.DType(), bytesText(w.FileBytes))
}

// Phase is one phase of a run as the phase table reports it: a real
// encoder's pass over the dataset, the training steps, the previews.
type Phase struct {
	Name string
	// Items are the images, texts or steps done; Time the phase's wall
	// time (an encoder's load included).
	Items int
	Time  time.Duration
	// Peak is the allocator's peak during the phase; Estimate what the
	// plan predicted before it (0 when not planned).
	Peak, Estimate int64
}

// encoderPhases turns the pipeline's phases into the table's rows, one
// per encoder: a second load of an encoder (the previews' prompts after
// the dataset's captions) adds to its row.
func encoderPhases(ps []newbie.PhaseStats) []Phase {
	var out []Phase
	row := map[string]int{}
	for _, p := range ps {
		name := p.Estimate.Phase
		i, ok := row[name]
		if !ok {
			i, row[name] = len(out), len(out)
			out = append(out, Phase{Name: name})
		}
		r := &out[i]
		r.Items += p.Items
		r.Time += p.Load + p.Run
		r.Peak = max(r.Peak, p.Peak)
		r.Estimate = max(r.Estimate, p.Estimate.Total+p.Base)
	}
	return out
}

// PhaseTable formats phases as the run prints them at its end. The peak
// is the backend allocator's (the GPU's memory on CUDA).
func PhaseTable(ps []Phase) string {
	var b []byte
	b = fmt.Appendf(b, "%-14s %8s %10s %12s %12s\n", "phase", "items", "time", "peak memory", "planned")
	for _, p := range ps {
		est := "-"
		if p.Estimate > 0 {
			est = bytesText(p.Estimate)
		}
		b = fmt.Appendf(b, "%-14s %8d %9.1fs %12s %12s\n", p.Name, p.Items, p.Time.Seconds(), bytesText(p.Peak), est)
	}
	return string(b)
}
