package textenc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// namedTensor is one tensor of a file being rewritten.
type namedTensor struct {
	name  string
	shape []int
	v     []float64
}

// jinaTensors reads the golden weights with their config.
func jinaTensors(t *testing.T, path string) ([]namedTensor, map[string]any) {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []namedTensor
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		v, err := f.Float64(n)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, namedTensor{n, info.Shape, v})
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(f.Metadata()["config"]), &cfg); err != nil {
		t.Fatal(err)
	}
	return ts, cfg
}

// writeJina writes tensors under their names with prefix cut off the front
// (and cfg as metadata when not nil) to dir/name.
func writeJina(t *testing.T, dir, name, cut string, ts []namedTensor, cfg map[string]any) string {
	t.Helper()
	var out []safetensors.Tensor
	for _, x := range ts {
		out = append(out, f32Tensor(strings.TrimPrefix(x.name, cut), x.shape, x.v))
	}
	var meta map[string]string
	if cfg != nil {
		js, _ := json.Marshal(cfg)
		meta = map[string]string{"config": string(js)}
	}
	return writeFile(t, dir, name, out, meta)
}

// pooledOf loads path and returns the pooled vector of the batch in F64.
func pooledOf(t *testing.T, path string, opts JinaOptions, ids, mask [][]int32) []float64 {
	t.Helper()
	opts.DType = kernels.F64
	j, err := LoadJina(ag.New(cpu.New()), path, opts)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	defer j.Release()
	p, err := j.Pooled(ids, mask)
	if err != nil {
		t.Fatal(err)
	}
	return values(t, p)
}

// TestJinaLayouts loads the golden tower from the layouts it comes in —
// jina-clip-v2's names beside a vision tower, the text-only names without
// text_model.transformer. or without any prefix, a folder whose
// config.json is jina-clip-v2's JinaCLIPConfig — and checks each gives
// the golden's pooled vector.
func TestJinaLayouts(t *testing.T) {
	g := openJinaGolden(t)
	ts, cfg := jinaTensors(t, g.weights)
	const full = "text_model.transformer.roberta."
	dir := t.TempDir()
	withVision := append(slices.Clone(ts),
		namedTensor{"vision_model.patch_embed.proj.weight", []int{2, 3}, make([]float64, 6)},
		namedTensor{"text_model.head.weight", []int{2, 2}, make([]float64, 4)}, // outside the tower: skipped
	)
	hf := t.TempDir()
	clip := map[string]any{"architectures": []string{"JinaCLIPModel"}, "model_type": "jina_clip",
		"text_config": map[string]any{"default_lora_task": "retrieval.query", "hf_model_name_or_path": "jinaai/jina-embeddings-v3",
			"hf_model_config_kwargs": cfg}}
	writeJina(t, hf, "model.safetensors", "", withVision, nil)
	writeJSON(t, hf, "config.json", clip)
	for _, tc := range []struct{ name, path string }{
		{"jina-clip-v2 names and a vision tower", writeJina(t, dir, "clip.safetensors", "", withVision, cfg)},
		{"roberta. names", writeJina(t, dir, "roberta.safetensors", "text_model.transformer.", ts, cfg)},
		{"bare names", writeJina(t, dir, "bare.safetensors", full, ts, cfg)},
		{"jina-clip-v2 folder with its config.json", hf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			goldentest.Check(t, "out.pooled", pooledOf(t, tc.path, JinaOptions{}, g.ids, g.mask), g.pooled, 1e-6)
		})
	}
}

