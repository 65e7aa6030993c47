package dist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// freePort returns a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func jobEnv(rank, world, port int) Env {
	return Env{Rank: rank, WorldSize: world, LocalRank: rank, LocalWorldSize: world, MasterAddr: "127.0.0.1", MasterPort: port, fromEnv: true}
}

type joined struct {
	s   *Session
	id  []byte
	err error
}

// startRanks runs the rendezvous of the given ranks of a job of world, rank
// 0 (when listed) delay after the others, and returns what each got.
func startRanks(t *testing.T, ranks []int, world, port int, timeout, delay time.Duration) map[int]joined {
	t.Helper()
	var mu sync.Mutex
	out := map[int]joined{}
	var wg sync.WaitGroup
	for _, r := range ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r == 0 {
				time.Sleep(delay)
			}
			s, id, err := Rendezvous(context.Background(), jobEnv(r, world, port), timeout, func() ([]byte, error) {
				return []byte("the-unique-id"), nil
			})
			mu.Lock()
			out[r] = joined{s, id, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, j := range out {
			if j.s != nil {
				j.s.Close()
			}
		}
	})
	return out
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
}

// TestRendezvousAndBarrier joins three ranks whose rank 0 starts late (the
// others retry), hands out the id, runs barriers and closes in good order.
func TestRendezvousAndBarrier(t *testing.T) {
	port := freePort(t)
	got := startRanks(t, []int{0, 1, 2}, 3, port, 10*time.Second, 300*time.Millisecond)
	for r := range 3 {
		if got[r].err != nil {
			t.Fatalf("rank %d: %v", r, got[r].err)
		}
		if !bytes.Equal(got[r].id, []byte("the-unique-id")) {
			t.Fatalf("rank %d got id %q", r, got[r].id)
		}
	}
	for round := range 4 {
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for r := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if round == 3 {
					// Past the session's 300 ms, in a barrier without limit.
					if r == 2 {
						time.Sleep(700 * time.Millisecond)
					}
					errs[r] = got[r].s.Barrier(-1)
					return
				}
				if r == round {
					time.Sleep(50 * time.Millisecond) // one rank comes late each round
				}
				errs[r] = got[r].s.Barrier(0)
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("barrier %d, rank %d: %v", round, r, err)
			}
		}
	}
	for r := range 3 {
		if err := got[r].s.Close(); err != nil {
			t.Fatalf("close rank %d: %v", r, err)
		}
	}
	for r := range 3 {
		if err := got[r].s.Err(); err != nil {
			t.Fatalf("rank %d failed after closing in good order: %v", r, err)
		}
	}
}

