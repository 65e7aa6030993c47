package newbie

import (
	"fmt"
	"strings"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/models/vae"
)

// The memory plan predicts each phase's peak device memory before the
// phase starts, so a phase that cannot fit is refused with a message
// saying which and by how much, instead of running out of memory halfway.
//
// A phase's peak is its weights as the device holds them, plus the largest
// set of activations alive at once while one batch runs. The activation
// terms below count, for each model, the tensors its forward keeps alive
// at the points where the most are (the code releases every intermediate
// as soon as the next op has read it, so the live set is small and exact):
// every term is a count of tensors of known widths, per token or per
// pixel, named after the code it models. TestEstimates measures the peak
// of real runs of several architectures and dtypes on the CPU backend
// (whose counters are exact bytes) and requires every estimate to hold
// within a few percent above it; a change to a forward that moves its peak
// fails that test until the terms here follow.

// Estimate is a phase's predicted peak, in bytes.
type Estimate struct {
	// Phase names the phase ("encode-gemma").
	Phase string
	// Weights is what the component's weights hold on the device (with
	// the allocator's rounding), and the per-step low-precision casts
	// autocast keeps of them.
	Weights int64
	// Activations is the largest working set of one batch.
	Activations int64
	// Slack allows for the allocator rounding the activations up.
	Slack int64
	// Total is the phase's predicted peak above what the device held
	// before it.
	Total int64
	// Basis says what the estimate assumes (batch, shape, dtypes).
	Basis string
}

// String is the estimate for a log line: "7.32 GiB (weights 7.03 GiB +
// activations 0.28 GiB at 8 texts × 512 tokens, BF16)".
func (e Estimate) String() string {
	return fmt.Sprintf("%s (weights %s + activations %s at %s)", bytesText(e.Total), bytesText(e.Weights), bytesText(e.Activations+e.Slack), e.Basis)
}

// Rounder gives the bytes an allocation of n bytes holds (the backend's
// size classes); nil is exact.
type Rounder func(n int64) int64

// RounderOf returns the backend's rounding when it has one
// (kernels.AllocRounding), else nil.
func RounderOf(b kernels.Backend) Rounder {
	if r, ok := b.(kernels.AllocRounding); ok {
		return r.AllocSize
	}
	return nil
}

// slack is the rounding allowance for a batch's activations: a 2 MiB
// class for each of the few large tensors alive at the peak.
func (r Rounder) slack() int64 {
	if r == nil {
		return 0
	}
	const liveTensors = 16
	return liveTensors * (r(2<<20+1) - (2 << 20))
}

// bytes is what a tensor of n elements of size bytes holds.
func (r Rounder) bytes(n int64, size int) int64 {
	b := n * int64(size)
	if r == nil {
		return b
	}
	return r(b)
}

// weightBytes is what a frozen weight of n elements of size bytes holds:
// a backend that rounds its allocations packs a model's weights into one
// arena at 512-byte alignment (kernels.ConstantArena), the others hold
// them exactly.
func (r Rounder) weightBytes(n int64, size int) int64 {
	b := n * int64(size)
	if r == nil {
		return b
	}
	return (b + 511) / 512 * 512
}

// shapeElems is the element count of a shape.
func shapeElems(shape []int) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= int64(d)
	}
	return n
}

// finish totals an estimate.
func (e Estimate) finish(r Rounder) Estimate {
	e.Slack = r.slack()
	e.Total = e.Weights + e.Activations + e.Slack
	return e
}

// normDType is the dtype the text encoders keep their norm weights and
// compute their norms in: float32, float64 for an F64 model.
func normSize(d kernels.DType) int {
	if d == kernels.F64 {
		return 8
	}
	return 4
}

