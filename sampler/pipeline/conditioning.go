package pipeline

import (
	"context"
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/sampler"
)

// Conditioning is the text side of a batch of B images as upstream's
// forward_with_cfg takes it: 2B caption rows, the B prompts first and then
// their B negative prompts, each row's real tokens first and zero padding
// after.
type Conditioning struct {
	B int
	// Feats are the caption features [2B, L, D], row-major.
	Feats []float64
	L, D  int
	// Lens are the 2B rows' numbers of real tokens.
	Lens []int
	// Pooled is the pooled text embedding [2B, P], or nil for a model
	// without the CLIP-pooled path.
	Pooled []float64
	P      int
}

// FeatureTexts are the Gemma encoder's inputs for a prompt and its
// negative, by upstream's inference rule.
//
// Upstream trains and samples behind different prefixes. Training
// (NewBie-image-Exp0.1 finetune.py, T2IItemProcessor.process_item, lines
// 77–83) puts "You are an assistant designed to generate high-quality anime
// images based on xml format prompts. <Prompt Start> " before XML captions
// (data.GemmaSystemPrompt) and "…anime images with the highest degree of
// image-text alignment based on textual prompts. <Prompt Start> " before
// plain ones, and encodes an empty caption behind the prefix too. Inference
// (demo.py, model_main, lines 190–196, with its choices at 448–455;
// sample.py lines 246–263; diffusers' NewbiePipeline.__call__ likewise)
// puts the chosen system prompt before the prompt with no separator, before
// the negative prompt only when that is not empty (an empty negative is
// encoded as "", one BOS token), and gives Jina CLIP the bare texts.
// demo.py's default, "You are an assistant designed to generate
// high-quality images based on user prompts.", is not a prefix NewBie's
// anime finetune saw; a LoRA trained here saw data.caption.system_prompt,
// so callers pass that (by default data.GemmaSystemPrompt) as system.
func FeatureTexts(system, prompt, negative string) (cond, uncond string) {
	cond = data.FeatureText(system, prompt)
	if negative != "" {
		uncond = data.FeatureText(system, negative)
	}
	return cond, uncond
}

// Encode encodes B prompts and their negatives (each slice B long) into a
// Conditioning with the caption features of enc.Features (behind system, by
// FeatureTexts) and the pooled vectors of enc.Pooled (bare texts; skipped
// when pooledDim is 0).
func Encode(ctx context.Context, enc data.TextEncoders, system string, prompts, negatives []string, pooledDim int) (*Conditioning, error) {
	b := len(prompts)
	if b == 0 || len(negatives) != b {
		return nil, fmt.Errorf("pipeline: %d prompts and %d negative prompts", b, len(negatives))
	}
	feat := make([]string, 2*b)
	pool := make([]string, 2*b)
	for i := range b {
		feat[i], feat[b+i] = FeatureTexts(system, prompts[i], negatives[i])
		pool[i], pool[b+i] = data.PooledText(prompts[i]), data.PooledText(negatives[i])
	}
	fs, err := enc.Features.EncodeTexts(ctx, feat)
	if err != nil {
		return nil, fmt.Errorf("pipeline: caption features: %w", err)
	}
	if len(fs) != 2*b {
		return nil, fmt.Errorf("pipeline: the feature encoder returned %d encodings for %d texts", len(fs), 2*b)
	}
	c := &Conditioning{B: b, Lens: make([]int, 2*b), D: fs[0].Dim}
	for i, f := range fs {
		n := f.Tokens
		if len(f.Mask) == f.Tokens {
			n = 0
			for _, m := range f.Mask {
				n += int(m)
			}
		}
		if f.Dim != c.D || len(f.Features) != f.Tokens*f.Dim || n > f.Tokens {
			return nil, fmt.Errorf("pipeline: caption features of %q: %d tokens × %d with %d values and %d real tokens (want width %d)", feat[i], f.Tokens, f.Dim, len(f.Features), n, c.D)
		}
		c.Lens[i] = n
		c.L = max(c.L, n)
	}
	c.L = max(c.L, 1)
	c.Feats = make([]float64, 2*b*c.L*c.D)
	for i, f := range fs {
		row := c.Feats[i*c.L*c.D:]
		for j, v := range f.Features[:c.Lens[i]*c.D] {
			row[j] = float64(v)
		}
	}
	if pooledDim == 0 {
		return c, nil
	}
	ps, err := enc.Pooled.EncodeTexts(ctx, pool)
	if err != nil {
		return nil, fmt.Errorf("pipeline: pooled text: %w", err)
	}
	if len(ps) != 2*b {
		return nil, fmt.Errorf("pipeline: the pooled encoder returned %d encodings for %d texts", len(ps), 2*b)
	}
	c.P = pooledDim
	c.Pooled = make([]float64, 2*b*c.P)
	for i, p := range ps {
		if len(p.Pooled) != c.P {
			return nil, fmt.Errorf("pipeline: pooled vector of %q has %d values, the model takes %d", pool[i], len(p.Pooled), c.P)
		}
		for j, v := range p.Pooled {
			c.Pooled[i*c.P+j] = float64(v)
		}
	}
	return c, nil
}