// TestJinaTaskIndex stacks a second adaptation in front of the golden's:
// with lora_adaptations [retrieval.passage, retrieval.query] the default
// task is index 1 and must give the golden's numbers; choosing
// retrieval.passage must not.
func TestJinaTaskIndex(t *testing.T) {
	g := openJinaGolden(t)
	ts, cfg := jinaTensors(t, g.weights)
	r := kerneltest.Rng(t)
	for i, x := range ts {
		if !strings.Contains(x.name, ".lora_") {
			continue
		}
		other := kerneltest.Randn(r, len(x.v), 0.3)
		ts[i] = namedTensor{x.name, append([]int{2}, x.shape[1:]...), append(other, x.v...)}
	}
	cfg["lora_adaptations"] = []string{"retrieval.passage", "retrieval.query"}
	path := writeJina(t, t.TempDir(), "two.safetensors", "", ts, cfg)
	goldentest.Check(t, "default task (index 1)", pooledOf(t, path, JinaOptions{}, g.ids, g.mask), g.pooled, 1e-6)
	if d := kernels.RelErr(pooledOf(t, path, JinaOptions{Task: "retrieval.passage"}, g.ids, g.mask), g.pooled); d < 1e-3 {
		t.Errorf("retrieval.passage is within %.3g of retrieval.query: the task index is not used", d)
	}
	if _, err := LoadJina(ag.New(cpu.New()), path, JinaOptions{Task: "text-matching"}); err == nil || !strings.Contains(err.Error(), `"text-matching" is not one of`) {
		t.Errorf("unknown task: %v", err)
	}
}

// TestJinaBadFiles checks the errors of files that are not what LoadJina
// needs: each names the file and what is wrong.
func TestJinaBadFiles(t *testing.T) {
	g := openJinaGolden(t)
	ts, cfg := jinaTensors(t, g.weights)
	dir := t.TempDir()
	const p = "text_model.transformer.roberta."
	var edited []namedTensor
	for _, x := range ts {
		switch x.name {
		case p + "encoder.layers.1.mlp.fc2.bias": // dropped
		case p + "encoder.layers.0.norm2.weight":
			edited = append(edited, namedTensor{x.name, []int{32}, x.v[:32]})
		default:
			edited = append(edited, x)
		}
	}
	edited = append(edited, namedTensor{p + "pooler.dense.weight", []int{2, 2}, make([]float64, 4)})
	damaged := writeJina(t, dir, "damaged.safetensors", "", edited, cfg)
	_, err := LoadJina(ag.New(cpu.New()), damaged, JinaOptions{})
	ke, ok := IsKeyError(err)
	if !ok {
		t.Fatalf("damaged file: %v, want a *KeyError", err)
	}
	if len(ke.Missing) != 1 || len(ke.Unexpected) != 1 || len(ke.Misshaped) != 1 {
		t.Errorf("key report %+v", ke)
	}
	for _, want := range []string{damaged, "Jina CLIP v2 text tower", "from the metadata of " + damaged,
		"missing    encoder.layers.1.mlp.fc2.bias (expected shape [64])", "unexpected " + p + "pooler.dense.weight",
		"mis-shaped encoder.layers.0.norm2.weight: file has [32], expected [64]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	// Without any config the architecture is jina-clip-v2's, and says so.
	bare := writeJina(t, dir, "noconfig.safetensors", "", ts, nil)
	if _, err := LoadJina(ag.New(cpu.New()), bare, JinaOptions{}); err == nil ||
		!strings.Contains(err.Error(), "jina-clip-v2 defaults") || !strings.Contains(err.Error(), "expected [250002 1024]") {
		t.Errorf("no config: %v", err)
	}

	// Another model's weights.
	gemma, _ := writeModel(t, tinyConfig(SlidingAttention), "model.", nil)
	nextdit := goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
	truncated := filepath.Join(dir, "truncated.safetensors")
	raw, err := os.ReadFile(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(truncated, raw[:len(raw)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"Next-DiT", nextdit, "not a Jina CLIP v2 text tower checkpoint (it is a Next-DiT checkpoint"},
		{"Gemma", gemma, "it looks like a Gemma 3 text model"},
		{"truncated", truncated, "truncated"},
		{"absent", filepath.Join(dir, "none.safetensors"), "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadJina(ag.New(cpu.New()), tc.path, JinaOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("error %v, want one naming %s and containing %q", err, tc.path, tc.want)
			}
		})
	}
}

