package main

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/internal/fixtures"
)

// soakSteps and the flags below make a small demo (4 images of 32×32,
// a save every step) through the same code path as the real one.
const soakSteps = 24

func soakArgs(dir string) []string {
	return []string{"demo", "--dir", dir, "--images", "4", "--steps", strconv.Itoa(soakSteps),
		"--set", "data.resolution=32", "--set", "save.every=1", "--set", "logging.every=1"}
}

// TestSoakKill9: 20 SIGKILLs at random moments of a demo that saves every
// step — during start-up, the scan, the encoding, a step, a save, a prune —
// then a resume: its losses equal an uninterrupted run's, bit for bit, one
// line per step, and the output folder holds no stray file.
func TestSoakKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak test runs about half a minute")
	}
	ref := t.TempDir()
	builtBinary(t) // not part of the timing below
	began := time.Now()
	p := start(t, soakArgs(ref)...)
	first := p.waitFor(t, "step 1/", 60*time.Second).Sub(began)
	if code := p.wait(t, 120*time.Second); code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s", code, p.output())
	}
	perStep := (time.Since(began) - first) / soakSteps
	want := fixtures.LogLosses(t, filepath.Join(ref, "demo-out", "demo_lora.jsonl"))

	dir := t.TempDir()
	states := filepath.Join(dir, "demo-out", "states")
	// resumeArgs continues the run when a complete state exists; nil when
	// that state is already the last step.
	resumeArgs := func() []string {
		path, _, err := checkpoints.LatestState(states)
		if err != nil {
			return soakArgs(dir)
		}
		if st, err := checkpoints.LoadState(path); err == nil && st.Step == soakSteps {
			return nil
		}
		return append(soakArgs(dir), "--resume", "latest")
	}
	r := rand.New(rand.NewPCG(14, 20))
	kills, finished := 0, false
	for kills < 20 {
		args := resumeArgs()
		if args == nil {
			finished = true
			break
		}
		p := start(t, args...)
		// A third of the kills land anywhere in the start-up (scan, cache,
		// load, resume); the rest within a step of this run's first step
		// line, so each kill moves the run on by at most about a step
		// however fast this machine is, and 20 of them fit in the run.
		var killAt <-chan time.Time
		if r.Float64() < 1.0/3 {
			killAt = time.After(time.Duration(r.Float64() * float64(first)))
		} else {
			killAt = p.afterLine("step ", time.Duration(r.Float64()*float64(perStep)))
		}
		select {
		case <-p.done:
			if p.code != 0 {
				t.Fatalf("run %d (%v): exit %d\n%s", kills+1, args[len(args)-2:], p.code, p.output())
			}
			finished = true
		case <-killAt:
			p.signal(syscall.SIGKILL)
			<-p.done
			kills++
		}
		if finished {
			break
		}
	}
	if args := resumeArgs(); args != nil {
		q := start(t, args...)
		if code := q.wait(t, 120*time.Second); code != 0 {
			t.Fatalf("final resume: exit %d\n%s", code, q.output())
		}
	}
	t.Logf("%d kills (first step after %v, %v a step), finished early: %v", kills, first.Round(time.Millisecond), perStep.Round(time.Millisecond), finished)
	if kills < 20 {
		t.Errorf("only %d kills before the run finished", kills)
	}

	got := fixtures.LogLosses(t, filepath.Join(dir, "demo-out", "demo_lora.jsonl"))
	if len(got) != soakSteps {
		t.Errorf("%d steps logged, want %d", len(got), soakSteps)
	}
	for step, v := range want {
		if got[step] != v {
			t.Errorf("step %d: loss %v after 20 kills, %v uninterrupted", step, got[step], v)
		}
	}
	var stray, stepFiles []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		switch {
		case strings.Contains(name, ".tmp") || strings.HasPrefix(name, ".") || name == "run.lock" || name == "old-runs":
			stray = append(stray, p)
		case strings.Contains(name, "-step"):
			stepFiles = append(stepFiles, name)
		}
		return nil
	})
	if len(stray) > 0 {
		t.Errorf("stray files: %v", stray)
	}
	if n := len(stateNames(t, states)); n != 2 {
		t.Errorf("%d states kept, the demo keeps 2", n)
	}
	if len(stepFiles) != 6 { // keep_last_loras 3 steps × comfyui and peft
		t.Errorf("intermediate LoRA files %v, want 3 steps × 2 formats", stepFiles)
	}
}

func stateNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
