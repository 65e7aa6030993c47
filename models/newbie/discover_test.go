package newbie

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/tokenizers"
)

// TestDiscoverLayouts: the tiny random model in both folder layouts is
// found whole, each part read the way the real repository's is: the
// official layout's transformer in upstream keys with its architecture
// from the preset its shapes fit (the official config.json names only its
// class), Gemma under language_model.model. in one file, the tokenizers
// beside the encoders; the diffusers port's transformer in diffusers keys
// with its config.json, Gemma under language_model. in two shards, the
// tokenizers in tokenizer/ and tokenizer_2/.
func TestDiscoverLayouts(t *testing.T) {
	for _, c := range []struct {
		layout                            Layout
		ditFormat, ditConfig, gemmaFormat string
		gemmaFiles                        int
		tokDir, tok2Dir                   string
	}{
		{LayoutHF, "upstream keys", "the tiny preset", "key prefix language_model.model.", 1, "text_encoder", "clip_model"},
		{LayoutDiffusers, "diffusers keys", "transformer/config.json", "key prefix language_model.", 2, "tokenizer", "tokenizer_2"},
	} {
		t.Run(string(c.layout), func(t *testing.T) {
			dir := tinyModel(t, c.layout)
			m, err := Discover(dir, Sources{})
			if err != nil {
				t.Fatal(err)
			}
			if m.Layout != c.layout || len(m.Missing) != 0 {
				t.Fatalf("layout %s, missing %+v", m.Layout, m.Missing)
			}
			a, _ := RandomArchs(SizeTiny)
			if m.DiT.Format != c.ditFormat || !strings.Contains(m.DiT.Config, c.ditConfig) || m.DiT.Preset != "tiny" || m.DiT.Arch.JSON() != a.DiT.JSON() {
				t.Errorf("DiT %s, config %s, preset %s", m.DiT.Format, m.DiT.Config, m.DiT.Preset)
			}
			if m.Gemma.Format != c.gemmaFormat || len(m.Gemma.Files) != c.gemmaFiles || m.Gemma.Other != 1 || m.Gemma.DType() != "BF16" ||
				!strings.Contains(m.Gemma.Config, "text_encoder/config.json") || m.Gemma.Arch.JSON() != a.Gemma.JSON() {
				t.Errorf("Gemma %s in %d files (%d other tensors, %s), config %s", m.Gemma.Format, len(m.Gemma.Files), m.Gemma.Other, m.Gemma.DType(), m.Gemma.Config)
			}
			if m.Jina.Format != "key prefix text_model.transformer.roberta." || m.Jina.Other != 1 || m.Jina.Arch.JSON() != a.Jina.JSON() {
				t.Errorf("Jina %s, %d other tensors", m.Jina.Format, m.Jina.Other)
			}
			if m.VAE.Format != "diffusers keys" || m.VAE.DType() != "F32" || m.VAE.Arch.JSON() != a.VAE.JSON() || m.VAE.Params != vaeParams(a) {
				t.Errorf("VAE %s %s, %d params", m.VAE.Format, m.VAE.DType(), m.VAE.Params)
			}
			if filepath.Base(filepath.Dir(m.GemmaTokenizer.Path)) != c.tokDir || m.GemmaTokenizer.ModelType != tokenizers.ModelBPE ||
				filepath.Base(filepath.Dir(m.JinaTokenizer.Path)) != c.tok2Dir || m.JinaTokenizer.ModelType != tokenizers.ModelUnigram {
				t.Errorf("tokenizers %s (%s), %s (%s)", m.GemmaTokenizer.Path, m.GemmaTokenizer.ModelType, m.JinaTokenizer.Path, m.JinaTokenizer.ModelType)
			}
			if err := m.Require(Parts...); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestDiscoverSingleFiles: the components as single files with other
// names — a flat folder (ComfyUI's style: the DiT under
// model.diffusion_model., renamed encoder files carrying their config in
// their metadata as converted single files do, renamed tokenizers) and the
// same named one by one in Sources — are classified by content; a Sources
// file overrides the folder's.
func TestDiscoverSingleFiles(t *testing.T) {
	src := tinyModel(t, LayoutHF)
	flat := t.TempDir()
	a, _ := RandomArchs(SizeTiny)
	rewrite(t, filepath.Join(src, "transformer", "diffusion_pytorch_model.safetensors"), filepath.Join(flat, "newbie_unet.safetensors"),
		func(n string) string { return "model.diffusion_model." + n }, nil)
	rewrite(t, filepath.Join(src, "vae", "diffusion_pytorch_model.safetensors"), filepath.Join(flat, "ae.safetensors"), nil,
		map[string]string{"config": a.VAE.JSON()})
	rewrite(t, filepath.Join(src, "text_encoder", "gemma3-4b-it.safetensors"), filepath.Join(flat, "my_text_encoder.safetensors"), nil,
		map[string]string{"config": readJSON(t, filepath.Join(src, "text_encoder", "config.json"))})
	rewrite(t, filepath.Join(src, "clip_model", "jina-clip-v2.safetensors"), filepath.Join(flat, "clip_l_really_jina.safetensors"), nil,
		map[string]string{"config": readJSON(t, filepath.Join(src, "clip_model", "config.json"))})
	for from, to := range map[string]string{"text_encoder": "gemma_tokenizer.json", "clip_model": "xlmr_tokenizer.json"} {
		if err := copyFile(filepath.Join(src, from, "tokenizer.json"), filepath.Join(flat, to)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := Discover(flat, Sources{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Layout != LayoutFlat || len(m.Missing) != 0 || m.DiT.Format != "comfyui keys" || filepath.Base(m.Gemma.Path) != "my_text_encoder.safetensors" ||
		filepath.Base(m.Jina.Path) != "clip_l_really_jina.safetensors" || filepath.Base(m.GemmaTokenizer.Path) != "gemma_tokenizer.json" ||
		filepath.Base(m.JinaTokenizer.Path) != "xlmr_tokenizer.json" || !strings.Contains(m.Gemma.Config, "metadata") {
		t.Fatalf("flat folder: layout %s, missing %+v, DiT %s, Gemma %s (%s), Jina %s", m.Layout, m.Missing, m.DiT.Format, m.Gemma.Path, m.Gemma.Config, m.Jina.Path)
	}

	files := Sources{DiT: filepath.Join(flat, "newbie_unet.safetensors"), VAE: filepath.Join(flat, "ae.safetensors"),
		Gemma: filepath.Join(flat, "my_text_encoder.safetensors"), GemmaTokenizer: filepath.Join(flat, "gemma_tokenizer.json"),
		Jina: filepath.Join(flat, "clip_l_really_jina.safetensors"), JinaTokenizer: filepath.Join(flat, "xlmr_tokenizer.json")}
	m, err = Discover("", files)
	if err != nil || m.Layout != LayoutFiles || len(m.Missing) != 0 {
		t.Fatalf("files: %v, layout %s, missing %+v", err, m.Layout, m.Missing)
	}

	// A single file overrides the folder's part.
	m, err = Discover(src, Sources{VAE: files.VAE})
	if err != nil || m.VAE.Path != files.VAE || m.DiT.Path != filepath.Join(src, "transformer", "diffusion_pytorch_model.safetensors") {
		t.Fatalf("override: %v, VAE %s", err, m.VAE.Path)
	}
}

// TestDiscoverWrongFiles: a file in the wrong slot, a tokenizer of the
// other encoder, a tokenizer with more ids than its embedding, and files
// that are no weights at all are errors naming the file and what it is.
func TestDiscoverWrongFiles(t *testing.T) {
	src := tinyModel(t, LayoutHF)
	gemma := filepath.Join(src, "text_encoder", "gemma3-4b-it.safetensors")
	jina := filepath.Join(src, "clip_model", "jina-clip-v2.safetensors")
	vaeFile := filepath.Join(src, "vae", "diffusion_pytorch_model.safetensors")
	png := filepath.Join(t.TempDir(), "image.safetensors")
	if err := os.WriteFile(png, []byte("\x89PNG\r\n\x1a\n0000000000000000"), 0o644); err != nil {
		t.Fatal(err)
	}
	swapped := copyTree(t, src)
	os.Remove(filepath.Join(swapped, "text_encoder", "gemma3-4b-it.safetensors"))
	copyFile(jina, filepath.Join(swapped, "text_encoder", "gemma3-4b-it.safetensors"))
	tokSwap := copyTree(t, src)
	copyFile(filepath.Join(src, "clip_model", "tokenizer.json"), filepath.Join(tokSwap, "text_encoder", "tokenizer.json"))

	for _, c := range []struct {
		name string
		root string
		src  Sources
		want []string
	}{
		{"Jina file in text_encoder/", swapped, Sources{}, []string{filepath.Join(swapped, "text_encoder", "gemma3-4b-it.safetensors"), "should be a Gemma 3 text encoder but holds a Jina CLIP v2 text encoder"}},
		{"VAE file named as Gemma", src, Sources{Gemma: vaeFile}, []string{"Sources.Gemma " + vaeFile, "holds a FLUX VAE (diffusers keys)"}},
		{"Gemma file named as the DiT", src, Sources{DiT: gemma}, []string{"Sources.DiT " + gemma, "holds a Gemma 3 text encoder"}},
		{"an image", src, Sources{VAE: png}, []string{png, "PNG image"}},
		{"Jina tokenizer for Gemma", tokSwap, Sources{}, []string{filepath.Join(tokSwap, "text_encoder", "tokenizer.json"), "is a Unigram tokenizer", "needs a BPE tokenizer"}},
		{"config key names", src, Sources{Gemma: vaeFile, Keys: map[Part]string{PartGemma: "model.gemma"}}, []string{"model.gemma " + vaeFile}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Discover(c.root, c.src)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}

	// A tokenizer with more ids than the embedding has rows names both.
	big := copyTree(t, src)
	tj := filepath.Join(big, "text_encoder", "tokenizer.json")
	var doc map[string]any
	if err := json.Unmarshal([]byte(readJSON(t, tj)), &doc); err != nil {
		t.Fatal(err)
	}
	doc["added_tokens"] = append(doc["added_tokens"].([]any), map[string]any{"id": 2000, "content": "<extra_2000>", "single_word": false,
		"lstrip": false, "rstrip": false, "normalized": false, "special": false})
	b, _ := json.Marshal(doc)
	if err := os.WriteFile(tj, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Discover(big, Sources{})
	if err == nil || !strings.Contains(err.Error(), tj+" has ids up to 2000") || !strings.Contains(err.Error(), "has 1024 rows") ||
		!strings.Contains(err.Error(), filepath.Join(big, "text_encoder", "gemma3-4b-it.safetensors")) {
		t.Errorf("vocab beyond the embedding: %v", err)
	}
}

// vaeParams counts the VAE's parameters.
func vaeParams(a Archs) int64 {
	var n int64
	for _, p := range a.VAE.Params() {
		n += shapeElems(p.Shape)
	}
	return n
}

// TestDiscoverMissing: missing parts are listed together, each with what
// it is for and where it was looked for; the cache's parts can be
// required without the transformer.
func TestDiscoverMissing(t *testing.T) {
	dir := copyTree(t, tinyModel(t, LayoutHF))
	if err := os.RemoveAll(filepath.Join(dir, "clip_model")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "transformer")); err != nil {
		t.Fatal(err)
	}
	m, err := Discover(dir, Sources{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Layout != LayoutHF || m.Has(PartJina) || m.Has(PartJinaTokenizer) || m.Has(PartDiT) || !m.Has(PartGemma) {
		t.Fatalf("layout %s, missing %+v", m.Layout, m.Missing)
	}
	err = m.Require(EncoderParts...)
	var me *MissingError
	if !errors.As(err, &me) || len(me.Parts) != 2 {
		t.Fatalf("Require(encoders) = %v, want the two Jina parts", err)
	}
	for _, w := range []string{"lacks 2 of the components", "Jina CLIP v2 text encoder (gives the pooled caption vector",
		filepath.Join(dir, "clip_model") + " (no such folder)", "Jina CLIP v2 tokenizer", "Sources.JinaTokenizer"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Require error %q lacks %q", err, w)
		}
	}
	if err := m.Require(PartVAE, PartGemma, PartGemmaTokenizer); err != nil {
		t.Errorf("the parts present: %v", err)
	}
	m, err = Discover("", Sources{})
	if err != nil || len(m.Missing) != len(Parts) || !strings.Contains(m.Require(PartDiT).Error(), "no model folder given") {
		t.Errorf("nothing given: %v, %+v", err, m.Missing)
	}
	if _, err := Discover(filepath.Join(dir, "vae", "config.json"), Sources{}); err == nil || !strings.Contains(err.Error(), "is a file, not a folder") {
		t.Errorf("a file as the folder: %v", err)
	}
}

// TestDiscoverCrossCheck: parts that do not fit each other — text
// encoders of other widths than the transformer reads — are errors naming
// both files.
func TestDiscoverCrossCheck(t *testing.T) {
	a, _ := RandomArchs(SizeTiny)
	a.DiT.CapFeatDim = 48
	dir := t.TempDir()
	if _, err := writeRandom(dir, RandomOptions{Layout: LayoutDiffusers, Size: SizeTiny}, a); err != nil {
		t.Fatal(err)
	}
	_, err := Discover(dir, Sources{})
	if err == nil || !strings.Contains(err.Error(), "gives 64-wide cap_feat_dim, but the transformer") || !strings.Contains(err.Error(), "takes 48") {
		t.Errorf("a Gemma 3 of another width: %v", err)
	}
}
