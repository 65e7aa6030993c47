package nextdit

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Config is the architecture, with the upstream constructor's argument names
// so that the JSON a weight file carries in __metadata__["config"] parses
// straight into it.
type Config struct {
	PatchSize        int      `json:"patch_size"`
	InChannels       int      `json:"in_channels"`
	Dim              int      `json:"dim"`
	NLayers          int      `json:"n_layers"`
	NRefinerLayers   int      `json:"n_refiner_layers"`
	NHeads           int      `json:"n_heads"`
	NKVHeads         int      `json:"n_kv_heads"`
	MultipleOf       int      `json:"multiple_of"`
	FFNDimMultiplier *float64 `json:"ffn_dim_multiplier"`
	NormEps          float64  `json:"norm_eps"`
	QKNorm           bool     `json:"qk_norm"`
	CapFeatDim       int      `json:"cap_feat_dim"`
	AxesDims         []int    `json:"axes_dims"`
	AxesLens         []int    `json:"axes_lens"`
	// ClipTextDim is the width of the pooled CLIP text embedding; 0 means
	// the model has no CLIP-pooled path (Lumina-Image-2.0).
	ClipTextDim int `json:"clip_text_dim,omitempty"`
}

// Upstream constants that are not constructor arguments.
const (
	// RopeTheta is the RoPE base of every axis.
	RopeTheta = 10000.0
	// TimeFreqDim is the width of the sinusoidal timestep embedding.
	TimeFreqDim = 256
	// QKNormEps is the epsilon of the per-head q/k RMSNorms and of the
	// CLIP-pooled projection's RMSNorm (the RMSNorm default upstream).
	QKNormEps = 1e-6
	// FinalNormEps is the epsilon of the final LayerNorm.
	FinalNormEps = 1e-6
)

// Presets are the named architectures: the NewBie-image-Exp0.1 model, the
// Lumina-Image-2.0 model it derives from, and the tiny model of the golden
// tests and the demo.
var Presets = map[string]Config{
	"newbie-exp0.1": {
		PatchSize: 2, InChannels: 16, Dim: 2304, NLayers: 36, NRefinerLayers: 2,
		NHeads: 24, NKVHeads: 8, MultipleOf: 256, NormEps: 1e-5, QKNorm: true,
		CapFeatDim: 2560, AxesDims: []int{32, 32, 32}, AxesLens: []int{1024, 512, 512},
		ClipTextDim: 1024,
	},
	// Lumina-Image-2.0 (upstream NextDiT_2B_GQA_patch2_Adaln_Refiner with
	// Gemma 2 2B caption features).
	"lumina2": {
		PatchSize: 2, InChannels: 16, Dim: 2304, NLayers: 26, NRefinerLayers: 2,
		NHeads: 24, NKVHeads: 8, MultipleOf: 256, NormEps: 1e-5, QKNorm: true,
		CapFeatDim: 2304, AxesDims: []int{32, 32, 32}, AxesLens: []int{300, 512, 512},
	},
	"tiny": {
		PatchSize: 2, InChannels: 16, Dim: 96, NLayers: 2, NRefinerLayers: 2,
		NHeads: 2, NKVHeads: 1, MultipleOf: 32, NormEps: 1e-5, QKNorm: true,
		CapFeatDim: 64, AxesDims: []int{16, 16, 16}, AxesLens: []int{64, 32, 32},
		ClipTextDim: 32,
	},
}

// Preset returns a copy of the named preset.
func Preset(name string) (Config, error) {
	c, ok := Presets[name]
	if !ok {
		names := make([]string, 0, len(Presets))
		for n := range Presets {
			names = append(names, n)
		}
		sort.Strings(names)
		return Config{}, fmt.Errorf("nextdit: unknown preset %q (have %s)", name, strings.Join(names, ", "))
	}
	c.AxesDims = append([]int(nil), c.AxesDims...)
	c.AxesLens = append([]int(nil), c.AxesLens...)
	if c.FFNDimMultiplier != nil {
		m := *c.FFNDimMultiplier
		c.FFNDimMultiplier = &m
	}
	return c, nil
}