// EstimateGemma predicts the peak of encoding batch texts of tokens ids
// (the padded length) with Gemma 3 stored in dt, through
// textenc.Gemma.PenultimateHidden.
//
// Weights: every parameter in dt, the RMSNorm scales in float32 (kept as
// 1 + w). Activations per token, the largest of the points where the most
// is alive, always beside the four RoPE tables (local and global cos/sin,
// head_dim/2 wide each):
//   - the MLP: the layer's input x and x + attention, gelu(gate), up and
//     their product: 2·hidden + 3·intermediate in dt;
//   - the post-feed-forward norm: x, x + attention, the MLP's output and
//     the normalised copy in dt (autograd.RMSNormAs: no float32 copy) and
//     the per-row rstd in float32;
//   - the q norm: x, the normed input, q and its normed copy in dt and the
//     per-head rstd;
//   - the attention itself: x, q, k, v and the output in dt, the
//     per-head log-sum-exp in float32.
func EstimateGemma(c textenc.Config, dt kernels.DType, batch, tokens int, r Rounder) Estimate {
	e := Estimate{Phase: "encode-gemma", Basis: fmt.Sprintf("%d texts × %d tokens, %v", batch, tokens, dt)}
	ns := normSize(dt)
	for _, p := range c.Params() {
		size := dt.Size()
		if len(p.Shape) == 1 { // the norms
			size = ns
		}
		e.Weights += r.weightBytes(shapeElems(p.Shape), size)
	}
	ds, h, in := int64(dt.Size()), int64(c.HiddenSize), int64(c.IntermediateSize)
	qd, kvd, heads := int64(c.NumHeads*c.HeadDim), int64(c.NumKVHeads*c.HeadDim), int64(c.NumHeads)
	const rstd = 4 // float32 statistics
	rope := 2 * int64(c.HeadDim) * ds
	perToken := rope + max(
		(2*h+3*in)*ds,
		4*h*ds+rstd,
		(2*h+2*qd)*ds+heads*rstd,
		(h+2*qd+2*kvd)*ds+heads*rstd,
	)
	e.Activations = int64(batch) * int64(tokens) * perToken
	return e.finish(r)
}

// jinaParams lists the tensors textenc.LoadJina uploads: the LoRA merged
// into the weights, q/k/v split, the one token-type row.
func jinaParams(c textenc.JinaConfig) [][]int {
	h, in := c.HiddenSize, c.IntermediateSize
	ps := [][]int{{c.VocabSize, h}, {h}, {h}, {h}}
	for range c.NumLayers {
		for range 4 { // q, k, v, out_proj
			ps = append(ps, []int{h, h}, []int{h})
		}
		ps = append(ps, []int{in, h}, []int{in}, []int{h, in}, []int{h}, []int{h}, []int{h}, []int{h}, []int{h})
	}
	return ps
}

// EstimateJina predicts the peak of encoding batch texts of tokens ids
// with Jina CLIP v2's text tower stored in dt, through
// textenc.Jina.Pooled.
//
// Weights: what LoadJina uploads (jinaParams) in dt. Activations per
// token, beside the two RoPE tables: the exact GELU of fc1's output (one
// backend op) — the layer's input, the first norm's output, fc1's output
// and the GELU's in dt; the attention (input, q, k, v, output in dt,
// log-sum-exp in float32); and the mean pooling (the last hidden state in
// dt, its float32 copy and the masked product).
func EstimateJina(c textenc.JinaConfig, dt kernels.DType, batch, tokens int, r Rounder) Estimate {
	e := Estimate{Phase: "encode-jina", Basis: fmt.Sprintf("%d texts × %d tokens, %v", batch, tokens, dt)}
	for _, s := range jinaParams(c) {
		e.Weights += r.weightBytes(shapeElems(s), dt.Size())
	}
	ds, h, in, heads := int64(dt.Size()), int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.NumHeads)
	wd := int64(normSize(dt))
	rope := int64(c.HeadDim()) * ds
	perToken := rope + max(
		(2*h+2*in)*ds,
		5*h*ds+heads*4,
		h*ds+2*h*wd+wd,
	)
	e.Activations = int64(batch) * int64(tokens) * perToken
	return e.finish(r)
}

