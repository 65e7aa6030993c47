package main

import (
	"strings"
	"testing"
)

// TestBenchCPU runs the bench command on the CPU backend with the tiny
// model. The default 1024² input takes about 45 s a step there, so the test
// shrinks it to a 64² image and a 13-token caption.
func TestBenchCPU(t *testing.T) {
	code, out, stderr := runCLI(t, "bench", "--backend", "cpu", "--preset", "tiny", "--steps", "2",
		"--warmup", "1", "--res", "64", "--caption", "13", "--profile")
	if code != 0 {
		t.Fatalf("bench: exit %d\n%s%s", code, out, stderr)
	}
	for _, want := range []string{
		"backend: cpu", "latent 16×8×8 (16 image tokens) + 13 caption tokens",
		"| off |", "| on |", "profile, checkpointing off", "| AttentionGrad |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, "median") {
		t.Errorf("no progress on stderr:\n%s", stderr)
	}
}

// TestBenchFP8Base: --fp8-base runs and says so in the table.
func TestBenchFP8Base(t *testing.T) {
	code, out, stderr := runCLI(t, "bench", "--backend", "cpu", "--preset", "tiny", "--steps", "1",
		"--warmup", "1", "--res", "32", "--caption", "5", "--checkpointing", "off", "--fp8-base")
	if code != 0 || !strings.Contains(out, "frozen fp8 (E4M3") {
		t.Fatalf("bench --fp8-base: exit %d\n%s%s", code, out, stderr)
	}
}

// TestBenchMemoryBudget: --memory-budget measures the levers the trainer's
// checkpoint_blocks auto picks: with room to spare, nothing given back
// (checkpointing off); under a tight budget, the norms and feed-forward
// inputs recomputed, each with the plan's estimate beside the measured
// peak; under an impossible one, an error that says so.
func TestBenchMemoryBudget(t *testing.T) {
	args := []string{"bench", "--backend", "cpu", "--preset", "tiny", "--layers", "4", "--steps", "1", "--warmup", "1", "--res", "64"}
	for _, c := range []struct {
		budget string
		want   []string
	}{
		{"1", []string{"memory budget 1 GiB: 0 of 8 blocks checkpointed (the plan", "| off |", "memory plan, checkpointing off:"}},
		{"0.0175", []string{"the norms recomputed in the backward, the feed-forward inputs of ", "| off |", "memory plan, checkpointing off:"}},
	} {
		code, out, stderr := runCLI(t, append(args, "--memory-budget", c.budget)...)
		if code != 0 {
			t.Fatalf("--memory-budget %s: exit %d\n%s%s", c.budget, code, out, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("--memory-budget %s: output lacks %q:\n%s", c.budget, w, out)
			}
		}
	}
	code, _, stderr := runCLI(t, append(args, "--memory-budget", "0.001")...)
	if code == 0 || !strings.Contains(stderr, "even every block checkpointed is planned above it") {
		t.Errorf("--memory-budget 0.001: exit %d, stderr %q", code, stderr)
	}
}

// TestBenchInfer: --infer times guided evaluations instead of steps.
func TestBenchInfer(t *testing.T) {
	code, out, stderr := runCLI(t, "bench", "--backend", "cpu", "--preset", "tiny", "--infer", "2", "--warmup", "1", "--res", "32", "--caption", "5")
	if code != 0 || !strings.Contains(out, "| as opened | 2 |") || !strings.Contains(out, "batch 2 (guided") {
		t.Fatalf("bench --infer: exit %d\n%s%s", code, out, stderr)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"full model on cpu", []string{"bench", "--backend", "cpu"}, "use --preset tiny"},
		{"bad checkpointing", []string{"bench", "--checkpointing", "sometimes"}, `--checkpointing "sometimes"`},
		{"zero steps", []string{"bench", "--steps", "0"}, "--steps 0"},
		{"negative warmup", []string{"bench", "--warmup", "-2"}, "--warmup -2"},
		{"odd resolution", []string{"bench", "--backend", "cpu", "--preset", "tiny", "--res", "100"}, "multiple of 16"},
		{"unknown preset", []string{"bench", "--preset", "giant"}, "unknown preset"},
		{"old resolution flag still checked", []string{"bench", "--backend", "cpu", "--preset", "tiny", "--resolution", "100"}, "multiple of 16"},
		{"negative layers", []string{"bench", "--layers", "-3"}, "layers -3"},
		{"compare on the cpu", []string{"bench", "--backend", "cpu", "--preset", "tiny", "--res", "32", "--steps", "1", "--warmup", "1", "--compare-off", ";graphs"}, "no optional paths"},
		{"negative infer", []string{"bench", "--backend", "cpu", "--preset", "tiny", "--infer", "-1"}, "--infer -1"},
		{"negative memory budget", []string{"bench", "--backend", "cpu", "--preset", "tiny", "--memory-budget", "-4"}, "--memory-budget -4"},
		{"stray argument", []string{"bench", "now"}, "unknown command"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != exitUsage || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, exitUsage, c.want)
			}
		})
	}
}
