package textenc

import (
	"encoding/json"
	"fmt"
	"math"
)

// Layer types, as transformers spells them in config.layer_types.
const (
	SlidingAttention = "sliding_attention"
	FullAttention    = "full_attention"
)

// Rope is the rotary embedding of one layer type: inverse frequencies
// Theta^(−2i/head_dim), divided by Factor (linear scaling; 1 for none).
type Rope struct {
	Theta  float64
	Factor float64
}

// Config is the architecture of a Gemma 3 text model (transformers'
// Gemma3TextConfig, the fields the forward reads).
type Config struct {
	VocabSize          int
	HiddenSize         int
	IntermediateSize   int
	NumLayers          int
	NumHeads           int
	NumKVHeads         int
	HeadDim            int
	RMSNormEps         float64
	QueryPreAttnScalar float64
	SlidingWindow      int
	// LayerTypes gives each layer's attention: SlidingAttention or
	// FullAttention.
	LayerTypes []string
	// LocalRope is used by sliding-window layers, GlobalRope by full ones.
	LocalRope, GlobalRope Rope
}

// Validate reports the first field that cannot describe a model this
// package runs.
func (c Config) Validate() error {
	pos := []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumLayers}, {"num_attention_heads", c.NumHeads},
		{"num_key_value_heads", c.NumKVHeads}, {"head_dim", c.HeadDim}, {"sliding_window", c.SlidingWindow},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("textenc: config %s = %d must be positive", p.name, p.v)
		}
	}
	if c.NumHeads%c.NumKVHeads != 0 {
		return fmt.Errorf("textenc: config num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumHeads, c.NumKVHeads)
	}
	if c.HeadDim%2 != 0 || c.HeadDim > 256 {
		return fmt.Errorf("textenc: config head_dim %d must be even and at most 256 (the attention kernel's limit)", c.HeadDim)
	}
	if !(c.RMSNormEps > 0) || !(c.QueryPreAttnScalar > 0) {
		return fmt.Errorf("textenc: config rms_norm_eps %g and query_pre_attn_scalar %g must be positive", c.RMSNormEps, c.QueryPreAttnScalar)
	}
	if len(c.LayerTypes) != c.NumLayers {
		return fmt.Errorf("textenc: config has %d layer_types for %d layers", len(c.LayerTypes), c.NumLayers)
	}
	for i, t := range c.LayerTypes {
		if t != SlidingAttention && t != FullAttention {
			return fmt.Errorf("textenc: config layer_types[%d] = %q is neither %q nor %q", i, t, SlidingAttention, FullAttention)
		}
	}
	for _, r := range []Rope{c.LocalRope, c.GlobalRope} {
		if !(r.Theta > 0) || !(r.Factor > 0) {
			return fmt.Errorf("textenc: config RoPE base %g and factor %g must be positive", r.Theta, r.Factor)
		}
	}
	return nil
}

// Sliding reports whether layer i uses sliding-window attention.
func (c Config) Sliding(i int) bool { return c.LayerTypes[i] == SlidingAttention }

// Gemma4BConfig is Gemma 3 4B's text model, the one NewBie conditions on,
// and what Load uses for a checkpoint that carries no config (ComfyUI's
// gemma_3_4b files). google/gemma-3-4b-it's config.json sets hidden 2560,
// MLP 10240, 34 layers, a 1024 sliding window and linear RoPE scaling ×8 in
// its text_config; transformers' Gemma3TextConfig defaults give the rest
// (8 heads, 4 kv heads, head_dim 256, vocab 262208, query_pre_attn_scalar
// 256, RMSNorm eps 1e-6, global base 1e6, local base 1e4, every sixth layer
// global). ComfyUI's Gemma3_4B_Config (comfy/text_encoders/llama.py) spells
// out the same values. TestParseConfig parses that config.json to this.
func Gemma4BConfig() Config {
	c := Config{
		VocabSize: 262208, HiddenSize: 2560, IntermediateSize: 10240, NumLayers: 34,
		NumHeads: 8, NumKVHeads: 4, HeadDim: 256, RMSNormEps: 1e-6, QueryPreAttnScalar: 256,
		SlidingWindow: 1024, LocalRope: Rope{Theta: 1e4, Factor: 1}, GlobalRope: Rope{Theta: 1e6, Factor: 8},
	}
	c.LayerTypes = make([]string, c.NumLayers)
	for i := range c.LayerTypes {
		c.LayerTypes[i] = SlidingAttention
		if (i+1)%6 == 0 {
			c.LayerTypes[i] = FullAttention
		}
	}
	return c
}

