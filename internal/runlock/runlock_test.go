package runlock

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary, started again by these tests, act as a
// second process: take the lock named by the variable, say "locked" or
// "held", and keep the lock until its stdin closes.
const helperEnv = "RUNLOCK_TEST_HELPER"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		l, _, err := Acquire(path, "helper")
		if err != nil {
			fmt.Println("held:", err)
			os.Exit(3)
		}
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin)
		l.Release()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper is a second process holding (or trying to hold) a lock.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	line  string
}

// spawn starts a helper process on path and returns once it has said
// whether it got the lock. Safe to call from any goroutine.
func spawn(t *testing.T, path string) (*helper, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &helper{cmd: cmd, stdin: stdin}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("helper said nothing: %w", err)
	}
	h.line = strings.TrimSpace(line)
	return h, nil
}

func startHelper(t *testing.T, path string) *helper {
	t.Helper()
	h, err := spawn(t, path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestSecondProcessRefused: while one process holds the lock, another
// process and this one are refused with the holder's PID and start time.
func TestSecondProcessRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.lock")
	a := startHelper(t, path)
	if a.line != "locked" {
		t.Fatalf("first helper: %q", a.line)
	}
	if b := startHelper(t, path); !strings.HasPrefix(b.line, "held:") || !strings.Contains(b.line, fmt.Sprintf("PID %d", a.cmd.Process.Pid)) {
		t.Errorf("second process: %q, want a refusal naming PID %d", b.line, a.cmd.Process.Pid)
	}
	_, _, err := Acquire(path, "test")
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.PID != a.cmd.Process.Pid || held.Holder.Started.IsZero() ||
		!strings.Contains(err.Error(), "started ") {
		t.Fatalf("Acquire while held: %v, want a HeldError naming PID %d and its start time", err, a.cmd.Process.Pid)
	}
	// A clean release removes the file; the lock is then free.
	a.stdin.Close()
	a.cmd.Wait()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after release: %v", err)
	}
	l, stale, err := Acquire(path, "test")
	if err != nil || stale != nil {
		t.Fatalf("after release: %v (stale %v)", err, stale)
	}
	l.Release()
}

// TestKilledHolderTakenOver: the lock of a process killed with SIGKILL is
// free at once, and the taker learns who held it.
func TestKilledHolderTakenOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.lock")
	a := startHelper(t, path)
	if a.line != "locked" {
		t.Fatalf("helper: %q", a.line)
	}
	pid := a.cmd.Process.Pid
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("a killed holder's file should remain: %v", err)
	}
	l, stale, err := Acquire(path, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if stale == nil || stale.PID != pid {
		t.Errorf("stale holder %v, want PID %d", stale, pid)
	}
	if h, err := Read(path); err != nil || h.PID != os.Getpid() {
		t.Errorf("lock file names %v (%v), want this process", h, err)
	}
}

// TestRaceOneWinner: processes started together on one lock: exactly one
// gets it, every other is refused.
func TestRaceOneWinner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.lock")
	const n = 6
	lines := make([]string, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := spawn(t, path)
			if err != nil {
				t.Error(err)
				return
			}
			lines[i] = h.line
		}()
	}
	wg.Wait()
	won := 0
	for _, l := range lines {
		if l == "locked" {
			won++
		} else if !strings.HasPrefix(l, "held:") {
			t.Errorf("helper said %q", l)
		}
	}
	if won != 1 {
		t.Errorf("%d of %d racing processes got the lock (%v), want exactly 1 (%v)", won, n, lines, time.Since(start))
	}
}