// EstimateVAEEncode predicts the peak of encoding batch images of h×w
// pixels with the VAE's encoder (vae.Encoder: weights in storage,
// convolutions and attention in autocast, 0 for none).
//
// Weights: every parameter in storage; under autocast, the per-step cast
// the engine keeps (until the step ends) of each encoder weight a
// convolution or linear reads (GroupNorm's run in float32). Activations, per pixel of each stage (the image's
// pixels at stage 0, a quarter of them at each stage below), the largest
// of: each resnet's points of most life — GroupNorm and SiLU outputs (in
// float32 under autocast, else in the activation dtype) beside the block's
// input and its convolutions' outputs, and the low-precision cast a
// convolution makes of its input; the downsampler's zero-padded copies;
// the mid-block attention (fused, or for heads wider than
// vae.FusedHeadLimit the explicit path with its vae.ScoreBudget score
// chunk, its softmax and their cast) — always beside the float32 image
// being encoded.
func EstimateVAEEncode(c vae.Config, storage, autocast kernels.DType, batch, h, w int, r Rounder) Estimate {
	v := newVAEPlan(c, storage, autocast, "encoder.", r)
	e := Estimate{Phase: "encode-vae", Weights: v.weights, Basis: fmt.Sprintf("%d images of %d×%d, %v weights, %v activations", batch, w, h, storage, v.act)}
	px := int64(batch) * int64(h) * int64(w)
	image := px * int64(c.InChannels) * v.in
	boc := c.BlockOutChannels
	peak := px * (int64(c.InChannels)*v.cast + int64(boc[0])*v.ds) // conv_in: the image's cast, the output
	ci := int64(boc[0])
	p := px
	for i, out := range boc {
		co := int64(out)
		for range c.LayersPerBlock {
			peak = max(peak, p*v.resnet(ci, co))
			ci = co
		}
		if i < len(boc)-1 {
			// the input, its padded copies, then the stride-2 conv's cast and output
			peak = max(peak, p*3*co*v.ds, p*(2*co*v.ds+co*v.cast)+p/4*co*v.ds)
			p /= 4
		}
	}
	peak = max(peak, v.midBlock(ci, p, int64(batch)))
	// every GroupNorm's per-group mean and rstd (float32), beside the peak
	stats := int64(batch) * int64(c.NormNumGroups) * 2 * 4
	e.Activations = image + peak + stats
	return e.finish(r)
}

// EstimateVAEDecode predicts the peak of decoding batch latents to
// images of h×w pixels (vae.VAE.Decode, as previews run it), with the same
// counting as EstimateVAEEncode: the decoder's resnets at each stage (a
// quarter of the pixels per stage below the top), each upsampler's
// nearest-neighbour copy at four times its input's pixels with the conv
// that reads it, the mid-block, and the output norm at full resolution,
// beside the latent being decoded. Under autocast the per-step casts are
// the decoder's weights.
func EstimateVAEDecode(c vae.Config, storage, autocast kernels.DType, batch, h, w int, r Rounder) Estimate {
	v := newVAEPlan(c, storage, autocast, "decoder.", r)
	e := Estimate{Phase: "decode-vae", Weights: v.weights, Basis: fmt.Sprintf("%d images of %d×%d, %v weights, %v activations", batch, w, h, storage, v.act)}
	boc := c.BlockOutChannels
	n := len(boc)
	px := int64(batch) * int64(h) * int64(w)
	p := px >> (2 * (n - 1)) // the latent's pixels
	lc := int64(c.LatentChannels)
	latent := p * lc * v.in
	cm := int64(boc[n-1])
	peak := p * (lc*v.cast + cm*v.ds) // conv_in
	peak = max(peak, v.midBlock(cm, p, int64(batch)))
	ci := cm
	for i := range n {
		co := int64(boc[n-1-i])
		for range c.LayersPerBlock + 1 {
			peak = max(peak, p*v.resnet(ci, co))
			ci = co
		}
		if i < n-1 {
			// the input, its 2× copy, that copy's cast, the conv's output
			peak = max(peak, p*co*v.ds+4*p*co*(2*v.ds+v.cast))
			p *= 4
		}
	}
	c0 := int64(boc[0])
	peak = max(peak,
		p*c0*(v.ds+2*v.nd),                             // the output norm: x, GroupNorm out, SiLU out
		p*(c0*(v.nd+v.cast)+int64(c.OutChannels)*v.ds), // conv_out: its SiLU'd input and the cast, the image
	)
	stats := int64(batch) * int64(c.NormNumGroups) * 2 * 4
	e.Activations = latent + peak + stats
	return e.finish(r)
}

