package newbie

import (
	"context"
	"errors"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// tinyEncoders loads the tiny model's text encoders in float64 on a CPU
// engine (exact enough that equal inputs must give equal outputs).
func tinyEncoders(t *testing.T) (*Model, *textenc.Gemma, *textenc.Jina) {
	t.Helper()
	m, err := Discover(tinyModel(t, LayoutHF), Sources{})
	if err != nil {
		t.Fatal(err)
	}
	e := ag.New(cpu.New())
	g, err := textenc.Load(e, m.Gemma.Path, textenc.Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	j, err := textenc.LoadJina(e, m.Jina.Path, textenc.JinaOptions{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Release(); j.Release() })
	return m, g, j
}

// captions are texts of different lengths: XML captions behind the Gemma
// system prompt, a plain tag list, one with characters outside the tiny
// vocabularies.
func captions() []string {
	return []string{
		data.FeatureText(data.GemmaSystemPrompt, SampleCaption(0)),
		"1girl, solo, smile",
		data.FeatureText(data.GemmaSystemPrompt, SampleCaption(5)),
		"éclair ☕ 東京",
	}
}

// TestGemmaEncoder: the adapter tokenizes as NewBie does and gives, for
// each text, exactly what the model gives on that text's own ids (<bos>
// first, padded with 0 to a multiple of 8): rows up to that length, mask 1
// on the real tokens; batches of one, two or all texts agree, and a second
// run is identical.
func TestGemmaEncoder(t *testing.T) {
	m, g, _ := tinyEncoders(t)
	tok := m.GemmaTokenizer.Tokenizer
	texts := captions()
	run := func(batch int) []data.TextEncoding {
		enc, err := NewGemmaEncoder(g, tok, TextOptions{Batch: batch, Weights: "test"})
		if err != nil {
			t.Fatal(err)
		}
		out, err := enc.EncodeTexts(context.Background(), texts)
		if err != nil {
			t.Fatal(err)
		}
		if tr := enc.Truncations(); tr.Texts != len(texts) || tr.Truncated != 0 || tr.Warning() != "" {
			t.Errorf("truncations %+v", tr)
		}
		return out
	}
	all := run(8)
	d := g.Config().HiddenSize
	for i, text := range texts {
		ids := tok.Encode(text)
		if ids[0] != 2 {
			t.Fatalf("text %d starts with id %d, want <bos> = 2", i, ids[0])
		}
		l := (len(ids) + 7) / 8 * 8
		row, mask := make([]int32, l), make([]int32, l)
		copy(row, ids)
		for k := range ids {
			mask[k] = 1
		}
		var want []float64
		g.Engine().NoGrad(func() {
			h, err := g.PenultimateHidden([][]int32{row}, [][]int32{mask})
			if err != nil {
				t.Fatal(err)
			}
			want, err = h.Values()
			if err != nil {
				t.Fatal(err)
			}
			h.Release()
		})
		got := all[i]
		if got.Tokens != l || got.Dim != d || len(got.Features) != l*d || len(got.Mask) != l || got.Pooled != nil {
			t.Fatalf("text %d: %d tokens × %d, mask %d, want %d × %d", i, got.Tokens, got.Dim, len(got.Mask), l, d)
		}
		for k := range l {
			if got.Mask[k] != mask[k] {
				t.Fatalf("text %d: mask %v, want %v", i, got.Mask, mask)
			}
		}
		for k, v := range got.Features {
			if v != float32(want[k]) {
				t.Fatalf("text %d feature %d: %v, the model on the ids gives %v", i, k, v, want[k])
			}
		}
	}
	for _, batch := range []int{1, 2} {
		other := run(batch)
		for i := range all {
			for k, v := range other[i].Features {
				if v != all[i].Features[k] {
					t.Fatalf("batch %d changes text %d's feature %d: %v vs %v", batch, i, k, v, all[i].Features[k])
				}
			}
		}
	}
}

// TestJinaEncoder: the adapter gives each raw caption the model's pooled
// vector on its own ids (<s> … </s>), whatever the batch.
func TestJinaEncoder(t *testing.T) {
	m, _, j := tinyEncoders(t)
	tok := m.JinaTokenizer.Tokenizer
	texts := captions()
	enc, err := NewJinaEncoder(j, tok, TextOptions{Batch: 3, Weights: "test"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := enc.EncodeTexts(context.Background(), texts)
	if err != nil {
		t.Fatal(err)
	}
	for i, text := range texts {
		ids := tok.Encode(text)
		if ids[0] != 0 || ids[len(ids)-1] != 2 {
			t.Fatalf("text %d ids %v, want <s> … </s>", i, ids)
		}
		var want []float64
		j.Engine().NoGrad(func() {
			p, err := j.Pooled([][]int32{ids}, nil)
			if err != nil {
				t.Fatal(err)
			}
			want, err = p.Values()
			if err != nil {
				t.Fatal(err)
			}
			p.Release()
		})
		if len(out[i].Pooled) != j.Config().HiddenSize || out[i].Features != nil {
			t.Fatalf("text %d: pooled %d, features %d", i, len(out[i].Pooled), len(out[i].Features))
		}
		for k, v := range out[i].Pooled {
			if d := float64(v) - want[k]; d > 1e-6 || d < -1e-6 {
				t.Fatalf("text %d pooled %d: %v, the model on the ids gives %v", i, k, v, want[k])
			}
		}
	}
}

// TestEncoderLimits: texts beyond the token limit are cut and counted for
// one warning; a cancelled context stops between batches; tokenizers of
// the other encoder, or with ids beyond the embedding, are refused; an
// adapter without a weights identity is refused.
func TestEncoderLimits(t *testing.T) {
	m, g, j := tinyEncoders(t)
	long := strings.Repeat("masterpiece, best quality, ", 120)
	enc, err := NewGemmaEncoder(g, m.GemmaTokenizer.Tokenizer, TextOptions{Weights: "test"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := enc.EncodeTexts(context.Background(), []string{"1girl", long, long})
	if err != nil {
		t.Fatal(err)
	}
	tr := enc.Truncations()
	if out[1].Tokens != 512 || tr.Truncated != 2 || tr.Texts != 3 || tr.Longest <= 512 ||
		!strings.Contains(tr.Warning(), "Gemma 3: 2 of 3 texts exceed 512 tokens") {
		t.Errorf("long texts: %d tokens, %+v, %q", out[1].Tokens, tr, tr.Warning())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := enc.EncodeTexts(ctx, []string{"a"}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, err := NewGemmaEncoder(g, m.JinaTokenizer.Tokenizer, TextOptions{Weights: "test"}); err == nil ||
		!strings.Contains(err.Error(), m.JinaTokenizer.Path) || !strings.Contains(err.Error(), "needs a BPE tokenizer") {
		t.Errorf("Jina's tokenizer for Gemma: %v", err)
	}
	if _, err := NewJinaEncoder(j, m.GemmaTokenizer.Tokenizer, TextOptions{Weights: "test", Source: m.Jina.Path}); err == nil ||
		!strings.Contains(err.Error(), "needs a Unigram tokenizer") {
		t.Errorf("Gemma's tokenizer for Jina: %v", err)
	}
	if _, err := NewGemmaEncoder(g, m.GemmaTokenizer.Tokenizer, TextOptions{}); err == nil {
		t.Error("an adapter without a weights identity was accepted")
	}
	// A model whose embedding is smaller than the tokenizer's ids.
	a, _ := RandomArchs(SizeTiny)
	small := a.Gemma
	small.VocabSize = 256
	e := ag.New(cpu.New())
	gs, err := textenc.Load(e, writeGemma(t, small), textenc.Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Release()
	if _, err := NewGemmaEncoder(gs, m.GemmaTokenizer.Tokenizer, TextOptions{Weights: "test", Source: "small.safetensors"}); err == nil ||
		!strings.Contains(err.Error(), "small.safetensors has 256 rows") || !strings.Contains(err.Error(), m.GemmaTokenizer.Path) {
		t.Errorf("a tokenizer beyond the embedding: %v", err)
	}
	if tokenizers.GemmaBatch.MaxLength != 512 {
		t.Errorf("GemmaBatch.MaxLength %d", tokenizers.GemmaBatch.MaxLength)
	}
}

// writeGemma writes a bare Gemma 3 text model of architecture c with
// random weights and its config in the metadata, and returns its path.
func writeGemma(t *testing.T, c textenc.Config) string {
	t.Helper()
	path := t.TempDir() + "/gemma.safetensors"
	specs := componentSpecs(PartGemma, "", toShapes(c.Params()), weightDType, gemmaInit)
	f := weightFile{path: path, specs: specs}
	if err := safetensors.Write(path, f.tensors(1, 1), map[string]string{"config": c.JSON()}); err != nil {
		t.Fatal(err)
	}
	return path
}
