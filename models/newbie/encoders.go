package newbie

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// TextOptions configure a text-encoder adapter.
type TextOptions struct {
	// Batch is the most texts per forward pass (default 8): it bounds the
	// activation memory, which grows with batch × tokens.
	Batch int
	// Weights names the weights the model was loaded from in Identity: a
	// content digest (Pipeline fills it) or any string that changes when
	// the weights do. Empty is refused: an identity that does not follow
	// the weights would let a cache reuse another model's encodings.
	Weights string
	// Source is the weights' path, for error messages.
	Source string
	// Guard, when set, is called with each batch's size and padded length
	// after tokenizing and before the forward; an error stops the call
	// (the pipeline checks a batch longer than its plan against the
	// device's memory).
	Guard func(texts, tokens int) error
}

func (o TextOptions) withDefaults() (TextOptions, error) {
	if o.Batch == 0 {
		o.Batch = 8
	}
	if o.Batch < 0 {
		return o, fmt.Errorf("newbie: text batch %d is negative", o.Batch)
	}
	if o.Weights == "" {
		return o, fmt.Errorf("newbie: a text encoder adapter needs TextOptions.Weights (what names the weights in its identity)")
	}
	if o.Source == "" {
		o.Source = "the loaded weights"
	}
	return o, nil
}

// Truncations counts the texts an encoder cut to its token limit, so the
// caller can warn once per dataset with the count.
type Truncations struct {
	// Encoder names the encoder ("Gemma 3"); Limit is its token limit.
	Encoder string
	Limit   int
	// Texts were encoded; Truncated of them were cut; Longest is the most
	// tokens any text had (special tokens included), cut or not.
	Texts, Truncated, Longest int
}

// Warning is the one line to print when texts were cut, or "".
func (t Truncations) Warning() string {
	if t.Truncated == 0 {
		return ""
	}
	return fmt.Sprintf("%s: %d of %d texts exceed %d tokens (the longest has %d) and were cut to the first %d",
		t.Encoder, t.Truncated, t.Texts, t.Limit, t.Longest, t.Limit)
}

// add counts one batch.
func (t *Truncations) add(b tokenizers.Batch) {
	t.Texts += len(b.Lengths)
	t.Truncated += len(b.Truncated)
	for _, n := range b.Lengths {
		t.Longest = max(t.Longest, n)
	}
	for _, c := range b.Truncated {
		t.Longest = max(t.Longest, c.Tokens)
	}
}

// shortHash is the first 16 hex digits of a SHA-256, for identities.
func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// gemmaIdentity names everything that changes a Gemma encoding.
func gemmaIdentity(c textenc.Config, dt kernels.DType, weights, tokenizer string) string {
	b := tokenizers.GemmaBatch
	return fmt.Sprintf("gemma3-penultimate/config=%s/weights=%s/tokenizer=%s/dtype=%v/max=%d/pad=%d×%d",
		shortHash(c.JSON()), weights, tokenizer, dt, b.MaxLength, b.PadID, b.PadToMultipleOf)
}

// jinaIdentity names everything that changes a Jina pooled vector.
func jinaIdentity(c textenc.JinaConfig, task string, dt kernels.DType, weights, tokenizer string) string {
	return fmt.Sprintf("jina-clip-v2-pooled/config=%s/task=%s/weights=%s/tokenizer=%s/dtype=%v/max=%d",
		shortHash(c.JSON()), task, weights, tokenizer, dt, tokenizers.JinaBatch.MaxLength)
}

// GemmaEncoder adapts a loaded Gemma 3 to data.TextEncoder, as NewBie
// encodes captions: tokenize with <bos> first, truncate to 512 ids, pad
// with <pad> to the batch's longest row rounded up to a multiple of 8
// (tokenizers.GemmaBatch), run to the penultimate hidden state, and keep
// each text's rows up to its own length rounded up to 8 — what encoding it
// alone gives, so a text's features do not depend on its batch — with Mask
// 1 at its real tokens and 0 at the padding. The caller supplies the text
// Gemma reads (data prepends NewBie's system prompt). Calls are
// serialised (an engine is used by one goroutine at a time); the engine's
// autocast is turned off while it runs (the model computes in its own
// dtype) and restored.
type GemmaEncoder struct {
	g *textenc.Gemma
	textAdapter
}

