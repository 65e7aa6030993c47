package vae

import (
	"encoding/json"
	"fmt"
)

// Config is the architecture with diffusers' AutoencoderKL argument names,
// so the JSON of a weight file's metadata or of a diffusers config.json
// parses straight into it. Fields the FLUX layout fixes (block types,
// activation, quant convs) are read only to be checked.
type Config struct {
	InChannels           int      `json:"in_channels"`
	OutChannels          int      `json:"out_channels"`
	DownBlockTypes       []string `json:"down_block_types"`
	UpBlockTypes         []string `json:"up_block_types"`
	BlockOutChannels     []int    `json:"block_out_channels"`
	LayersPerBlock       int      `json:"layers_per_block"`
	ActFn                string   `json:"act_fn"`
	LatentChannels       int      `json:"latent_channels"`
	NormNumGroups        int      `json:"norm_num_groups"`
	ScalingFactor        *float64 `json:"scaling_factor"`
	ShiftFactor          *float64 `json:"shift_factor"`
	UseQuantConv         *bool    `json:"use_quant_conv"`
	UsePostQuantConv     *bool    `json:"use_post_quant_conv"`
	MidBlockAddAttention *bool    `json:"mid_block_add_attention"`
}

// Constants of the architecture that are not config fields.
const (
	// NormEps is the epsilon of every GroupNorm (resnets, attention,
	// the output norms): diffusers passes 1e-6 throughout the VAE.
	NormEps = 1e-6
	// LogVarMin and LogVarMax bound the encoder's log-variance, as
	// diffusers' DiagonalGaussianDistribution clamps it.
	LogVarMin = -30.0
	LogVarMax = 20.0
	// DefaultShift and DefaultScale normalise FLUX latents when the config
	// does not say (DESIGN.md: latent = (z − 0.1159) × 0.3611).
	DefaultShift = 0.1159
	DefaultScale = 0.3611
)

// FLUX is the FLUX.1 [dev/schnell] autoencoder's architecture.
func FLUX() Config {
	f := func(v float64) *float64 { return &v }
	no, yes := false, true
	return Config{
		InChannels: 3, OutChannels: 3,
		DownBlockTypes:   []string{"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"},
		UpBlockTypes:     []string{"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"},
		BlockOutChannels: []int{128, 256, 512, 512},
		LayersPerBlock:   2, ActFn: "silu", LatentChannels: 16, NormNumGroups: 32,
		ScalingFactor: f(DefaultScale), ShiftFactor: f(DefaultShift),
		UseQuantConv: &no, UsePostQuantConv: &no, MidBlockAddAttention: &yes,
	}
}

