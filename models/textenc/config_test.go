package textenc

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

// TestParseConfig reads both config spellings and rejects what the
// forward does not build, naming the field.
func TestParseConfig(t *testing.T) {
	// A multimodal config.json in transformers 4.x style: text fields under
	// text_config, the rest from Gemma3TextConfig's defaults, global RoPE
	// scaling in rope_scaling, layer types from the pattern.
	legacy := `{"architectures": ["Gemma3ForConditionalGeneration"], "vision_config": {"hidden_size": 1152},
		"text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
		"num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}}`
	c, err := ParseConfig(legacy)
	if err != nil {
		t.Fatal(err)
	}
	if c.HiddenSize != 2560 || c.NumLayers != 34 || c.NumHeads != 8 || c.NumKVHeads != 4 || c.HeadDim != 256 ||
		c.VocabSize != 262208 || c.QueryPreAttnScalar != 256 || c.SlidingWindow != 1024 || c.RMSNormEps != 1e-6 {
		t.Errorf("legacy sizes: %+v", c)
	}
	if c.LocalRope != (Rope{Theta: 1e4, Factor: 1}) || c.GlobalRope != (Rope{Theta: 1e6, Factor: 8}) {
		t.Errorf("legacy RoPE: local %+v global %+v", c.LocalRope, c.GlobalRope)
	}
	// This is google/gemma-3-4b-it's text_config: the built-in default must be it.
	if !reflect.DeepEqual(c, Gemma4BConfig()) {
		t.Errorf("Gemma4BConfig %+v\nis not gemma-3-4b-it's config.json %+v", Gemma4BConfig(), c)
	}
	var full []int
	for i := range c.NumLayers {
		if !c.Sliding(i) {
			full = append(full, i)
		}
	}
	if !reflect.DeepEqual(full, []int{5, 11, 17, 23, 29}) {
		t.Errorf("legacy full-attention layers %v, want every sixth", full)
	}

	// transformers 5: per-type rope_parameters and explicit layer_types.
	v5 := `{"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
		"num_key_value_heads": 2, "head_dim": 32, "vocab_size": 512, "sliding_window": 8, "query_pre_attn_scalar": 32,
		"layer_types": ["full_attention", "sliding_attention"],
		"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
		"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}}`
	c, err = ParseConfig(v5)
	if err != nil {
		t.Fatal(err)
	}
	if c.Sliding(0) || !c.Sliding(1) || c.GlobalRope != (Rope{1e6, 8}) || c.LocalRope != (Rope{1e4, 1}) {
		t.Errorf("v5 config: %+v", c)
	}

	for _, tc := range []struct{ name, js, want string }{
		{"softcap", `{"attn_logit_softcapping": 50.0}`, "attn_logit_softcapping"},
		{"activation", `{"hidden_activation": "silu"}`, "hidden_activation"},
		{"bidirectional", `{"use_bidirectional_attention": true}`, "use_bidirectional_attention"},
		{"rope type", `{"rope_scaling": {"rope_type": "yarn", "factor": 4}}`, "yarn"},
		{"linear without factor", `{"rope_scaling": {"rope_type": "linear"}}`, "without a factor"},
		{"grouped heads", `{"num_attention_heads": 6, "num_key_value_heads": 4}`, "not a multiple"},
		{"layer types", `{"num_hidden_layers": 2, "layer_types": ["sliding_attention"]}`, "1 layer_types for 2 layers"},
		{"layer type name", `{"num_hidden_layers": 1, "layer_types": ["chunked_attention"]}`, "chunked_attention"},
		{"odd head", `{"head_dim": 7}`, "head_dim 7"},
		{"json", `{`, "config JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(tc.js)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestRopeTable checks the tables against the rotary definition
// (angle = position · θ^(−2i/d) / factor) to float32 accuracy, and that
// position 0 is the identity.
func TestRopeTable(t *testing.T) {
	for _, r := range []Rope{{1e4, 1}, {1e6, 8}} {
		const dim, l = 10, 23
		cos, sin := ropeTable(r, dim, l)
		for p := range l {
			for i := range dim / 2 {
				a := float64(p) / (math.Pow(r.Theta, float64(2*i)/dim) * r.Factor)
				if d := cos[p*dim/2+i] - math.Cos(a); d > 2e-5 || d < -2e-5 {
					t.Errorf("rope %+v cos at %d,%d off by %g", r, p, i, d)
				}
				if d := sin[p*dim/2+i] - math.Sin(a); d > 2e-5 || d < -2e-5 {
					t.Errorf("rope %+v sin at %d,%d off by %g", r, p, i, d)
				}
			}
		}
		for i := range dim / 2 {
			if cos[i] != 1 || sin[i] != 0 {
				t.Errorf("rope %+v position 0 is not the identity", r)
			}
		}
	}
}
