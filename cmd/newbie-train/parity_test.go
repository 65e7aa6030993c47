package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints"
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
