package nextdit

import (
	"fmt"
	"math"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// Inputs are one batch for Forward.
type Inputs struct {
	// X is the noisy latent [B, in_channels, H, W]; H and W are multiples
	// of the patch size. Mark it with Input() to get its gradient.
	X *ag.Tensor
	// T holds the B timesteps in [0, 1] (t = 1 is data). They are host
	// values because the sinusoidal embedding is computed on the host (the
	// backend has no sin/cos op); the trainer draws them there anyway.
	T []float64
	// CapFeats are the caption features [B, L, cap_feat_dim], each sample's
	// real tokens first and padding after.
	CapFeats *ag.Tensor
	// CapLens is each sample's number of real caption tokens (≤ L): the
	// upstream cap_mask summed per row. See CapLensFromMask.
	CapLens []int
	// ClipPooled is the pooled CLIP text embedding [B, clip_text_dim]; nil
	// runs without the CLIP-pooled path (required nil when the config has
	// none).
	ClipPooled *ag.Tensor
}

// CapLensFromMask turns an upstream cap_mask [B, L] (1 for real tokens,
// which must come first) into caption lengths.
func CapLensFromMask(mask []float64, b, l int) ([]int, error) {
	if len(mask) != b*l {
		return nil, fmt.Errorf("nextdit: caption mask has %d values for [%d, %d]", len(mask), b, l)
	}
	lens := make([]int, b)
	for i := range b {
		n := 0
		for j := range l {
			on := mask[i*l+j] != 0
			switch {
			case on && n == j:
				n++
			case on:
				return nil, fmt.Errorf("nextdit: caption mask row %d has a real token at %d after padding (right padding only)", i, j)
			}
		}
		lens[i] = n
	}
	return lens, nil
}

// actDType is the dtype of host-made activations (RoPE tables, timestep
// embeddings, padding): float64 for a float64 model, else float32.
func (m *Model) actDType() kernels.DType {
	if m.opts.DType == kernels.F64 {
		return kernels.F64
	}
	return kernels.F32
}

// check validates the inputs against the config.
func (m *Model) check(in Inputs) (b, l, ht, wt int, err error) {
	c := m.cfg
	if in.X == nil || in.CapFeats == nil {
		return 0, 0, 0, 0, fmt.Errorf("nextdit: Forward needs X and CapFeats")
	}
	xs, cs := in.X.Shape(), in.CapFeats.Shape()
	if len(xs) != 4 || xs[1] != c.InChannels || xs[2]%c.PatchSize != 0 || xs[3]%c.PatchSize != 0 {
		return 0, 0, 0, 0, fmt.Errorf("nextdit: X %v is not [B, %d, H, W] with H and W multiples of %d", xs, c.InChannels, c.PatchSize)
	}
	b = xs[0]
	if len(cs) != 3 || cs[0] != b || cs[2] != c.CapFeatDim {
		return 0, 0, 0, 0, fmt.Errorf("nextdit: CapFeats %v is not [%d, L, %d]", cs, b, c.CapFeatDim)
	}
	l = cs[1]
	if len(in.T) != b {
		return 0, 0, 0, 0, fmt.Errorf("nextdit: %d timesteps for a batch of %d", len(in.T), b)
	}
	if len(in.CapLens) != b {
		return 0, 0, 0, 0, fmt.Errorf("nextdit: %d caption lengths for a batch of %d", len(in.CapLens), b)
	}
	for i, n := range in.CapLens {
		if n < 0 || n > l {
			return 0, 0, 0, 0, fmt.Errorf("nextdit: caption length %d of sample %d is outside [0, %d]", n, i, l)
		}
	}
	switch {
	case in.ClipPooled != nil && c.ClipTextDim == 0:
		return 0, 0, 0, 0, fmt.Errorf("nextdit: ClipPooled given but the config has no CLIP-pooled path")
	case in.ClipPooled != nil:
		ps := in.ClipPooled.Shape()
		if len(ps) != 2 || ps[0] != b || ps[1] != c.ClipTextDim {
			return 0, 0, 0, 0, fmt.Errorf("nextdit: ClipPooled %v is not [%d, %d]", ps, b, c.ClipTextDim)
		}
	}
	for _, p := range c.Params() {
		if m.weights[p.Name] == nil && p.Name != "norm_final.weight" {
			return 0, 0, 0, 0, fmt.Errorf("nextdit: weight %s is not loaded", p.Name)
		}
	}
	return b, l, xs[2] / c.PatchSize, xs[3] / c.PatchSize, nil
}

// Forward runs the network, as upstream NextDiT_CLIP.forward, and returns
// the prediction [B, in_channels, H, W]. Argument errors are returned here;
// failures of ops surface through the engine (Backward, Values, EndStep).
func (m *Model) Forward(in Inputs) (*ag.Tensor, error) {
	c := m.cfg
	b, l, ht, wt, err := m.check(in)
	if err != nil {
		return nil, err
	}
	// A model evaluation repeats per shape (the sampler's steps): on a
	// backend with graphs it is a region of its own (inside a training
	// step's region it is part of that one).
	kernels.BeginGraph(m.e.Backend(), fmt.Sprintf("nextdit.Forward %v/%v/%d clip=%v grad=%v autocast=%v checkpoint=%v/%d",
		in.X.Shape(), in.CapLens, l, in.ClipPooled != nil, m.e.GradEnabled(), m.e.Autocast(), m.opts.Checkpoint, m.opts.CheckpointBlocks))
	defer kernels.EndGraph(m.e.Backend())
	e, act := m.e, m.actDType()
	n, p, d := ht*wt, c.PatchSize, c.Dim
	maxCap := 0
	for _, cl := range in.CapLens {
		maxCap = max(maxCap, cl)
	}
	s := maxCap + n

	// Conditioning: t embedder, optionally joined with the pooled CLIP text.
	tFreq := e.FromFloat64(act, []int{b, TimeFreqDim}, timestepEmbedding(in.T))
	h1 := m.linear("t_embedder.mlp.0", tFreq)
	h2 := ag.SiLU(h1)
	adaln := m.linear("t_embedder.mlp.2", h2)
	release(tFreq, h1, h2)
	if in.ClipPooled != nil {
		cn := ag.RMSNorm(in.ClipPooled, m.weights["clip_text_pooled_proj.0.weight"], QKNormEps)
		clip := m.linear("clip_text_pooled_proj.1", cn)
		joined := ag.Concat(1, adaln, clip)
		sj := ag.SiLU(joined)
		next := m.linear("time_text_embed.1", sj)
		release(cn, clip, joined, sj, adaln)
		adaln = next
	}
	// What every adaLN modulation reads: SiLU of the conditioning, made
	// once for the refiners, the joint layers and the final layer.
	sa := ag.SiLU(adaln)
	release(adaln)

	// Caption embedder and context refiner.
	capN := ag.RMSNorm(in.CapFeats, m.weights["cap_embedder.0.weight"], c.NormEps)
	capX := m.linear("cap_embedder.1", capN)
	release(capN)

	rope := m.rope(in.CapLens, l, ht, wt, s)
	capCos, capSin, imgCos, imgSin, jCos, jSin := rope.capCos, rope.capSin, rope.imgCos, rope.imgSin, rope.jCos, rope.jSin
	capLens32 := make([]int32, b)
	jointLens := make([]int32, b)
	for i, cl := range in.CapLens {
		capLens32[i] = int32(cl)
		jointLens[i] = int32(cl + n)
	}
	for i := range c.NRefinerLayers {
		next := m.runBlock(i, fmt.Sprintf("context_refiner.%d", i), capX, nil, capCos, capSin, capLens32)
		release(capX)
		capX = next
	}

	// Patchify (pH, pW, C order), embed, noise refiner.
	x6 := ag.Reshape(in.X, []int{b, c.InChannels, ht, p, wt, p})
	xp := ag.Permute(x6, 0, 2, 4, 3, 5, 1)
	patches := ag.Reshape(xp, []int{b, n, c.PatchDim()})
	img := m.linear("x_embedder", patches)
	release(x6, xp, patches)
	for i := range c.NRefinerLayers {
		next := m.runBlock(c.NRefinerLayers+i, fmt.Sprintf("noise_refiner.%d", i), img, sa, imgCos, imgSin, nil)
		release(img)
		img = next
	}

	// Joint sequence: per sample [caption (own length); image; padding].
	rows := make([]*ag.Tensor, b)
	var tmp []*ag.Tensor
	for i, cl := range in.CapLens {
		var parts []*ag.Tensor
		if cl > 0 {
			ci := ag.Slice(capX, 0, i, i+1)
			parts = append(parts, ag.Slice(ci, 1, 0, cl))
			tmp = append(tmp, ci)
		}
		parts = append(parts, ag.Slice(img, 0, i, i+1))
		if pad := s - cl - n; pad > 0 {
			parts = append(parts, e.Zeros(img.DType(), []int{1, pad, d}))
		}
		rows[i] = ag.Concat(1, parts...)
		tmp = append(tmp, parts...)
	}
	x := ag.Concat(0, rows...)
	release(tmp...)
	release(rows...)
	release(capX, img)

	for i := range c.NLayers {
		next := m.runBlock(2*c.NRefinerLayers+i, fmt.Sprintf("layers.%d", i), x, sa, jCos, jSin, jointLens)
		release(x)
		x = next
	}

	// Final layer: LayerNorm without affine, adaLN scale, linear to patches.
	fn := ag.LayerNorm(x, nil, nil, FinalNormEps)
	scale := m.linear("final_layer.adaLN_modulation.1", sa)
	mod := modulate(fn, scale)
	out := m.linear("final_layer.linear", mod)
	release(x, fn, sa, scale, mod)

	// Unpatchify the image tokens of every sample.
	tmp = tmp[:0]
	imgs := make([]*ag.Tensor, b)
	for i, cl := range in.CapLens {
		oi := ag.Slice(out, 0, i, i+1)
		imgs[i] = ag.Slice(oi, 1, cl, cl+n)
		tmp = append(tmp, oi)
	}
	tok := ag.Concat(0, imgs...)
	release(tmp...)
	release(imgs...)
	release(out)
	t6 := ag.Reshape(tok, []int{b, ht, wt, p, p, c.InChannels})
	y6 := ag.Permute(t6, 0, 5, 1, 3, 2, 4)
	y := ag.Reshape(y6, []int{b, c.InChannels, ht * p, wt * p})
	release(tok, t6, y6)
	return y, nil
}

// runBlock runs block index (of the forward's order, Config.Blocks), prefix,
// checkpointed when the options say so, and shows its output to the block
// observer. adaln is SiLU of the
// conditioning, what the block's adaLN modulation reads (nil for the
// unmodulated context refiner). Every tensor the block reads other than
// weights (x, the conditioning and the RoPE tables) is passed to Checkpoint
// as an input: the node then holds them for the recompute, and gradients
// reach x and the conditioning.
func (m *Model) runBlock(index int, prefix string, x, adaln, cos, sin *ag.Tensor, keyLens []int32) *ag.Tensor {
	var out *ag.Tensor
	switch {
	case !m.checkpointed(index):
		out = m.block(prefix, x, adaln, cos, sin, keyLens, blockRecompute{norms: m.opts.RecomputeNorms, ffn: m.recomputesFFN(index)})
	case adaln == nil:
		// A checkpointed block's tape lives through its own backward only:
		// nothing to gain from recomputing its norms again there.
		out = ag.Checkpoint(func(in []*ag.Tensor) *ag.Tensor {
			return m.block(prefix, in[0], nil, in[1], in[2], keyLens, blockRecompute{})
		}, x, cos, sin)
	default:
		out = ag.Checkpoint(func(in []*ag.Tensor) *ag.Tensor {
			return m.block(prefix, in[0], in[3], in[1], in[2], keyLens, blockRecompute{})
		}, x, cos, sin, adaln)
	}
	if m.observe != nil {
		m.observe(prefix, out)
	}
	return out
}

// block is upstream JointTransformerBlock.forward: sandwich RMSNorms around
// attention and SwiGLU, with adaLN scale and tanh gates when modulated.
// Each sandwich norm is one ag.NormScale with its adaLN factor (the
// modulation's chunk read in place: scale_msa, gate_msa, scale_mlp,
// gate_mlp) and, after the branch, the residual add: the values of
// RMSNorm, the chunk's slice, AddScalar or Tanh, Mul and Add, with none of
// their intermediates stored.
// blockRecompute says what a block's tape drops after the forward and
// makes again in the backward: its norms' outputs (Options.RecomputeNorms)
// and its feed-forward's inputs (Options.RecomputeFFNBlocks).
type blockRecompute struct{ norms, ffn bool }

func (m *Model) block(prefix string, x, adaln, cos, sin *ag.Tensor, keyLens []int32, redo blockRecompute) *ag.Tensor {
	recompute := redo.norms
	eps := m.cfg.NormEps
	w := func(name string) *ag.Tensor { return m.weights[prefix+"."+name] }
	var mod *ag.Tensor
	if adaln != nil {
		// adaLN_modulation is SiLU then this linear; the SiLU, the same
		// for every block, was made once by Forward.
		mod = m.linear(prefix+".adaLN_modulation.1", adaln)
	}
	// With recompute (Options.RecomputeNorms) the tape drops what redo
	// names and the backward makes it again: the pre-norms, which the qkv
	// and w1/w3 products keep only for lora_A's gradient, and the attention
	// branch's output x1, which the feed-forward's pre-norm keeps as its
	// input (rebuilt from a and x, both kept). Not the block's output: the
	// next block's residual, it would chain the rebuilds.
	norm := func(x *ag.Tensor, weight string, chunk int, mode kernels.ScaleMode, res *ag.Tensor, redo bool) *ag.Tensor {
		o := ag.NormScaleOptions{Res: res}
		if mod != nil {
			o.S, o.Chunk, o.Chunks, o.Mode = mod, chunk, 4, mode
		}
		y := ag.NormScale(x, w(weight), eps, o)
		if recompute && redo {
			ag.Recompute(y)
		}
		return y
	}

	// Attention branch.
	h := norm(x, "attention_norm1.weight", 0, kernels.ScaleOnePlus, nil, true)
	a := m.attention(prefix, h, cos, sin, keyLens, recompute)
	x1 := norm(a, "attention_norm2.weight", 1, kernels.ScaleTanh, x, true)
	release(h, a)

	// Feed-forward branch.
	hf := norm(x1, "ffn_norm1.weight", 2, kernels.ScaleOnePlus, nil, true)
	ff := m.feedForward(prefix, hf, redo.ffn)
	out := norm(ff, "ffn_norm2.weight", 3, kernels.ScaleTanh, x1, false)
	release(x1, hf, ff, mod)
	return out
}

// modulate is upstream modulate: x·(1 + scale) with scale [B, dim]
// broadcast over tokens; without a scale it returns a view of x.
func modulate(x, scale *ag.Tensor) *ag.Tensor {
	if scale == nil {
		return ag.Reshape(x, x.Shape())
	}
	s := scale.Shape()
	one := ag.AddScalar(scale, 1)
	r := ag.Reshape(one, []int{s[0], 1, s[1]})
	out := ag.Mul(x, r)
	release(one, r)
	return out
}

// attention is upstream JointAttention.forward: fused qkv, per-head q/k
// RMSNorm, 3-axis RoPE on adjacent pairs, grouped-query attention with a
// key-padding mask, output projection.
func (m *Model) attention(prefix string, x, cos, sin *ag.Tensor, keyLens []int32, recompute bool) *ag.Tensor {
	c := m.cfg
	hd, hq, hkv := c.HeadDim(), c.NHeads, c.NKVHeads
	xs := x.Shape()
	b, s := xs[0], xs[1]
	qkv := m.linear(prefix+".attention.qkv", x)
	var q, k, v *ag.Tensor
	if c.QKNorm {
		// One op for the q/k/v slices, the per-head norms and the rotation.
		q, k, v = ag.QKVNormRope(qkv, m.weights[prefix+".attention.q_norm.weight"], m.weights[prefix+".attention.k_norm.weight"],
			cos, sin, hq, hkv, QKNormEps, true)
		if recompute {
			ag.Recompute(q) // k and v with it
		}
		release(qkv)
	} else {
		q0 := ag.Slice(qkv, 2, 0, hq*hd)
		k0 := ag.Slice(qkv, 2, hq*hd, (hq+hkv)*hd)
		v0 := ag.Slice(qkv, 2, (hq+hkv)*hd, (hq+2*hkv)*hd)
		q1 := ag.Reshape(q0, []int{b, s, hq, hd})
		k1 := ag.Reshape(k0, []int{b, s, hkv, hd})
		v = ag.Reshape(v0, []int{b, s, hkv, hd})
		q = ag.Rope(q1, cos, sin, true)
		k = ag.Rope(k1, cos, sin, true)
		release(qkv, q0, k0, v0, q1, k1)
	}
	o := ag.Attention(q, k, v, ag.AttentionOptions{Scale: math.Sqrt(1 / float64(hd)), KeyLens: keyLens})
	release(q, k, v)
	of := ag.Reshape(o, []int{b, s, hq * hd})
	out := m.linear(prefix+".attention.out", of)
	release(o, of)
	return out
}

// feedForward is upstream FeedForward: w2(silu(w1 x) ⊙ w3 x).
//
// With recompute the tape drops h1 and h3 after the forward and the
// backward runs w1 and w3 again for the SwiGLU's (autograd.Recompute; a
// product without an adapter keeps them).
func (m *Model) feedForward(prefix string, x *ag.Tensor, recompute bool) *ag.Tensor {
	h1 := m.linear(prefix+".feed_forward.w1", x)
	h3 := m.linear(prefix+".feed_forward.w3", x)
	if recompute {
		ag.Recompute(h1)
		ag.Recompute(h3)
	}
	name := prefix + ".feed_forward.w2"
	w, bias := m.weights[name+".weight"], m.weights[name+".bias"]
	defer release(h1, h3)
	if m.hook == nil {
		g := ag.SwiGLU(h1, h3)
		defer release(g)
		return ag.Linear(g, w, bias)
	}
	// Without dropout on the update's input, one op forms g, runs both
	// products and, in the backward, gives g's gradient both shares before
	// a single SwiGLU backward pass; it keeps h1 and h3, never g.
	if p, ok := m.hook.(PlainInputHook); ok && bias == nil && p.UpdateReadsInput(name) {
		if _, a, b, scale, ok := m.adapter(name, h1); ok {
			return ag.SwiGLULoRALinear(h1, h3, w, a, b, scale)
		}
	}
	// With dropout, w2's adapter reads dropout(g) again in its backward
	// (for A's gradient). Rather than keep g (the feed-forward's widest
	// activation) for it, the
	// adapter's low-rank factor u = dropout(g)·Aᵀ is made from h1 and h3 —
	// which SwiGLU keeps anyway — under a checkpoint, so g is recomputed in
	// the backward instead of kept; the frozen w2 product keeps nothing of
	// g, and LowRankLinear accumulates scale·u·Bᵀ into it. One elementwise
	// pass more in the forward and one in the backward; the gradients are
	// the same bits with or without block checkpointing. g is made before
	// the checkpoint so that the backward runs the recompute while only g's
	// gradient is pending, not those of h1 and h3 (a lower peak). The
	// adapter's b and scale are taken where the hook is asked, inside the
	// checkpointed function (the recompute asks again and gets the same).
	g := ag.SwiGLU(h1, h3)
	defer release(g)
	var b *ag.Tensor
	var scale float64
	u := ag.Checkpoint(func(in []*ag.Tensor) *ag.Tensor {
		gi := ag.SwiGLU(in[0], in[1])
		defer release(gi)
		h, a, up, s, ok := m.adapter(name, gi)
		if !ok {
			return nil
		}
		if h != gi {
			defer release(h)
		}
		b, scale = up, s
		return ag.Linear(h, a, nil)
	}, h1, h3)
	if u == nil {
		return ag.Linear(g, w, bias)
	}
	defer release(u)
	return ag.LowRankLinear(g, w, bias, u, b, scale)
}

// adapter asks the hook for the named layer's low-rank update.
func (m *Model) adapter(name string, x *ag.Tensor) (h, a, b *ag.Tensor, scale float64, ok bool) {
	if m.hook == nil {
		return nil, nil, nil, 0, false
	}
	return m.hook.LinearAdapter(name, x)
}

// linear applies the named linear layer (weight and, when present, bias),
// with the hook's low-rank update folded into the same op when the layer
// has one.
func (m *Model) linear(name string, x *ag.Tensor) *ag.Tensor {
	w, bias := m.weights[name+".weight"], m.weights[name+".bias"]
	h, a, b, scale, ok := m.adapter(name, x)
	if !ok {
		return ag.Linear(x, w, bias)
	}
	y := ag.LoRALinear(x, h, w, bias, a, b, scale)
	if h != x {
		release(h)
	}
	return y
}

// release drops step handles the forward no longer needs, so activations
// not saved by the tape are freed as soon as possible. Nil entries are
// skipped.
func release(ts ...*ag.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.Release()
		}
	}
}
