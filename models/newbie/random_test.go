package newbie

import (
	"bytes"
	"io"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// TestWriteRandomDeterministic: the same seed writes the same bytes,
// another seed other numbers; both layouts hold the same numbers under
// their own names (the diffusers transformer's to_q/to_k/to_v are the rows
// of the official file's qkv, its Gemma shards the official file's
// tensors under another prefix).
func TestWriteRandomDeterministic(t *testing.T) {
	hf := tinyModel(t, LayoutHF)
	again := t.TempDir()
	if _, err := WriteRandom(again, RandomOptions{Layout: LayoutHF, Size: SizeTiny, Seed: 7, Workers: 3}); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := WriteRandom(other, RandomOptions{Layout: LayoutHF, Size: SizeTiny, Seed: 8}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join("transformer", "diffusion_pytorch_model.safetensors")
	d := func(dir string) string {
		s, err := digestFiles([]string{filepath.Join(dir, file)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if d(hf) != d(again) || d(hf) == d(other) {
		t.Errorf("digests: seed 7 %s and %s, seed 8 %s", d(hf), d(again), d(other))
	}

	up, err := checkpoints.OpenWeights(filepath.Join(hf, "transformer"))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	df, err := checkpoints.OpenWeights(filepath.Join(tinyModel(t, LayoutDiffusers), "transformer"))
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	if up.Layout() != checkpoints.LayoutUpstream || df.Layout() != checkpoints.LayoutDiffusers {
		t.Fatalf("layouts %s and %s", up.Layout(), df.Layout())
	}
	for _, name := range []string{"layers.1.attention.qkv.weight", "context_refiner.0.attention_norm1.weight", "t_embedder.mlp.2.bias", "clip_text_pooled_proj.1.weight"} {
		a, err := up.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := df.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != len(b) || !equalFloats(a, b) {
			t.Errorf("%s differs between the layouts", name)
		}
	}
	gemmaHF := tensorBytes(t, filepath.Join(hf, "text_encoder", "gemma3-4b-it.safetensors"), "language_model.model.layers.2.mlp.up_proj.weight")
	_, idx, err := indexShards(filepath.Join(tinyModel(t, LayoutDiffusers), "text_encoder", "model.safetensors.index.json"))
	if err != nil || len(idx) != 2 {
		t.Fatalf("Gemma shards %v, %v", idx, err)
	}
	var gemmaDF []byte
	for _, f := range idx {
		if b := tensorBytes(t, f, "language_model.layers.2.mlp.up_proj.weight"); b != nil {
			gemmaDF = b
		}
	}
	if gemmaHF == nil || !bytes.Equal(gemmaHF, gemmaDF) {
		t.Error("Gemma's up_proj differs between the layouts")
	}
}

func equalFloats(a, b []float32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// tensorBytes reads one tensor's bytes, or nil when the file lacks it.
func tensorBytes(t *testing.T, path, name string) []byte {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := f.Info(name); !ok {
		return nil
	}
	b, err := f.Bytes(name)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), b...)
}

// TestFullSizePlan: the full-size folder holds NewBie-image-Exp0.1's real
// architectures — the 3,486,636,096-parameter transformer, Gemma 3 4B's
// text model, Jina CLIP v2's text tower, FLUX's VAE — about 16 GB in all
// (written on the device machine only; here its plan is counted).
func TestFullSizePlan(t *testing.T) {
	a, err := RandomArchs(SizeFull)
	if err != nil {
		t.Fatal(err)
	}
	if n := a.DiT.NumParams(); n != 3486636096 {
		t.Errorf("transformer %d parameters", n)
	}
	for _, l := range []Layout{LayoutHF, LayoutDiffusers} {
		plan, err := planFolder(t.TempDir(), l, a)
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		byPart := map[Part]int64{}
		for _, f := range plan.weights {
			for _, s := range f.specs {
				total += specBytes(s)
				byPart[s.part] += specBytes(s)
			}
		}
		t.Logf("%s: %d weight files, %s (transformer %s, VAE %s, Gemma %s, Jina %s)", l, len(plan.weights), bytesText(total),
			bytesText(byPart[PartDiT]), bytesText(byPart[PartVAE]), bytesText(byPart[PartGemma]), bytesText(byPart[PartJina]))
		if total < 15<<30 || total > 17<<30 {
			t.Errorf("%s: %s of weights, want about 16 GB", l, bytesText(total))
		}
	}
}

// TestGeneratedTokenizers: the generated tokenizer.json files are read by
// the tokenizers package as Gemma's and XLM-RoBERTa's kinds, with their
// special ids, Gemma's byte fallback, and merges that give XML captions a
// few ids per word rather than one per character.
func TestGeneratedTokenizers(t *testing.T) {
	m, err := Discover(tinyModel(t, LayoutHF), Sources{})
	if err != nil {
		t.Fatal(err)
	}
	g, j := m.GemmaTokenizer.Tokenizer, m.JinaTokenizer.Tokenizer
	if sp := g.Special(); sp.PAD != 0 || sp.EOS != 1 || sp.BOS != 2 || sp.UNK != 3 {
		t.Errorf("Gemma specials %+v", sp)
	}
	if sp := j.Special(); sp.BOS != 0 || sp.PAD != 1 || sp.EOS != 2 || sp.UNK != 3 {
		t.Errorf("Jina specials %+v", sp)
	}
	if ids := g.Encode("é"); len(ids) != 3 || ids[1] != 9+0xC3 || ids[2] != 9+0xA9 {
		t.Errorf("Gemma byte fallback of é: %v, want <bos> <0xC3> <0xA9>", ids)
	}
	caption := SampleCaption(11)
	for _, c := range []struct {
		name string
		tok  *tokenizers.Tokenizer
	}{{"Gemma", g}, {"Jina", j}} {
		n := len(c.tok.Encode(caption))
		t.Logf("%s: %d ids for %d characters", c.name, n, len(caption))
		if n > len(caption)/3 {
			t.Errorf("%s: %d ids for a %d-character caption: the merges do little", c.name, n, len(caption))
		}
	}
	a, _ := RandomArchs(SizeTiny)
	if g.VocabSize() > a.Gemma.VocabSize || j.VocabSize() > a.Jina.VocabSize {
		t.Errorf("vocabularies %d and %d beyond the tiny embeddings", g.VocabSize(), j.VocabSize())
	}
}

// BenchmarkStreamRandom measures how fast random bf16 weights are made
// and streamed (to io.Discard), on every core: the full-size folder's
// 16 GB need it at about 300 MB/s or more to take a minute.
func BenchmarkStreamRandom(b *testing.B) {
	s := tensorSpec{name: "w", shape: []int{4096, 4096}, dtype: safetensors.BF16, part: PartDiT, source: "w", init: initRule{0, 0.02}}
	b.SetBytes(specBytes(s))
	for b.Loop() {
		if err := streamRandom(io.Discard, s, 1, runtime.GOMAXPROCS(0)); err != nil {
			b.Fatal(err)
		}
	}
}
