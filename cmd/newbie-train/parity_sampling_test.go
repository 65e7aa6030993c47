package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// withSettings copies a sampler golden file with one run's settings text
// edited (old replaced by new), the tensors unchanged.
func withSettings(t *testing.T, path, run, old, new string) string {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meta := f.Metadata()
	key := run + ".settings"
	if !strings.Contains(meta[key], old) {
		t.Fatalf("%s has no %q in %s", path, old, meta[key])
	}
	meta[key] = strings.Replace(meta[key], old, new, 1)
	var ts []safetensors.Tensor
	for _, info := range f.Tensors() {
		b, err := f.Bytes(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: b})
	}
	out := filepath.Join(t.TempDir(), "edited.safetensors")
	if err := safetensors.Write(out, ts, meta); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestParitySampling: parity --sampling passes in fp64 and fp32 on every
// trajectory point and final sample, and exits 1 when the replay is given a
// wrong time shift or drops the CFG renorm (the check can fail).
func TestParitySampling(t *testing.T) {
	weights := goldentest.Path(t, "nextdit", "tiny.weights.safetensors")
	g := goldentest.Path(t, "sampler", "tiny.sample.golden.safetensors")
	cases := []struct {
		name   string
		golden string
		extra  []string
		code   int
		wants  []string
	}{
		{"fp64", g, []string{"--precision", "fp64"}, 0, []string{"midpoint trajectory[7]", "euler trajectory[5]", "dpm final", "PASS"}},
		{"fp32", g, []string{"--precision", "fp32"}, 0, []string{"1e-05", "PASS"}},
		{"wrong shift", withSettings(t, g, "dpm", `"shift": 6.0`, `"shift": 5.0`), nil, exitFailure, []string{"BEYOND", "sampling parity failed in fp64", "dpm final"}},
		{"no renorm", withSettings(t, g, "midpoint", `"renorm_cfg": 1.0`, `"renorm_cfg": 0.0`), nil, exitFailure, []string{"midpoint trajectory", "BEYOND"}},
		{"bf16", g, []string{"--precision", "bf16"}, exitUsage, []string{"fp64 or fp32"}},
		{"with golden", g, []string{"--golden", g}, exitUsage, []string{"takes neither"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"parity", "--weights", weights, "--sampling", c.golden}, c.extra...)
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
}