// ParseConfig reads a config from JSON and validates it. Keys it does not
// know (sample_size, force_upcast, _class_name, …) are ignored: they do not
// change the network.
func ParseConfig(js string) (Config, error) {
	var c Config
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		return Config{}, fmt.Errorf("vae: config JSON: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks that the config describes a network this package builds,
// naming the first field that does not.
func (c Config) Validate() error {
	n := len(c.BlockOutChannels)
	switch {
	case c.InChannels < 1 || c.OutChannels < 1:
		return fmt.Errorf("vae: in_channels %d and out_channels %d must be positive", c.InChannels, c.OutChannels)
	case n < 1:
		return fmt.Errorf("vae: block_out_channels is empty")
	case c.LayersPerBlock < 1:
		return fmt.Errorf("vae: layers_per_block %d must be positive", c.LayersPerBlock)
	case c.LatentChannels < 1:
		return fmt.Errorf("vae: latent_channels %d must be positive", c.LatentChannels)
	case c.NormNumGroups < 1:
		return fmt.Errorf("vae: norm_num_groups %d must be positive", c.NormNumGroups)
	case c.ActFn != "" && c.ActFn != "silu":
		return fmt.Errorf("vae: act_fn %q: only silu is built", c.ActFn)
	case c.UseQuantConv != nil && *c.UseQuantConv:
		return fmt.Errorf("vae: use_quant_conv is true: the FLUX layout has no quant conv and this package does not build one")
	case c.UsePostQuantConv != nil && *c.UsePostQuantConv:
		return fmt.Errorf("vae: use_post_quant_conv is true: the FLUX layout has no post-quant conv and this package does not build one")
	}
	// diffusers defaults use_quant_conv to true when the key is absent, so a
	// config that omits it is an SD-style VAE, not FLUX.
	if c.UseQuantConv == nil || c.UsePostQuantConv == nil {
		return fmt.Errorf("vae: use_quant_conv / use_post_quant_conv are absent (diffusers then builds quant convs); the FLUX layout sets both false")
	}
	for i, ch := range c.BlockOutChannels {
		if ch < 1 || ch%c.NormNumGroups != 0 {
			return fmt.Errorf("vae: block_out_channels[%d] = %d is not a positive multiple of norm_num_groups %d", i, ch, c.NormNumGroups)
		}
	}
	if len(c.DownBlockTypes) != n || len(c.UpBlockTypes) != n {
		return fmt.Errorf("vae: %d down and %d up block types for %d block_out_channels", len(c.DownBlockTypes), len(c.UpBlockTypes), n)
	}
	for i := range n {
		if c.DownBlockTypes[i] != "DownEncoderBlock2D" {
			return fmt.Errorf("vae: down_block_types[%d] = %q: only DownEncoderBlock2D is built", i, c.DownBlockTypes[i])
		}
		if c.UpBlockTypes[i] != "UpDecoderBlock2D" {
			return fmt.Errorf("vae: up_block_types[%d] = %q: only UpDecoderBlock2D is built", i, c.UpBlockTypes[i])
		}
	}
	return nil
}

// Shift is the latent shift: the config's shift_factor, else FLUX's.
func (c Config) Shift() float64 {
	if c.ShiftFactor != nil {
		return *c.ShiftFactor
	}
	return DefaultShift
}

// Scale is the latent scale: the config's scaling_factor, else FLUX's.
func (c Config) Scale() float64 {
	if c.ScalingFactor != nil {
		return *c.ScalingFactor
	}
	return DefaultScale
}

// attention reports whether the mid-blocks have self-attention (diffusers'
// default when the key is absent).
func (c Config) attention() bool {
	return c.MidBlockAddAttention == nil || *c.MidBlockAddAttention
}

// Downsample is the ratio of image side to latent side: 2 per down block
// but the last.
func (c Config) Downsample() int { return 1 << (len(c.BlockOutChannels) - 1) }

// JSON is the config in canonical form (for identities and errors).
func (c Config) JSON() string {
	b, _ := json.Marshal(c) // a struct of plain fields always marshals
	return string(b)
}

// Param is one weight tensor of the architecture.
type Param struct {
	Name  string
	Shape []int
}

// Params lists every weight the architecture reads, with its shape, in
// the order the network uses them.
func (c Config) Params() []Param {
	var ps []Param
	add := func(name string, shape ...int) { ps = append(ps, Param{name, shape}) }
	conv := func(p string, out, in, k int) {
		add(p+".weight", out, in, k, k)
		add(p+".bias", out)
	}
	norm := func(p string, ch int) {
		add(p+".weight", ch)
		add(p+".bias", ch)
	}
	resnet := func(p string, in, out int) {
		norm(p+".norm1", in)
		conv(p+".conv1", out, in, 3)
		norm(p+".norm2", out)
		conv(p+".conv2", out, out, 3)
		if in != out {
			conv(p+".conv_shortcut", out, in, 1)
		}
	}
	mid := func(p string, ch int) {
		resnet(p+".resnets.0", ch, ch)
		if c.attention() {
			a := p + ".attentions.0"
			norm(a+".group_norm", ch)
			for _, l := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
				add(a+"."+l+".weight", ch, ch)
				add(a+"."+l+".bias", ch)
			}
		}
		resnet(p+".resnets.1", ch, ch)
	}
	boc := c.BlockOutChannels
	n := len(boc)
	conv("encoder.conv_in", boc[0], c.InChannels, 3)
	in := boc[0]
	for i, out := range boc {
		for j := range c.LayersPerBlock {
			resnet(fmt.Sprintf("encoder.down_blocks.%d.resnets.%d", i, j), in, out)
			in = out
		}
		if i < n-1 {
			conv(fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv", i), out, out, 3)
		}
	}
	mid("encoder.mid_block", boc[n-1])
	norm("encoder.conv_norm_out", boc[n-1])
	conv("encoder.conv_out", 2*c.LatentChannels, boc[n-1], 3)

	conv("decoder.conv_in", boc[n-1], c.LatentChannels, 3)
	mid("decoder.mid_block", boc[n-1])
	in = boc[n-1]
	for i := range n {
		out := boc[n-1-i]
		for j := range c.LayersPerBlock + 1 {
			resnet(fmt.Sprintf("decoder.up_blocks.%d.resnets.%d", i, j), in, out)
			in = out
		}
		if i < n-1 {
			conv(fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv", i), out, out, 3)
		}
	}
	norm("decoder.conv_norm_out", boc[0])
	conv("decoder.conv_out", c.OutChannels, boc[0], 3)
	return ps
}
