package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// findModel finds the parts a run needs, or nil, nil when the config uses
// no real encoder (the tiny preset with neither a folder nor encoder
// files: the stand-ins); every problem is a ConfigError.
func findModel(cfg *configs.Config) (*newbie.Model, error) {
	if !cfg.Model.RealEncoders() {
		return nil, nil
	}
	m, err := FindModel(cfg.Model, ConfigKeys)
	return m, configErr(err)
}

// FindModel finds the NewBie-image-Exp0.1 parts a model section names (the
// folder path and the single files weights, vae, …) and requires all six:
// the DiT, the FLUX VAE, Gemma 3, Jina CLIP v2 and their tokenizers. What
// is damaged and what is missing come back in one error, each part named
// as keys names it.
func FindModel(md configs.Model, keys map[newbie.Part]string) (*newbie.Model, error) {
	m, err := newbie.Discover(md.Path, newbie.Sources{
		DiT: md.Weights, VAE: md.VAE, Gemma: md.Gemma, GemmaTokenizer: md.GemmaTokenizer, Jina: md.Jina, JinaTokenizer: md.JinaTokenizer,
		Keys: keys,
	})
	if m != nil {
		err = errors.Join(err, m.Require(newbie.Parts...))
	}
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	return m, nil
}

// ConfigKeys name the parts by their config keys.
var ConfigKeys = map[newbie.Part]string{
	newbie.PartDiT: "model.weights", newbie.PartVAE: "model.vae",
	newbie.PartGemma: "model.gemma", newbie.PartGemmaTokenizer: "model.gemma_tokenizer",
	newbie.PartJina: "model.jina", newbie.PartJinaTokenizer: "model.jina_tokenizer",
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
