package dist

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
)

// Communicator is one rank's handle on a data-parallel job. Every rank must
// call the same collectives (AllReduceSum, Broadcast, Barrier) in the same
// order with buffers of the same dtypes and lengths; that is what makes the
// ranks meet.
//
// Collectives work on the rank's own backend buffers, in place, and are
// queued like any backend op: on a GPU the sum happens on the stream after
// the work queued before it, and the call returns before it is done. A
// failure (a rank gone, a deadline passed, Abort) can therefore surface
// after the call that caused it: Err reports it, and a trainer checks Err
// whenever it synchronises with the device, as it does for the backend's
// own errors. Once failed, a communicator stays failed; Close it.
type Communicator interface {
	// Rank is this process's index in the job, WorldSize the number of ranks.
	Rank() int
	WorldSize() int
	// AllReduceSum replaces every buffer with its elementwise sum over the
	// ranks. Buffers are F32 or BF16.
	AllReduceSum(bufs ...kernels.Buffer) error
	// Broadcast replaces buf on every rank with root's buf.
	Broadcast(buf kernels.Buffer, root int) error
	// Barrier returns once every rank has entered it, or fails the job
	// when one has not within timeout: the communicator's own timeout
	// (Options.Timeout) when timeout is 0, no limit when it is negative
	// (then only a rank's failure or exit ends the wait, as when the other
	// ranks wait for rank 0 to fill the encode cache).
	Barrier(timeout time.Duration) error
	// Err is the failure that ended the communicator, nil while it works.
	Err() error
	// Abort ends the job now: queued collectives are cancelled, the other
	// ranks fail with an error naming this rank and reason, and every later
	// call fails. It may be called from any goroutine, also while another
	// is blocked waiting for the device.
	Abort(reason error)
	// Close leaves the job in good order (after this rank's queued
	// collectives) and frees what the communicator holds.
	Close() error
}

// NativeCollective is a backend's own collective library on one device:
// NCCL on the CUDA backend. Its methods are the Communicator's device work;
// the job-wide parts (rendezvous, barrier, noticing a lost process) are
// this package's Session.
//
// It is an alias of an unnamed interface type so that a backend package can
// implement NativeBackend without importing this package: a method that
// returns the identical interface literal satisfies it.
type NativeCollective = interface {
	AllReduceSum(bufs []kernels.Buffer) error
	Broadcast(buf kernels.Buffer, root int) error
	Err() error
	Abort(reason error)
	Close() error
}

// NativeBackend is implemented by a backend that brings a collective
// library (the CUDA backend: NCCL). Open finds it by a type assertion on
// the backend, so nothing here names a backend.
type NativeBackend interface {
	// CollectiveID makes the token that lets the ranks find each other
	// (NCCL's unique id); rank 0 makes it and the rendezvous hands it out.
	CollectiveID() ([]byte, error)
	// OpenCollective joins the job as rank of world with rank 0's token.
	// timeout bounds the joining and every collective: a rank that does not
	// take part within it is taken for lost.
	OpenCollective(id []byte, rank, world int, timeout time.Duration) (NativeCollective, error)
}

// DefaultTimeout is how long a rank waits for the others (to join, to
// enter a barrier, to finish a collective) before it takes them for lost,
// when Options.Timeout is zero. A lost process is noticed at once through
// the Session; the timeout catches a rank that is alive but stuck.
const DefaultTimeout = 10 * time.Minute

// Options tune Open.
type Options struct {
	// Timeout bounds the rendezvous, each barrier and each collective
	// (DefaultTimeout when zero).
	Timeout time.Duration
}

// expiry returns a channel that receives once d has passed — never when d
// is zero or negative (no limit) — and the function that stops its timer.
func expiry(d time.Duration) (<-chan time.Time, func() bool) {
	if d <= 0 {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(d)
	return t.C, t.Stop
}

func (o Options) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return DefaultTimeout
}

// Open joins the job env describes, with collectives on backend b. A plain
// run (env not Distributed) gets a communicator of one rank whose
// collectives change nothing. A job's collectives run in the backend's
// collective library (NativeBackend: NCCL on the cuda backend); on a
// backend without one (the CPU backend) they travel over the rendezvous
// connections, rank 0 summing, and a job of one process gets the one-rank
// communicator. Every rank must run the same kind of backend.
func Open(ctx context.Context, b kernels.Backend, env Env, o Options) (Communicator, error) {
	nb, native := b.(NativeBackend)
	if !env.Distributed() || (env.WorldSize == 1 && !native) {
		return single{}, nil
	}
	timeout := o.timeout()
	if !native {
		s, id, err := Rendezvous(ctx, env, timeout, func() ([]byte, error) { return hostToken, nil })
		if err != nil {
			return nil, err
		}
		if string(id) != string(hostToken) {
			err := fmt.Errorf("dist: rank %d runs on backend %s, which has no collective library, but rank 0 sums through one (NCCL): every rank must run the same device", env.Rank, b.Name())
			s.Abort(err)
			return nil, err
		}
		return newGroup(env, s, &hostCollective{s: s, b: b, timeout: timeout}), nil
	}
	if env.WorldSize == 1 {
		id, err := nb.CollectiveID()
		if err != nil {
			return nil, fmt.Errorf("dist: %w", err)
		}
		nc, err := nb.OpenCollective(id, 0, 1, timeout)
		if err != nil {
			return nil, fmt.Errorf("dist: %w", err)
		}
		return newGroup(env, nil, nc), nil
	}
	s, id, err := Rendezvous(ctx, env, timeout, nb.CollectiveID)
	if err != nil {
		return nil, err
	}
	if string(id) == string(hostToken) {
		err := fmt.Errorf("dist: rank %d runs on backend %s, but rank 0 runs on a backend without a collective library (cpu): every rank must run the same device", env.Rank, b.Name())
		s.Abort(err)
		return nil, err
	}
	nc, err := nb.OpenCollective(id, env.Rank, env.WorldSize, timeout)
	if err != nil {
		err = fmt.Errorf("dist: rank %d: %w", env.Rank, err)
		s.Abort(err)
		return nil, err
	}
	return newGroup(env, s, nc), nil
}

