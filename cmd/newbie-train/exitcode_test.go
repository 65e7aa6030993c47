package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/fixtures"
	"github.com/newbie-train/newbie-train/internal/runlock"
)

// readmeExitCodes reads the exit codes README.md lists ("Exit codes: 0
// done, 1 …, 2 …, 130 …") with what each means.
func readmeExitCodes(t *testing.T) map[int]string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i := strings.Index(text, "Exit codes:")
	if i < 0 {
		t.Fatal("README.md has no \"Exit codes:\" paragraph")
	}
	para := text[i+len("Exit codes:"):]
	if j := strings.Index(para, "\n\n"); j >= 0 {
		para = para[:j]
	}
	codes := map[int]string{}
	for _, m := range regexp.MustCompile(`(?:^\s*|[,;]\s*)(\d+) ([^,;]+)`).FindAllStringSubmatch(strings.ReplaceAll(para, "\n", " "), -1) {
		n, _ := strconv.Atoi(m[1])
		codes[n] = m[2]
	}
	return codes
}

// TestExitCodesMatchREADME runs one command line per situation and checks
// its exit code against the list in README.md: 0 done, 1 failed while
// running (never 2), 2 a usage or config error found before anything ran
// (an empty dataset and a changed config on resume included: they had
// exited 1), 130 interrupted.
func TestExitCodesMatchREADME(t *testing.T) {
	readme := readmeExitCodes(t)
	want := map[int]string{0: "done", exitFailure: "fail", exitUsage: "nothing ran", exitInterrupted: "interrupt"}
	if len(readme) != len(want) {
		t.Fatalf("README lists exit codes %v, the program has %v", readme, want)
	}
	for code, word := range want {
		if !strings.Contains(readme[code], word) {
			t.Errorf("README says %d means %q; the program's %d is %q", code, readme[code], code, word)
		}
	}

	root := t.TempDir()
	demo := filepath.Join(root, "demo")
	if code, _, stderr := runCLI(t, "demo", "--dir", demo, "--steps", "2", "--images", "4"); code != 0 {
		t.Fatalf("demo: exit %d\n%s", code, stderr)
	}
	cfg := filepath.Join(demo, "demo.yaml")
	same := []string{"--config", cfg, "--set", "train.max_steps=2", "--set", "train.warmup_steps=0"} // what the demo ran
	elsewhere := func(name string, more ...string) []string {
		return append([]string{"--config", cfg, "--set", "save.output=" + filepath.Join(root, name)}, more...)
	}
	empty := filepath.Join(root, "empty")
	os.MkdirAll(empty, 0o755)
	huge := filepath.Join(root, "huge")
	os.MkdirAll(huge, 0o755)
	os.WriteFile(filepath.Join(huge, "a.png"), fixtures.DeclaredPNG(30000, 30000), 0o644)
	os.WriteFile(filepath.Join(huge, "a.txt"), []byte("1girl"), 0o644)
	nan := fixtures.NaNWeights(t)
	locked := filepath.Join(root, "locked")
	os.MkdirAll(locked, 0o755)
	l, _, err := runlock.Acquire(filepath.Join(locked, "run.lock"), "the test")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()

	cases := []struct {
		name string
		args []string
		code int
		say  string
	}{
		{"version", []string{"version"}, 0, ""},
		{"no config", nil, exitUsage, "no --config"},
		{"unknown flag", []string{"--bogus"}, exitUsage, "unknown flag"},
		{"bad --set key", append(same, "--set", "train.lr=1"), exitUsage, "--set train.lr=1: train.lr: unknown key"},
		{"--fresh with --resume", append(same, "--fresh", "--resume", "latest"), exitUsage, "give one of them"},
		{"missing data folder", elsewhere("o1", "--set", "data.folders=[nowhere]"), exitUsage, "nowhere"},
		{"empty dataset", elsewhere("o2", "--set", "data.folders=["+empty+"]"), exitUsage, "no usable images"},
		{"only a declared-huge image", elsewhere("o3", "--set", "data.folders=["+huge+"]"), exitUsage, "too large: 30000x30000"},
		{"batch larger than the dataset", elsewhere("o4", "--set", "train.batch_size=9"), exitUsage, "train.batch_size 9 is larger"},
		{"resume without a state", elsewhere("o5", "--resume", "latest"), exitUsage, "no complete training state"},
		{"changed config on resume", append(same, "--resume", "latest", "--set", "train.learning_rate=5e-4"), exitUsage, "train.learning_rate: 0.001 → 0.0005"},
		{"new run on a used folder", same, exitUsage, "already holds the run started"},
		{"finished run resumed", append(same, "--resume", "latest"), exitUsage, "nothing left to train"},
		{"NaN base weights", elsewhere("o6", "--set", "model.weights="+nan, "--set", "train.nonfinite_limit=2", "--set", "train.max_steps=6"), exitFailure, "NaN or infinite for 2 consecutive steps"},
		{"folder locked by another process", elsewhere("locked"), exitFailure, "in use by another newbie-train process"},
		{"a full model without its encoders", elsewhere("o7", "--set", "model.path=", "--set", "model.preset=lumina2", "--set", "model.weights="+nan), exitUsage, "name it with model.gemma"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.say) {
				t.Errorf("exit %d, want %d (%s) with %q:\n%s", code, c.code, readme[c.code], c.say, lastLines(stderr, 6))
			}
		})
	}
	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var out, errb bytes.Buffer
		if code := run(ctx, []string{"demo", "--dir", filepath.Join(root, "cancelled"), "--steps", "2", "--images", "4"}, &out, &errb); code != exitInterrupted {
			t.Errorf("exit %d, want %d:\n%s", code, exitInterrupted, errb.String())
		}
	})
	seen := map[int]bool{}
	for _, c := range cases {
		seen[c.code] = true
	}
	var missing []int
	for code := range readme {
		if !seen[code] && code != exitInterrupted {
			missing = append(missing, code)
		}
	}
	sort.Ints(missing)
	if len(missing) > 0 {
		t.Errorf("no case exits with %v", missing)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
