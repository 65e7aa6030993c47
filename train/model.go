package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// FindModel finds the NewBie-image-Exp0.1 parts a config names (the
// folder model.path and the single files model.weights, model.vae, …)
// and requires every part a run needs: all six, the DiT, the FLUX VAE,
// Gemma 3, Jina CLIP v2 and their tokenizers. It returns nil, nil when the
// config uses no real encoder (the tiny preset with neither a folder nor
// encoder files: the stand-ins). Every problem is a ConfigError naming the
// config key and the file.
func FindModel(cfg *configs.Config) (*newbie.Model, error) {
	if !cfg.Model.RealEncoders() {
		return nil, nil
	}
	m, err := newbie.Discover(cfg.Model.Path, ModelSources(cfg))
	if m != nil {
		// what is damaged and what is missing, in one message
		err = errors.Join(err, m.Require(newbie.Parts...))
	}
	if err != nil {
		return nil, configErr(fmt.Errorf("model: %w", err))
	}
	return m, nil
}

// ModelSources are the config's single files as newbie.Sources, with the
// config keys that name them for messages.
func ModelSources(cfg *configs.Config) newbie.Sources {
	md := cfg.Model
	return newbie.Sources{
		DiT: md.Weights, VAE: md.VAE, Gemma: md.Gemma, GemmaTokenizer: md.GemmaTokenizer, Jina: md.Jina, JinaTokenizer: md.JinaTokenizer,
		Keys: map[newbie.Part]string{
			newbie.PartDiT: "model.weights", newbie.PartVAE: "model.vae",
			newbie.PartGemma: "model.gemma", newbie.PartGemmaTokenizer: "model.gemma_tokenizer",
			newbie.PartJina: "model.jina", newbie.PartJinaTokenizer: "model.jina_tokenizer",
		},
	}
}

// MemoryBudget is memory_budget_gib in bytes (0: the device's free memory).
func MemoryBudget(cfg *configs.Config) int64 {
	return int64(math.Round(cfg.MemoryBudgetGiB * (1 << 30)))
}

// checkArchitectures refuses a DiT whose caption widths are not the
// encoders' (a Lumina 2 transformer beside NewBie's encoders, say): found
// now, not as a shape error at the first step.
func checkArchitectures(m *newbie.Model, mc nextdit.Config) error {
	if d := m.Gemma.Arch.HiddenSize; d != mc.CapFeatDim {
		return configErr(fmt.Errorf("model: the transformer %s reads %d-wide caption features but the Gemma 3 encoder %s gives %d", m.DiT.Path, mc.CapFeatDim, m.Gemma.Path, d))
	}
	if d := m.Jina.Arch.HiddenSize; mc.ClipTextDim > 0 && d != mc.ClipTextDim {
		return configErr(fmt.Errorf("model: the transformer %s reads a %d-wide pooled text vector but the Jina CLIP encoder %s gives %d", m.DiT.Path, mc.ClipTextDim, m.Jina.Path, d))
	}
	return nil
}

// standInNotice says what the stand-in encoders are.
const standInNotice = "encoders: stand-ins (NOT the real FLUX VAE, Gemma 3 and Jina CLIP): deterministic random projections sized for this model; give model.path for the real ones"

// standInEncoders returns the deterministic stand-in encoders sized for a
// model (the tiny preset without model.path).
func standInEncoders(c nextdit.Config) (data.ImageEncoder, data.TextEncoders) {
	text := data.NewStandInTextEncoder(c.CapFeatDim, c.ClipTextDim, 64)
	return &data.StandInVAE{}, data.TextEncoders{Features: text, Pooled: text}
}