func TestRendezvousNoRankZero(t *testing.T) {
	port := freePort(t)
	start := time.Now()
	_, _, err := Rendezvous(context.Background(), jobEnv(1, 2, port), 500*time.Millisecond, nil)
	wantErr(t, err, fmt.Sprintf("127.0.0.1:%d", port), "no answer within 500ms", "rank 1")
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

func TestRendezvousMissingRank(t *testing.T) {
	port := freePort(t)
	start := time.Now()
	got := startRanks(t, []int{0, 1}, 3, port, 700*time.Millisecond, 0)
	wantErr(t, got[0].err, "rank 2 did not connect within 700ms", fmt.Sprint(port))
	wantErr(t, got[1].err, "rank 1", fmt.Sprint(port))
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

func TestRendezvousWorldMismatch(t *testing.T) {
	port := freePort(t)
	var wg sync.WaitGroup
	var err0, err1 error
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _, err0 = Rendezvous(context.Background(), jobEnv(0, 2, port), 5*time.Second, func() ([]byte, error) { return []byte("x"), nil })
	}()
	go func() {
		defer wg.Done()
		_, _, err1 = Rendezvous(context.Background(), jobEnv(1, 3, port), 5*time.Second, nil)
	}()
	wg.Wait()
	wantErr(t, err0, "rank 1", "WORLD_SIZE=3, rank 0 has 2")
	wantErr(t, err1, "rank 0 runs a job of WORLD_SIZE=2, this rank said 3")
}

func TestRendezvousCancelled(t *testing.T) {
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, _, err := Rendezvous(ctx, jobEnv(1, 2, port), time.Minute, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	_, _, err = Rendezvous(ctx, jobEnv(0, 2, port), time.Minute, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("rank 0: error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("returned after %v", d)
	}
}

// waitFailed waits for a session to fail and returns its error.
func waitFailed(t *testing.T, s *Session, within time.Duration) error {
	t.Helper()
	select {
	case <-s.Failed():
		return s.Err()
	case <-time.After(within):
		t.Fatalf("rank %d did not fail within %v", s.Rank(), within)
		return nil
	}
}

// TestSessionLostRank drops rank 2's connection without a goodbye, as its
// process ending does: the others fail at once, naming it.
func TestSessionLostRank(t *testing.T) {
	got := startRanks(t, []int{0, 1, 2}, 3, freePort(t), 10*time.Second, 0)
	for r := range 3 {
		if got[r].err != nil {
			t.Fatal(got[r].err)
		}
	}
	got[2].s.up.conn.Close()
	wantErr(t, waitFailed(t, got[0].s, 2*time.Second), "rank 0", "connection to rank 2", "without a goodbye")
	wantErr(t, waitFailed(t, got[1].s, 2*time.Second), "rank 1", "connection to rank 2")
	wantErr(t, got[1].s.Barrier(0), "rank 2")
}

// TestSessionLostRankZero: rank 0's process ending fails every other rank.
func TestSessionLostRankZero(t *testing.T) {
	got := startRanks(t, []int{0, 1, 2}, 3, freePort(t), 10*time.Second, 0)
	for r := range 3 {
		if got[r].err != nil {
			t.Fatal(got[r].err)
		}
	}
	// As if rank 0's process ended: its connections close without a
	// goodbye, and it says nothing more.
	got[0].s.mu.Lock()
	got[0].s.closed = true
	got[0].s.mu.Unlock()
	for _, p := range got[0].s.peers[1:] {
		p.conn.Close()
	}
	for r := 1; r < 3; r++ {
		wantErr(t, waitFailed(t, got[r].s, 2*time.Second), fmt.Sprintf("rank %d", r), "connection to rank 0")
	}
}

func TestSessionAbort(t *testing.T) {
	got := startRanks(t, []int{0, 1, 2}, 3, freePort(t), 10*time.Second, 0)
	for r := range 3 {
		if got[r].err != nil {
			t.Fatal(got[r].err)
		}
	}
	got[1].s.Abort(errors.New("out of memory"))
	wantErr(t, got[1].s.Err(), "out of memory")
	wantErr(t, waitFailed(t, got[0].s, 2*time.Second), "rank 1 aborted: out of memory")
	wantErr(t, waitFailed(t, got[2].s, 2*time.Second), "rank 2", "rank 1 aborted: out of memory")
}

// TestSessionBarrierTimeout: a rank that never enters fails the barrier of
// the others within the timeout, and the job with it.
func TestSessionBarrierTimeout(t *testing.T) {
	got := startRanks(t, []int{0, 1, 2}, 3, freePort(t), 400*time.Millisecond, 0)
	for r := range 3 {
		if got[r].err != nil {
			t.Fatal(got[r].err)
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = got[r].s.Barrier(0) }()
	}
	wg.Wait()
	wantErr(t, errs[0], "barrier 1: rank 2 did not arrive within 400ms")
	wantErr(t, errs[1], "rank 1")
	wantErr(t, waitFailed(t, got[2].s, 2*time.Second), "rank 2 did not arrive")
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("barrier gave up after %v", d)
	}
}

// TestSessionCloseInOrder: a rank that closes is not taken for lost, but a
// barrier that needs it says it left.
func TestSessionCloseInOrder(t *testing.T) {
	got := startRanks(t, []int{0, 1}, 2, freePort(t), 10*time.Second, 0)
	for r := range 2 {
		if got[r].err != nil {
			t.Fatal(got[r].err)
		}
	}
	got[1].s.Close()
	time.Sleep(200 * time.Millisecond)
	if err := got[0].s.Err(); err != nil {
		t.Fatalf("rank 0 failed when rank 1 closed in good order: %v", err)
	}
	wantErr(t, got[0].s.Barrier(0), "rank 1 has left the job")
}
