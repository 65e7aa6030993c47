package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// tinyWeights is the golden tiny model's weights file.
func tinyWeights(t *testing.T) string {
	t.Helper()
	return goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
}

// quickSample are sample flags that make small images fast on the CPU.
var quickSample = []string{"--device", "cpu", "--precision", "fp32", "--width", "64", "--height", "48", "--sampler", "euler", "--steps", "5"}

// pngChunks walks a PNG's chunks, checking each CRC, and returns the text of
// its tEXt chunks by keyword.
func pngChunks(t *testing.T, b []byte) map[string]string {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatal("not a PNG")
	}
	texts := map[string]string{}
	for p := 8; p < len(b); {
		n := int(binary.BigEndian.Uint32(b[p:]))
		typ := string(b[p+4 : p+8])
		if crc32.ChecksumIEEE(b[p+4:p+8+n]) != binary.BigEndian.Uint32(b[p+8+n:]) {
			t.Fatalf("chunk %s at %d: bad CRC", typ, p)
		}
		if typ == "tEXt" {
			k, v, _ := bytes.Cut(b[p+8:p+8+n], []byte{0})
			texts[string(k)] = string(v)
		}
		p += 12 + n
	}
	return texts
}

// readPNG decodes a PNG file (Go's decoder checks every chunk's CRC too)
// and returns its pixels and text chunks.
func readPNG(t *testing.T, path string) (image.Image, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return img, pngChunks(t, b)
}

// maxDiff is the largest difference of two images' 8-bit channels.
func maxDiff(a, b image.Image) int {
	worst := 0
	for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
		for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
			ar, ag, ab, _ := a.At(x, y).RGBA()
			br, bg, bb, _ := b.At(x, y).RGBA()
			for _, d := range []int{int(ar>>8) - int(br>>8), int(ag>>8) - int(bg>>8), int(ab>>8) - int(bb>>8)} {
				worst = max(worst, d, -d)
			}
		}
	}
	return worst
}

