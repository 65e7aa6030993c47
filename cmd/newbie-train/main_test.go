package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/train"
)

// runCLI runs the command line in-process and returns its exit code and
// output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("model:\n  preset: tiny\ntrain:\n  lr: 1e-4\n  max_steps: 10\ndata:\n  folders: [x]\n"), 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no config", nil, "no --config"},
		{"unknown flag", []string{"--bogus"}, "unknown flag"},
		{"missing file", []string{"--config", filepath.Join(dir, "none.yaml")}, "none.yaml"},
		{"bad key", []string{"--config", bad}, "bad.yaml:4: train.lr"},
		{"parity without files", []string{"parity"}, "--weights"},
		{"stray argument", []string{"train", "lora.yaml"}, "unknown command"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != exitUsage || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, exitUsage, c.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	if code != 0 || !strings.Contains(out, "backends: cpu, cuda") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

func TestPrintConfig(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := runCLI(t, "demo", "--dir", dir, "--steps", "2", "--images", "4")
	if code != 0 {
		t.Fatalf("demo: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"encoders: FLUX VAE", "phase encode-gemma", "phase encode-jina", "done: 2 steps", "encode-vae "} {
		if !strings.Contains(stderr, want) {
			t.Errorf("demo output lacks %q:\n%s", want, stderr)
		}
	}
	code, out, _ := runCLI(t, "--config", filepath.Join(dir, "demo.yaml"), "--print-config")
	if code != 0 || !strings.Contains(out, "preset: tiny") {
		t.Errorf("--print-config: exit %d, %q", code, out)
	}
}

func TestParityTrajectory(t *testing.T) {
	golden := "../../../shared/golden/nextdit/"
	if _, err := os.Stat(golden + "tiny.train.golden.safetensors"); err != nil {
		t.Skipf("golden files not beside the checkout: %v", err)
	}
	for _, c := range []struct{ precision, limits string }{
		{"fp64", "limits: loss 1e-06, final LoRA 1e-05"},
		{"bf16", "limits: loss 2e-02, final LoRA 1e-01"},
	} {
		code, out, stderr := runCLI(t, "parity", "--weights", golden+"tiny.weights.safetensors", "--trajectory", golden+"tiny.train.golden.safetensors", "--precision", c.precision)
		if code != 0 || !strings.Contains(out, "PASS ("+c.limits+")") {
			t.Errorf("parity --precision %s: exit %d\n%s%s", c.precision, code, out, stderr)
		}
	}
}

func TestCacheReusesEntries(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runCLI(t, "demo", "--dir", dir, "--steps", "1", "--images", "3"); code != 0 {
		t.Fatalf("demo: exit %d: %s", code, stderr)
	}
	code, _, stderr := runCLI(t, "cache", "--config", filepath.Join(dir, "demo.yaml"))
	if code != 0 || !strings.Contains(stderr, "0 latents encoded, 3 reused; 0 caption features encoded, 3 reused; 0 pooled encoded, 3 reused") {
		t.Errorf("cache: exit %d, want every entry reused:\n%s", code, stderr)
	}
}

// TestExitCode: a config or usage error exits 2 even when a signal came
// too (a launched rank stopped after it found the error), unless the
// cancellation is what the error reports; interrupts exit 130, anything
// else under a signal 130, else 1.
func TestExitCode(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cfgErr := &train.ConfigError{Err: errors.New("--resume latest: nothing to resume")}
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want int
	}{
		{"config error", live, cfgErr, exitUsage},
		{"config error, then a signal", cancelled, cfgErr, exitUsage},
		{"usage error, then a signal", cancelled, usageError{errors.New("bad flag")}, exitUsage},
		{"config error from the cancellation", cancelled, &train.ConfigError{Err: fmt.Errorf("scan: %w", context.Canceled)}, exitInterrupted},
		{"interrupted", live, errInterrupted, exitInterrupted},
		{"failure under a signal", cancelled, errors.New("step 3: out of memory"), exitInterrupted},
		{"failure", live, errors.New("step 3: out of memory"), exitFailure},
	} {
		if got := exitCode(c.ctx, c.err); got != c.want {
			t.Errorf("%s: exit %d, want %d", c.name, got, c.want)
		}
	}
}
