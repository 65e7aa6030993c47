package textenc

import (
	"encoding/json"
	"fmt"
	"slices"
)

// JinaConfig is the architecture of Jina's XLM-RoBERTa text tower (the
// fields of Jina's XLMRobertaFlashConfig the forward reads) and of its
// stacked LoRA adaptations.
type JinaConfig struct {
	VocabSize        int
	HiddenSize       int
	NumLayers        int
	NumHeads         int
	IntermediateSize int
	// MaxPositions bounds the sequence length (max_position_embeddings;
	// rotary positions need no table, but the model was made for this).
	MaxPositions  int
	TypeVocabSize int
	LayerNormEps  float64
	RotaryBase    float64
	// Adaptations names the LoRA adaptations in the order lora_A and
	// lora_B stack them in dim 0; DefaultTask is the one used when the
	// caller names none.
	Adaptations []string
	DefaultTask string
	LoRARank    int
	LoRAAlpha   float64
}

// HeadDim is the size of one attention head.
func (c JinaConfig) HeadDim() int { return c.HiddenSize / c.NumHeads }

// LoRAScale is the adapters' alpha/rank.
func (c JinaConfig) LoRAScale() float64 { return c.LoRAAlpha / float64(c.LoRARank) }

// TaskIndex is the position of a LoRA adaptation in dim 0 of lora_A and
// lora_B, as XLMRobertaLoRA's _adaptation_map gives it.
func (c JinaConfig) TaskIndex(task string) (int, error) {
	i := slices.Index(c.Adaptations, task)
	if i < 0 {
		return 0, fmt.Errorf("textenc: LoRA task %q is not one of the model's adaptations %q", task, c.Adaptations)
	}
	return i, nil
}

// JinaCLIPv2Config is jina-clip-v2's text tower: jina-embeddings-v3's
// XLM-RoBERTa, which jina-clip-v2's text config loads
// (hf_model_name_or_path) and whose default_lora_task is retrieval.query.
// The values are jina-embeddings-v3's config.json (a copy is in
// github.com/aoncevay/jina-wrapper, jina-embeddings-v3/config.json): 24
// layers, hidden 1024, 16 heads, intermediate 4096, vocab 250002,
// max_position_embeddings 8194, type_vocab_size 1, layer_norm_eps 1e-5,
// rotary_emb_base 20000, hidden_act "gelu", lora_adaptations
// [retrieval.query, retrieval.passage, separation, classification,
// text-matching], lora_rank 4, lora_alpha 1 (XLMRobertaFlashConfig's
// defaults for rank and alpha too): so the adapter scale is 1/4.
func JinaCLIPv2Config() JinaConfig {
	return JinaConfig{
		VocabSize: 250002, HiddenSize: 1024, NumLayers: 24, NumHeads: 16, IntermediateSize: 4096,
		MaxPositions: 8194, TypeVocabSize: 1, LayerNormEps: 1e-5, RotaryBase: 20000,
		Adaptations: []string{"retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"},
		DefaultTask: "retrieval.query", LoRARank: 4, LoRAAlpha: 1,
	}
}

// Validate reports the first field that cannot describe a model this
// package runs.
func (c JinaConfig) Validate() error {
	for _, p := range []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"num_hidden_layers", c.NumLayers},
		{"num_attention_heads", c.NumHeads}, {"intermediate_size", c.IntermediateSize},
		{"max_position_embeddings", c.MaxPositions}, {"type_vocab_size", c.TypeVocabSize}, {"lora_rank", c.LoRARank},
	} {
		if p.v <= 0 {
			return fmt.Errorf("textenc: Jina config %s = %d must be positive", p.name, p.v)
		}
	}
	if c.HiddenSize%c.NumHeads != 0 {
		return fmt.Errorf("textenc: Jina config hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumHeads)
	}
	if d := c.HeadDim(); d%2 != 0 || d > 256 {
		return fmt.Errorf("textenc: Jina config head size %d must be even and at most 256 (the attention kernel's limit)", d)
	}
	if !(c.LayerNormEps > 0) || !(c.RotaryBase > 0) || !(c.LoRAAlpha > 0) {
		return fmt.Errorf("textenc: Jina config layer_norm_eps %g, rotary_emb_base %g and lora_alpha %g must be positive", c.LayerNormEps, c.RotaryBase, c.LoRAAlpha)
	}
	if len(c.Adaptations) == 0 {
		return fmt.Errorf("textenc: Jina config has no lora_adaptations")
	}
	if _, err := c.TaskIndex(c.DefaultTask); err != nil {
		return fmt.Errorf("%w (default_lora_task)", err)
	}
	return nil
}

