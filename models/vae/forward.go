package vae

import (
	"fmt"
	"math"

	ag "github.com/newbie-train/newbie-train/autograd"
)

// The forward passes release every intermediate as soon as the next op has
// read it: an op that needs it for the backward holds its own reference on
// the tape, so releasing early only frees what nothing needs, which keeps
// inference on big images at a few activations rather than all of them.

// w returns a weight by name. The names come from Config.Params, which the
// loader checked against the file, and Encode/Decode refuse a released
// VAE, so every lookup finds its tensor.
func (m *VAE) w(name string) *ag.Tensor { return m.weights[name] }

// conv is a named convolution with its bias.
func (m *VAE) conv(p string, x *ag.Tensor, stride, pad int) *ag.Tensor {
	return ag.Conv2D(x, m.w(p+".weight"), m.w(p+".bias"), stride, pad)
}

// normAct is GroupNorm then SiLU (one fused pass where the backend has it).
func (m *VAE) normAct(p string, x *ag.Tensor) *ag.Tensor {
	return ag.GroupNormSiLU(x, m.cfg.NormNumGroups, m.w(p+".weight"), m.w(p+".bias"), NormEps)
}

// resnet is diffusers' ResnetBlock2D without a time embedding:
// x' + conv2(silu(norm2(conv1(silu(norm1(x)))))), where x' is x or its
// 1×1 conv_shortcut when the width changes (dropout 0, output scale 1).
func (m *VAE) resnet(p string, x *ag.Tensor) *ag.Tensor {
	block := func(in []*ag.Tensor) *ag.Tensor {
		x := in[0]
		a := m.normAct(p+".norm1", x)
		h := m.conv(p+".conv1", a, 1, 1)
		a.Release()
		a = m.normAct(p+".norm2", h)
		h.Release()
		h = m.conv(p+".conv2", a, 1, 1)
		a.Release()
		sc := x
		if _, ok := m.weights[p+".conv_shortcut.weight"]; ok {
			sc = m.conv(p+".conv_shortcut", x, 1, 0)
		}
		out := ag.Add(sc, h)
		h.Release()
		if sc != x {
			sc.Release()
		}
		return out
	}
	if m.opts.Checkpoint {
		return ag.Checkpoint(block, x)
	}
	return block([]*ag.Tensor{x})
}

// Both backends' fused Attention takes head sizes up to 256, but the
// mid-block attention has one head as wide as the block (512 in FLUX), so
// wider heads go through an explicit softmax(QKᵀ/√C)·V, a chunk of query
// rows at a time so that the score matrix stays within a fixed budget.
const (
	// FusedHeadLimit is the widest head the fused Attention op takes; a
	// wider head (FLUX's is 512) takes the explicit, chunked path.
	FusedHeadLimit = 256
	// ScoreBudget bounds the elements of one chunk's [B, rows, S] scores
	// in the explicit attention path (2²⁴: 64 MiB in float32); memory
	// planners count it.
	ScoreBudget = 1 << 24
)

// attention is the mid-block's single-head self-attention over all pixels:
// group norm, q/k/v linears on the [B, H·W, C] pixel rows, softmax(QKᵀ/√C)V,
// the output linear, back to [B, C, H, W], plus the residual (rescale 1).
func (m *VAE) attention(p string, x *ag.Tensor) *ag.Tensor {
	s := x.Shape()
	b, c, hw := s[0], s[1], s[2]*s[3]
	n := ag.GroupNorm(x, m.cfg.NormNumGroups, m.w(p+".group_norm.weight"), m.w(p+".group_norm.bias"), NormEps)
	flat := ag.Reshape(n, []int{b, c, hw})
	rows := ag.Permute(flat, 0, 2, 1)
	n.Release()
	flat.Release()
	proj := func(l string) *ag.Tensor {
		return ag.Linear(rows, m.w(p+"."+l+".weight"), m.w(p+"."+l+".bias"))
	}
	q, k, v := proj("to_q"), proj("to_k"), proj("to_v")
	rows.Release()
	var o *ag.Tensor
	if c <= m.headLimit() {
		o = fusedAttention(q, k, v)
	} else {
		o = chunkedAttention(q, k, v, m.chunkRows(b, hw))
	}
	q.Release()
	k.Release()
	v.Release()
	y := ag.Linear(o, m.w(p+".to_out.0.weight"), m.w(p+".to_out.0.bias"))
	o.Release()
	yt := ag.Permute(y, 0, 2, 1)
	y.Release()
	img := ag.Reshape(yt, s)
	yt.Release()
	out := ag.Add(img, x)
	img.Release()
	return out
}

