package textenc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// f32Tensor is a float32 tensor to write.
func f32Tensor(name string, shape []int, v []float64) safetensors.Tensor {
	f := make([]float32, len(v))
	for i, x := range v {
		f[i] = float32(x)
	}
	return safetensors.FloatTensor(name, safetensors.F32, shape, f)
}

// writeFile writes tensors (and metadata, may be nil) to dir/name.
func writeFile(t *testing.T, dir, name string, ts []safetensors.Tensor, meta map[string]string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := safetensors.Write(p, ts, meta); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeJSON writes v as JSON to dir/name.
func writeJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, js, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCheckpointLayouts writes one tiny Gemma in the layouts real
// checkpoints come in, none with config metadata (the config.json beside
// them says the architecture), and checks that each loads to the same
// model as the bare file: google/gemma-3-4b-it's sharded multimodal
// checkpoint (transformers 4.x: language_model.model. keys, a vision tower
// and a multi-modal projector beside them, an index, a
// Gemma3ForConditionalGeneration config.json with text_config), the same
// saved by transformers 5 (model.language_model.) as one file in a folder,
// and a ComfyUI text-encoder file (model.layers.…, the tokenizer as a
// spiece_model byte tensor beside).
func TestCheckpointLayouts(t *testing.T) {
	raw := tinyConfig(SlidingAttention, FullAttention, SlidingAttention)
	bare, w := writeModel(t, raw, "", nil)
	cfg := mustConfig(t, raw)
	multimodal := map[string]any{"architectures": []string{"Gemma3ForConditionalGeneration"}, "model_type": "gemma3",
		"text_config": raw, "vision_config": map[string]any{"hidden_size": 4, "model_type": "siglip_vision_model"}}
	vision := func(prefix string) []safetensors.Tensor {
		return []safetensors.Tensor{
			f32Tensor(prefix+"vision_tower.vision_model.embeddings.patch_embedding.weight", []int{4, 3}, make([]float64, 12)),
			f32Tensor(prefix+"multi_modal_projector.mm_input_projection_weight", []int{4, cfg.HiddenSize}, make([]float64, 4*cfg.HiddenSize)),
		}
	}
	text := func(prefix string, keep func(string) bool) []safetensors.Tensor {
		var ts []safetensors.Tensor
		for _, p := range cfg.Params() {
			if keep(p.Name) {
				ts = append(ts, f32Tensor(prefix+p.Name, p.Shape, w[p.Name]))
			}
		}
		return ts
	}
	all := func(string) bool { return true }

	// google/gemma-3-4b-it: two shards and an index.
	hf := t.TempDir()
	first := func(n string) bool { return n == "embed_tokens.weight" || strings.HasPrefix(n, "layers.0.") }
	weightMap := map[string]string{}
	shard := func(name string, ts []safetensors.Tensor) {
		writeFile(t, hf, name, ts, nil)
		for _, x := range ts {
			weightMap[x.Name] = name
		}
	}
	shard("model-00001-of-00002.safetensors", append(text("language_model.model.", first), vision("")...))
	shard("model-00002-of-00002.safetensors", text("language_model.model.", func(n string) bool { return !first(n) }))
	index := writeJSON(t, hf, "model.safetensors.index.json", map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	writeJSON(t, hf, "config.json", multimodal)

	// transformers 5's multimodal layout, one file in a folder.
	v5 := t.TempDir()
	writeFile(t, v5, "model.safetensors", append(append(text("model.language_model.", all), vision("model.")...),
		f32Tensor("lm_head.weight", []int{cfg.VocabSize, cfg.HiddenSize}, w["embed_tokens.weight"])), nil)
	writeJSON(t, v5, "config.json", multimodal)

	// ComfyUI: model.layers.… and the tokenizer's bytes.
	comfy := t.TempDir()
	spiece := safetensors.Tensor{Name: "spiece_model", DType: safetensors.U8, Shape: []int{5}, Data: []byte("spm\x00\x01")}
	comfyFile := writeFile(t, comfy, "gemma_3_4b_it.safetensors", append(text("model.", all), spiece), nil)
	writeJSON(t, comfy, "config.json", raw)

	ids := randomIDs(kerneltest.Rng(t), 2, 9, cfg.VocabSize)
	mask := maskOf([]int{9, 6}, 9)
	run := func(t *testing.T, path string) []float64 {
		e := ag.New(cpu.New())
		g, err := Load(e, path, Options{DType: kernels.F64})
		if err != nil {
			t.Fatalf("load %s: %v", path, err)
		}
		defer g.Release()
		p, err := g.PenultimateHidden(ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		return values(t, p)
	}
	want := run(t, bare)
	for _, tc := range []struct{ name, path string }{
		{"gemma-3-4b-it folder", hf}, {"gemma-3-4b-it index", index},
		{"transformers 5 folder", v5}, {"ComfyUI file", comfyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kerneltest.Check(t, tc.name, run(t, tc.path), want, 0)
		})
	}

	// A shard that is cut short names the shard.
	p := filepath.Join(hf, "model-00002-of-00002.safetensors")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b[:len(b)-9], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ag.New(cpu.New()), hf, Options{}); err == nil || !strings.Contains(err.Error(), "model-00002-of-00002.safetensors") {
		t.Errorf("truncated shard: %v, want an error naming it", err)
	}
}

// TestPenultimateSkipsLastLayer counts the ops PenultimateHidden runs on a
// three-layer model: two layers' attentions and norms (six RMSNorms a
// layer), so neither the last layer nor the final norm; the full forward
// runs all three and the final norm. The outputs agree.
func TestPenultimateSkipsLastLayer(t *testing.T) {
	raw := tinyConfig(SlidingAttention, FullAttention, SlidingAttention)
	path, _ := writeModel(t, raw, "", nil)
	e := ag.New(cpu.New())
	g, err := Load(e, path, Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	counts := map[string]int{}
	e.Trace = func(op string, _ []kernels.DType, _ kernels.DType) { counts[op]++ }
	ids := randomIDs(kerneltest.Rng(t), 2, 7, 37)
	mask := maskOf([]int{7, 3}, 7)
	p, err := g.PenultimateHidden(ids, mask)
	if err != nil {
		t.Fatal(err)
	}
	if counts["Attention"] != 2 || counts["RMSNorm"] != 2*6 {
		t.Errorf("PenultimateHidden ran %d attentions and %d RMSNorms, want 2 and 12 (layers 0 and 1 only)", counts["Attention"], counts["RMSNorm"])
	}
	clear(counts)
	hs, err := g.Forward(ids, mask)
	if err != nil {
		t.Fatal(err)
	}
	if counts["Attention"] != 3 || counts["RMSNorm"] != 3*6+1 {
		t.Errorf("Forward ran %d attentions and %d RMSNorms, want 3 and 19", counts["Attention"], counts["RMSNorm"])
	}
	kerneltest.Check(t, "PenultimateHidden vs Forward's hidden_states[-2]", values(t, p), values(t, hs[len(hs)-2]), 0)
}

// TestGemmaOtherModels gives Load other models' weights: the error names
// the file and what it seems to hold.
func TestGemmaOtherModels(t *testing.T) {
	for _, tc := range []struct{ name, path, want string }{
		{"Next-DiT", goldentest.Path(t, "nextdit", "tiny.weights.safetensors"), "(it is a Next-DiT checkpoint"},
		{"Jina", goldentest.Path(t, "jina", "jina_tiny.weights.safetensors"), "it looks like a Jina XLM-RoBERTa text tower"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(ag.New(cpu.New()), tc.path, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), "not a Gemma 3 text model checkpoint") ||
				!strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one naming %s and containing %q", err, tc.path, tc.want)
			}
		})
	}
}
