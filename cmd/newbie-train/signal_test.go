package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints"
)

// interruptAfterFirstStep sends this process SIGINT once the run logs its
// first step, as Ctrl-C in a terminal would.
type interruptAfterFirstStep struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	sent bool
}

func (w *interruptAfterFirstStep) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.sent && strings.Contains(w.buf.String(), "step 1/") {
		w.sent = true
		syscall.Kill(os.Getpid(), syscall.SIGINT)
	}
	return len(p), nil
}

// TestCtrlCSavesResumableState: SIGINT mid-run exits 130 with a state that
// loads, no partial files, and a message saying how to resume.
func TestCtrlCSavesResumableState(t *testing.T) {
	dir := t.TempDir()
	w := &interruptAfterFirstStep{}
	code := runWithSignals([]string{"demo", "--dir", dir, "--steps", "400", "--images", "4"}, &bytes.Buffer{}, w)
	if code != exitInterrupted {
		t.Fatalf("exit %d, want %d:\n%s", code, exitInterrupted, w.buf.String())
	}
	if !strings.Contains(w.buf.String(), "--resume latest") {
		t.Errorf("the interrupted run does not say how to resume:\n%s", w.buf.String())
	}
	out := filepath.Join(dir, "demo-out")
	path, skipped, err := checkpoints.LatestState(filepath.Join(out, "states"))
	if err != nil || len(skipped) > 0 {
		t.Fatalf("latest state: %v (skipped %v)", err, skipped)
	}
	st, err := checkpoints.LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Step < 1 || st.Step >= 400 {
		t.Errorf("state at step %d", st.Step)
	}
	filepath.Walk(out, func(p string, info os.FileInfo, err error) error {
		if base := filepath.Base(p); err == nil && (strings.Contains(base, ".tmp") || strings.HasPrefix(base, ".")) {
			t.Errorf("partial file left behind: %s", p)
		}
		return nil
	})
}

// TestSignalDuringEncoding (defect 5): Ctrl-C while the dataset is being
// encoded is acknowledged at once, stops the encoding within seconds and
// exits 130 (it had exited 1, "context canceled"); what was encoded stays
// in the cache for the next run.
func TestSignalDuringEncoding(t *testing.T) {
	dir := t.TempDir()
	p := start(t, "demo", "--dir", dir, "--images", "96", "--steps", "5", "--set", "data.resolution=128", "--set", "data.workers=1")
	p.waitFor(t, "enc ", 60*time.Second) // the first progress line of the encoder
	sent := time.Now()
	p.signal(syscall.SIGINT)
	ack := p.waitFor(t, "stopping after the image being encoded", 5*time.Second)
	if d := ack.Sub(sent); d > time.Second {
		t.Errorf("acknowledged after %v", d)
	}
	if code := p.wait(t, 10*time.Second); code != exitInterrupted {
		t.Fatalf("exit %d, want %d:\n%s", code, exitInterrupted, p.output())
	}
	out := p.output()
	if !strings.Contains(out, "interrupted during encoding the dataset") || strings.Contains(out, "encode cache ") || strings.Contains(out, "step 1/") {
		t.Errorf("the run did not stop while encoding:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "demo-out", "states")); err == nil {
		t.Error("a state folder exists although training never began")
	}
}

// TestSignalDuringPreview (defect 5): Ctrl-C while previews render is
// acknowledged at once (it had been ignored, with no word), the run
// stops when the preview is done and exits 130 with a loadable state.
func TestSignalDuringPreview(t *testing.T) {
	dir := t.TempDir()
	p := start(t, "demo", "--dir", dir, "--images", "4", "--steps", "50",
		"--set", "sample.prompts=[a girl with red hair]", "--set", "sample.every=1", "--set", "sample.steps=1000")
	p.waitFor(t, "step 1/50", 60*time.Second) // the previews of step 1 begin now
	sent := time.Now()
	p.signal(syscall.SIGINT)
	ack := p.waitFor(t, "stopping after the previews of step 1, then saving a resumable state", 5*time.Second)
	if d := ack.Sub(sent); d > time.Second {
		t.Errorf("acknowledged after %v", d)
	}
	if code := p.wait(t, 30*time.Second); code != exitInterrupted {
		t.Fatalf("exit %d, want %d:\n%s", code, exitInterrupted, p.output())
	}
	if d := time.Since(sent); d > 20*time.Second {
		t.Errorf("stopped %v after the signal", d)
	}
	if !strings.Contains(p.output(), "--resume latest") {
		t.Errorf("no resume hint:\n%s", p.output())
	}
	path, _, err := checkpoints.LatestState(filepath.Join(dir, "demo-out", "states"))
	if err != nil {
		t.Fatalf("no state: %v\n%s", err, p.output())
	}
	if st, err := checkpoints.LoadState(path); err != nil || st.Step != 1 {
		t.Errorf("state %s: step %v, %v", path, st, err)
	}
}

// TestSecondSignalQuits: a second signal (here SIGTERM, then SIGINT)
// quits at once with 130 even in the middle of a long preview, and the
// next start cleans up after it and trains.
func TestSecondSignalQuits(t *testing.T) {
	dir := t.TempDir()
	args := []string{"demo", "--dir", dir, "--images", "4", "--steps", "3",
		"--set", "sample.prompts=[a girl with red hair]", "--set", "sample.every=1", "--set", "sample.steps=1000"}
	p := start(t, args...)
	p.waitFor(t, "step 1/3", 60*time.Second)
	// The first signal stops the preview within a sampler step and saves
	// a state, so the second follows at once to land while that runs.
	p.signal(syscall.SIGTERM)
	time.Sleep(5 * time.Millisecond)
	second := time.Now()
	p.signal(syscall.SIGINT)
	if code := p.wait(t, 10*time.Second); code != exitInterrupted {
		t.Fatalf("exit %d, want %d:\n%s", code, exitInterrupted, p.output())
	}
	if d := time.Since(second); d > 3*time.Second {
		t.Errorf("quit %v after the second signal", d)
	}
	if !strings.Contains(p.output(), "stopping after the previews of step 1") {
		t.Errorf("the first signal was not acknowledged:\n%s", p.output())
	}
	if !strings.Contains(p.output(), "second interrupt: quitting now") {
		t.Errorf("no word about quitting:\n%s", p.output())
	}
	q := start(t, args[:7]...)
	if code := q.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("the next run: exit %d:\n%s", code, q.output())
	}
}
