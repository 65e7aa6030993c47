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
)

// TestShardedCheckpoint splits a Gemma3ForCausalLM-style checkpoint
// (model. prefix, a tied lm_head beside it) into two shards with a Hugging
// Face index and checks that the folder, the index and the single file
// load to the same model.
func TestShardedCheckpoint(t *testing.T) {
	raw := tinyConfig(SlidingAttention, FullAttention)
	single, w := writeModel(t, raw, "model.", nil)
	cfg := mustConfig(t, raw)
	js, _ := json.Marshal(raw)
	dir := t.TempDir()
	shards := map[string][]safetensors.Tensor{}
	weightMap := map[string]string{}
	put := func(shard, name string, shape []int, v []float64) {
		f := make([]float32, len(v))
		for i, x := range v {
			f[i] = float32(x)
		}
		shards[shard] = append(shards[shard], safetensors.FloatTensor(name, safetensors.F32, shape, f))
		weightMap[name] = shard
	}
	for _, p := range cfg.Params() {
		shard := "model-00002-of-00002.safetensors"
		if p.Name == "embed_tokens.weight" || strings.HasPrefix(p.Name, "layers.0.") {
			shard = "model-00001-of-00002.safetensors"
		}
		put(shard, "model."+p.Name, p.Shape, w[p.Name])
	}
	put("model-00002-of-00002.safetensors", "lm_head.weight", []int{cfg.VocabSize, cfg.HiddenSize}, w["embed_tokens.weight"])
	for name, ts := range shards {
		if err := safetensors.Write(filepath.Join(dir, name), ts, map[string]string{"config": string(js)}); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	index := filepath.Join(dir, "model.safetensors.index.json")
	if err := os.WriteFile(index, idx, 0o644); err != nil {
		t.Fatal(err)
	}

	ids := randomIDs(kerneltest.Rng(t), 2, 8, cfg.VocabSize)
	run := func(path string) []float64 {
		e := ag.New(cpu.New())
		g, err := Load(e, path, Options{DType: kernels.F64})
		if err != nil {
			t.Fatalf("load %s: %v", path, err)
		}
		defer g.Release()
		p, err := g.PenultimateHidden(ids, nil)
		if err != nil {
			t.Fatal(err)
		}
		return values(t, p)
	}
	want := run(single)
	for _, path := range []string{dir, index} {
		kerneltest.Check(t, path, run(path), want, 0)
	}

	// An index that names a shard missing the tensor is an error that says so.
	weightMap["model.norm.weight"] = "model-00001-of-00002.safetensors"
	idx, _ = json.Marshal(map[string]any{"weight_map": weightMap})
	if err := os.WriteFile(index, idx, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ag.New(cpu.New()), dir, Options{}); err == nil || !strings.Contains(err.Error(), "does not hold it") {
		t.Errorf("bad index: %v", err)
	}
}