// rawConfig holds the JSON fields of either a Gemma3TextConfig or a
// multimodal Gemma3Config (whose text_config holds the text fields), in
// both the transformers 5 spelling (rope_parameters per layer type) and the
// 4.x one (rope_theta, rope_local_base_freq, rope_scaling,
// sliding_window_pattern). Pointers tell absent fields from zeros.
type rawConfig struct {
	TextConfig *rawConfig `json:"text_config"`
	ModelType  string     `json:"model_type"`

	VocabSize          *int     `json:"vocab_size"`
	HiddenSize         *int     `json:"hidden_size"`
	IntermediateSize   *int     `json:"intermediate_size"`
	NumLayers          *int     `json:"num_hidden_layers"`
	NumHeads           *int     `json:"num_attention_heads"`
	NumKVHeads         *int     `json:"num_key_value_heads"`
	HeadDim            *int     `json:"head_dim"`
	RMSNormEps         *float64 `json:"rms_norm_eps"`
	QueryPreAttnScalar *float64 `json:"query_pre_attn_scalar"`
	SlidingWindow      *int     `json:"sliding_window"`
	LayerTypes         []string `json:"layer_types"`
	HiddenActivation   *string  `json:"hidden_activation"`
	HiddenAct          *string  `json:"hidden_act"`
	AttnSoftcap        *float64 `json:"attn_logit_softcapping"`
	Bidirectional      *bool    `json:"use_bidirectional_attention"`
	AttentionBias      *bool    `json:"attention_bias"`

	RopeParameters    map[string]json.RawMessage `json:"rope_parameters"`
	RopeTheta         *float64                   `json:"rope_theta"`
	RopeLocalBase     *float64                   `json:"rope_local_base_freq"`
	RopeScaling       *rawRope                   `json:"rope_scaling"`
	SlidingPattern    *int                       `json:"sliding_window_pattern"`
	SlidingPatternOld *int                       `json:"_sliding_window_pattern"`
}

// rawRope is one RoPE parameter set (rope_parameters[type] or rope_scaling).
type rawRope struct {
	RopeType  string   `json:"rope_type"`
	Type      string   `json:"type"` // older spelling of rope_type
	RopeTheta *float64 `json:"rope_theta"`
	Factor    *float64 `json:"factor"`
}

// ParseConfig reads a Gemma 3 config from JSON: a text config (the
// __metadata__["config"] our golden files carry, a Gemma3ForCausalLM
// config.json) or a multimodal Gemma3ForConditionalGeneration config.json,
// whose text_config is used. Fields a file leaves out take transformers'
// Gemma3TextConfig defaults, as transformers itself would.
func ParseConfig(js string) (Config, error) {
	var r rawConfig
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return Config{}, fmt.Errorf("textenc: config JSON: %w", err)
	}
	if r.TextConfig != nil {
		r = *r.TextConfig
	}
	// Gemma3TextConfig's defaults (transformers configuration_gemma3.py).
	c := Config{
		VocabSize: orInt(r.VocabSize, 262208), HiddenSize: orInt(r.HiddenSize, 2304),
		IntermediateSize: orInt(r.IntermediateSize, 9216), NumLayers: orInt(r.NumLayers, 26),
		NumHeads: orInt(r.NumHeads, 8), NumKVHeads: orInt(r.NumKVHeads, 4), HeadDim: orInt(r.HeadDim, 256),
		RMSNormEps: orFloat(r.RMSNormEps, 1e-6), QueryPreAttnScalar: orFloat(r.QueryPreAttnScalar, 256),
		SlidingWindow: orInt(r.SlidingWindow, 4096),
	}
	act := "gelu_pytorch_tanh"
	if r.HiddenActivation != nil {
		act = *r.HiddenActivation
	} else if r.HiddenAct != nil {
		act = *r.HiddenAct
	}
	if act != "gelu_pytorch_tanh" {
		return Config{}, fmt.Errorf("textenc: config hidden_activation %q is not supported (only gelu_pytorch_tanh)", act)
	}
	if r.AttnSoftcap != nil {
		return Config{}, fmt.Errorf("textenc: config attn_logit_softcapping %g is not supported (Gemma 3 has none)", *r.AttnSoftcap)
	}
	if r.Bidirectional != nil && *r.Bidirectional {
		return Config{}, fmt.Errorf("textenc: config use_bidirectional_attention is not supported (causal Gemma 3 only)")
	}
	if r.AttentionBias != nil && *r.AttentionBias {
		return Config{}, fmt.Errorf("textenc: config attention_bias is not supported (Gemma 3 has none)")
	}

	c.LayerTypes = r.LayerTypes
	if c.LayerTypes == nil {
		// transformers 4.x: every pattern-th layer is global.
		pattern := 6
		if r.SlidingPattern != nil {
			pattern = *r.SlidingPattern
		} else if r.SlidingPatternOld != nil {
			pattern = *r.SlidingPatternOld
		}
		if pattern <= 0 {
			return Config{}, fmt.Errorf("textenc: config sliding_window_pattern %d must be positive", pattern)
		}
		c.LayerTypes = make([]string, c.NumLayers)
		for i := range c.LayerTypes {
			c.LayerTypes[i] = SlidingAttention
			if (i+1)%pattern == 0 {
				c.LayerTypes[i] = FullAttention
			}
		}
	}

	var err error
	if r.RopeParameters != nil {
		c.LocalRope, c.GlobalRope, err = ropeFromParameters(r)
	} else {
		c.LocalRope, c.GlobalRope, err = ropeFromLegacy(r)
	}
	if err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// ropeFromParameters reads transformers 5's rope_parameters, either per
