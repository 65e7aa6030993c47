package pipeline

import (
	"context"
	"fmt"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// standInTokens is the stand-in text encoder's token limit, the same for
// training and sampling, so a model trained on the stand-ins samples on the
// features it was trained on.
const standInTokens = 64

// StandInNotice says what the stand-in encoders are, for logs and a PNG's
// parameters.
const StandInNotice = "stand-in text encoders (NOT Gemma 3 and Jina CLIP: deterministic random projections sized for the model)"

// StandInTextEncoders are the deterministic stand-ins for Gemma 3 and Jina
// CLIP sized for a model of architecture cfg: what the tiny preset trains
// and samples on without a model folder.
func StandInTextEncoders(cfg nextdit.Config) data.TextEncoders {
	text := data.NewStandInTextEncoder(cfg.CapFeatDim, cfg.ClipTextDim, standInTokens)
	return data.TextEncoders{Features: text, Pooled: text}
}

// PrepareTexts encodes every text the images will ask the encoders for —
// each prompt and negative prompt behind system for the features, bare for
// the pooled vector, as Encode asks — with all the feature texts in one
// call and then all the pooled ones, and returns encoders that answer
// those texts from memory. The real encoders hold one model on the device
// at a time, so a caller prepares the texts before loading the DiT and
// frees the encoders, and sampling never reloads one. pooledDim 0 skips
// the pooled encoder, as Encode does.
func PrepareTexts(ctx context.Context, enc data.TextEncoders, system string, imgs []Image, pooledDim int) (data.TextEncoders, error) {
	feat, pool := PromptTexts(system, imgs)
	out := data.TextEncoders{}
	var err error
	if out.Features, err = prepared(ctx, enc.Features, feat); err != nil {
		return data.TextEncoders{}, fmt.Errorf("pipeline: caption features: %w", err)
	}
	if pooledDim == 0 {
		out.Pooled = preparedTexts{identity: enc.Pooled.Identity()}
		return out, nil
	}
	if out.Pooled, err = prepared(ctx, enc.Pooled, pool); err != nil {
		return data.TextEncoders{}, fmt.Errorf("pipeline: pooled text: %w", err)
	}
	return out, nil
}

// PromptTexts are the distinct texts the images ask the encoders for: the
// feature encoder's (each prompt and negative behind system, by
// FeatureTexts) and the pooled encoder's (the bare texts), in first-use
// order.
func PromptTexts(system string, imgs []Image) (feat, pool []string) {
	seenF, seenP := map[string]bool{}, map[string]bool{}
	for _, im := range imgs {
		cond, uncond := FeatureTexts(system, im.Prompt, im.Negative)
		for _, t := range []string{cond, uncond} {
			if !seenF[t] {
				seenF[t] = true
				feat = append(feat, t)
			}
		}
		for _, t := range []string{data.PooledText(im.Prompt), data.PooledText(im.Negative)} {
			if !seenP[t] {
				seenP[t] = true
				pool = append(pool, t)
			}
		}
	}
	return feat, pool
}

// prepared encodes texts with enc in one call and keeps the results.
func prepared(ctx context.Context, enc data.TextEncoder, texts []string) (preparedTexts, error) {
	p := preparedTexts{identity: enc.Identity(), known: map[string]data.TextEncoding{}}
	es, err := enc.EncodeTexts(ctx, texts)
	if err != nil {
		return p, err
	}
	if len(es) != len(texts) {
		return p, fmt.Errorf("%s returned %d encodings for %d texts", enc.Identity(), len(es), len(texts))
	}
	for i, t := range texts {
		p.known[t] = es[i]
	}
	return p, nil
}

// preparedTexts answers the texts PrepareTexts encoded.
type preparedTexts struct {
	identity string
	known    map[string]data.TextEncoding
}

// Identity implements data.TextEncoder: the encoder the texts came from.
func (p preparedTexts) Identity() string { return p.identity }

// EncodeTexts implements data.TextEncoder.
func (p preparedTexts) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	out := make([]data.TextEncoding, len(texts))
	for i, t := range texts {
		e, ok := p.known[t]
		if !ok {
			return nil, fmt.Errorf("pipeline: %q was not among the texts encoded before the model was loaded", t)
		}
		out[i] = e
	}
	return out, nil
}
