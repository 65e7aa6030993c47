package dist

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// openHostJob opens a job of world ranks on CPU backends (the host
// collective over TCP on the loopback), one goroutine each.
func openHostJob(t *testing.T, world int, timeout time.Duration) ([]Communicator, []kernels.Backend) {
	t.Helper()
	port := freePort(t)
	bs := cpuBackends(world)
	comms := make([]Communicator, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			comms[r], errs[r] = Open(context.Background(), bs[r], jobEnv(r, world, port), Options{Timeout: timeout})
		}()
	}
	wg.Wait()
	noErrors(t, errs)
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms, bs
}

// TestHostCollective: on a backend without a collective library a job's
// sums travel over the rendezvous connections and equal the in-process
// communicator's rank-order sums bit for bit (F32 and BF16, a buffer
// larger than one message), broadcasts copy the root's buffer, and the
// ranks leave in good order.
func TestHostCollective(t *testing.T) {
	const world = 3
	comms, bs := openHostJob(t, world, 20*time.Second)
	ref := cpuBackends(world)
	refComms := NewInProcess(ref, 20*time.Second)
	const n = 300_000 // 1.2 MB of F32: more than one message
	vals := func(r, n int, scale float64) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = scale * math.Sin(float64(r+1)*0.37*float64(i+1))
		}
		return v
	}
	type pair struct{ f32, bf16, cast kernels.Buffer }
	bufs := make([]pair, world)
	refBufs := make([]pair, world)
	for r := range world {
		bufs[r] = pair{putBuf(t, bs[r], kernels.F32, vals(r, n, 1)), putBuf(t, bs[r], kernels.BF16, vals(r, 17, 3)), putBuf(t, bs[r], kernels.F32, vals(r, 5, 1))}
		refBufs[r] = pair{putBuf(t, ref[r], kernels.F32, vals(r, n, 1)), putBuf(t, ref[r], kernels.BF16, vals(r, 17, 3)), nil}
	}
	noErrors(t, onRanks(comms, func(c Communicator) error {
		p := bufs[c.Rank()]
		if err := c.AllReduceSum(p.f32, p.bf16); err != nil {
			return err
		}
		if err := c.Broadcast(p.cast, 2); err != nil {
			return err
		}
		return c.Barrier(0)
	}))
	noErrors(t, onRanks(refComms, func(c Communicator) error {
		return c.AllReduceSum(refBufs[c.Rank()].f32, refBufs[c.Rank()].bf16)
	}))
	for r := range world {
		for _, b := range []struct {
			name     string
			got, ref kernels.Buffer
			rb       kernels.Backend
		}{{"F32", bufs[r].f32, refBufs[0].f32, ref[0]}, {"BF16", bufs[r].bf16, refBufs[0].bf16, ref[0]}} {
			got, want := kerneltest.Get(t, bs[r], b.got), kerneltest.Get(t, b.rb, b.ref)
			for i := range got {
				if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
					t.Fatalf("rank %d %s[%d]: %v, the in-process rank-order sum %v", r, b.name, i, got[i], want[i])
				}
			}
		}
		got, want := kerneltest.Get(t, bs[r], bufs[r].cast), vals(2, 5, 1)
		for i := range got {
			if got[i] != float64(float32(want[i])) {
				t.Fatalf("rank %d: broadcast [%d] = %v, rank 2 had %v", r, i, got[i], want[i])
			}
		}
	}
	for r, c := range comms {
		if err := c.Close(); err != nil || c.Err() != nil {
			t.Fatalf("rank %d closing: %v, %v", r, err, c.Err())
		}
	}
}

// TestHostCollectiveFailures: ranks that make different calls fail the
// job naming both, and so does a rank whose connection ends (its process
// gone) while another waits for its part — within a moment, not the
// timeout.
func TestHostCollectiveFailures(t *testing.T) {
	comms, bs := openHostJob(t, 2, time.Minute)
	b0, b1 := putBuf(t, bs[0], kernels.F32, []float64{1, 2}), putBuf(t, bs[1], kernels.F32, []float64{3, 4})
	errs := onRanks(comms, func(c Communicator) error {
		if c.Rank() == 0 {
			return c.AllReduceSum(b0)
		}
		return c.Broadcast(b1, 0)
	})
	wantErr(t, errs[0], "rank 0 called AllReduceSum(F32[2]) while rank 1 called Broadcast(root 0)(F32[2])")
	wantErr(t, errs[1], "every rank must make the same calls")

	comms, bs = openHostJob(t, 2, time.Minute)
	b0 = putBuf(t, bs[0], kernels.F32, []float64{1, 2})
	start := time.Now()
	errs = onRanks(comms, func(c Communicator) error {
		if c.Rank() == 1 {
			time.Sleep(100 * time.Millisecond)
			c.(*group).s.up.conn.Close() // as when its process is killed
			return nil
		}
		return c.AllReduceSum(b0)
	})
	wantErr(t, errs[0], "the connection to rank 1", "closed without a goodbye")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("rank 0 noticed the lost rank after %v", d)
	}
}

// nativeCPU passes for a backend with a collective library.
type nativeCPU struct{ kernels.Backend }

func (nativeCPU) CollectiveID() ([]byte, error) { return make([]byte, 128), nil }
func (nativeCPU) OpenCollective(id []byte, rank, world int, timeout time.Duration) (NativeCollective, error) {
	return nil, errors.New("not reached")
}

// TestMixedDevices: a rank on a backend with a collective library in a
// job whose rank 0 has none (or the other way round) is refused, saying
// every rank must run the same device.
func TestMixedDevices(t *testing.T) {
	for _, nativeRank := range []int{0, 1} {
		port := freePort(t)
		bs := cpuBackends(2)
		bs[nativeRank] = nativeCPU{bs[nativeRank]}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var c Communicator
				c, errs[r] = Open(context.Background(), bs[r], jobEnv(r, 2, port), Options{Timeout: 10 * time.Second})
				if c != nil {
					c.Close()
				}
			}()
		}
		wg.Wait()
		wantErr(t, errs[1], "rank 1 runs on backend cpu", "every rank must run the same device")
	}
}
