package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTinyModel writes the tiny random model folder with the hidden dev
// command, as the device script does.
func writeTinyModel(t *testing.T, layout string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), layout)
	code, out, stderr := runCLI(t, "dev", "write-random-model", "--layout", layout, "--size", "tiny", "--out", dir)
	if code != 0 {
		t.Fatalf("write-random-model: exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(out, dir+": ") || !strings.Contains(out, "bytes") {
		t.Errorf("write-random-model output lacks the total:\n%s", out)
	}
	return dir
}

// TestInspectModel: inspect names every component of a model folder in
// both layouts — file, key layout, dtypes, parameters, size, where the
// architecture came from, the tokenizers' kinds and vocabularies against
// their embeddings — and what is missing; a tokenizer of the wrong kind
// is a problem (exit 1, after the report); a single encoder file is
// reported as a component.
func TestInspectModel(t *testing.T) {
	hf := writeTinyModel(t, "hf")
	diffusers := writeTinyModel(t, "diffusers")
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.CopyFS(broken, os.DirFS(hf)); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(broken, "transformer"))
	copyTestFile(t, filepath.Join(hf, "clip_model", "tokenizer.json"), filepath.Join(broken, "text_encoder", "tokenizer.json"))
	cases := []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"official layout", []string{hf}, 0, []string{"NewBie-image-Exp0.1 model folder, the official Hugging Face layout",
			"transformer      Next-DiT transformer: " + filepath.Join(hf, "transformer", "diffusion_pytorch_model.safetensors"),
			"upstream keys, BF16 ×93, 1,056,928 parameters", "preset tiny; architecture the tiny preset, which its tensor shapes fit",
			"vae              FLUX VAE", "diffusers keys, F32 ×172",
			"gemma            Gemma 3 text encoder: " + filepath.Join(hf, "text_encoder", "gemma3-4b-it.safetensors"),
			"key prefix language_model.model., BF16", "skips 1 tensor of other modules",
			"tokenizer.json (BPE), 679 ids, fits the encoder's 1,024 embedding rows",
			"key prefix text_model.transformer.roberta.", "tokenizer.json (Unigram), 222 ids", "missing:         nothing"}},
		{"diffusers layout", []string{diffusers}, 0, []string{"the diffusers port's layout", "diffusers keys, BF16",
			"architecture from " + filepath.Join(diffusers, "transformer", "config.json"), "key prefix language_model., BF16 ×41, 177,152 parameters in 2 files",
			filepath.Join(diffusers, "tokenizer", "tokenizer.json"), filepath.Join(diffusers, "tokenizer_2", "tokenizer.json")}},
		{"missing and wrong", []string{broken}, exitFailure, []string{"missing          Next-DiT transformer (the 3.5B model that is fine-tuned): looked in " + filepath.Join(broken, "transformer") + " (no such folder)",
			"problem", "is a Unigram tokenizer", "the model has problems"}},
		{"one encoder file", []string{filepath.Join(hf, "text_encoder", "gemma3-4b-it.safetensors")}, 0, []string{"a NewBie-image-Exp0.1 component",
			"Gemma 3 text encoder", "architecture from " + filepath.Join(hf, "text_encoder", "config.json")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, append([]string{"inspect"}, c.args...)...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, c.code, out, stderr)
			}
			for _, w := range c.wants {
				if !strings.Contains(out+stderr, w) {
					t.Errorf("output lacks %q:\n%s%s", w, out, stderr)
				}
			}
		})
	}

	code, out, stderr := runCLI(t, "inspect", "--json", diffusers)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r inspectReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if r.Kind != "model" || r.Model.Layout != "diffusers" || len(r.Model.Components) != 6 || len(r.Model.Missing) != 0 {
		t.Fatalf("JSON report %+v", r.Model)
	}
	for _, c := range r.Model.Components {
		switch {
		case c.Part == "gemma-tokenizer" && (c.ModelType != "BPE" || c.Vocab != 679 || c.EmbeddingRows != 1024 || c.Fits == nil || !*c.Fits):
			t.Errorf("Gemma tokenizer %+v", c)
		case c.Part == "transformer" && (c.Parameters != 1056832 || c.Format != "diffusers keys" || len(c.Architecture) == 0):
			t.Errorf("transformer %+v", c)
		}
	}
}

func copyTestFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// TestDevCommands: the dev group is hidden from the help; encode-phases
// runs the three phases on the CPU and prints their table; bad flags are
// usage errors.
func TestDevCommands(t *testing.T) {
	if _, out, _ := runCLI(t, "--help"); strings.Contains(out, "dev ") {
		t.Errorf("the help lists the hidden dev group:\n%s", out)
	}
	dir := writeTinyModel(t, "hf")
	code, out, stderr := runCLI(t, "dev", "encode-phases", "--model", dir, "--backend", "cpu", "--images", "2", "--resolution", "32", "--text-batch", "2")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	for _, w := range []string{"cpu, " + dir + ": 2 images of 32²", "encode-vae", "encode-gemma", "encode-jina", "estimate/peak", "1.000"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	for _, args := range [][]string{
		{"dev", "write-random-model", "--size", "huge", "--out", dir},
		{"dev", "write-random-model", "--layout", "comfyui", "--out", dir},
		{"dev", "write-random-model"},
		{"dev", "encode-phases"},
		{"dev", "encode-phases", "--model", dir, "--text-dtype", "int8"},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (%s)", args, code, exitUsage, stderr)
		}
	}
}
