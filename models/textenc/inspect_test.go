package textenc

import (
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// TestInspect: DetectGemma and DetectJina tell the two encoders apart by
// names alone, each finding its prefix; InspectGemma and InspectJina
// describe a checkpoint as the loaders read it (prefix, counts, the
// tensors they skip) and fail where the loaders would.
func TestInspect(t *testing.T) {
	raw := tinyConfig(SlidingAttention, FullAttention)
	cfg := mustConfig(t, raw)
	// The multimodal layout: the text model under language_model.model.,
	// a vision tower beside it.
	gemma, w := writeModel(t, raw, "language_model.model.", nil)
	ts := []safetensors.Tensor{f32Tensor("vision_tower.vision_model.embeddings.patch_embedding.weight", []int{2, 3}, make([]float64, 6))}
	for _, p := range cfg.Params() {
		ts = append(ts, f32Tensor("language_model.model."+p.Name, p.Shape, w[p.Name]))
	}
	if err := safetensors.Write(gemma, ts, nil); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Dir(gemma), "config.json", raw)
	g := openJinaGolden(t)
	names := func(path string) []string {
		f, err := safetensors.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return f.Names()
	}

	if p, ok := DetectGemma(names(gemma)); !ok || p != "language_model.model." {
		t.Errorf("DetectGemma = %q, %v; want language_model.model.", p, ok)
	}
	if p, ok := DetectJina(names(g.weights)); !ok || p != "text_model.transformer.roberta." {
		t.Errorf("DetectJina = %q, %v; want text_model.transformer.roberta.", p, ok)
	}
	if _, ok := DetectGemma(names(g.weights)); ok {
		t.Error("DetectGemma took the Jina file for Gemma")
	}
	if _, ok := DetectJina(names(gemma)); ok {
		t.Error("DetectJina took the Gemma file for Jina")
	}
	// Gemma 2 has the embedding but no q/k norms: not Gemma 3.
	if _, ok := DetectGemma([]string{"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"}); ok {
		t.Error("DetectGemma took a model without q_norm for Gemma 3")
	}

	gc, ck, err := InspectGemma(gemma, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var params int64
	for _, p := range cfg.Params() {
		n := int64(1)
		for _, s := range p.Shape {
			n *= int64(s)
		}
		params += n
	}
	if !reflect.DeepEqual(gc, cfg) || ck.Prefix != "language_model.model." || ck.Other != 1 || ck.Tensors != len(cfg.Params()) ||
		ck.Params != params || ck.Bytes != 4*params || ck.DTypes["F32"] != ck.Tensors || !slices.Equal(ck.Files, []string{gemma}) ||
		!strings.Contains(ck.Config, "config.json") {
		t.Errorf("InspectGemma = %+v, %+v; want the tiny config under language_model.model., one other tensor, %d params", gc, ck, params)
	}
	jc, jk, err := InspectJina(g.weights, JinaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if jk.Prefix != "text_model.transformer.roberta." || jk.Tensors != len(jc.Params()) || jk.Params == 0 {
		t.Errorf("InspectJina = %+v", jk)
	}
	if _, _, err := InspectGemma(g.weights, Options{}); err == nil || !strings.Contains(err.Error(), "Jina") {
		t.Errorf("InspectGemma of the Jina file: %v, want an error saying it is Jina's", err)
	}
	if _, _, err := InspectJina(gemma, JinaOptions{}); err == nil || !strings.Contains(err.Error(), "Gemma 3") {
		t.Errorf("InspectJina of the Gemma file: %v, want an error saying it is Gemma's", err)
	}
	if _, _, err := InspectJina(g.weights, JinaOptions{Task: "no-such-task"}); err == nil {
		t.Error("InspectJina accepted an unknown LoRA task")
	}
}

// TestConfigJSON: Config.JSON reads back through ParseConfig to the same
// architecture, for Gemma 3 4B and a tiny mixed-layer model.
func TestConfigJSON(t *testing.T) {
	for _, c := range []Config{Gemma4BConfig(), mustConfig(t, tinyConfig(SlidingAttention, FullAttention, SlidingAttention))} {
		got, err := ParseConfig(c.JSON())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("ParseConfig(JSON()) = %+v, want %+v", got, c)
		}
	}
}