// headLimit is the widest head sent to the fused op (tests lower it to
// run the explicit path on the tiny model).
func (m *VAE) headLimit() int {
	if m.testHeadLimit != nil {
		return *m.testHeadLimit
	}
	return FusedHeadLimit
}

// chunkRows is the number of query rows per chunk of the explicit path.
func (m *VAE) chunkRows(b, seq int) int {
	if m.testChunkRows > 0 {
		return m.testChunkRows
	}
	return max(1, ScoreBudget/max(1, b*seq))
}

// fusedAttention is single-head attention of [B, S, C] rows via the fused
// op, whose layout is [B, S, heads, D].
func fusedAttention(q, k, v *ag.Tensor) *ag.Tensor {
	s := q.Shape()
	head := func(t *ag.Tensor) *ag.Tensor { return ag.Reshape(t, []int{s[0], s[1], 1, s[2]}) }
	q4, k4, v4 := head(q), head(k), head(v)
	o4 := ag.Attention(q4, k4, v4, ag.AttentionOptions{})
	q4.Release()
	k4.Release()
	v4.Release()
	o := ag.Reshape(o4, s)
	o4.Release()
	return o
}

// chunkedAttention is single-head attention of [B, S, C] rows as explicit
// products, chunk query rows at a time: softmax((Q_chunk/√C)·Kᵀ)·V. The
// scale is applied to Q, the smaller operand when S > C. Under autocast the
// products take low-precision operands and the softmax runs in float32,
// as PyTorch's math attention does.
func chunkedAttention(q, k, v *ag.Tensor, chunk int) *ag.Tensor {
	s := q.Shape()
	qs := ag.Scale(q, 1/math.Sqrt(float64(s[2])))
	var parts []*ag.Tensor
	for start := 0; start < s[1]; start += chunk {
		qc := qs
		if chunk < s[1] {
			qc = ag.Slice(qs, 1, start, min(start+chunk, s[1]))
		}
		scores := ag.MatMul(qc, k, false, true)
		if qc != qs {
			qc.Release()
		}
		pr := ag.Softmax(scores)
		scores.Release()
		parts = append(parts, ag.MatMul(pr, v, false, false))
		pr.Release()
	}
	qs.Release()
	if len(parts) == 1 {
		return parts[0]
	}
	o := ag.Concat(1, parts...)
	for _, t := range parts {
		t.Release()
	}
	return o
}

// midBlock is diffusers' UNetMidBlock2D: resnet, attention, resnet.
func (m *VAE) midBlock(p string, x *ag.Tensor) *ag.Tensor {
	h := m.resnet(p+".resnets.0", x)
	if m.cfg.attention() {
		a := m.attention(p+".attentions.0", h)
		h.Release()
		h = a
	}
	out := m.resnet(p+".resnets.1", h)
	h.Release()
	return out
}

