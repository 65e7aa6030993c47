package main

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints"
)

// TestExportRoundTrip: PEFT → ComfyUI → (inspect) → kohya → PEFT gives back
// exactly the tensors, rank, alpha, targets and metadata that went in.
func TestExportRoundTrip(t *testing.T) {
	g := goldenFiles(t)
	tmp := t.TempDir()
	src, _, err := checkpoints.ReadLoRA(filepath.Join(g, "tiny.peft_lora"))
	if err != nil {
		t.Fatal(err)
	}
	src.Meta = map[string]string{checkpoints.MetaSteps: "300", checkpoints.MetaBaseModelHash: "feedbeef", checkpoints.MetaConfig: "model:\n  preset: tiny\n"}
	start := filepath.Join(tmp, "start")
	if err := checkpoints.WriteLoRA(start, src, checkpoints.FormatPEFT, checkpoints.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	comfy := filepath.Join(tmp, "comfy.safetensors")
	kohya := filepath.Join(tmp, "kohya.safetensors")
	back := filepath.Join(tmp, "back")
	for _, step := range [][]string{
		{"export", start, comfy, "--format", "comfyui"},
		{"export", comfy, kohya, "--format", "kohya"},
		{"export", kohya, back, "--format", "peft", "--dtype", "f32"},
	} {
		code, out, stderr := runCLI(t, step...)
		if code != 0 || !strings.Contains(out, "wrote "+step[4]) {
			t.Fatalf("%v: exit %d\n%s%s", step, code, out, stderr)
		}
	}
	code, out, _ := runCLI(t, "inspect", comfy)
	for _, w := range []string{"format:      comfyui", "rank:        4", "steps: 300", "base_model_hash: feedbeef", "config: (22 bytes; see --json)"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("inspect of the ComfyUI export lacks %q:\n%s", w, out)
		}
	}
	want, _, err := checkpoints.ReadLoRA(start)
	if err != nil {
		t.Fatal(err)
	}
	got, format, err := checkpoints.ReadLoRA(back)
	if err != nil {
		t.Fatal(err)
	}
	if format != checkpoints.FormatPEFT || !reflect.DeepEqual(got, want) {
		t.Errorf("after PEFT → ComfyUI → kohya → PEFT the LoRA differs (format %s; meta %v, want %v)", format, got.Meta, want.Meta)
	}
}

// TestExportErrors: bad flags are usage errors; unreadable input is a
// failure naming the file.
func TestExportErrors(t *testing.T) {
	g := goldenFiles(t)
	peft := filepath.Join(g, "tiny.peft_lora")
	out := filepath.Join(t.TempDir(), "x.safetensors")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no format", []string{"export", peft, out}, exitUsage, "--format"},
		{"bad format", []string{"export", peft, out, "--format", "lycoris"}, exitUsage, "lycoris"},
		{"bad dtype", []string{"export", peft, out, "--format", "kohya", "--dtype", "f64"}, exitUsage, "f64"},
		{"one arg", []string{"export", peft}, exitUsage, "IN and OUT"},
		{"same path", []string{"export", out, out, "--format", "kohya"}, exitUsage, "same path"},
		{"not a lora", []string{"export", filepath.Join(g, "tiny.weights.safetensors"), out, "--format", "kohya"}, exitFailure, "no LoRA keys"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, c.code, c.want)
			}
		})
	}
}
