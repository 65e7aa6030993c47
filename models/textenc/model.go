package textenc

import (
	"fmt"
	"math"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// Gemma is a loaded Gemma 3 text model on one engine.
type Gemma struct {
	e    *ag.Engine
	cfg  Config
	opts Options
	w    map[string]*ag.Tensor

	// noWindow turns sliding-window masking off (tests prove it matters).
	noWindow bool
	// rope keeps the local and global tables of the last batch shape
	// between calls.
	rope ropeCache
}

// Config returns the architecture.
func (g *Gemma) Config() Config { return g.cfg }

// DType returns the dtype of the weights and of the hidden states Forward
// returns.
func (g *Gemma) DType() kernels.DType { return g.opts.DType }

// Engine returns the engine the weights live on.
func (g *Gemma) Engine() *ag.Engine { return g.e }

// Release frees every weight. The model is unusable afterwards.
func (g *Gemma) Release() {
	g.rope.release()
	for k, t := range g.w {
		t.Release()
		delete(g.w, k)
	}
}

// Forward runs the model on token ids (B rows of equal length L, BOS first,
// right-padded) with an attention mask of the same shape (1 for real tokens,
// then 0 for padding; nil means no padding). It returns transformers'
// hidden_states: NumLayers+1 tensors [B, L, hidden] in the model's dtype —
// the scaled embeddings, the output of each decoder layer but the last, and
// last, the final norm of the last layer's output (last_hidden_state). So
// hiddenStates[len−2], the second-to-last layer's raw output, is what NewBie
// conditions on. Values at padded positions are not meaningful. The tensors
// are step tensors: release them (or let EndStep) when done.
func (g *Gemma) Forward(ids, mask [][]int32) (hiddenStates []*ag.Tensor, err error) {
	err = g.run(ids, mask, g.cfg.NumLayers, func(i int, t *ag.Tensor) { hiddenStates = append(hiddenStates, t) })
	if err != nil {
		for _, t := range hiddenStates {
			t.Release()
		}
		return nil, err
	}
	return hiddenStates, nil
}

// PenultimateHidden returns only hidden_states[-2] [B, L, hidden], NewBie's
// caption feature: the output of the second-to-last layer. The last layer
// and the final norm are never run (for Gemma 3 4B: 33 of 34 layers), and
// every earlier hidden state is released as soon as it has been used.
func (g *Gemma) PenultimateHidden(ids, mask [][]int32) (*ag.Tensor, error) {
	var out *ag.Tensor
	want := g.cfg.NumLayers - 1
	err := g.run(ids, mask, want, func(i int, t *ag.Tensor) {
		if i == want {
			out = t
		} else {
			t.Release()
		}
	})
	if err != nil {
		out.Release()
		return nil, err
	}
	return out, nil
}

// roundTo rounds v to what dtype d stores.
func roundTo(d kernels.DType, v float64) float64 {
	switch d {
	case kernels.F64:
		return v
	case kernels.BF16:
		return float64(kernels.RoundBF16(float32(v)))
	}
	return float64(float32(v))
}

// run is the forward up to hidden state upto (0: the embeddings, i: the
// output of layer i−1, NumLayers: the final norm of the last layer's
// output); nothing past it is computed. emit receives hidden states 0 to
// upto in order and owns them.
func (g *Gemma) run(ids, mask [][]int32, upto int, emit func(i int, t *ag.Tensor)) error {
	e, c := g.e, g.cfg
	prev := e.SetGradEnabled(false)
	defer e.SetGradEnabled(prev)
	kernels.BeginGraph(e.Backend(), graphKey(fmt.Sprintf("textenc.Gemma upto=%d window=%v", upto, !g.noWindow), g.opts.DType, ids))
	defer kernels.EndGraph(e.Backend())
	emb, lens, err := lookup(e, g.w["embed_tokens.weight"], ids, mask, c.VocabSize, 0)
	if err != nil {
		return err
	}
	b, l := emb.Shape()[0], emb.Shape()[1]
	// √hidden is a float32 buffer in transformers, cast to the weights'
	// dtype before the product (bf16 turns √2560 into 50.5).
	x := ag.Scale(emb, roundTo(g.opts.DType, float64(float32(math.Sqrt(float64(c.HiddenSize))))))
	emb.Release()

	localCos, localSin := g.rope.tables(e, g.opts.DType, c.LocalRope, c.HeadDim, b, l)
	globalCos, globalSin := g.rope.tables(e, g.opts.DType, c.GlobalRope, c.HeadDim, b, l)

	for i := range min(upto, c.NumLayers) {
		cos, sin := globalCos, globalSin
		window := 0
		if c.Sliding(i) {
			cos, sin = localCos, localSin
			if !g.noWindow {
				window = c.SlidingWindow
			}
		}
		next := g.layer(i, x, cos, sin, lens, window)
		// Handed out only now: a caller that keeps just one hidden
		// state releases the others in emit, and the layer still read x.
		emit(i, x)
		x = next
	}
	if upto < c.NumLayers {
		if err := e.Err(); err != nil {
			x.Release()
			return fmt.Errorf("textenc: forward: %w", err)
		}
		emit(upto, x)
		return nil
	}
	out := g.norm(x, g.w["norm.weight"])
	x.Release()
	if err := e.Err(); err != nil {
		out.Release()
		return fmt.Errorf("textenc: forward: %w", err)
	}
	emit(c.NumLayers, out)
	return nil
}

// norm is Gemma's RMSNorm with the stored 1+w, returning x's dtype. A
// bf16 x is normalised in the weight's float32 and rounded once, as
// transformers' x.float() … type_as(x) does (ag.RMSNormAs: one pass, no
// float32 copy of x or of the result).
func (g *Gemma) norm(x, w *ag.Tensor) *ag.Tensor {
	return ag.RMSNormAs(x, w, g.cfg.RMSNormEps)
}

// linear is x·wᵀ with the layer's named weight.
func (g *Gemma) linear(x *ag.Tensor, name string) *ag.Tensor {
	return ag.Linear(x, g.w[name], nil)
}

// layer is one Gemma3DecoderLayer: it returns the new residual stream and
// leaves x to the caller (x is a hidden state Forward hands out).
func (g *Gemma) layer(i int, x, cos, sin *ag.Tensor, lens []int32, window int) *ag.Tensor {
	c := g.cfg
	p := fmt.Sprintf("layers.%d.", i)
	b, l := x.Shape()[0], x.Shape()[1]

	h := g.norm(x, g.w[p+"input_layernorm.weight"])
	heads := func(proj, norm string, n int) *ag.Tensor {
		y := g.linear(h, p+proj)
		r := ag.Reshape(y, []int{b, l, n, c.HeadDim})
		y.Release()
		if norm == "" {
			return r
		}
		nr := g.norm(r, g.w[p+norm])
		r.Release()
		out := ag.Rope(nr, cos, sin, false)
		nr.Release()
		return out
	}
	q := heads("self_attn.q_proj.weight", "self_attn.q_norm.weight", c.NumHeads)
	k := heads("self_attn.k_proj.weight", "self_attn.k_norm.weight", c.NumKVHeads)
	v := heads("self_attn.v_proj.weight", "", c.NumKVHeads)
	h.Release()
	a := ag.Attention(q, k, v, ag.AttentionOptions{
		Scale:   1 / math.Sqrt(c.QueryPreAttnScalar),
		KeyLens: lens,
		Causal:  true,
		Window:  window,
	})
	q.Release()
	k.Release()
	v.Release()
	af := ag.Reshape(a, []int{b, l, c.NumHeads * c.HeadDim})
	a.Release()
	o := g.linear(af, p+"self_attn.o_proj.weight")
	af.Release()
	on := g.norm(o, g.w[p+"post_attention_layernorm.weight"])
	o.Release()
	x2 := ag.Add(x, on)
	on.Release()

	h2 := g.norm(x2, g.w[p+"pre_feedforward_layernorm.weight"])
	gate := g.linear(h2, p+"mlp.gate_proj.weight")
	act := ag.GELUTanh(gate)
	gate.Release()
	up := g.linear(h2, p+"mlp.up_proj.weight")
	h2.Release()
	m := ag.Mul(act, up)
	act.Release()
	up.Release()
	down := g.linear(m, p+"mlp.down_proj.weight")
	m.Release()
	dn := g.norm(down, g.w[p+"post_feedforward_layernorm.weight"])
	down.Release()
	x3 := ag.Add(x2, dn)
	x2.Release()
	dn.Release()
	return x3
}