// downsample is the VAE's Downsample2D: pad one zero column on the right
// and one zero row at the bottom, then a stride-2 3×3 conv without padding.
// Conv2D pads symmetrically only, so the asymmetric pad is a Concat with
// zeros.
func (m *VAE) downsample(p string, x *ag.Tensor) *ag.Tensor {
	s := x.Shape()
	e := x.Engine()
	zc := e.Zeros(x.DType(), []int{s[0], s[1], s[2], 1})
	wide := ag.Concat(3, x, zc)
	zc.Release()
	zr := e.Zeros(x.DType(), []int{s[0], s[1], 1, s[3] + 1})
	padded := ag.Concat(2, wide, zr)
	wide.Release()
	zr.Release()
	out := m.conv(p, padded, 2, 0)
	padded.Release()
	return out
}

// upsample is Upsample2D: nearest ×2, then a 3×3 conv.
func (m *VAE) upsample(p string, x *ag.Tensor) *ag.Tensor {
	u := ag.Upsample2x(x)
	out := m.conv(p, u, 1, 1)
	u.Release()
	return out
}

// then replaces *h by f(*h), releasing the old value.
func then(h **ag.Tensor, f func(*ag.Tensor) *ag.Tensor) {
	old := *h
	*h = f(old)
	old.Release()
}

// encoder runs diffusers' Encoder: [B, in, H, W] → [B, 2·latent, H/8, W/8]
// (mean channels then log-variance channels).
func (m *VAE) encoder(x *ag.Tensor) *ag.Tensor {
	n := len(m.cfg.BlockOutChannels)
	h := m.conv("encoder.conv_in", x, 1, 1)
	for i := range n {
		for j := range m.cfg.LayersPerBlock {
			p := fmt.Sprintf("encoder.down_blocks.%d.resnets.%d", i, j)
			then(&h, func(t *ag.Tensor) *ag.Tensor { return m.resnet(p, t) })
		}
		if i < n-1 {
			p := fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv", i)
			then(&h, func(t *ag.Tensor) *ag.Tensor { return m.downsample(p, t) })
		}
	}
	then(&h, func(t *ag.Tensor) *ag.Tensor { return m.midBlock("encoder.mid_block", t) })
	then(&h, func(t *ag.Tensor) *ag.Tensor { return m.normAct("encoder.conv_norm_out", t) })
	then(&h, func(t *ag.Tensor) *ag.Tensor { return m.conv("encoder.conv_out", t, 1, 1) })
	return h
}

// decoder runs diffusers' Decoder: [B, latent, h, w] → [B, out, 8h, 8w].
func (m *VAE) decoder(z *ag.Tensor) *ag.Tensor {
	n := len(m.cfg.BlockOutChannels)
	h := m.conv("decoder.conv_in", z, 1, 1)
	then(&h, func(t *ag.Tensor) *ag.Tensor { return m.midBlock("decoder.mid_block", t) })
	for i := range n {
		for j := range m.cfg.LayersPerBlock + 1 {
			p := fmt.Sprintf("decoder.up_blocks.%d.resnets.%d", i, j)
			then(&h, func(t *ag.Tensor) *ag.Tensor { return m.resnet(p, t) })
		}
		if i < n-1 {
			p := fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv", i)
			then(&h, func(t *ag.Tensor) *ag.Tensor { return m.upsample(p, t) })
		}
	}
	then(&h, func(t *ag.Tensor) *ag.Tensor { return m.normAct("decoder.conv_norm_out", t) })
	then(&h, func(t *ag.Tensor) *ag.Tensor { return m.conv("decoder.conv_out", t, 1, 1) })
	return h
}

// checkInput returns an error unless the VAE holds its weights and x is
// [B, ch, H, W] with sides divisible by the downsampling factor div.
func (m *VAE) checkInput(op string, x *ag.Tensor, ch, div int) error {
	if len(m.weights) == 0 {
		return fmt.Errorf("vae.%s: the VAE was released", op)
	}
	if x == nil {
		return fmt.Errorf("vae.%s: nil input", op)
	}
	s := x.Shape()
	if len(s) != 4 || s[1] != ch || s[2] < 1 || s[3] < 1 || s[2]%div != 0 || s[3]%div != 0 {
		return fmt.Errorf("vae.%s: input %v is not [B, %d, H, W] with H and W multiples of %d", op, s, ch, div)
	}
	if x.Engine() != m.e {
		return fmt.Errorf("vae.%s: input %v belongs to another engine", op, s)
	}
	return nil
}

