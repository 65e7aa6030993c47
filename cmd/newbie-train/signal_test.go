package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

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