// Check validates the conditioning against a model's config.
func (c *Conditioning) Check(cfg nextdit.Config) error {
	switch {
	case c.D != cfg.CapFeatDim:
		return fmt.Errorf("pipeline: caption features are %d wide, the model takes %d", c.D, cfg.CapFeatDim)
	case (c.Pooled != nil) != (cfg.ClipTextDim > 0):
		return fmt.Errorf("pipeline: pooled text given: %v; the model's CLIP-pooled width is %d", c.Pooled != nil, cfg.ClipTextDim)
	case c.Pooled != nil && c.P != cfg.ClipTextDim:
		return fmt.Errorf("pipeline: pooled text is %d wide, the model takes %d", c.P, cfg.ClipTextDim)
	case len(c.Lens) != 2*c.B || len(c.Feats) != 2*c.B*c.L*c.D:
		return fmt.Errorf("pipeline: conditioning of %d images has %d lengths and %d feature values", c.B, len(c.Lens), len(c.Feats))
	}
	return nil
}

// bound is a Conditioning uploaded for one model: its tensors live until
// release.
type bound struct {
	m       *nextdit.Model
	c       *Conditioning
	feats   *ag.Tensor // [2B, L, D]
	pooled  *ag.Tensor // [2B, P] or nil
	state   kernels.DType
	watch   *overflowWatch // nil unless fp16
	release func()
}

// bind uploads c (features in act, the model's activation dtype) and returns
// the model as a sampler.Conditional whose velocities are in dtype state.
func bind(m *nextdit.Model, c *Conditioning, act, state kernels.DType, watch *overflowWatch) (*bound, error) {
	if err := c.Check(m.Config()); err != nil {
		return nil, err
	}
	e := m.Engine()
	bd := &bound{m: m, c: c, state: state, watch: watch}
	bd.feats = e.FromFloat64(act, []int{2 * c.B, c.L, c.D}, c.Feats).Keep()
	if c.Pooled != nil {
		bd.pooled = e.FromFloat64(act, []int{2 * c.B, c.P}, c.Pooled).Keep()
	}
	bd.release = func() {
		bd.feats.Release()
		if bd.pooled != nil {
			bd.pooled.Release()
		}
	}
	return bd, nil
}

// conditional is upstream forward_with_cfg over the bound captions: with
// the unconditional side, one forward of [x; x] against all 2B rows, split
// into its halves; without it, a forward of x against the B prompt rows.
func (bd *bound) conditional() sampler.Conditional {
	return func(x *ag.Tensor, t float64, withUncond bool) (cond, uncond *ag.Tensor, err error) {
		b := bd.c.B
		if x.Shape()[0] != b {
			return nil, nil, fmt.Errorf("pipeline: a latent batch of %d for a conditioning of %d", x.Shape()[0], b)
		}
		in := nextdit.Inputs{X: x, CapFeats: bd.feats, CapLens: bd.c.Lens, ClipPooled: bd.pooled, T: make([]float64, 2*b)}
		var tmp []*ag.Tensor
		if withUncond {
			in.X = ag.Concat(0, x, x)
			tmp = append(tmp, in.X)
		} else {
			in.CapFeats = ag.Slice(bd.feats, 0, 0, b)
			in.CapLens = bd.c.Lens[:b]
			in.T = in.T[:b]
			tmp = append(tmp, in.CapFeats)
			if bd.pooled != nil {
				in.ClipPooled = ag.Slice(bd.pooled, 0, 0, b)
				tmp = append(tmp, in.ClipPooled)
			}
		}
		for i := range in.T {
			in.T[i] = t
		}
		if bd.watch != nil {
			bd.m.SetBlockObserver(bd.watch.observe)
			defer bd.m.SetBlockObserver(nil)
		}
		y, err := bd.m.Forward(in)
		for _, r := range tmp {
			r.Release()
		}
		if err != nil {
			return nil, nil, err
		}
		v := ag.Cast(y, bd.state)
		if v != y {
			y.Release()
		}
		if bd.watch != nil {
			if err := bd.watch.check(v); err != nil {
				v.Release()
				return nil, nil, err
			}
		}
		if !withUncond {
			return v, nil, nil
		}
		cond, uncond = ag.Slice(v, 0, 0, b), ag.Slice(v, 0, b, 2*b)
		v.Release()
		return cond, uncond, nil
	}
}
