package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDir holds the newbie-train binary the process tests run, built once
// per test run (see builtBinary).
var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// builtBinary builds the command with `go build` (once) and returns its path.
func builtBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "newbie-train-bin-")
		if binErr != nil {
			return
		}
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goTool); err != nil {
			goTool = "go"
		}
		binPath = filepath.Join(binDir, "newbie-train")
		out, err := exec.Command(goTool, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// proc is a running newbie-train with its stderr collected line by line.
type proc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	when  []time.Time
	seen  chan struct{} // signalled on every new line
	done  chan struct{}
	code  int
}

// start runs the binary with args; stderr lines are collected.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv is start with variables (NAME=value) added to the environment.
func startEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(builtBinary(t), args...), seen: make(chan struct{}, 1), done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.when = append(p.when, time.Now())
			p.mu.Unlock()
			select {
			case p.seen <- struct{}{}:
			default:
			}
		}
		err := p.cmd.Wait()
		p.code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.code = -int(ws.Signal())
			}
		}
		close(p.done)
	}()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// waitFor waits until a stderr line contains s and returns when it came.
func (p *proc) waitFor(t *testing.T, s string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for i, l := range p.lines {
			if strings.Contains(l, s) {
				at := p.when[i]
				p.mu.Unlock()
				return at
			}
		}
		p.mu.Unlock()
		select {
		case <-p.seen:
		case <-p.done:
			p.mu.Lock()
			for _, l := range p.lines {
				if strings.Contains(l, s) {
					p.mu.Unlock()
					return time.Now()
				}
			}
			p.mu.Unlock()
			t.Fatalf("exited (code %d) without printing %q:\n%s", p.code, s, p.output())
		case <-deadline:
			t.Fatalf("no %q within %v:\n%s", s, timeout, p.output())
		}
	}
}

// wait waits for the exit and returns the code (−signal when killed).
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("still running after %v:\n%s", timeout, p.output())
	}
	return 0
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b bytes.Buffer
	for _, l := range p.lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func (p *proc) signal(s os.Signal) { p.cmd.Process.Signal(s) }

// afterLine fires d after the first line containing s appears (never if
// the process ends first).
func (p *proc) afterLine(s string, d time.Duration) <-chan time.Time {
	fire := make(chan time.Time, 1)
	go func() {
		for {
			p.mu.Lock()
			found := false
			for _, l := range p.lines {
				if strings.Contains(l, s) {
					found = true
					break
				}
			}
			p.mu.Unlock()
			if found {
				time.Sleep(d)
				fire <- time.Now()
				return
			}
			select {
			case <-p.seen:
			case <-p.done:
				return
			}
		}
	}()
	return fire
}