// TestSampleWritesParameters: one PNG per prompt and seed, named by both,
// whose parameters chunk holds the prompt, negative prompt and settings in
// the A1111 form; the grid is written too; nothing else is left behind.
func TestSampleWritesParameters(t *testing.T) {
	out := t.TempDir()
	prompts := filepath.Join(t.TempDir(), "prompts.yaml")
	os.WriteFile(prompts, []byte("- \"<character_1><n>girl</n></character_1><general_tags>smile, upper body</general_tags>\"\n- prompt: blue sky\n  negative: rain\n  seed: 9\n  width: 32\n  height: 32\n"), 0o644)
	args := append([]string{"sample", "--weights", tinyWeights(t), "--prompts", prompts, "--seed", "3,4", "--negative", "lowres", "--cfg", "4", "--out", out, "--grid"}, quickSample...)
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []string{"stand-in text encoders", "stand-in decoder", "step 1/4", "ETA"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "000-3.png 000-4.png 001-9.png grid.png" {
		t.Errorf("files %v", names)
	}
	img, texts := readPNG(t, filepath.Join(out, "000-4.png"))
	if b := img.Bounds(); b.Dx() != 64 || b.Dy() != 48 {
		t.Errorf("000-4.png is %v, want 64x48", b)
	}
	want := "<character_1>\n<n>girl</n>\n</character_1>\n<general_tags>smile, upper body</general_tags>\nNegative prompt: lowres\nSteps: 5, Sampler: Euler, CFG scale: 4, Seed: 4, Size: 64x48, Model hash: "
	if got := texts["parameters"]; !strings.HasPrefix(got, want) || !strings.Contains(got, ", Model: tiny.weights, Shift: 6, CFG truncation: 1, CFG renorm: 0, System prompt: \"You are an assistant") {
		t.Errorf("parameters:\n%s\nwant them to start\n%s", got, want)
	}
	_, texts = readPNG(t, filepath.Join(out, "001-9.png"))
	if got := texts["parameters"]; !strings.HasPrefix(got, "blue sky\nNegative prompt: rain\nSteps: 5, Sampler: Euler, CFG scale: 4, Seed: 9, Size: 32x32,") {
		t.Errorf("per-prompt settings: %s", got)
	}
	grid, _ := readPNG(t, filepath.Join(out, "grid.png"))
	if b := grid.Bounds(); b.Dx() != 128 || b.Dy() != 96 {
		t.Errorf("grid is %v, want 2×2 cells of 64x48", b)
	}
}

// trainDemo writes the demo's dataset and config into dir, edits the config
// (each key replaced once, then extra appended) and trains it for 6 steps
// with one save, into dir/<output>. It returns the config's path.
func trainDemo(t *testing.T, dir, output string, edits map[string]string, extra string) string {
	t.Helper()
	if code, _, stderr := runCLI(t, "demo", "--dir", dir, "--steps", "1", "--images", "4"); code != 0 {
		t.Fatalf("demo: exit %d: %s", code, stderr)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	yml := string(raw)
	edits["max_steps: 300"] = "max_steps: 6"
	edits["  every: 100\n"] = "  every: 6\n"
	edits["  output: demo-out\n"] = "  output: " + output + "\n"
	for old, repl := range edits {
		if !strings.Contains(yml, old) {
			t.Fatalf("demo.yaml has no %q:\n%s", old, yml)
		}
		yml = strings.Replace(yml, old, repl, 1)
	}
	if strings.Contains(extra, "sample:") {
		// extra's sample section replaces the demo's
		i, j := strings.Index(yml, "\nsample:\n"), strings.Index(yml, "\nlogging:\n")
		if i < 0 || j < i {
			t.Fatalf("demo.yaml has no sample section before logging:\n%s", yml)
		}
		yml = yml[:i] + yml[j:]
	}
	cfgPath := filepath.Join(dir, output+".yaml")
	if err := os.WriteFile(cfgPath, []byte(yml+extra), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, "train", "--config", cfgPath); code != 0 {
		t.Fatalf("train: exit %d: %s", code, stderr)
	}
	return cfgPath
}

// TestSampleLoRAEqualsMerged: a LoRA the trainer exported, applied by
// sample (ComfyUI file and PEFT folder alike), gives the images of the
// model `merge` bakes it into; without it they differ.
func TestSampleLoRAEqualsMerged(t *testing.T) {
	dir := t.TempDir()
	trainDemo(t, dir, "trained", map[string]string{
		"  preset: tiny\n":    "  preset: tiny\n  weights: " + tinyWeights(t) + "\n",
		"learning_rate: 1e-3": "learning_rate: 5e-2",
	}, "")
	comfy := filepath.Join(dir, "trained", "demo_lora.safetensors")
	peft := filepath.Join(dir, "trained", "demo_lora_peft")
	merged := filepath.Join(dir, "merged.safetensors")
	if code, _, stderr := runCLI(t, "merge", "--weights", tinyWeights(t), "--lora", comfy, "--out", merged, "--dtype", "f32"); code != 0 {
		t.Fatalf("merge: exit %d: %s", code, stderr)
	}
	sample := func(name string, extra ...string) image.Image {
		out := filepath.Join(dir, name)
		args := append(append([]string{"sample", "--prompt", "<character_1><n>demo</n></character_1>", "--seed", "5", "--out", out}, quickSample...), extra...)
		if code, stdout, stderr := runCLI(t, args...); code != 0 {
			t.Fatalf("sample %s: exit %d\n%s%s", name, code, stdout, stderr)
		}
		img, texts := readPNG(t, filepath.Join(out, "000-5.png"))
		if strings.Contains(name, "lora") && !strings.Contains(texts["parameters"], "Lora hashes: ") {
			t.Errorf("%s: parameters without Lora hashes: %s", name, texts["parameters"])
		}
		return img
	}
	withLoRA := sample("lora-comfy", "--weights", tinyWeights(t), "--lora", comfy)
	withPEFT := sample("lora-peft", "--weights", tinyWeights(t), "--lora", peft+":1")
	fromMerged := sample("merged", "--weights", merged)
	base := sample("base", "--weights", tinyWeights(t))
	half := sample("lora-half", "--weights", tinyWeights(t), "--lora", comfy+":0.5")
	if d := maxDiff(withLoRA, fromMerged); d > 1 {
		t.Errorf("LoRA as an adapter and merged differ by %d levels", d)
	}
	if d := maxDiff(withLoRA, withPEFT); d != 0 {
		t.Errorf("the ComfyUI file and the PEFT folder differ by %d levels", d)
	}
	dBase, dHalf := maxDiff(withLoRA, base), maxDiff(withLoRA, half)
	if dBase < 4 || dHalf < 1 || dHalf >= dBase {
		t.Errorf("the LoRA changes the image by %d levels at strength 1 and %d from strength 0.5: want a visible change, smaller at half strength", dBase, dHalf)
	}
	t.Logf("LoRA vs merged: %d levels; vs base: %d; vs strength 0.5: %d", maxDiff(withLoRA, fromMerged), dBase, dHalf)
}

// TestSampleUsageErrors: sizes, flags and prompts that cannot run exit 2
// before anything is loaded.
func TestSampleUsageErrors(t *testing.T) {
	w := tinyWeights(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("- prompt: x\n  colour: red\n"), 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"width", []string{"--width", "1000"}, "multiples of 16"},
		{"height", []string{"--height", "0"}, "multiples of 16"},
		{"sampler", []string{"--sampler", "heun"}, "unknown method"},
		{"steps", []string{"--steps", "1"}, "steps ≥ 2"},
		{"cfg", []string{"--cfg", "-1"}, "guidance scale"},
		{"precision", []string{"--precision", "fp8"}, "fp8"},
		{"lora strength", []string{"--lora", "x.safetensors:inf"}, "not a finite number"},
		{"batch", []string{"--batch-size", "0"}, "--batch-size"},
		{"prompts file", []string{"--prompts", bad}, "colour"},
		{"empty prompt", []string{"--prompt", " "}, "prompt 2 is empty"},
		{"stray argument", []string{"extra"}, "unknown command"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"sample", "--weights", w, "--prompt", "x"}
			code, _, stderr := runCLI(t, append(args, c.args...)...)
			if code != exitUsage || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, exitUsage, c.want)
			}
		})
	}
	if code, _, stderr := runCLI(t, "sample", "--prompt", "x"); code != exitUsage || !strings.Contains(stderr, "--model FOLDER") {
		t.Errorf("no model: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, "sample", "--weights", w); code != exitUsage || !strings.Contains(stderr, "needs a prompt") {
		t.Errorf("no prompt: exit %d, %q", code, stderr)
	}
}

