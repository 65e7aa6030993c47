package dist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rankModeVar makes the test binary act as one rank of a launched job
// (see rankMain) instead of running the tests.
const rankModeVar = "NEWBIE_DIST_TEST_RANK"

func TestMain(m *testing.M) {
	if mode := os.Getenv(rankModeVar); mode != "" {
		os.Exit(rankMain(mode))
	}
	os.Exit(m.Run())
}

// rankMain is a rank of a launched test job.
func rankMain(mode string) int {
	interrupts := make(chan os.Signal, 1)
	signal.Notify(interrupts, os.Interrupt)
	env, err := ParseEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch mode {
	case "rendezvous": // report the environment, meet the others, leave in good order
		fmt.Printf("rank=%d world=%d local=%d/%d master=%s\n", env.Rank, env.WorldSize, env.LocalRank, env.LocalWorldSize, env.RendezvousAddr())
		fmt.Fprintf(os.Stderr, "a line on stderr\nand one without a newline")
		s, id, err := Rendezvous(context.Background(), env, 20*time.Second, func() ([]byte, error) { return []byte("id-from-rank-0"), nil })
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := s.Barrier(0); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("rank %d got %s\n", env.Rank, id)
		s.Close()
		return 0
	case "fail", "stubborn": // rank 1 fails; the others would run for a minute
		if env.Rank == 1 {
			time.Sleep(200 * time.Millisecond)
			fmt.Fprintln(os.Stderr, "rank 1 gives up")
			return 3
		}
		if mode == "stubborn" {
			signal.Ignore(syscall.SIGTERM)
		}
		time.Sleep(time.Minute)
		return 0
	case "interrupt": // save and exit 130 on Ctrl-C
		fmt.Println("ready")
		select {
		case <-interrupts:
			fmt.Println("saved")
			return exitInterrupted
		case <-time.After(time.Minute):
			return 1
		}
	}
	return 2
}

// syncBuffer is an output the test can read while the ranks write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLaunch(mode string, ranks int, out *syncBuffer) Launch {
	return Launch{Ranks: ranks, Args: []string{"-test.run=^$"}, Env: append(os.Environ(), rankModeVar+"="+mode), Stdout: out, Stderr: out, Grace: 300 * time.Millisecond}
}

// TestLaunchRendezvous: the launched ranks see the torchrun variables,
// meet at the address they name and exit 0; the output of ranks other
// than 0 comes by whole lines, each with its rank.
func TestLaunchRendezvous(t *testing.T) {
	out := &syncBuffer{}
	if err := testLaunch("rendezvous", 3, out).Run(context.Background()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	text := out.String()
	for r := range 3 {
		prefix := ""
		if r > 0 {
			prefix = fmt.Sprintf("[rank %d] ", r)
		}
		for _, want := range []string{
			fmt.Sprintf("%srank=%d world=3 local=%d/3 master=127.0.0.1:", prefix, r, r),
			fmt.Sprintf("%srank %d got id-from-rank-0\n", prefix, r),
		} {
			if !strings.Contains(text, want) {
				t.Fatalf("the output has no %q:\n%s", want, text)
			}
		}
	}
	if !strings.Contains(text, "[rank 2] a line on stderr\n") || !strings.Contains(text, "[rank 2] and one without a newline\n") {
		t.Fatalf("rank 2's stderr is not there by lines:\n%s", text)
	}
}

// TestLaunchRankFails: one rank exiting 3 stops the others — also ones
// that ignore SIGTERM — within a bounded time, and the error names it.
func TestLaunchRankFails(t *testing.T) {
	for _, mode := range []string{"fail", "stubborn"} {
		t.Run(mode, func(t *testing.T) {
			out := &syncBuffer{}
			start := time.Now()
			err := testLaunch(mode, 3, out).Run(context.Background())
			took := time.Since(start)
			var re *RankExitError
			if !errors.As(err, &re) {
				t.Fatalf("error %v, want a RankExitError\n%s", err, out)
			}
			if re.Rank != 1 || re.Code != 3 || len(re.Codes) != 3 || re.Codes[1] != 3 || re.Codes[0] == 0 || re.Codes[2] == 0 {
				t.Fatalf("got %+v, want rank 1 with status 3 and the others stopped", re)
			}
			wantErr(t, err, "rank 1", "exit status 3", "the other ranks were stopped")
			if !strings.Contains(out.String(), "[rank 1] rank 1 gives up") || !strings.Contains(out.String(), "rank 1 (pid") {
				t.Fatalf("output:\n%s", out)
			}
			t.Logf("%s: stopped after %v: %v", mode, took.Round(time.Millisecond), err)
			if took > 15*time.Second {
				t.Fatalf("the launcher took %v to stop the job", took)
			}
		})
	}
}

// TestLaunchInterrupt: cancelling the launcher's context (its Ctrl-C)
// interrupts every rank, which exit 130, and Run says it was interrupted.
func TestLaunchInterrupt(t *testing.T) {
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for strings.Count(out.String(), "ready") < 2 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	err := testLaunch("interrupt", 2, out).Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want one wrapping context.Canceled\n%s", err, out)
	}
	if strings.Count(out.String(), "saved") != 2 {
		t.Fatalf("not every rank saved:\n%s", out)
	}
}

func TestLaunchBadProgram(t *testing.T) {
	err := Launch{Ranks: 2, Program: "/nonexistent/newbie-train"}.Run(context.Background())
	wantErr(t, err, "starting rank 0", "/nonexistent/newbie-train")
	wantErr(t, Launch{}.Run(context.Background()), "0 ranks")
}