// TestJinaForwardRejects checks argument errors and that a forward keeps
// nothing but what it returns.
func TestJinaForwardRejects(t *testing.T) {
	g := openJinaGolden(t)
	b := cpu.New()
	e := ag.New(b)
	cfg, err := ParseJinaConfig(`{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
		"vocab_size": 300, "type_vocab_size": 1, "lora_adaptations": ["retrieval.query"], "lora_rank": 4, "lora_alpha": 4,
		"max_position_embeddings": 8}`)
	if err != nil {
		t.Fatal(err)
	}
	j, err := LoadJina(e, g.weights, JinaOptions{DType: kernels.F32, Config: &cfg})
	if err != nil {
		t.Fatal(err)
	}
	weights := b.MemStats().Allocated
	for _, tc := range []struct {
		name      string
		ids, mask [][]int32
		want      string
	}{
		{"too long", [][]int32{make([]int32, 9)}, nil, "exceed the model's max_position_embeddings 8"},
		{"vocabulary", [][]int32{{0, 300, 2}}, nil, "outside the vocabulary of 300"},
		{"left padding", [][]int32{{1, 0, 2}}, [][]int32{{0, 1, 1}}, "only right padding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := j.Pooled(tc.ids, tc.mask); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	p, err := j.Pooled([][]int32{{0, 5, 6, 2}, {0, 7, 2, 1}}, [][]int32{{1, 1, 1, 1}, {1, 1, 1, 0}})
	if err != nil {
		t.Fatal(err)
	}
	if p.DType() != kernels.F32 || !slices.Equal(p.Shape(), []int{2, 64}) {
		t.Errorf("pooled is %v %v, want F32 [2 64]", p.DType(), p.Shape())
	}
	p.Release()
	// The rotary tables of the batch's shape stay cached: cos and sin
	// [2, 4, 16/2] float32.
	if got, tables := b.MemStats().Allocated, int64(2*2*4*8*4); got != weights+tables {
		t.Errorf("after releasing the output %d bytes are allocated, the weights hold %d and the cached rotary tables %d", got, weights, tables)
	}
	j.Release()
	if got := b.MemStats().Allocated; got != 0 {
		t.Errorf("after releasing the model %d bytes are still allocated", got)
	}
	if _, err := j.Forward([][]int32{{0, 2}}, nil); err == nil || !strings.Contains(err.Error(), "released") {
		t.Errorf("forward on a released model: %v", err)
	}
}

// TestParseJinaConfig reads jina-embeddings-v3's and jina-clip-v2's
// config.json and rejects what the forward does not build.
func TestParseJinaConfig(t *testing.T) {
	// jina-embeddings-v3's config.json, the fields that matter.
	v3 := `{"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096, "layer_norm_eps": 1e-05,
		"lora_adaptations": ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"],
		"lora_alpha": 1, "lora_rank": 4, "max_position_embeddings": 8194, "num_attention_heads": 16,
		"num_hidden_layers": 24, "position_embedding_type": "rotary", "rotary_emb_base": 20000.0,
		"type_vocab_size": 1, "vocab_size": 250002}`
	c, err := ParseJinaConfig(v3)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, JinaCLIPv2Config()) {
		t.Errorf("jina-embeddings-v3's config.json gives %+v, not JinaCLIPv2Config %+v", c, JinaCLIPv2Config())
	}
	if c.LoRAScale() != 0.25 || c.HeadDim() != 64 {
		t.Errorf("scale %g head %d, want 0.25 and 64", c.LoRAScale(), c.HeadDim())
	}
	// jina-clip-v2: the text config names the task; kwargs override.
	clip := `{"model_type": "jina_clip", "text_config": {"default_lora_task": "text-matching",
		"hf_model_config_kwargs": {"lora_alpha": 2, "use_flash_attn": true}}}`
	if c, err = ParseJinaConfig(clip); err != nil {
		t.Fatal(err)
	}
	if c.DefaultTask != "text-matching" || c.LoRAAlpha != 2 || c.HiddenSize != 1024 {
		t.Errorf("jina-clip-v2 config: %+v", c)
	}
	if k, _ := c.TaskIndex("text-matching"); k != 4 {
		t.Errorf("text-matching is adaptation %d, want 4", k)
	}
	for _, tc := range []struct{ name, js, want string }{
		{"activation", `{"hidden_act": "gelu_new"}`, "hidden_act"},
		{"positions", `{"position_embedding_type": "absolute"}`, "position_embedding_type"},
		{"partial rotary", `{"rotary_emb_dim": 32}`, "rotary_emb_dim"},
		{"heads", `{"num_attention_heads": 7}`, "not a multiple"},
		{"task", `{"default_lora_task": "summarise"}`, "summarise"},
		{"json", `[`, "Jina config JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseJinaConfig(tc.js); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
