package checkpoints

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// goldenWeights opens the tiny upstream weights or skips.
func goldenWeights(t *testing.T) *safetensors.File {
	t.Helper()
	f, err := safetensors.Open(goldentest.Path(t, "nextdit", "tiny.weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// toDiffusers is the forward conversion as diffusers' convert_lumina2_to_diffusers
// (src/diffusers/loaders/single_file_utils.py) applies it: the same string
// replacements in the same order, written out here independently of the
// reverse table the package uses, so the test checks one against the other.
func toDiffusers(k string) string {
	if k == "norm_final.weight" {
		return "" // dropped: upstream never uses it
	}
	rules := [][][2]string{
		{ // CONTEXT_REFINER_MAP
			{"context_refiner.0.attention_norm1", "context_refiner.0.norm1"},
			{"context_refiner.0.attention_norm2", "context_refiner.0.norm2"},
			{"context_refiner.1.attention_norm1", "context_refiner.1.norm1"},
			{"context_refiner.1.attention_norm2", "context_refiner.1.norm2"},
		},
		{ // FINAL_LAYER_MAP
			{"final_layer.adaLN_modulation.1", "norm_out.linear_1"},
			{"final_layer.linear", "norm_out.linear_2"},
		},
		{ // ATTENTION_NORM_MAP
			{"attention_norm1", "norm1.norm"},
			{"attention_norm2", "norm2"},
		},
		{ // LUMINA_KEY_MAP
			{"cap_embedder", "time_caption_embed.caption_embedder"},
			{"t_embedder.mlp.0", "time_caption_embed.timestep_embedder.linear_1"},
			{"t_embedder.mlp.2", "time_caption_embed.timestep_embedder.linear_2"},
			{"clip_text_pooled_proj", "time_caption_embed.clip_text_pooled_proj"}, // diffusers pull 12803 (NewBie)
			{"time_text_embed", "time_caption_embed.time_text_embed"},
			{"attention", "attn"},
			{".out.", ".to_out.0."},
			{"k_norm", "norm_k"},
			{"q_norm", "norm_q"},
			{"w1", "linear_1"},
			{"w2", "linear_2"},
			{"w3", "linear_3"},
			{"adaLN_modulation.1", "norm1.linear"},
		},
	}
	for _, group := range rules {
		for _, r := range group {
			k = strings.ReplaceAll(k, r[0], r[1])
		}
	}
	return k
}

// writeDiffusersFolder builds a fake diffusers pipeline folder from the
// golden upstream weights: transformer/ with two shards and an index, q/k/v
// split by rows (q = n_heads·head_dim rows, k and v n_kv_heads·head_dim).
func writeDiffusersFolder(t *testing.T, g *safetensors.File, drop string) string {
	t.Helper()
	var cfg struct {
		Dim    int `json:"dim"`
		Heads  int `json:"n_heads"`
		KVHead int `json:"n_kv_heads"`
	}
	if err := json.Unmarshal([]byte(g.Metadata()["config"]), &cfg); err != nil {
		t.Fatal(err)
	}
	hd := cfg.Dim / cfg.Heads
	root := t.TempDir()
	tdir := filepath.Join(root, "transformer")
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		t.Fatal(err)
	}
	var shards [2][]safetensors.Tensor
	weightMap := map[string]string{}
	names := [2]string{"diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"}
	put := func(name string, shape []int, b []byte) {
		if name == drop {
			return
		}
		i := len(weightMap) % 2
		shards[i] = append(shards[i], safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: b})
		weightMap[name] = names[i]
	}
	for _, info := range g.Tensors() {
		d := toDiffusers(info.Name)
		if d == "" {
			continue
		}
		b, _ := g.Bytes(info.Name)
		if !strings.Contains(d, "qkv") {
			put(d, info.Shape, b)
			continue
		}
		rows := []int{cfg.Heads * hd, cfg.KVHead * hd, cfg.KVHead * hd}
		off := 0
		for i, part := range []string{"to_q", "to_k", "to_v"} {
			n := rows[i] * info.Shape[1] * 4
			put(strings.Replace(d, "qkv", part, 1), []int{rows[i], info.Shape[1]}, b[off:off+n])
			off += n
		}
		if off != len(b) {
			t.Fatalf("%s: q/k/v rows %v do not cover %v", info.Name, rows, info.Shape)
		}
	}
	for i := range shards {
		if err := safetensors.Write(filepath.Join(tdir, names[i]), shards[i], map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(tdir, "diffusion_pytorch_model.safetensors.index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// checkAgainstGolden compares every upstream tensor of w with the golden
// file bit for bit; skip lists names the layout cannot carry.
func checkAgainstGolden(t *testing.T, w *Weights, g *safetensors.File, skip map[string]bool) {
	t.Helper()
	var want []string
	for _, n := range g.Names() {
		if !skip[n] {
			want = append(want, n)
		}
	}
	if got := w.Names(); !reflect.DeepEqual(got, want) {
		t.Fatalf("upstream names differ:\n got  %v\n want %v", got, want)
	}
	for _, n := range want {
		ref, _ := g.Float32(n)
		got, err := w.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, ref) {
			t.Errorf("%s differs from the golden tensor", n)
		}
		gi, _ := g.Info(n)
		wi, _ := w.Info(n)
		if !reflect.DeepEqual(gi.Shape, wi.Shape) || wi.DType != gi.DType {
			t.Errorf("%s: %s%v, want %s%v", n, wi.DType, wi.Shape, gi.DType, gi.Shape)
		}
	}
}

// TestWeightsDiffusers: a sharded diffusers folder maps back to exactly the
// upstream tensors (q/k/v stacked into qkv); only norm_final, which
// diffusers drops, is absent.
func TestWeightsDiffusers(t *testing.T) {
	g := goldenWeights(t)
	root := writeDiffusersFolder(t, g, "")
	for _, path := range []string{root, filepath.Join(root, "transformer"), filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors.index.json")} {
		w, err := OpenWeights(path)
		if err != nil {
			t.Fatal(err)
		}
		if w.Layout() != LayoutDiffusers || len(w.Map.Unmapped) != 0 {
			t.Errorf("%s: layout %s, unmapped %v", path, w.Layout(), w.Map.Unmapped)
		}
		if r := w.Map.Recipes["layers.1.attention.qkv.weight"]; len(r.Parts) != 3 || !strings.HasSuffix(r.Parts[1].Key, "attn.to_k.weight") {
			t.Errorf("qkv recipe %+v, want to_q, to_k, to_v", r)
		}
		checkAgainstGolden(t, w, g, map[string]bool{"norm_final.weight": true})
		bf, err := w.BF16("noise_refiner.0.attention.qkv.weight")
		if err != nil || len(bf) != 192*96 {
			t.Errorf("BF16 of a stacked tensor: %d values, %v", len(bf), err)
		}
		w.Close()
	}
}

// TestWeightsComfyUI: a ComfyUI all-in-one file maps by stripping the
// prefix; other models' tensors are listed as ignored, stray ones as
// unmapped.
func TestWeightsComfyUI(t *testing.T) {
	g := goldenWeights(t)
	var ts []safetensors.Tensor
	for _, info := range g.Tensors() {
		b, _ := g.Bytes(info.Name)
		ts = append(ts, safetensors.Tensor{Name: comfyModelPrefix + info.Name, DType: info.DType, Shape: info.Shape, Data: b})
	}
	ts = append(ts,
		safetensors.Tensor{Name: "vae.decoder.conv_in.weight", DType: safetensors.F32, Shape: []int{2}, Data: make([]byte, 8)},
		safetensors.Tensor{Name: "something_else", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)})
	p := filepath.Join(t.TempDir(), "newbie_comfy.safetensors")
	if err := safetensors.Write(p, ts, nil); err != nil {
		t.Fatal(err)
	}
	w, err := OpenWeights(p)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Layout() != LayoutComfyUI {
		t.Errorf("layout %s", w.Layout())
	}
	if !reflect.DeepEqual(w.Map.Ignored, []string{"vae.decoder.conv_in.weight"}) || !reflect.DeepEqual(w.Map.Unmapped, []string{"something_else"}) {
		t.Errorf("ignored %v unmapped %v", w.Map.Ignored, w.Map.Unmapped)
	}
	checkAgainstGolden(t, w, g, nil)
}

// TestWeightsUpstream: the golden file itself is the upstream layout and
// maps to itself.
func TestWeightsUpstream(t *testing.T) {
	g := goldenWeights(t)
	w, err := OpenWeights(g.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Layout() != LayoutUpstream || w.Metadata()["config"] == "" {
		t.Errorf("layout %s, config metadata %q", w.Layout(), w.Metadata()["config"])
	}
	checkAgainstGolden(t, w, g, nil)
}

// TestDetectLayout covers each layout and an unknown file.
func TestDetectLayout(t *testing.T) {
	cases := []struct {
		keys []string
		want Layout
		err  bool
	}{
		{[]string{"layers.0.attention.qkv.weight", "x_embedder.weight"}, LayoutUpstream, false},
		{[]string{"model.diffusion_model.layers.0.attention.qkv.weight", "vae.x"}, LayoutComfyUI, false},
		{[]string{"layers.0.attn.to_q.weight", "x_embedder.weight"}, LayoutDiffusers, false},
		{[]string{"time_caption_embed.caption_embedder.0.weight"}, LayoutDiffusers, false},
		{[]string{"context_refiner.0.norm1.weight"}, LayoutDiffusers, false},
		{[]string{"encoder.down_blocks.0.resnets.0.norm1.weight"}, "", true},
		{nil, "", true},
	}
	for _, c := range cases {
		got, err := DetectLayout(c.keys)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%v: %s, %v; want %s (error %v)", c.keys, got, err, c.want, c.err)
		}
	}
}

// TestDiffusersNames spells out the renames one by one.
func TestDiffusersNames(t *testing.T) {
	cases := map[string]string{
		"context_refiner.1.norm1.weight":                     "context_refiner.1.attention_norm1.weight",
		"layers.3.norm1.norm.weight":                         "layers.3.attention_norm1.weight",
		"layers.3.norm1.linear.bias":                         "layers.3.adaLN_modulation.1.bias",
		"noise_refiner.0.norm2.weight":                       "noise_refiner.0.attention_norm2.weight",
		"layers.3.ffn_norm2.weight":                          "layers.3.ffn_norm2.weight",
		"layers.3.attn.norm_k.weight":                        "layers.3.attention.k_norm.weight",
		"layers.3.attn.to_out.0.weight":                      "layers.3.attention.out.weight",
		"layers.3.feed_forward.linear_2.weight":              "layers.3.feed_forward.w2.weight",
		"time_caption_embed.timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
		"time_caption_embed.caption_embedder.1.weight":       "cap_embedder.1.weight",
		"norm_out.linear_2.weight":                           "final_layer.linear.weight",
		"norm_out.linear_1.bias":                             "final_layer.adaLN_modulation.1.bias",
		"clip_text_pooled_proj.1.weight":                     "clip_text_pooled_proj.1.weight",
		"time_caption_embed.clip_text_pooled_proj.0.weight":  "clip_text_pooled_proj.0.weight",
		"time_caption_embed.time_text_embed.1.bias":          "time_text_embed.1.bias",
		"x_embedder.bias":                                    "x_embedder.bias",
	}
	for from, want := range cases {
		got, part, ok := diffusersToUpstream(from)
		if !ok || part != -1 || got != want {
			t.Errorf("%s → %s (part %d, ok %v), want %s", from, got, part, ok, want)
		}
	}
	if got, part, ok := diffusersToUpstream("layers.0.attn.to_v.weight"); !ok || part != 2 || got != "layers.0.attention.qkv.weight" {
		t.Errorf("to_v → %s part %d ok %v", got, part, ok)
	}
}

// TestDiffusersKeys: DiffusersKeys is the forward conversion (toDiffusers,
// written from diffusers' source) for every tensor of the golden model,
// splits qkv into to_q, to_k, to_v, drops norm_final, and MapWeightKeys
// takes its keys back to exactly the upstream names.
func TestDiffusersKeys(t *testing.T) {
	g := goldenWeights(t)
	var keys []string
	want := map[string]bool{}
	for _, n := range g.Names() {
		got := DiffusersKeys(n)
		keys = append(keys, got...)
		d := toDiffusers(n)
		switch {
		case d == "":
			if len(got) != 0 {
				t.Errorf("DiffusersKeys(%s) = %v, want none", n, got)
			}
			continue
		case strings.Contains(d, "qkv"):
			parts := []string{strings.Replace(d, "qkv", "to_q", 1), strings.Replace(d, "qkv", "to_k", 1), strings.Replace(d, "qkv", "to_v", 1)}
			if !reflect.DeepEqual(got, parts) {
				t.Errorf("DiffusersKeys(%s) = %v, want %v", n, got, parts)
			}
		case len(got) != 1 || got[0] != d:
			t.Errorf("DiffusersKeys(%s) = %v, want [%s]", n, got, d)
		}
		want[n] = true
	}
	m, err := MapWeightKeys(keys)
	if err != nil {
		t.Fatal(err)
	}
	if m.Layout != LayoutDiffusers || len(m.Unmapped) != 0 || len(m.Recipes) != len(want) {
		t.Fatalf("mapped back: layout %s, %d recipes for %d names, unmapped %v", m.Layout, len(m.Recipes), len(want), m.Unmapped)
	}
	for n := range want {
		if _, ok := m.Recipes[n]; !ok {
			t.Errorf("%s did not map back", n)
		}
	}
}

// TestWeightsErrors: incomplete or inconsistent sources are refused with
// the key or file named.
func TestWeightsErrors(t *testing.T) {
	g := goldenWeights(t)
	t.Run("missing-to_k", func(t *testing.T) {
		root := writeDiffusersFolder(t, g, "layers.0.attn.to_k.weight")
		_, err := OpenWeights(root)
		if err == nil || !strings.Contains(err.Error(), `"layers.0.attn.to_k.weight" is missing`) {
			t.Errorf("error %v, want one naming layers.0.attn.to_k.weight", err)
		}
	})
	t.Run("index-lies", func(t *testing.T) {
		root := writeDiffusersFolder(t, g, "")
		ip := filepath.Join(root, "transformer", "diffusion_pytorch_model.safetensors.index.json")
		raw, _ := os.ReadFile(ip)
		var idx map[string]map[string]any
		json.Unmarshal(raw, &idx)
		idx["weight_map"]["x_embedder.weight"] = map[bool]string{true: "diffusion_pytorch_model-00001-of-00002.safetensors", false: "diffusion_pytorch_model-00002-of-00002.safetensors"}[idx["weight_map"]["x_embedder.weight"] != "diffusion_pytorch_model-00001-of-00002.safetensors"]
		raw, _ = json.Marshal(idx)
		os.WriteFile(ip, raw, 0o644)
		_, err := OpenWeights(root)
		if err == nil || !strings.Contains(err.Error(), "x_embedder.weight") {
			t.Errorf("error %v, want one naming x_embedder.weight", err)
		}
	})
	t.Run("duplicate-across-shards", func(t *testing.T) {
		dir := t.TempDir()
		one := []safetensors.Tensor{{Name: "x_embedder.bias", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)}}
		safetensors.Write(filepath.Join(dir, "a.safetensors"), one, nil)
		safetensors.Write(filepath.Join(dir, "b.safetensors"), one, nil)
		_, err := OpenWeights(dir)
		if err == nil || !strings.Contains(err.Error(), "x_embedder.bias") || !strings.Contains(err.Error(), "b.safetensors") {
			t.Errorf("error %v, want one naming the key and both files", err)
		}
	})
	t.Run("not-a-model", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "vae.safetensors")
		safetensors.Write(p, []safetensors.Tensor{{Name: "encoder.conv_in.weight", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)}}, nil)
		_, err := OpenWeights(p)
		if err == nil || !strings.Contains(err.Error(), "encoder.conv_in.weight") {
			t.Errorf("error %v, want one naming the foreign key", err)
		}
	})
	t.Run("no-files", func(t *testing.T) {
		_, err := OpenWeights(t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "no .safetensors") {
			t.Errorf("error %v", err)
		}
	})
}

// weightSource is the read surface models/nextdit uses on a
// *safetensors.File; *Weights offers the same, so the loader can take either
// through this interface and read every layout.
type weightSource interface {
	Names() []string
	Info(name string) (safetensors.TensorInfo, bool)
	Metadata() map[string]string
	Float64(name string) ([]float64, error)
	Float32(name string) ([]float32, error)
	BF16(name string) ([]uint16, error)
}

var (
	_ weightSource = (*Weights)(nil)
	_ weightSource = (*safetensors.File)(nil)
)