// layer type ({"sliding_attention": {...}, "full_attention": {...}}) or one
// set for the global layers with the local base in rope_local_base_freq.
func ropeFromParameters(r rawConfig) (local, global Rope, err error) {
	_, perType := r.RopeParameters[FullAttention]
	if !perType {
		raw, _ := json.Marshal(r.RopeParameters)
		var one rawRope
		if err := json.Unmarshal(raw, &one); err != nil {
			return Rope{}, Rope{}, fmt.Errorf("textenc: config rope_parameters: %w", err)
		}
		global, err = ropeOf("rope_parameters", one, 1e6)
		local = Rope{Theta: orFloat(r.RopeLocalBase, 1e4), Factor: 1}
		return local, global, err
	}
	get := func(kind string, base float64) (Rope, error) {
		m, ok := r.RopeParameters[kind]
		if !ok {
			return Rope{}, fmt.Errorf("textenc: config rope_parameters has no %q entry", kind)
		}
		var one rawRope
		if err := json.Unmarshal(m, &one); err != nil {
			return Rope{}, fmt.Errorf("textenc: config rope_parameters[%q]: %w", kind, err)
		}
		return ropeOf("rope_parameters["+kind+"]", one, base)
	}
	if local, err = get(SlidingAttention, 1e4); err != nil {
		return
	}
	global, err = get(FullAttention, 1e6)
	return
}

// ropeFromLegacy reads transformers 4.x's rope_theta (global base),
// rope_local_base_freq and rope_scaling (which applies to global layers
// only: local layers always use the default RoPE).
func ropeFromLegacy(r rawConfig) (local, global Rope, err error) {
	local = Rope{Theta: orFloat(r.RopeLocalBase, 1e4), Factor: 1}
	global = Rope{Theta: orFloat(r.RopeTheta, 1e6), Factor: 1}
	if r.RopeScaling != nil {
		s := *r.RopeScaling
		s.RopeTheta = &global.Theta
		global, err = ropeOf("rope_scaling", s, global.Theta)
	}
	return local, global, err
}

// ropeOf turns one parameter set into a Rope; only the default and linear
// RoPE types are built.
func ropeOf(where string, r rawRope, base float64) (Rope, error) {
	kind := r.RopeType
	if kind == "" {
		kind = r.Type
	}
	out := Rope{Theta: orFloat(r.RopeTheta, base), Factor: 1}
	switch kind {
	case "", "default":
	case "linear":
		if r.Factor == nil {
			return Rope{}, fmt.Errorf("textenc: config %s is linear RoPE without a factor", where)
		}
		out.Factor = *r.Factor
	default:
		return Rope{}, fmt.Errorf("textenc: config %s rope_type %q is not supported (default and linear only)", where, kind)
	}
	return out, nil
}

func orInt(p *int, d int) int {
	if p == nil {
		return d
	}
	return *p
}

func orFloat(p *float64, d float64) float64 {
	if p == nil {
		return d
	}
	return *p
}

// invFreq returns the RoPE inverse frequencies of one layer type exactly as
// transformers computes them: in float32, base^(2i/dim) then its reciprocal,
// then divided by the linear factor. Even a float64 model gets these float32
// values (the rotary module casts them with .float()), so parity needs the
// same roundings.
func invFreq(r Rope, dim int) []float32 {
	out := make([]float32, dim/2)
	for i := range out {
		exp := float32(2*i) / float32(dim)
		p := float32(math.Pow(float64(float32(r.Theta)), float64(exp)))
		f := 1 / p
		if r.Factor != 1 {
			f /= float32(r.Factor)
		}
		out[i] = f
	}
	return out
}

// ropeTable returns cos and sin [l, dim/2] for positions 0..l−1, computed
// as transformers does: the angle is a float32 product of position and
// inverse frequency, and its cosine and sine are float32 values.
func ropeTable(r Rope, dim, l int) (cos, sin []float64) {
	f := invFreq(r, dim)
	half := dim / 2
	cos = make([]float64, l*half)
	sin = make([]float64, l*half)
	for p := range l {
		for i, fi := range f {
			a := float32(p) * fi
			cos[p*half+i] = float64(float32(math.Cos(float64(a))))
			sin[p*half+i] = float64(float32(math.Sin(float64(a))))
		}
	}
	return cos, sin
}