// textAdapter is what both adapters hold beside their model: the
// tokenizer, the options, the identity, and the truncation count (under
// the lock that serialises calls).
type textAdapter struct {
	tok      *tokenizers.Tokenizer
	o        TextOptions
	identity string

	mu    sync.Mutex
	trunc Truncations
}

// Identity implements data.TextEncoder: the architecture, the weights, the
// tokenizer, the dtype and the batching (limit and padding).
func (a *textAdapter) Identity() string { return a.identity }

// Truncations reports the texts cut so far.
func (a *textAdapter) Truncations() Truncations {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.trunc
}

// NewGemmaEncoder wraps a loaded Gemma 3 and its tokenizer. A tokenizer of
// another kind (not BPE, other special ids) or with ids beyond the model's
// embedding is refused, naming both.
func NewGemmaEncoder(g *textenc.Gemma, tok *tokenizers.Tokenizer, o TextOptions) (*GemmaEncoder, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkPair(PartGemmaTokenizer, tok, g.Config().VocabSize, o.Source); err != nil {
		return nil, err
	}
	return &GemmaEncoder{g: g, textAdapter: textAdapter{tok: tok, o: o, identity: gemmaIdentity(g.Config(), g.DType(), o.Weights, tok.Identity()),
		trunc: Truncations{Encoder: "Gemma 3", Limit: tokenizers.GemmaBatch.MaxLength}}}, nil
}

// checkPair checks a tokenizer against its encoder: its kind and special
// ids (checkTokenizer) and its ids within the embedding's rows.
func checkPair(p Part, tok *tokenizers.Tokenizer, rows int, weights string) error {
	if tok == nil {
		return fmt.Errorf("newbie: the %s adapter needs a tokenizer", p.Title())
	}
	if err := checkTokenizer(p, tok); err != nil {
		return fmt.Errorf("newbie: %w", err)
	}
	if tok.VocabSize() > rows {
		return fmt.Errorf("newbie: %s %s has ids up to %d, but the embedding of %s has %d rows: they are not a pair",
			p.Title(), tok.Path(), tok.VocabSize()-1, weights, rows)
	}
	return nil
}

// EncodeTexts implements data.TextEncoder, Batch texts per forward pass;
// ctx is checked between batches.
func (e *GemmaEncoder) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := e.g.Config().HiddenSize
	mult := tokenizers.GemmaBatch.PadToMultipleOf
	return encodeInBatches(ctx, texts, "Gemma 3", e.g.Engine(), e.tok, tokenizers.GemmaBatch, e.o, &e.trunc,
		func(b tokenizers.Batch) (*ag.Tensor, error) { return e.g.PenultimateHidden(b.IDs, b.Mask) },
		func(b tokenizers.Batch, i int, vals []float64) data.TextEncoding {
			l := b.Length
			rows := min(l, (b.Lengths[i]+mult-1)/mult*mult)
			f := make([]float32, rows*d)
			for k, v := range vals[i*l*d : i*l*d+rows*d] {
				f[k] = float32(v)
			}
			return data.TextEncoding{Features: f, Tokens: rows, Dim: d, Mask: append([]int32(nil), b.Mask[i][:rows]...)}
		})
}