// cancelOnStep cancels a context when the output says a sampler step ran.
type cancelOnStep struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel func()
	at     time.Time
}

func (w *cancelOnStep) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.at.IsZero() && strings.Contains(w.buf.String(), "image 2/") {
		w.at = time.Now()
		w.cancel()
	}
	return len(p), nil
}

// TestSampleInterrupt: cancelling during the second image stops within a
// few seconds with exit 130, the first image whole and no temporary file.
func TestSampleInterrupt(t *testing.T) {
	out := t.TempDir()
	prompts := filepath.Join(t.TempDir(), "prompts.yaml")
	os.WriteFile(prompts, []byte("- {prompt: small, width: 32, height: 32}\n- {prompt: large, width: 256, height: 256}\n- third\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &cancelOnStep{cancel: cancel}
	args := []string{"sample", "--weights", tinyWeights(t), "--prompts", prompts, "--out", out,
		"--device", "cpu", "--precision", "fp32", "--steps", "50"}
	code := run(ctx, args, &bytes.Buffer{}, w)
	if code != exitInterrupted {
		t.Fatalf("exit %d, want %d:\n%s", code, exitInterrupted, w.buf.String())
	}
	if d := time.Since(w.at); d > 5*time.Second {
		t.Errorf("stopped %v after the cancel", d)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != 1 || entries[0].Name() != "000-42.png" {
		t.Errorf("left %v, want only the finished 000-42.png", entries)
	}
	readPNG(t, filepath.Join(out, "000-42.png"))
	if !strings.Contains(w.buf.String(), "stopped after 1 of 3 images") {
		t.Errorf("message: %s", w.buf.String())
	}
}

// TestSampleConfigMatchesPreviews: `sample --config` with the LoRA a run
// saved makes the same image as that run's preview at the same step (the
// same pipeline, settings, noise and prompt preparation).
func TestSampleConfigMatchesPreviews(t *testing.T) {
	dir := t.TempDir()
	cfgPath := trainDemo(t, dir, "previewed", map[string]string{},
		"sample:\n  prompts: [\"<character_1><n>demo</n></character_1>\"]\n  negative_prompt: blurry\n  steps: 4\n  cfg: 3\n  seed: 11\n")
	preview, ptext := readPNG(t, filepath.Join(dir, "previewed", "demo_lora-previews", "step00000006-01.png"))
	out := filepath.Join(dir, "sampled")
	code, stdout, stderr := runCLI(t, "sample", "--config", cfgPath, "--lora", filepath.Join(dir, "previewed", "demo_lora.safetensors"), "--out", out)
	if code != 0 {
		t.Fatalf("sample: exit %d\n%s%s", code, stdout, stderr)
	}
	sampled, stext := readPNG(t, filepath.Join(out, "000-11.png"))
	if d := maxDiff(preview, sampled); d != 0 {
		t.Errorf("the sample differs from the preview by %d levels", d)
	}
	for _, text := range []string{ptext["parameters"], stext["parameters"]} {
		if !strings.Contains(text, "<n>demo</n>") || !strings.Contains(text, "Negative prompt: blurry\nSteps: 4, Sampler: Midpoint, CFG scale: 3, Seed: 11, Size: 64x64") {
			t.Errorf("parameters: %s", text)
		}
	}
}

// TestSampleFullModelNeedsEncoders: a full-size model without a model
// folder stops before loading anything, naming every missing part and the
// flag or key that gives it.
func TestSampleFullModelNeedsEncoders(t *testing.T) {
	full, _ := nextdit.Preset("newbie-exp0.1")
	w := filepath.Join(t.TempDir(), "full.safetensors")
	one := safetensors.FloatTensor("x_embedder.bias", safetensors.F32, []int{full.Dim}, make([]float32, full.Dim))
	if err := safetensors.Write(w, []safetensors.Tensor{one}, map[string]string{"config": full.JSON()}); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "sample", "--weights", w, "--prompt", "x", "--vae", "none.safetensors")
	for _, want := range []string{"none.safetensors", "model.gemma in --config", "model.jina_tokenizer in --config", "… and"} {
		if code != exitUsage || !strings.Contains(stderr, want) {
			t.Errorf("exit %d, stderr lacks %q:\n%s", code, want, stderr)
		}
	}
	if n := strings.Count(stderr, "\n"); n > 40 {
		t.Errorf("the error runs to %d lines", n)
	}
}
