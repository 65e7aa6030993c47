package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// goldenFiles returns the folder of the tiny Next-DiT's golden files, or
// skips when they are absent.
func goldenFiles(t *testing.T) string {
	t.Helper()
	goldentest.Path(t, "nextdit", "tiny.golden.safetensors")
	goldentest.Path(t, "nextdit", "tiny.peft_lora", "adapter_model.safetensors")
	return filepath.Dir(goldentest.Path(t, "nextdit", "tiny.weights.safetensors"))
}

// comfyWeights rewrites the golden weights as a ComfyUI single file
// (model.diffusion_model. prefix, a VAE tensor beside, no config metadata).
func comfyWeights(t *testing.T, dir string) string {
	t.Helper()
	src, err := safetensors.Open(filepath.Join(dir, "tiny.weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var ts []safetensors.Tensor
	for _, info := range src.Tensors() {
		b, _ := src.Bytes(info.Name)
		ts = append(ts, safetensors.Tensor{Name: "model.diffusion_model." + info.Name, DType: info.DType, Shape: info.Shape, Data: b})
	}
	ts = append(ts, safetensors.Tensor{Name: "vae.decoder.conv_in.bias", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)})
	p := filepath.Join(t.TempDir(), "newbie_comfy.safetensors")
	if err := safetensors.Write(p, ts, nil); err != nil {
		t.Fatal(err)
	}
	return p
}

// shardedWeights splits the golden weights into three shards with an
// index, in the upstream layout, keeping the config metadata.
func shardedWeights(t *testing.T, dir string) string {
	t.Helper()
	src, err := safetensors.Open(filepath.Join(dir, "tiny.weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := t.TempDir()
	var shards [3][]safetensors.Tensor
	wm := map[string]string{}
	for i, info := range src.Tensors() {
		b, _ := src.Bytes(info.Name)
		shards[i%3] = append(shards[i%3], safetensors.Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: b})
		wm[info.Name] = fmt.Sprintf("model-%d.safetensors", i%3)
	}
	for i := range shards {
		if err := safetensors.Write(filepath.Join(out, fmt.Sprintf("model-%d.safetensors", i)), shards[i], src.Metadata()); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"weight_map": wm})
	if err := os.WriteFile(filepath.Join(out, "model.safetensors.index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestInspect covers each kind of input inspect meets, human-readable and
// --json.
func TestInspect(t *testing.T) {
	g := goldenFiles(t)
	tmp := t.TempDir()
	png := filepath.Join(tmp, "cat.png")
	os.WriteFile(png, []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"), 0o644)
	raw, _ := os.ReadFile(filepath.Join(g, "tiny.weights.safetensors"))
	trunc := filepath.Join(tmp, "truncated.safetensors")
	os.WriteFile(trunc, raw[:len(raw)/2], 0o644)
	// A kohya LoRA with training metadata.
	l, _, err := checkpoints.ReadLoRA(filepath.Join(g, "tiny.peft_lora"))
	if err != nil {
		t.Fatal(err)
	}
	l.Meta = map[string]string{checkpoints.MetaSteps: "1200", checkpoints.MetaBaseModelHash: "abc123"}
	kohya := filepath.Join(tmp, "kohya.safetensors")
	if err := checkpoints.WriteLoRA(kohya, l, checkpoints.FormatKohya, checkpoints.ExportOptions{DType: safetensors.BF16}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		path  string
		code  int
		wants []string // in stdout (or stderr when code != 0)
	}{
		{"upstream weights", filepath.Join(g, "tiny.weights.safetensors"), 0, []string{"Next-DiT weights", "layout:      upstream", "preset:      tiny", "1,056,928 (93 tensors)", "F32 ×93", `"dim":96`}},
		{"comfyui weights", comfyWeights(t, g), 0, []string{"layout:      comfyui", "preset:      tiny", "1,056,928", "none in metadata", "ignored:     1 tensors"}},
		{"sharded folder", shardedWeights(t, g), 0, []string{"layout:      upstream, sharded (3 files)", "preset:      tiny", "1,056,928 (93 tensors)"}},
		{"peft folder", filepath.Join(g, "tiny.peft_lora"), 0, []string{"LoRA", "format:      peft", "rank:        4", "alpha:       8 (scale 2)", "layers:      35", "54,528", "F64 ×70", "attention.qkv"}},
		{"kohya file", kohya, 0, []string{"format:      kohya", "BF16 ×70", "F32 ×35", "steps: 1200", "base_model_hash: abc123"}},
		{"png", png, exitFailure, []string{"a PNG image"}},
		{"truncated", trunc, exitFailure, []string{"truncated.safetensors"}},
		{"golden file", filepath.Join(g, "tiny.golden.safetensors"), exitFailure, []string{"neither a LoRA", "nor Next-DiT weights"}},
		{"missing", filepath.Join(tmp, "none"), exitFailure, []string{"no such file"}},
		{"no argument", "", exitUsage, []string{"one FILE or FOLDER"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"inspect"}
			if c.path != "" {
				args = append(args, c.path)
			}
			code, out, stderr := runCLI(t, args...)
			text := out
			if c.code != 0 {
				text = stderr
			}
			if code != c.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, c.code, out, stderr)
			}
			for _, w := range c.wants {
				if !strings.Contains(text, w) {
					t.Errorf("output lacks %q:\n%s", w, text)
				}
			}
		})
	}
}

// TestInspectJSON: --json gives the same facts in a parseable form.
func TestInspectJSON(t *testing.T) {
	g := goldenFiles(t)
	code, out, stderr := runCLI(t, "inspect", "--json", filepath.Join(g, "tiny.weights.safetensors"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r inspectReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if r.Kind != "weights" || r.Weights.Preset != "tiny" || r.Weights.Parameters != 1056928 || r.Weights.Config == nil || r.Weights.Config.Dim != 96 || r.Weights.Fits != "" {
		t.Errorf("weights report %+v", r.Weights)
	}
	code, out, stderr = runCLI(t, "inspect", "--json", filepath.Join(g, "tiny.peft_lora"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	r = inspectReport{}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if r.Kind != "lora" || r.LoRA.Format != "peft" || r.LoRA.Rank != 4 || r.LoRA.Alpha != 8 || r.LoRA.Layers != 35 || len(r.LoRA.Targets) != 6 {
		t.Errorf("LoRA report %+v", r.LoRA)
	}
}