// single is the communicator of a run of one process: every collective is
// the identity.
type single struct{}

func (single) Rank() int                                 { return 0 }
func (single) WorldSize() int                            { return 1 }
func (single) AllReduceSum(bufs ...kernels.Buffer) error { return checkReduceDTypes(bufs) }
func (single) Broadcast(buf kernels.Buffer, root int) error {
	return checkRoot(root, 1)
}
func (single) Barrier(time.Duration) error { return nil }
func (single) Err() error                  { return nil }
func (single) Abort(reason error)          {}
func (single) Close() error                { return nil }

// checkReduceDTypes refuses buffers AllReduceSum does not sum.
func checkReduceDTypes(bufs []kernels.Buffer) error {
	for i, b := range bufs {
		if b == nil {
			return fmt.Errorf("dist: AllReduceSum: buffer %d is nil", i)
		}
		if d := b.DType(); d != kernels.F32 && d != kernels.BF16 {
			return fmt.Errorf("dist: AllReduceSum: buffer %d is %v; sums are of F32 or BF16 buffers", i, d)
		}
	}
	return nil
}

func checkRoot(root, world int) error {
	if root < 0 || root >= world {
		return fmt.Errorf("dist: Broadcast: root %d is not a rank of a job of %d", root, world)
	}
	return nil
}

// group is a rank of a job of processes: a native collective library for
// the device work and a Session (nil for one process) for the rest. A
// watchdog ties the two: a lost process aborts the device work, and a
// device failure is told to the other ranks.
type group struct {
	env    Env
	s      *Session
	nc     NativeCollective
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

// watchInterval is how often the watchdog looks at the native library's
// state.
const watchInterval = 50 * time.Millisecond

func newGroup(env Env, s *Session, nc NativeCollective) *group {
	g := &group{env: env, s: s, nc: nc, stop: make(chan struct{}), done: make(chan struct{})}
	go g.watch()
	return g
}

func (g *group) watch() {
	defer close(g.done)
	var failed <-chan struct{}
	if g.s != nil {
		failed = g.s.Failed()
	}
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-failed:
			g.nc.Abort(g.s.Err())
			return
		case <-tick.C:
			if err := g.nc.Err(); err != nil {
				if g.s != nil {
					g.s.Abort(err)
				}
				return
			}
		}
	}
}

func (g *group) Rank() int      { return g.env.Rank }
func (g *group) WorldSize() int { return g.env.WorldSize }

func (g *group) AllReduceSum(bufs ...kernels.Buffer) error {
	if err := g.Err(); err != nil {
		return err
	}
	if err := checkReduceDTypes(bufs); err != nil {
		return err
	}
	return g.nc.AllReduceSum(bufs)
}

func (g *group) Broadcast(buf kernels.Buffer, root int) error {
	if err := g.Err(); err != nil {
		return err
	}
	if err := checkRoot(root, g.env.WorldSize); err != nil {
		return err
	}
	return g.nc.Broadcast(buf, root)
}

func (g *group) Barrier(timeout time.Duration) error {
	if err := g.Err(); err != nil {
		return err
	}
	if g.s == nil {
		return nil
	}
	return g.s.Barrier(timeout)
}

func (g *group) Err() error {
	if err := g.nc.Err(); err != nil {
		return err
	}
	if g.s != nil {
		return g.s.Err()
	}
	return nil
}

func (g *group) Abort(reason error) {
	if reason == nil {
		reason = errors.New("aborted")
	}
	if g.s != nil {
		g.s.Abort(reason)
	}
	g.nc.Abort(reason)
}

func (g *group) Close() error {
	if g.closed {
		return nil
	}
	g.closed = true
	// The device work first, the watchdog still on guard: a rank lost
	// while this one waits for its last sums aborts the wait.
	err := g.nc.Close()
	close(g.stop)
	<-g.done
	if g.s != nil {
		if serr := g.s.Close(); err == nil {
			err = serr
		}
	}
	return err
}