// encodeInBatches is both adapters' loop: o.Batch texts at a time (ctx
// checked between batches), tokenized and padded as batch says, checked by
// o.Guard, run through forward on eng with autocast and the tape off,
// counted for truncation, and each text's encoding taken from the batch's
// values by each.
func encodeInBatches(ctx context.Context, texts []string, name string, eng *ag.Engine, tok *tokenizers.Tokenizer, batch tokenizers.BatchOptions, o TextOptions,
	trunc *Truncations, forward func(tokenizers.Batch) (*ag.Tensor, error), each func(b tokenizers.Batch, i int, vals []float64) data.TextEncoding) ([]data.TextEncoding, error) {
	out := make([]data.TextEncoding, 0, len(texts))
	for start := 0; start < len(texts); start += o.Batch {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		chunk := texts[start:min(start+o.Batch, len(texts))]
		b, err := tok.EncodeBatch(chunk, batch)
		if err != nil {
			return nil, fmt.Errorf("newbie: %s tokenizer %s: %w", name, tok.Path(), err)
		}
		if o.Guard != nil {
			if err := o.Guard(len(chunk), b.Length); err != nil {
				return nil, err
			}
		}
		vals, err := runFrozen(eng, func() (*ag.Tensor, error) { return forward(b) })
		if err != nil {
			return nil, fmt.Errorf("newbie: %s encoding texts %d–%d: %w", name, start, start+len(chunk)-1, err)
		}
		trunc.add(b)
		for i := range chunk {
			out = append(out, each(b, i, vals))
		}
	}
	return out, nil
}

// runFrozen runs a forward with autocast off and the tape off, reads its
// result and releases it.
func runFrozen(e *ag.Engine, f func() (*ag.Tensor, error)) ([]float64, error) {
	prev := e.SetAutocast(0)
	defer e.SetAutocast(prev)
	var vals []float64
	var err error
	e.NoGrad(func() {
		var t *ag.Tensor
		if t, err = f(); err != nil {
			return
		}
		vals, err = t.Values()
		t.Release()
	})
	return vals, err
}

// JinaEncoder adapts Jina CLIP v2's loaded text tower to data.TextEncoder,
// as NewBie encodes captions for it: <s> … </s>, at most 2048 ids, padded
// with <pad> (tokenizers.JinaBatch), mean-pooled over the real tokens; it
// fills Pooled only. The caller supplies the raw caption (no system
// prompt). Calls are serialised; autocast is off while it runs.
type JinaEncoder struct {
	j *textenc.Jina
	textAdapter
}

// NewJinaEncoder wraps a loaded Jina text tower and its tokenizer; a
// tokenizer of another kind or with ids beyond the embedding is refused,
// naming both.
func NewJinaEncoder(j *textenc.Jina, tok *tokenizers.Tokenizer, o TextOptions) (*JinaEncoder, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkPair(PartJinaTokenizer, tok, j.Config().VocabSize, o.Source); err != nil {
		return nil, err
	}
	return &JinaEncoder{j: j, textAdapter: textAdapter{tok: tok, o: o, identity: jinaIdentity(j.Config(), j.Task(), j.DType(), o.Weights, tok.Identity()),
		trunc: Truncations{Encoder: "Jina CLIP v2", Limit: tokenizers.JinaBatch.MaxLength}}}, nil
}

// EncodeTexts implements data.TextEncoder, Batch texts per forward pass;
// ctx is checked between batches.
func (e *JinaEncoder) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := e.j.Config().HiddenSize
	return encodeInBatches(ctx, texts, "Jina CLIP v2", e.j.Engine(), e.tok, tokenizers.JinaBatch, e.o, &e.trunc,
		func(b tokenizers.Batch) (*ag.Tensor, error) { return e.j.Pooled(b.IDs, b.Mask) },
		func(_ tokenizers.Batch, i int, vals []float64) data.TextEncoding {
			p := make([]float32, d)
			for k, v := range vals[i*d : (i+1)*d] {
				p[k] = float32(v)
			}
			return data.TextEncoding{Pooled: p}
		})
}

// The adapters are what the trainer's encode cache takes.
var (
	_ data.TextEncoder = (*GemmaEncoder)(nil)
	_ data.TextEncoder = (*JinaEncoder)(nil)
)
