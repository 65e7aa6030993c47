package dist

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultGrace is how long Launch gives the surviving ranks to stop after
// one has failed, before it kills them, when Launch.Grace is zero.
const DefaultGrace = 10 * time.Second

// Launch starts a job of Ranks processes on this machine (`--gpus N`):
// Ranks copies of Program, each with the torchrun variables set (RANK and
// LOCAL_RANK r, WORLD_SIZE and LOCAL_WORLD_SIZE Ranks, MASTER_ADDR
// 127.0.0.1 and a free MASTER_PORT), so each opens the GPU of its local
// rank and they meet through Rendezvous. The program must not launch again
// when RANK is set.
type Launch struct {
	Ranks   int
	Program string   // the executable; "" for this program's own
	Args    []string // its arguments
	Env     []string // the environment the job variables are added to; nil for this process's
	// Stdout and Stderr receive rank 0's output as it is and every other
	// rank's by whole lines, each prefixed "[rank r] ".
	Stdout, Stderr io.Writer
	// Grace is how long the other ranks get to stop (SIGTERM) once one
	// has failed, before they are killed (DefaultGrace when zero).
	Grace time.Duration
}

// RankExitError is the failure that ended a job: the first rank that
// exited with an error.
type RankExitError struct {
	Rank, PID int
	// Code is the exit status, -1 when a signal ended the process.
	Code  int
	State string // "exit status 3", "signal: killed"
	// Codes is every rank's exit status, by rank, those the launcher
	// stopped included (-1 for a signal).
	Codes []int
}

func (e *RankExitError) Error() string {
	return fmt.Sprintf("rank %d (pid %d) failed: %s; the other ranks were stopped", e.Rank, e.PID, e.State)
}

// exitInterrupted is the status a rank that saved its state after an
// interrupt exits with.
const exitInterrupted = 130

// Run starts the ranks and waits for all of them. It returns nil when
// every rank exits 0. When one fails, it stops the others (SIGTERM, then
// SIGKILL after Grace) and returns a *RankExitError naming it. When ctx is
// cancelled (Ctrl-C, SIGTERM), every rank gets SIGINT — a training run
// saves its state and exits 130 — and Run returns an error wrapping
// ctx.Err() once they have.
func (l Launch) Run(ctx context.Context) error {
	if l.Ranks < 1 {
		return fmt.Errorf("dist: launch: %d ranks", l.Ranks)
	}
	program := l.Program
	if program == "" {
		p, err := os.Executable()
		if err != nil {
			return fmt.Errorf("dist: launch: finding this program: %w", err)
		}
		program = p
	}
	port, err := localPort()
	if err != nil {
		return fmt.Errorf("dist: launch: finding a free port for the rendezvous: %w", err)
	}
	base := l.Env
	if base == nil {
		base = os.Environ()
	}
	base = slices.DeleteFunc(slices.Clone(base), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(jobVars, name)
	})
	grace := l.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	out := &outputs{}
	type exit struct {
		rank  int
		state *os.ProcessState
	}
	exits := make(chan exit, l.Ranks)
	cmds := make([]*exec.Cmd, l.Ranks)
	running := make([]bool, l.Ranks)
	signalAll := func(sig os.Signal) {
		for r, c := range cmds {
			if running[r] {
				signalRank(c, sig)
			}
		}
	}
	for r := range l.Ranks {
		env := Env{Rank: r, WorldSize: l.Ranks, LocalRank: r, LocalWorldSize: l.Ranks, MasterAddr: "127.0.0.1", MasterPort: port}
		c := exec.Command(program, l.Args...)
		c.Env = append(slices.Clone(base), env.Vars()...)
		c.Stdout, c.Stderr = out.writer(l.Stdout, r), out.writer(l.Stderr, r)
		c.WaitDelay = time.Second // the output pipes of a killed rank
		ownProcessGroup(c)
		if err := c.Start(); err != nil {
			signalAll(killSignal)
			for range r {
				<-exits
			}
			return fmt.Errorf("dist: launch: starting rank %d (%s): %w", r, program, err)
		}
		cmds[r], running[r] = c, true
		go func() {
			c.Wait()
			exits <- exit{r, c.ProcessState}
		}()
	}
	var failed *RankExitError
	codes := make([]int, l.Ranks)
	interrupted := false
	done := ctx.Done()
	var kill <-chan time.Time
	for left := l.Ranks; left > 0; {
		select {
		case <-done:
			done = nil
			interrupted = true
			signalAll(os.Interrupt)
		case <-kill:
			kill = nil
			signalAll(killSignal)
		case ex := <-exits:
			left--
			running[ex.rank] = false
			code := ex.state.ExitCode()
			codes[ex.rank] = code
			if code == 0 || (interrupted && code == exitInterrupted) || failed != nil {
				continue
			}
			failed = &RankExitError{Rank: ex.rank, PID: ex.state.Pid(), Code: code, State: ex.state.String()}
			out.say(l.Stderr, fmt.Sprintf("newbie-train: rank %d (pid %d) failed: %s; stopping the other ranks\n", ex.rank, failed.PID, failed.State))
			signalAll(stopSignal)
			kill = time.After(grace)
		}
	}
	out.flush()
	switch {
	case failed != nil:
		failed.Codes = codes
		return failed
	case interrupted:
		return fmt.Errorf("dist: the job of %d ranks was interrupted: %w", l.Ranks, ctx.Err())
	}
	return nil
}

// localPort finds a TCP port free on the loopback interface now.
func localPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// outputs serialises the ranks' writes to the launcher's outputs, so lines
// of different ranks never mix.
type outputs struct {
	mu       sync.Mutex
	prefixed []*prefixWriter
}

// writer is what rank r's stdout or stderr is connected to.
func (o *outputs) writer(w io.Writer, rank int) io.Writer {
	if w == nil {
		return nil
	}
	if rank == 0 {
		if _, isFile := w.(*os.File); isFile {
			return w // the rank writes to it itself (a terminal keeps its progress bar)
		}
		return &lockedWriter{mu: &o.mu, w: w}
	}
	p := &prefixWriter{mu: &o.mu, w: w, prefix: fmt.Sprintf("[rank %d] ", rank)}
	o.mu.Lock()
	o.prefixed = append(o.prefixed, p)
	o.mu.Unlock()
	return p
}

// say writes a message of the launcher's own.
func (o *outputs) say(w io.Writer, msg string) {
	if w == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	io.WriteString(w, msg)
}

// flush writes what the ranks left without a final newline.
func (o *outputs) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.prefixed {
		if len(p.partial) > 0 {
			p.w.Write(append(append([]byte(p.prefix), p.partial...), '\n'))
			p.partial = nil
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// prefixWriter writes whole lines, each behind a prefix.
type prefixWriter struct {
	mu      *sync.Mutex
	w       io.Writer
	prefix  string
	partial []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	var out []byte
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		out = append(out, p.prefix...)
		out = append(out, p.partial[:i+1]...)
		p.partial = p.partial[i+1:]
	}
	if len(out) > 0 {
		if _, err := p.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}