// Encode runs the encoder on img [B, 3, H, W] with values in [−1, 1] (H
// and W multiples of 8) and returns the diagonal Gaussian's mean and
// log-variance, each [B, 16, H/8, W/8]; the log-variance is clamped to
// [−30, 20] as diffusers does. Errors of the ops themselves surface on the
// engine (Err, Values, EndStep), as for every autograd op.
func (m *VAE) Encode(img *ag.Tensor) (mean, logvar *ag.Tensor, err error) {
	if err := m.checkInput("Encode", img, m.cfg.InChannels, m.cfg.Downsample()); err != nil {
		return nil, nil, err
	}
	h := m.encoder(img)
	lc := m.cfg.LatentChannels
	mean = ag.Slice(h, 1, 0, lc)
	raw := ag.Slice(h, 1, lc, 2*lc)
	h.Release()
	logvar = clamp(raw, LogVarMin, LogVarMax)
	raw.Release()
	return mean, logvar, nil
}

// Latent is what the DiT trains on: (mean − shift) × scale of img's
// encoding, with the config's shift and scale (FLUX's 0.1159 and 0.3611
// when it names none).
func (m *VAE) Latent(img *ag.Tensor) (*ag.Tensor, error) {
	mean, logvar, err := m.Encode(img)
	if err != nil {
		return nil, err
	}
	logvar.Release()
	out := m.Normalize(mean)
	mean.Release()
	return out, nil
}

// Normalize maps an encoder mean z to the DiT's latent (z − shift) × scale.
func (m *VAE) Normalize(z *ag.Tensor) *ag.Tensor {
	sc := m.cfg.Scale()
	return ag.Affine(z, sc, -m.cfg.Shift()*sc)
}

// Denormalize maps a DiT latent back to the decoder's input z = x / scale
// + shift (the sampler's output goes through it before Decode).
func (m *VAE) Denormalize(x *ag.Tensor) *ag.Tensor {
	return ag.Affine(x, 1/m.cfg.Scale(), m.cfg.Shift())
}

// Decode runs the decoder on an unnormalised latent z [B, 16, h, w] (the
// encoder's mean, or Denormalize of a DiT latent: the golden's
// out.decoded is decode(mean)) and returns the image [B, 3, 8h, 8w],
// nominally in [−1, 1] and not clipped. Latents wider or taller than
// Options.DecodeTile are decoded in blended tiles (see DecodeTiled).
func (m *VAE) Decode(z *ag.Tensor) (*ag.Tensor, error) {
	if err := m.checkInput("Decode", z, m.cfg.LatentChannels, 1); err != nil {
		return nil, err
	}
	if t := m.decodeTile(); t > 0 {
		return m.decodeTiled(z, t), nil
	}
	return m.decoder(z), nil
}

// clamp limits x to [lo, hi] as x − relu(x − hi) + relu(lo − x), with
// relu(y) = (y + |y|)/2. For x inside the range both relus are exactly 0
// (y + |y| of a negative y is an exact zero), so in-range values pass
// through bit for bit; the engine has no clamp op of its own.
func clamp(x *ag.Tensor, lo, hi float64) *ag.Tensor {
	relu := func(y *ag.Tensor) *ag.Tensor {
		a := ag.Abs(y)
		s := ag.Add(y, a)
		a.Release()
		r := ag.Scale(s, 0.5)
		s.Release()
		return r
	}
	over := ag.AddScalar(x, -hi)
	ro := relu(over)
	over.Release()
	under := ag.Affine(x, -1, lo)
	ru := relu(under)
	under.Release()
	d := ag.Sub(x, ro)
	ro.Release()
	out := ag.Add(d, ru)
	d.Release()
	ru.Release()
	return out
}
