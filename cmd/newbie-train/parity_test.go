package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// TestParityGolden: parity --golden passes in every precision, with and
// without the golden LoRA, and exits 1 with a LoRA whose alpha is wrong.
func TestParityGolden(t *testing.T) {
	g := goldenFiles(t)
	weights := filepath.Join(g, "tiny.weights.safetensors")
	golden := filepath.Join(g, "tiny.golden.safetensors")
	peft := filepath.Join(g, "tiny.peft_lora")
	l, _, err := checkpoints.ReadLoRA(peft)
	if err != nil {
		t.Fatal(err)
	}
	for k, ly := range l.Layers {
		ly.Alpha = 4
		l.Layers[k] = ly
	}
	l.Alpha = 4
	wrong := filepath.Join(t.TempDir(), "wrong_alpha.safetensors")
	if err := checkpoints.WriteLoRA(wrong, l, checkpoints.FormatKohya, checkpoints.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		extra []string
		code  int
		wants []string
	}{
		{"fp64", []string{"--precision", "fp64"}, 0, []string{"parameter gradients          92", "PASS"}},
		{"fp32", []string{"--precision", "fp32"}, 0, []string{"input gradients               3", "PASS"}},
		{"bf16", []string{"--precision", "bf16"}, 0, []string{"2e-02", "5e-02", "PASS"}},
		{"fp64 lora", []string{"--precision", "fp64", "--lora", peft}, 0, []string{"LoRA gradients               70", "PASS"}},
		{"bf16 lora", []string{"--precision", "bf16", "--lora", peft}, 0, []string{"PASS"}},
		{"wrong lora", []string{"--precision", "fp32", "--lora", wrong}, exitFailure, []string{"golden parity failed in fp32: output"}},
		{"both modes", []string{"--trajectory", golden}, exitUsage, []string{"exactly one of --golden and --trajectory"}},
		{"bad precision", []string{"--precision", "fp8"}, exitUsage, []string{"fp8"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"parity", "--weights", weights, "--golden", golden}, c.extra...)
			code, out, stderr := runCLI(t, args...)
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
	if code, _, stderr := runCLI(t, "parity", "--weights", weights, "--trajectory", golden, "--lora", peft); code != exitUsage || !strings.Contains(stderr, "--lora goes with --golden") {
		t.Errorf("--lora with --trajectory: exit %d, %q", code, stderr)
	}
}

// TestParityEncoders: parity --encoder passes for Gemma, Jina and the VAE
// in every precision on the CPU backend, printing every golden tensor, and
// exits 1 for a Jina file whose adapters are zeroed (the base weights: the
// LoRA disabled), for another model's weights and for a truncated file.
func TestParityEncoders(t *testing.T) {
	files := map[string][2]string{
		"gemma": {goldentest.Path(t, "gemma3", "gemma_tiny.weights.safetensors"), goldentest.Path(t, "gemma3", "gemma_tiny.golden.safetensors")},
		"jina":  {goldentest.Path(t, "jina", "jina_tiny.weights.safetensors"), goldentest.Path(t, "jina", "jina_tiny.golden.safetensors")},
		"vae":   {goldentest.Path(t, "vae", "vae_tiny.weights.safetensors"), goldentest.Path(t, "vae", "vae_tiny.golden.safetensors")},
	}
	tensors := map[string][]string{
		"gemma": {"out.hidden_states_m2 (mask 1)", "out.last_hidden_state (mask 1)"},
		"jina":  {"out.pooled", "out.last_hidden_state (mask 1)"},
		"vae":   {"out.mean", "out.logvar", "out.latent", "out.decoded"},
	}
	for _, enc := range []string{"gemma", "jina", "vae"} {
		for _, p := range []string{"fp64", "fp32", "bf16"} {
			t.Run(enc+"/"+p, func(t *testing.T) {
				code, out, stderr := runCLI(t, "parity", "--encoder", enc, "--weights", files[enc][0], "--golden", files[enc][1], "--precision", p)
				if code != 0 {
					t.Fatalf("exit %d\n%s%s", code, out, stderr)
				}
				for _, w := range append([]string{"encoder parity: " + enc, "in " + p, "PASS"}, tensors[enc]...) {
					if !strings.Contains(out, w) {
						t.Errorf("output lacks %q:\n%s", w, out)
					}
				}
				t.Log("\n" + out)
			})
		}
	}

	// The Jina golden weights with every lora_B zeroed: the adapter adds
	// nothing, so the tower computes out.pooled_no_lora.
	src, err := safetensors.Open(files["jina"][0])
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, info := range src.Tensors() {
		b, _ := src.Bytes(info.Name)
		if strings.HasSuffix(info.Name, ".lora_B") {
			b = make([]byte, len(b))
		}
		ts = append(ts, safetensors.Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: b})
	}
	dir := t.TempDir()
	noLoRA := filepath.Join(dir, "jina_no_lora.safetensors")
	if err := safetensors.Write(noLoRA, ts, src.Metadata()); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(files["jina"][0])
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.safetensors")
	if err := os.WriteFile(truncated, raw[:len(raw)*2/3], 0o644); err != nil {
		t.Fatal(err)
	}
	nextditWeights := filepath.Join(goldenFiles(t), "tiny.weights.safetensors")
	for _, c := range []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"LoRA disabled", []string{"--encoder", "jina", "--weights", noLoRA, "--golden", files["jina"][1]}, exitFailure,
			[]string{"BEYOND", "encoder parity failed for jina in fp64: 2 of 2 comparisons beyond tolerance"}},
		{"Next-DiT as jina", []string{"--encoder", "jina", "--weights", nextditWeights, "--golden", files["jina"][1]}, exitFailure,
			[]string{nextditWeights, "not a Jina CLIP v2 text tower checkpoint", "Next-DiT"}},
		{"Jina as gemma", []string{"--encoder", "gemma", "--weights", files["jina"][0], "--golden", files["gemma"][1]}, exitFailure,
			[]string{"not a Gemma 3 text model checkpoint"}},
		{"truncated", []string{"--encoder", "jina", "--weights", truncated, "--golden", files["jina"][1]}, exitFailure,
			[]string{truncated, "truncated"}},
		{"golden of another encoder", []string{"--encoder", "jina", "--weights", files["jina"][0], "--golden", files["gemma"][1]}, exitFailure,
			[]string{"outside the vocabulary of 300", "gemma_tiny.golden.safetensors"}},
		{"unknown encoder", []string{"--encoder", "clip-l", "--weights", noLoRA, "--golden", files["jina"][1]}, exitUsage, []string{`--encoder "clip-l"`}},
		{"encoder with trajectory", []string{"--encoder", "vae", "--weights", noLoRA, "--trajectory", files["jina"][1]}, exitUsage, []string{"--encoder goes with --golden"}},
		{"encoder with lora", []string{"--encoder", "jina", "--weights", noLoRA, "--golden", files["jina"][1], "--lora", noLoRA}, exitUsage, []string{"not with --encoder"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, append([]string{"parity"}, c.args...)...)
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
}
