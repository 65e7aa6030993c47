package newbie

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// The transformer's architecture comes from, in order: the weights'
// __metadata__["config"] (our own files), a config.json beside the weights
// in either spelling — upstream's constructor arguments (dim, n_layers, …)
// or diffusers' Lumina2Transformer2DModel (hidden_size, num_layers, …) —
// and otherwise the preset whose every tensor name and shape the weights
// fit (the official transformer/config.json names only its class and a few
// widths, so that is how the official folder resolves).

// ditConfig resolves the transformer's architecture and says where it came
// from.
func ditConfig(w *checkpoints.Weights, path string) (nextdit.Config, string, error) {
	if _, ok := w.Metadata()["config"]; ok {
		c, err := nextdit.ConfigFromFile(w)
		if err != nil {
			return nextdit.Config{}, "", fmt.Errorf("newbie: %s %s: %w", PartDiT.Title(), path, err)
		}
		return c, "from the weights' metadata", nil
	}
	cj := filepath.Join(ditFolder(path), "config.json")
	raw, err := os.ReadFile(cj)
	switch {
	case err == nil:
		c, ok, err := parseDiTConfigJSON(raw)
		if err != nil {
			return nextdit.Config{}, "", fmt.Errorf("newbie: %s: %w", cj, err)
		}
		if ok {
			return c, "from " + cj, nil
		}
	case !errors.Is(err, os.ErrNotExist):
		return nextdit.Config{}, "", fmt.Errorf("newbie: %w", err)
	}
	preset := nextdit.MatchPreset(w, nil)
	if preset == "custom" {
		return nextdit.Config{}, "", fmt.Errorf("newbie: %s %s carries no architecture (no config metadata, no config.json with its sizes) and fits no preset (%s); give its config",
			PartDiT.Title(), path, strings.Join(presetNames(), ", "))
	}
	c, _ := nextdit.Preset(preset)
	return c, fmt.Sprintf("the %s preset, which its tensor shapes fit", preset), nil
}

// ditFolder is the folder a DiT source's config.json would sit in.
func ditFolder(path string) string {
	if isDir(path) {
		if sub := filepath.Join(path, "transformer"); isDir(sub) {
			return sub
		}
		return path
	}
	return filepath.Dir(path)
}

// presetNames lists the presets, sorted.
func presetNames() []string {
	var out []string
	for n := range nextdit.Presets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// parseDiTConfigJSON reads a transformer config.json: upstream spelling
// (it has "dim") or diffusers' (it has "hidden_size"). ok is false for a
// config.json that holds no sizes (the official one names its class).
func parseDiTConfigJSON(raw []byte) (nextdit.Config, bool, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return nextdit.Config{}, false, err
	}
	if _, ok := keys["dim"]; ok {
		c, err := nextdit.ParseConfig(string(raw))
		return c, true, err
	}
	if _, ok := keys["hidden_size"]; !ok {
		return nextdit.Config{}, false, nil
	}
	var d struct {
		PatchSize        int      `json:"patch_size"`
		InChannels       int      `json:"in_channels"`
		HiddenSize       int      `json:"hidden_size"`
		NumLayers        int      `json:"num_layers"`
		NumRefinerLayers int      `json:"num_refiner_layers"`
		NumHeads         int      `json:"num_attention_heads"`
		NumKVHeads       int      `json:"num_kv_heads"`
		MultipleOf       int      `json:"multiple_of"`
		FFNDimMultiplier *float64 `json:"ffn_dim_multiplier"`
		NormEps          float64  `json:"norm_eps"`
		AxesDimRope      []int    `json:"axes_dim_rope"`
		AxesLens         []int    `json:"axes_lens"`
		CapFeatDim       int      `json:"cap_feat_dim"`
		ClipTextDim      int      `json:"clip_text_dim"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return nextdit.Config{}, false, err
	}
	c := nextdit.Config{
		PatchSize: d.PatchSize, InChannels: d.InChannels, Dim: d.HiddenSize, NLayers: d.NumLayers,
		NRefinerLayers: d.NumRefinerLayers, NHeads: d.NumHeads, NKVHeads: d.NumKVHeads, MultipleOf: d.MultipleOf,
		FFNDimMultiplier: d.FFNDimMultiplier, NormEps: d.NormEps, QKNorm: true, CapFeatDim: d.CapFeatDim,
		AxesDims: d.AxesDimRope, AxesLens: d.AxesLens, ClipTextDim: d.ClipTextDim,
	}
	if err := c.Validate(); err != nil {
		return nextdit.Config{}, false, fmt.Errorf("as a diffusers Lumina2Transformer2DModel config: %w", err)
	}
	return c, true, nil
}

// diffusersDiTConfig is c in diffusers' Lumina2Transformer2DModel spelling
// (with NewBie's clip_text_dim), as a diffusers transformer/config.json
// holds it; parseDiTConfigJSON reads it back.
func diffusersDiTConfig(c nextdit.Config) map[string]any {
	return map[string]any{
		"_class_name": "Lumina2Transformer2DModel", "_diffusers_version": "0.36.0.dev0",
		"sample_size": 128, "patch_size": c.PatchSize, "in_channels": c.InChannels, "out_channels": nil,
		"hidden_size": c.Dim, "num_layers": c.NLayers, "num_refiner_layers": c.NRefinerLayers,
		"num_attention_heads": c.NHeads, "num_kv_heads": c.NKVHeads, "multiple_of": c.MultipleOf,
		"ffn_dim_multiplier": c.FFNDimMultiplier, "norm_eps": c.NormEps, "scaling_factor": 1.0,
		"axes_dim_rope": c.AxesDims, "axes_lens": c.AxesLens, "cap_feat_dim": c.CapFeatDim,
		"clip_text_dim": c.ClipTextDim,
	}
}
