package pipeline

import (
	"errors"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// ErrNoRealTextEncoders is what TextEncoders returns for a full-size model.
var ErrNoRealTextEncoders = errors.New("the real text encoders (Gemma 3 4B with its tokenizer, Jina CLIP v2) are not wired in yet, so `sample` runs only the tiny model (on stand-in encoders) for now")

// standInTokens is the stand-in text encoder's token limit, the one the
// trainer's stand-in uses, so that a tiny model samples on the features it
// was trained on.
const standInTokens = 64

// TextEncoders builds the text encoders a model of architecture cfg is
// conditioned by, and says what they are. This is the one place encoders
// are constructed for sampling: today the tiny model gets the
// deterministic stand-ins the demo trains on, and every other model
// ErrNoRealTextEncoders.
func TextEncoders(cfg nextdit.Config) (data.TextEncoders, string, error) {
	tiny, _ := nextdit.Preset("tiny")
	if cfg.JSON() != tiny.JSON() {
		return data.TextEncoders{}, "", ErrNoRealTextEncoders
	}
	text := data.NewStandInTextEncoder(cfg.CapFeatDim, cfg.ClipTextDim, standInTokens)
	return data.TextEncoders{Features: text, Pooled: text}, "stand-in text encoders (NOT Gemma 3 and Jina CLIP: deterministic random projections sized for the tiny model)", nil
}
