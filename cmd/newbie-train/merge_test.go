package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// forwardGolden runs the golden inputs through a model in F32 and returns
// the output; withLoRA attaches that LoRA first.
func forwardGolden(t *testing.T, g, weights, withLoRA string) []float64 {
	t.Helper()
	gold, err := nextdit.OpenGolden(filepath.Join(g, "tiny.golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer gold.Close()
	e := ag.New(cpu.New())
	m, err := nextdit.Load(e, weights, nextdit.Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	if withLoRA != "" {
		s, _, err := lora.Load(m, withLoRA, 0)
		if err != nil {
			t.Fatal(err)
		}
		s.SetTraining(false)
	}
	in, _, err := gold.Inputs(e, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	y, err := m.Forward(in)
	if err != nil {
		t.Fatal(err)
	}
	v, err := y.Values()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMerge: the merged model computes what the base with the adapter
// computes (f32, ≤ 1e-6 relative) on the golden inputs; a ComfyUI base
// without config metadata merges to the same tensors; bf16 output works.
func TestMerge(t *testing.T) {
	g := goldenFiles(t)
	tmp := t.TempDir()
	base := filepath.Join(g, "tiny.weights.safetensors")
	peft := filepath.Join(g, "tiny.peft_lora")
	merged := filepath.Join(tmp, "merged.safetensors")
	code, out, stderr := runCLI(t, "merge", "--weights", base, "--lora", peft, "--out", merged, "--dtype", "f32")
	if code != 0 || !strings.Contains(out, "merged 35 layers") {
		t.Fatalf("merge: exit %d\n%s%s", code, out, stderr)
	}
	want := forwardGolden(t, g, base, peft)
	got := forwardGolden(t, g, merged, "")
	kerneltest.Check(t, "merged model vs base + adapter", got, want, 1e-6)
	plain := forwardGolden(t, g, base, "")
	if kernels.RelErr(plain, want) < 1e-3 {
		t.Fatalf("the adapter barely changes the output; the test would prove nothing")
	}
	t.Logf("merged vs adapter: rel err %.3g", kernels.RelErr(got, want))

	code, out, _ = runCLI(t, "inspect", merged)
	if code != 0 || !strings.Contains(out, "layout:      upstream") || !strings.Contains(out, "preset:      tiny") || !strings.Contains(out, "merged_lora: tiny.peft_lora") {
		t.Errorf("inspect of the merged file:\n%s", out)
	}

	// The same merge from a ComfyUI base, which has no config metadata.
	fromComfy := filepath.Join(tmp, "from_comfy.safetensors")
	if code, _, stderr := runCLI(t, "merge", "--weights", comfyWeights(t, g), "--lora", peft, "--out", fromComfy); code != 0 {
		t.Fatalf("merge from ComfyUI: %s", stderr)
	}
	a, err := safetensors.Open(merged)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := safetensors.Open(fromComfy)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !reflect.DeepEqual(a.Names(), b.Names()) || a.Metadata()["config"] != b.Metadata()["config"] {
		t.Fatalf("ComfyUI-based merge has other names or config")
	}
	for _, n := range a.Names() {
		x, _ := a.Bytes(n)
		y, _ := b.Bytes(n)
		if string(x) != string(y) {
			t.Errorf("%s differs between the upstream- and ComfyUI-based merges", n)
		}
	}

	bf := filepath.Join(tmp, "merged_bf16.safetensors")
	if code, _, stderr := runCLI(t, "merge", "--weights", base, "--lora", peft, "--out", bf, "--dtype", "bf16"); code != 0 {
		t.Fatalf("bf16 merge: %s", stderr)
	}
	if code, out, _ := runCLI(t, "inspect", bf); code != 0 || !strings.Contains(out, "BF16 ×93") {
		t.Errorf("bf16 merge:\n%s", out)
	}
}

// TestMergeRefuses: a LoRA with layers the base lacks or of other shapes is
// refused naming every such layer, and nothing is written.
func TestMergeRefuses(t *testing.T) {
	g := goldenFiles(t)
	tmp := t.TempDir()
	l, _, err := checkpoints.ReadLoRA(filepath.Join(g, "tiny.peft_lora"))
	if err != nil {
		t.Fatal(err)
	}
	l.Layers["layers.9.attention.qkv"] = l.Layers["layers.0.attention.qkv"]
	ly := l.Layers["layers.1.attention.out"]
	ly.In, ly.A = 2*ly.In, append(ly.A, ly.A...)
	l.Layers["layers.1.attention.out"] = ly
	bad := filepath.Join(tmp, "bad.safetensors")
	if err := checkpoints.WriteLoRA(bad, l, checkpoints.FormatComfyUI, checkpoints.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "merged.safetensors")
	base := filepath.Join(g, "tiny.weights.safetensors")
	code, _, stderr := runCLI(t, "merge", "--weights", base, "--lora", bad, "--out", out)
	for _, w := range []string{"layers.9.attention.qkv: the base has no layers.9.attention.qkv.weight", "layers.1.attention.out: the LoRA maps 192 → 96 features, the base weight is [96 96]"} {
		if code != exitFailure || !strings.Contains(stderr, w) {
			t.Errorf("exit %d, stderr lacks %q:\n%s", code, w, stderr)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused merge wrote %s", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"merge", "--weights", base}, "--weights, --lora and --out"},
		{[]string{"merge", "--weights", base, "--lora", bad, "--out", base}, "overwrite the base"},
		{[]string{"merge", "--weights", base, "--lora", bad, "--out", out, "--dtype", "f16"}, "--dtype"},
	} {
		if code, _, stderr := runCLI(t, c.args...); code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q", c.args, code, stderr)
		}
	}
}
