package textenc

import (
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// Jina is Jina CLIP v2's text tower on one engine: Jina's XLM-RoBERTa
// (xlm-roberta-flash-implementation, the jina-embeddings-v3 backbone) with
// one LoRA adaptation merged into its weights, run the way jina-clip-v2's
// HFTextEncoder runs it for NewBie's clip_model.get_text_features(ids):
//
//   - embeddings: LayerNorm(E'[ids] + T'[0]) (token type 0 for every
//     token; no absolute positions);
//   - each layer, post-LN: a fused q|k|v projection with bias, rotate-half
//     RoPE over the whole head (base rotary_emb_base, positions 0..L−1,
//     tables built in float32 and cast), bidirectional softmax attention
//     scaled by head_dim^-½ with a key-padding mask, x = norm1(x +
//     out_proj(attn)), then x = norm2(x + fc2(gelu(fc1(x)))) with the exact
//     (erf) GELU; LayerNorms with eps layer_norm_eps;
//   - the pooled vector: the mean of the last hidden state over the real
//     tokens, <s> and </s> included; no projection, no normalisation.
//
// Jina's padding mask adds −10000 to pad keys' scores; excluding them is the
// same softmax to within e^−10000.
type Jina struct {
	e     *ag.Engine
	cfg   JinaConfig
	dtype kernels.DType
	task  string
	w     map[string]*ag.Tensor

	// tables, when set, replaces ropeTensors (tests build them in float64
	// to meet the golden's out.pooled_rope_f64).
	tables func(e *ag.Engine, d kernels.DType, r Rope, headDim, b, l int) (cos, sin *ag.Tensor)
	// rope keeps the tables of the last batch shape between calls.
	rope ropeCache
}

// Config returns the architecture.
func (j *Jina) Config() JinaConfig { return j.cfg }

// DType returns the dtype of the weights and of the last hidden state.
func (j *Jina) DType() kernels.DType { return j.dtype }

// Engine returns the engine the weights live on.
func (j *Jina) Engine() *ag.Engine { return j.e }

// Task returns the LoRA adaptation merged into the weights ("" for the base
// weights).
func (j *Jina) Task() string { return j.task }

// Release frees every weight. The model is unusable afterwards.
func (j *Jina) Release() {
	j.rope.release()
	for k, t := range j.w {
		t.Release()
		delete(j.w, k)
	}
}

// Forward runs the tower on token ids (B rows of equal length L: <s> … </s>
// then right padding) with an attention mask of the same shape (1 for real
// tokens, then 0; nil means no padding) and returns last_hidden_state
// [B, L, hidden] in the model's dtype. Values at padded positions are not
// meaningful. The tensor is a step tensor: release it (or let EndStep).
func (j *Jina) Forward(ids, mask [][]int32) (*ag.Tensor, error) {
	h, _, err := j.run(ids, mask)
	return h, err
}

// Pooled returns the vector NewBie conditions on, [B, hidden]: the mean of
// last_hidden_state over each row's real tokens. It is float32 (float64 for
// an F64 model) whatever the weights' dtype, as Jina's mean pooling
// multiplies by a float32 mask.
func (j *Jina) Pooled(ids, mask [][]int32) (*ag.Tensor, error) {
	h, lens, err := j.run(ids, mask)
	if err != nil {
		return nil, err
	}
	out := meanPool(h, lens)
	h.Release()
	if err := j.e.Err(); err != nil {
		out.Release()
		return nil, fmt.Errorf("textenc: jina pooling: %w", err)
	}
	return out, nil
}

// meanPool averages h [B, L, D] over the first lens[b] positions of each
// row, in float32 (float64 for F64): Σ h·mask, then ·1/Σ mask.
func meanPool(h *ag.Tensor, lens []int32) *ag.Tensor {
	e := h.Engine()
	b, l := h.Shape()[0], h.Shape()[1]
	wd := kernels.F32
	if h.DType() == kernels.F64 {
		wd = kernels.F64
	}
	m := make([]float64, b*l)
	inv := make([]float64, b)
	for i, n := range lens {
		for p := range int(n) {
			m[i*l+p] = 1
		}
		inv[i] = 1 / float64(n)
	}
	mt := e.FromFloat64(wd, []int{b, l, 1}, m)
	hf := ag.Cast(h, wd)
	masked := ag.Mul(hf, mt)
	mt.Release()
	if hf != h {
		hf.Release()
	}
	sum := ag.Sum(masked, 1, false)
	masked.Release()
	it := e.FromFloat64(wd, []int{b, 1}, inv)
	out := ag.Mul(sum, it)
	sum.Release()
	it.Release()
	return out
}

// run is the forward; it returns last_hidden_state and each row's number of
// real tokens.
func (j *Jina) run(ids, mask [][]int32) (*ag.Tensor, []int32, error) {
	e, c := j.e, j.cfg
	prev := e.SetGradEnabled(false)
	defer e.SetGradEnabled(prev)
	// A caption batch of one shape repeats across a dataset: on a backend
	// with graphs the forward is replayed without its ~400 launches.
	kernels.BeginGraph(e.Backend(), graphKey("textenc.Jina", j.dtype, ids))
	defer kernels.EndGraph(e.Backend())
	emb, lens, err := lookup(e, j.w["word_embeddings"], ids, mask, c.VocabSize, c.MaxPositions)
	if err != nil {
		return nil, nil, err
	}
	b, l := emb.Shape()[0], emb.Shape()[1]
	withType := ag.Add(emb, j.w["token_type_0"])
	emb.Release()
	x := ag.LayerNorm(withType, j.w["emb_ln.weight"], j.w["emb_ln.bias"], c.LayerNormEps)
	withType.Release()

	rope := Rope{Theta: c.RotaryBase, Factor: 1}
	var cos, sin *ag.Tensor
	if j.tables != nil {
		cos, sin = j.tables(e, j.dtype, rope, c.HeadDim(), b, l)
		defer cos.Release()
		defer sin.Release()
	} else {
		cos, sin = j.rope.tables(e, j.dtype, rope, c.HeadDim(), b, l)
	}
	for i := range c.NumLayers {
		next := j.layer(i, x, cos, sin, lens)
		x.Release()
		x = next
	}
	if err := e.Err(); err != nil {
		x.Release()
		return nil, nil, fmt.Errorf("textenc: jina forward: %w", err)
	}
	return x, lens, nil
}

// layer is one post-LN Jina block; x stays the caller's.
func (j *Jina) layer(i int, x, cos, sin *ag.Tensor, lens []int32) *ag.Tensor {
	c := j.cfg
	p := fmt.Sprintf("encoder.layers.%d.", i)
	b, l := x.Shape()[0], x.Shape()[1]
	linear := func(in *ag.Tensor, module string) *ag.Tensor {
		return ag.Linear(in, j.w[p+module+".weight"], j.w[p+module+".bias"])
	}
	heads := func(module string, rotate bool) *ag.Tensor {
		y := linear(x, module)
		r := ag.Reshape(y, []int{b, l, c.NumHeads, c.HeadDim()})
		y.Release()
		if !rotate {
			return r
		}
		out := ag.Rope(r, cos, sin, false)
		r.Release()
		return out
	}
	q := heads("mixer.q", true)
	k := heads("mixer.k", true)
	v := heads("mixer.v", false)
	a := ag.Attention(q, k, v, ag.AttentionOptions{KeyLens: lens})
	q.Release()
	k.Release()
	v.Release()
	af := ag.Reshape(a, []int{b, l, c.HiddenSize})
	a.Release()
	o := linear(af, "mixer.out_proj")
	af.Release()
	s1 := ag.Add(x, o)
	o.Release()
	h1 := ag.LayerNorm(s1, j.w[p+"norm1.weight"], j.w[p+"norm1.bias"], c.LayerNormEps)
	s1.Release()

	f1 := linear(h1, "mlp.fc1")
	act := ag.GELU(f1)
	f1.Release()
	f2 := linear(act, "mlp.fc2")
	act.Release()
	s2 := ag.Add(h1, f2)
	h1.Release()
	f2.Release()
	out := ag.LayerNorm(s2, j.w[p+"norm2.weight"], j.w[p+"norm2.bias"], c.LayerNormEps)
	s2.Release()
	return out
}