// rawJina holds the JSON fields of an XLMRobertaFlashConfig (our golden
// files' __metadata__["config"], jina-embeddings-v3's config.json) or of a
// JinaCLIPConfig (jina-clip-v2's config.json), whose text_config names the
// default task and passes hf_model_config_kwargs over the XLM-RoBERTa's own
// config. Pointers tell absent fields from zeros.
type rawJina struct {
	TextConfig *rawJina        `json:"text_config"`
	Kwargs     json.RawMessage `json:"hf_model_config_kwargs"`

	VocabSize        *int     `json:"vocab_size"`
	HiddenSize       *int     `json:"hidden_size"`
	NumLayers        *int     `json:"num_hidden_layers"`
	NumHeads         *int     `json:"num_attention_heads"`
	IntermediateSize *int     `json:"intermediate_size"`
	MaxPositions     *int     `json:"max_position_embeddings"`
	TypeVocabSize    *int     `json:"type_vocab_size"`
	LayerNormEps     *float64 `json:"layer_norm_eps"`
	RotaryBase       *float64 `json:"rotary_emb_base"`
	RotaryDim        *float64 `json:"rotary_emb_dim"`
	HiddenAct        *string  `json:"hidden_act"`
	PositionType     *string  `json:"position_embedding_type"`
	Adaptations      []string `json:"lora_adaptations"`
	DefaultTask      *string  `json:"default_lora_task"`
	LoRARank         *int     `json:"lora_rank"`
	LoRAAlpha        *float64 `json:"lora_alpha"`
}

// ParseJinaConfig reads a Jina text tower's config from JSON: an
// XLMRobertaFlashConfig (jina-embeddings-v3's config.json, our golden
// files' metadata) or jina-clip-v2's config.json, whose text_config gives
// the default task and hf_model_config_kwargs. Fields the JSON leaves out
// take jina-clip-v2's values (JinaCLIPv2Config): jina-clip-v2's own
// config.json holds none of the XLM-RoBERTa's sizes, which come from
// jina-embeddings-v3.
func ParseJinaConfig(js string) (JinaConfig, error) {
	var r rawJina
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return JinaConfig{}, fmt.Errorf("textenc: Jina config JSON: %w", err)
	}
	if t := r.TextConfig; t != nil {
		r = *t
	}
	if r.Kwargs != nil {
		// Only the fields present in the kwargs change.
		if err := json.Unmarshal(r.Kwargs, &r); err != nil {
			return JinaConfig{}, fmt.Errorf("textenc: Jina config hf_model_config_kwargs: %w", err)
		}
	}
	if r.HiddenAct != nil && *r.HiddenAct != "gelu" {
		return JinaConfig{}, fmt.Errorf("textenc: Jina config hidden_act %q is not supported (only gelu, the exact erf GELU)", *r.HiddenAct)
	}
	if r.PositionType != nil && *r.PositionType != "rotary" {
		return JinaConfig{}, fmt.Errorf("textenc: Jina config position_embedding_type %q is not supported (only rotary)", *r.PositionType)
	}
	d := JinaCLIPv2Config()
	c := JinaConfig{
		VocabSize: orInt(r.VocabSize, d.VocabSize), HiddenSize: orInt(r.HiddenSize, d.HiddenSize),
		NumLayers: orInt(r.NumLayers, d.NumLayers), NumHeads: orInt(r.NumHeads, d.NumHeads),
		IntermediateSize: orInt(r.IntermediateSize, d.IntermediateSize), MaxPositions: orInt(r.MaxPositions, d.MaxPositions),
		TypeVocabSize: orInt(r.TypeVocabSize, d.TypeVocabSize), LayerNormEps: orFloat(r.LayerNormEps, d.LayerNormEps),
		RotaryBase: orFloat(r.RotaryBase, d.RotaryBase), Adaptations: d.Adaptations, DefaultTask: d.DefaultTask,
		LoRARank: orInt(r.LoRARank, d.LoRARank), LoRAAlpha: orFloat(r.LoRAAlpha, d.LoRAAlpha),
	}
	if r.Adaptations != nil {
		c.Adaptations = r.Adaptations
	}
	if r.DefaultTask != nil {
		c.DefaultTask = *r.DefaultTask
	}
	if r.RotaryDim != nil && int(*r.RotaryDim) != c.HeadDim() {
		return JinaConfig{}, fmt.Errorf("textenc: Jina config rotary_emb_dim %g is not supported (rotary over the whole head of %d only)", *r.RotaryDim, c.HeadDim())
	}
	return c, c.Validate()
}

// JSON is the config in XLMRobertaFlashConfig's field names, as a weights
// file's __metadata__["config"] carries it.
func (c JinaConfig) JSON() string {
	js, _ := json.Marshal(map[string]any{
		"vocab_size": c.VocabSize, "hidden_size": c.HiddenSize, "num_hidden_layers": c.NumLayers,
		"num_attention_heads": c.NumHeads, "intermediate_size": c.IntermediateSize,
		"max_position_embeddings": c.MaxPositions, "type_vocab_size": c.TypeVocabSize,
		"layer_norm_eps": c.LayerNormEps, "rotary_emb_base": c.RotaryBase, "hidden_act": "gelu",
		"position_embedding_type": "rotary", "lora_adaptations": c.Adaptations, "default_lora_task": c.DefaultTask,
		"lora_rank": c.LoRARank, "lora_alpha": c.LoRAAlpha,
	})
	return string(js)
}