// ParseConfig reads the JSON architecture (as stored in a weight file's
// __metadata__["config"]) and validates it.
func ParseConfig(js string) (Config, error) {
	var c Config
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		return Config{}, fmt.Errorf("nextdit: parsing config JSON: %w", err)
	}
	if c.NKVHeads == 0 { // upstream: None means as many kv heads as query heads
		c.NKVHeads = c.NHeads
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// JSON returns the config in the upstream spelling, for a file's metadata.
func (c Config) JSON() string {
	b, _ := json.Marshal(c) // a struct of numbers and slices always marshals
	return string(b)
}

// Validate checks that the numbers describe a buildable network and names
// the first field that does not.
func (c Config) Validate() error {
	bad := func(field string, format string, args ...any) error {
		return fmt.Errorf("nextdit: config field %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.PatchSize <= 0:
		return bad("patch_size", "must be positive, got %d", c.PatchSize)
	case c.InChannels <= 0:
		return bad("in_channels", "must be positive, got %d", c.InChannels)
	case c.Dim <= 0:
		return bad("dim", "must be positive, got %d", c.Dim)
	case c.NLayers < 0:
		return bad("n_layers", "must not be negative, got %d", c.NLayers)
	case c.NRefinerLayers < 0:
		return bad("n_refiner_layers", "must not be negative, got %d", c.NRefinerLayers)
	case c.NHeads <= 0 || c.Dim%c.NHeads != 0:
		return bad("n_heads", "%d must be positive and divide dim %d", c.NHeads, c.Dim)
	case c.NKVHeads <= 0 || c.NHeads%c.NKVHeads != 0:
		return bad("n_kv_heads", "%d must be positive and divide n_heads %d", c.NKVHeads, c.NHeads)
	case c.MultipleOf <= 0:
		return bad("multiple_of", "must be positive, got %d", c.MultipleOf)
	case c.FFNDimMultiplier != nil && *c.FFNDimMultiplier <= 0:
		return bad("ffn_dim_multiplier", "must be positive, got %g", *c.FFNDimMultiplier)
	case c.NormEps <= 0:
		return bad("norm_eps", "must be positive, got %g", c.NormEps)
	case c.CapFeatDim <= 0:
		return bad("cap_feat_dim", "must be positive, got %d", c.CapFeatDim)
	case c.ClipTextDim < 0:
		return bad("clip_text_dim", "must not be negative, got %d", c.ClipTextDim)
	case len(c.AxesDims) != 3:
		return bad("axes_dims", "needs 3 axes (caption/frame, row, column), got %v", c.AxesDims)
	case len(c.AxesLens) != 3:
		return bad("axes_lens", "needs 3 axes, got %v", c.AxesLens)
	}
	sum := 0
	for _, d := range c.AxesDims {
		if d <= 0 || d%2 != 0 {
			return bad("axes_dims", "every axis needs a positive even width, got %v", c.AxesDims)
		}
		sum += d
	}
	if sum != c.HeadDim() {
		return bad("axes_dims", "%v sums to %d, not the head size %d", c.AxesDims, sum, c.HeadDim())
	}
	if c.HeadDim() > 256 {
		return bad("n_heads", "head size %d exceeds the attention kernel's 256", c.HeadDim())
	}
	return nil
}

// HeadDim is the width of one attention head.
func (c Config) HeadDim() int { return c.Dim / c.NHeads }

// AdaLNDim is the width of the adaLN conditioning: min(dim, 1024).
func (c Config) AdaLNDim() int { return min(c.Dim, 1024) }

// FFNHidden is the SwiGLU hidden width: 4·dim, times ffn_dim_multiplier
// (truncated) when set, rounded up to a multiple of multiple_of.
func (c Config) FFNHidden() int {
	h := 4 * c.Dim
	if c.FFNDimMultiplier != nil {
		h = int(*c.FFNDimMultiplier * float64(h))
	}
	return c.MultipleOf * ((h + c.MultipleOf - 1) / c.MultipleOf)
}

// PatchDim is the width of one flattened patch: p·p·in_channels.
func (c Config) PatchDim() int { return c.PatchSize * c.PatchSize * c.InChannels }

// ParamShape is one weight of the network under its upstream key name.
type ParamShape struct {
	Name  string
	Shape []int
}

// Params lists every weight of the network with its shape, in a fixed
// order, without allocating any of them. norm_final.weight is listed: it
// exists upstream (and in every weight file) although forward never reads it.
func (c Config) Params() []ParamShape {
	var ps []ParamShape
	add := func(name string, shape ...int) { ps = append(ps, ParamShape{name, shape}) }
	d, ada, hd := c.Dim, c.AdaLNDim(), c.HeadDim()
	block := func(prefix string, modulation bool) {
		add(prefix+".attention.qkv.weight", (c.NHeads+2*c.NKVHeads)*hd, d)
		add(prefix+".attention.out.weight", d, c.NHeads*hd)
		if c.QKNorm {
			add(prefix+".attention.q_norm.weight", hd)
			add(prefix+".attention.k_norm.weight", hd)
		}
		add(prefix+".feed_forward.w1.weight", c.FFNHidden(), d)
		add(prefix+".feed_forward.w2.weight", d, c.FFNHidden())
		add(prefix+".feed_forward.w3.weight", c.FFNHidden(), d)
		add(prefix+".attention_norm1.weight", d)
		add(prefix+".ffn_norm1.weight", d)
		add(prefix+".attention_norm2.weight", d)
		add(prefix+".ffn_norm2.weight", d)
		if modulation {
			add(prefix+".adaLN_modulation.1.weight", 4*d, ada)
			add(prefix+".adaLN_modulation.1.bias", 4*d)
		}
	}
	add("x_embedder.weight", d, c.PatchDim())
	add("x_embedder.bias", d)
	for i := range c.NRefinerLayers {
		block(fmt.Sprintf("noise_refiner.%d", i), true)
	}
	for i := range c.NRefinerLayers {
		block(fmt.Sprintf("context_refiner.%d", i), false)
	}
	add("t_embedder.mlp.0.weight", ada, TimeFreqDim)
	add("t_embedder.mlp.0.bias", ada)
	add("t_embedder.mlp.2.weight", ada, ada)
	add("t_embedder.mlp.2.bias", ada)
	add("cap_embedder.0.weight", c.CapFeatDim)
	add("cap_embedder.1.weight", d, c.CapFeatDim)
	add("cap_embedder.1.bias", d)
	for i := range c.NLayers {
		block(fmt.Sprintf("layers.%d", i), true)
	}
	add("norm_final.weight", d)
	add("final_layer.linear.weight", c.PatchDim(), d)
	add("final_layer.linear.bias", c.PatchDim())
	add("final_layer.adaLN_modulation.1.weight", d, ada)
	add("final_layer.adaLN_modulation.1.bias", d)
	if c.ClipTextDim > 0 {
		add("time_text_embed.1.weight", ada, ada+c.ClipTextDim)
		add("time_text_embed.1.bias", ada)
		add("clip_text_pooled_proj.0.weight", c.ClipTextDim)
		add("clip_text_pooled_proj.1.weight", c.ClipTextDim, c.ClipTextDim)
		add("clip_text_pooled_proj.1.bias", c.ClipTextDim)
	}
	return ps
}

// NumParams is the number of weights of the network (norm_final included,
// as upstream's parameter_count counts it).
func (c Config) NumParams() int64 {
	var n int64
	for _, p := range c.Params() {
		k := int64(1)
		for _, s := range p.Shape {
			k *= int64(s)
		}
		n += k
	}
	return n
}

// LinearInfo names one linear layer (the key prefix of its weight, e.g.
// "layers.0.attention.qkv") and its input and output widths.
type LinearInfo struct {
	Name    string
	In, Out int
	Bias    bool
}

// Linears lists every linear layer of the network, in the order of Params.
func (c Config) Linears() []LinearInfo {
	var ls []LinearInfo
	shapes := map[string][]int{}
	for _, p := range c.Params() {
		shapes[p.Name] = p.Shape
	}
	for _, p := range c.Params() {
		name, ok := strings.CutSuffix(p.Name, ".weight")
		if !ok || len(p.Shape) != 2 {
			continue
		}
		_, bias := shapes[name+".bias"]
		ls = append(ls, LinearInfo{Name: name, In: p.Shape[1], Out: p.Shape[0], Bias: bias})
	}
	return ls
}

// LinearWeights is the set of the linear layers' weight names: what
// Options.FP8Base stores in fp8.
func (c Config) LinearWeights() map[string]bool {
	out := map[string]bool{}
	for _, l := range c.Linears() {
		out[l.Name+".weight"] = true
	}
	return out
}

// Blocks is the number of transformer blocks a forward runs: the context
// and noise refiners and the joint layers, in that order.
func (c Config) Blocks() int { return 2*c.NRefinerLayers + c.NLayers }

// CheckpointedBlock reports whether block i (of Blocks, in the forward's
// order) is among k checkpointed blocks spread evenly: the one where
// ⌊i·k/n⌋ steps up. k ≤ 0 or k ≥ Blocks means every block.
// RecomputedFFNBlock reports whether block i is among k blocks that
// recompute their feed-forward inputs (Options.RecomputeFFNBlocks): spread
// evenly as CheckpointedBlock spreads them, counted from the last block
// back, so the last block comes last — its inputs are wanted at once when
// the backward starts, where the step's memory peaks, and recomputing
// them gives nothing back. k ≤ 0: none; k ≥ Blocks: every block.
func (c Config) RecomputedFFNBlock(i, k int) bool {
	if k <= 0 {
		return false
	}
	return c.CheckpointedBlock(c.Blocks()-1-i, k)
}

func (c Config) CheckpointedBlock(i, k int) bool {
	n := c.Blocks()
	if k <= 0 || k >= n {
		return true
	}
	return (i+1)*k/n != i*k/n
}