// vaePlan holds what both VAE estimates count with.
type vaePlan struct {
	c       vae.Config
	act     kernels.DType
	weights int64
	// ds is the activations' element size, nd the norms' outputs', cast
	// the size of a convolution's autocast copy of its input (0 without
	// autocast), in that of the input image or latent.
	ds, nd, cast, in int64
}

// newVAEPlan counts the weights (all parameters in storage, and under
// autocast the per-step casts the engine keeps of the weights under
// castPrefix that a convolution or linear reads: GroupNorm's run in
// float32) and the element sizes.
func newVAEPlan(c vae.Config, storage, autocast kernels.DType, castPrefix string, r Rounder) vaePlan {
	v := vaePlan{c: c, act: storage}
	if autocast != 0 {
		v.act = autocast
	}
	for _, p := range c.Params() {
		n := shapeElems(p.Shape)
		v.weights += r.weightBytes(n, storage.Size())
		if autocast != 0 && autocast != storage && strings.HasPrefix(p.Name, castPrefix) && !strings.Contains(p.Name, "norm") {
			v.weights += r.bytes(n, autocast.Size())
		}
	}
	v.ds = int64(v.act.Size())
	v.nd = v.ds // GroupNorm and SiLU keep their input's dtype…
	if autocast != 0 {
		v.nd, v.cast = 4, int64(autocast.Size()) // …but run in float32 under autocast, and convolutions cast their input
	}
	v.in = 4
	if storage == kernels.F64 {
		v.nd, v.in = 8, 8
	}
	return v
}

// resnet is a resnet block's most bytes alive per pixel, from ci to co
// channels.
func (v vaePlan) resnet(ci, co int64) int64 {
	ds, nd, cast := v.ds, v.nd, v.cast
	sc := int64(0) // the shortcut conv's output, when the width changes
	if ci != co {
		sc = co * ds
	}
	return max(
		ci*(ds+2*nd),          // norm1: x, GroupNorm out, SiLU out
		ci*(ds+nd+cast)+co*ds, // conv1: x, its SiLU'd input and that input's cast, the output
		ci*ds+co*(ds+2*nd),    // norm2: x, conv1 out, GroupNorm out, SiLU out
		ci*ds+co*(nd+cast+ds), // conv2: x, its SiLU'd input and its cast, the output
		ci*(ds+cast)+co*ds+sc, // shortcut: x and its cast, conv2 out, the shortcut's out
		ci*ds+2*co*ds+sc,      // the sum: x, conv2 out, the shortcut's, the sum
	)
}

// midBlock is the mid-block's most bytes alive, at cm channels over p
// pixels (all images) of which each image has p/batch.
func (v vaePlan) midBlock(cm, p, batch int64) int64 {
	ds, nd, cast := v.ds, v.nd, v.cast
	peak := p * v.resnet(cm, cm)
	if v.c.MidBlockAddAttention != nil && !*v.c.MidBlockAddAttention {
		return peak
	}
	// Beside the mid-block's input and the attention's input (the first
	// resnet's output): the GroupNorm output and its permuted rows; the
	// rows, their cast, q, k and v's product before its bias is added (a
	// linear's bias makes a new tensor); then
	attn := p * max(cm*(2*ds+2*nd), cm*(2*ds+nd+cast+4*ds))
	if cm <= vae.FusedHeadLimit {
		attn = max(attn, p*(cm*6*ds+4)) // q, k, v, the output, its log-sum-exp
	} else {
		// The explicit path: q, k, v and the scaled q; per chunk of query
		// rows (vae.ScoreBudget scores at most) its copy, its scores (and
		// their float32 copy under autocast) and softmax, then the
		// softmax's cast and the chunk's output; the chunks' outputs
		// gathered and concatenated at the end.
		seq := p / batch
		rows := min(seq, max(1, vae.ScoreBudget/(batch*seq)))
		scores := batch * rows * seq
		f32 := int64(0)
		if cast != 0 {
			f32 = 4
		}
		base, chunk := p*cm*6*ds, int64(0)
		if rows < seq {
			chunk = batch*rows*cm*ds + p*cm*ds // the chunk's copy, the outputs so far
		}
		attn = max(attn,
			base+chunk+scores*(ds+f32+4),
			base+chunk+scores*(4+cast)+batch*rows*cm*ds,
			p*cm*7*ds,
		)
	}
	return max(peak, attn)
}
