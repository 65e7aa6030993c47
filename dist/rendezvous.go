package dist

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// Session is the host-side link between the ranks of a job: a star of TCP
// connections to rank 0, made by the rendezvous and kept for the job's
// life. It carries barriers, and it is how a rank learns at once that
// another one's process ended (its connection closes without a goodbye) or
// that it aborted (it says why): the Session then fails, Failed is closed,
// and rank 0 passes the news to every other rank.
type Session struct {
	rank, world int
	addr        string
	timeout     time.Duration

	mu      sync.Mutex
	err     error
	failed  chan struct{}
	closed  bool
	changed chan struct{} // a barrier count moved (capacity 1)

	// Rank 0: one link per other rank (index 0 unused) and how many
	// barriers each has entered.
	peers   []*link
	arrived []int
	// Other ranks: the link to rank 0 and how many barriers it released.
	up       *link
	released int

	entered int // barriers this rank has entered
	readers sync.WaitGroup
}

// link is one TCP connection of the session.
type link struct {
	rank int // the rank at the other end
	conn net.Conn
	wmu  sync.Mutex
	// Guarded by Session.mu: the other end said goodbye; the collective
	// messages received and not yet taken (hostCollective), and the one
	// being received, want bytes long.
	gone    bool
	inbox   [][]byte
	partial []byte
	want    uint64
}

// Message kinds on a session's connections. Each message is the kind byte,
// a big-endian uint32 length and that many bytes.
const (
	msgID      = 'I' // rank 0 → rank: the rendezvous payload (the NCCL id)
	msgRefuse  = 'E' // rank 0 → rank: the rendezvous failed, and why
	msgEnter   = 'B' // rank → rank 0: entered a barrier
	msgRelease = 'R' // rank 0 → rank: every rank entered the barrier
	msgAbort   = 'A' // either way: the sender aborts the job, and why
	msgBye     = 'X' // either way: the sender leaves in good order
	msgData    = 'D' // either way: a chunk of a collective's data (hostCollective)
)

// helloMagic opens a rank's first message to rank 0; a connection that
// does not start with it is not one of ours and is dropped.
var helloMagic = [4]byte{'N', 'B', 'T', 'R'}

const (
	helloVersion = 1
	helloLen     = 4 + 2 + 4 + 4 // magic, version, world size, rank
	maxMessage   = 1 << 20
	writeTimeout = 10 * time.Second
	// helloTimeout bounds how long rank 0 waits for a new connection's
	// hello: a rank sends it at once, and a stray connection must not hold
	// up the rendezvous.
	helloTimeout = 10 * time.Second
)

// Rendezvous joins the job env describes. Rank 0 listens on
// env.RendezvousAddr, makes the payload (NCCL's unique id) once every other
// rank has connected, hands it to all of them and returns; the others
// connect to it, retrying until rank 0 listens, and return the payload it
// sent. Everything is bounded by timeout and ctx; every error names the
// address.
func Rendezvous(ctx context.Context, env Env, timeout time.Duration, payload func() ([]byte, error)) (*Session, []byte, error) {
	addr := env.RendezvousAddr()
	if env.Rank != 0 {
		return joinRendezvous(ctx, addr, env.Rank, env.WorldSize, timeout)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dist: rendezvous address %s: %w", addr, err)
	}
	// Listen on every interface: MASTER_ADDR is how the others reach this
	// machine, which may not be an address it can bind by that name.
	ln, err := net.Listen("tcp", net.JoinHostPort("", port))
	if err != nil {
		return nil, nil, fmt.Errorf("dist: rank 0 cannot serve the rendezvous at %s: %w (is MASTER_PORT taken by another program?)", addr, err)
	}
	defer ln.Close()
	return serveRendezvous(ctx, ln, addr, env.WorldSize, timeout, payload)
}

func newSession(rank, world int, addr string, timeout time.Duration) *Session {
	return &Session{rank: rank, world: world, addr: addr, timeout: timeout,
		failed: make(chan struct{}), changed: make(chan struct{}, 1)}
}

// serveRendezvous is rank 0's side, on a listener the caller owns.
func serveRendezvous(ctx context.Context, ln net.Listener, addr string, world int, timeout time.Duration, payload func() ([]byte, error)) (*Session, []byte, error) {
	s := newSession(0, world, addr, timeout)
	s.peers = make([]*link, world)
	s.arrived = make([]int, world)
	deadline := time.Now().Add(timeout)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	fail := func(err error) (*Session, []byte, error) {
		for _, p := range s.peers {
			if p != nil {
				p.send(msgRefuse, []byte(err.Error()))
				p.conn.Close()
			}
		}
		return nil, nil, err
	}
	if tl, ok := ln.(*net.TCPListener); ok {
		tl.SetDeadline(deadline)
	}
	for joined := 1; joined < world; {
		conn, err := ln.Accept()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return fail(fmt.Errorf("dist: rendezvous at %s: %w", addr, ctx.Err()))
			case errors.Is(err, net.ErrClosed):
				return fail(fmt.Errorf("dist: rendezvous at %s: the listener was closed", addr))
			case isTimeout(err):
				return fail(fmt.Errorf("dist: rendezvous at %s: %s did not connect within %v", addr, rankList(s.missing()), timeout))
			}
			return fail(fmt.Errorf("dist: rendezvous at %s: %w", addr, err))
		}
		helloBy := time.Now().Add(helloTimeout)
		if deadline.Before(helloBy) {
			helloBy = deadline
		}
		rank, peerWorld, err := readHello(conn, helloBy)
		if err != nil {
			conn.Close() // not one of ours (a port scanner, a stray client): ignored
			continue
		}
		l := &link{rank: rank, conn: conn}
		switch {
		case peerWorld != world:
			l.send(msgRefuse, fmt.Appendf(nil, "rank 0 runs a job of WORLD_SIZE=%d, this rank said %d", world, peerWorld))
			conn.Close()
			return fail(fmt.Errorf("dist: rendezvous at %s: rank %d (%s) says WORLD_SIZE=%d, rank 0 has %d", addr, rank, conn.RemoteAddr(), peerWorld, world))
		case rank < 1 || rank >= world:
			l.send(msgRefuse, fmt.Appendf(nil, "RANK=%d is not a rank of a job of %d other than 0", rank, world))
			conn.Close()
			return fail(fmt.Errorf("dist: rendezvous at %s: a process at %s says RANK=%d in a job of %d", addr, conn.RemoteAddr(), rank, world))
		case s.peers[rank] != nil:
			l.send(msgRefuse, fmt.Appendf(nil, "RANK=%d has already joined from %s", rank, s.peers[rank].conn.RemoteAddr()))
			conn.Close()
			return fail(fmt.Errorf("dist: rendezvous at %s: RANK=%d joined twice (from %s and %s)", addr, rank, s.peers[rank].conn.RemoteAddr(), conn.RemoteAddr()))
		}
		s.peers[rank] = l
		joined++
	}
	id, err := payload()
	if err != nil {
		return fail(fmt.Errorf("dist: rank 0: %w", err))
	}
	for _, p := range s.peers[1:] {
		if err := p.send(msgID, id); err != nil {
			return fail(fmt.Errorf("dist: rendezvous at %s: sending the id to rank %d: %w", addr, p.rank, err))
		}
	}
	for _, p := range s.peers[1:] {
		p.conn.SetReadDeadline(time.Time{})
		s.readers.Add(1)
		go s.readFrom(p)
	}
	return s, id, nil
}

// joinRendezvous is the side of every rank but 0.
func joinRendezvous(ctx context.Context, addr string, rank, world int, timeout time.Duration) (*Session, []byte, error) {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var conn net.Conn
	var lastErr error
	wait := 50 * time.Millisecond
	for {
		d := net.Dialer{Timeout: min(5*time.Second, time.Until(deadline))}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn = c
			break
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) || time.Now().Before(deadline) {
				return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: %w", rank, addr, ctx.Err())
			}
			return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: no answer within %v (last error: %v); is rank 0 running, and can this machine reach MASTER_ADDR?", rank, addr, timeout, lastErr)
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	hello := make([]byte, 0, helloLen)
	hello = append(hello, helloMagic[:]...)
	hello = binary.BigEndian.AppendUint16(hello, helloVersion)
	hello = binary.BigEndian.AppendUint32(hello, uint32(world))
	hello = binary.BigEndian.AppendUint32(hello, uint32(rank))
	conn.SetDeadline(deadline)
	if _, err := conn.Write(hello); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: %w", rank, addr, err)
	}
	kind, body, err := readMessage(conn)
	if err != nil {
		conn.Close()
		switch {
		case ctx.Err() != nil && time.Now().Before(deadline):
			return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: %w", rank, addr, ctx.Err())
		case isTimeout(err) || errors.Is(ctx.Err(), context.DeadlineExceeded):
			return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: connected, but the job did not start within %v (are all %d ranks running?)", rank, addr, timeout, world)
		case errors.Is(err, io.EOF):
			return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: rank 0 closed the connection", rank, addr)
		}
		return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s: %w", rank, addr, err)
	}
	switch kind {
	case msgID:
	case msgRefuse:
		conn.Close()
		return nil, nil, fmt.Errorf("dist: rank %d: rendezvous with rank 0 at %s failed: %s", rank, addr, body)
	default:
		conn.Close()
		return nil, nil, fmt.Errorf("dist: rank %d: %s answered with something other than newbie-train's rendezvous (is another program using that port?)", rank, addr)
	}
	conn.SetDeadline(time.Time{})
	s := newSession(rank, world, addr, timeout)
	s.up = &link{rank: 0, conn: conn}
	s.readers.Add(1)
	go s.readFrom(s.up)
	return s, body, nil
}

// readHello reads and checks a rank's first message.
func readHello(conn net.Conn, deadline time.Time) (rank, world int, err error) {
	conn.SetReadDeadline(deadline)
	var b [helloLen]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return 0, 0, err
	}
	if [4]byte(b[:4]) != helloMagic || binary.BigEndian.Uint16(b[4:6]) != helloVersion {
		return 0, 0, errors.New("not a newbie-train rendezvous hello")
	}
	return int(binary.BigEndian.Uint32(b[10:14])), int(binary.BigEndian.Uint32(b[6:10])), nil
}

// readMessage reads one message.
func readMessage(r io.Reader) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxMessage {
		return 0, nil, fmt.Errorf("message of %d bytes is too long", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return h[0], body, nil
}

// send writes one message, bounded in time so a dead peer cannot block.
func (l *link) send(kind byte, body []byte) error {
	msg := make([]byte, 5, 5+len(body))
	msg[0] = kind
	binary.BigEndian.PutUint32(msg[1:], uint32(len(body)))
	msg = append(msg, body...)
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := l.conn.Write(msg)
	return err
}

// readFrom handles what one link receives until it closes.
func (s *Session) readFrom(l *link) {
	defer s.readers.Done()
	for {
		kind, body, err := readMessage(l.conn)
		if err != nil {
			s.mu.Lock()
			quiet := s.closed || l.gone || s.err != nil
			s.mu.Unlock()
			if !quiet {
				s.fail(l.rank, fmt.Errorf("the connection to rank %d (%s) closed without a goodbye: its process ended or its machine is unreachable", l.rank, l.conn.RemoteAddr()))
			}
			return
		}
		switch kind {
		case msgEnter:
			s.mu.Lock()
			if s.rank == 0 {
				s.arrived[l.rank]++
			}
			s.mu.Unlock()
			s.notify()
		case msgRelease:
			s.mu.Lock()
			s.released++
			s.mu.Unlock()
			s.notify()
		case msgBye:
			s.mu.Lock()
			l.gone = true
			s.mu.Unlock()
			s.notify()
		case msgData:
			s.mu.Lock()
			err := l.takeData(body)
			s.mu.Unlock()
			if err != nil {
				s.fail(l.rank, fmt.Errorf("rank %d: %w", l.rank, err))
				return
			}
			s.notify()
		case msgAbort:
			var err error
			if s.rank == 0 {
				err = fmt.Errorf("rank %d aborted: %s", l.rank, body)
			} else {
				err = errors.New(string(body)) // rank 0 words it
			}
			s.fail(l.rank, err)
			return
		}
	}
}

func (s *Session) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// fail records the session's first failure, caused by rank from (-1: this
// rank itself), and tells the others: rank 0 passes it to every rank but
// from, another rank to rank 0.
func (s *Session) fail(from int, err error) {
	s.mu.Lock()
	if s.err != nil || s.closed {
		s.mu.Unlock()
		return
	}
	s.err = fmt.Errorf("dist: rank %d: %w", s.rank, err)
	close(s.failed)
	links := s.links()
	s.mu.Unlock()
	for _, l := range links {
		if l.rank != from {
			l.send(msgAbort, []byte(err.Error()))
		}
		l.conn.Close()
	}
}

// links lists the session's connections (callers hold s.mu).
func (s *Session) links() []*link {
	if s.up != nil {
		return []*link{s.up}
	}
	var out []*link
	for _, p := range s.peers {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// Rank and WorldSize are this rank's place in the job.
func (s *Session) Rank() int      { return s.rank }
func (s *Session) WorldSize() int { return s.world }

// Failed is closed when the session fails.
func (s *Session) Failed() <-chan struct{} { return s.failed }

// Err is the session's failure, nil while it works.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Abort fails the session with reason and tells the other ranks.
func (s *Session) Abort(reason error) {
	if s.rank == 0 {
		s.fail(-1, fmt.Errorf("rank 0 aborted: %w", reason))
		return
	}
	s.fail(-1, reason)
}

// Barrier returns once every rank has entered it. A rank that does not
// enter within timeout — the session's own when 0, no limit when negative —
// fails the session (the job is broken: the ranks no longer run the same
// program).
func (s *Session) Barrier(timeout time.Duration) error {
	s.mu.Lock()
	if err := s.usable(); err != nil {
		s.mu.Unlock()
		return err
	}
	s.entered++
	n := s.entered
	s.mu.Unlock()
	if s.rank != 0 {
		if err := s.up.send(msgEnter, nil); err != nil {
			s.fail(-1, fmt.Errorf("barrier: telling rank 0: %w", err))
			return s.Err()
		}
	}
	// Rank 0 knows who is missing and says so; the others wait longer, and
	// give up on their own only when rank 0 itself is stuck.
	wait := timeout
	if wait == 0 {
		wait = s.timeout
	}
	if s.rank != 0 {
		wait *= 2
	}
	expired, stop := expiry(wait)
	defer stop()
	for {
		s.mu.Lock()
		if err := s.usable(); err != nil {
			s.mu.Unlock()
			return err
		}
		var waiting []int
		if s.rank == 0 {
			for r := 1; r < s.world; r++ {
				if s.arrived[r] < n {
					if s.peers[r].gone {
						s.mu.Unlock()
						return fmt.Errorf("dist: rank 0: barrier %d: rank %d has left the job", n, r)
					}
					waiting = append(waiting, r)
				}
			}
		} else if s.released < n {
			if s.up.gone {
				s.mu.Unlock()
				return fmt.Errorf("dist: rank %d: barrier %d: rank 0 has left the job", s.rank, n)
			}
			waiting = []int{0}
		}
		s.mu.Unlock()
		if len(waiting) == 0 {
			break
		}
		select {
		case <-s.changed:
		case <-s.failed:
		case <-expired:
			if s.rank != 0 {
				s.fail(-1, fmt.Errorf("barrier %d: rank 0 did not release it within %v", n, wait))
			} else {
				s.fail(-1, fmt.Errorf("barrier %d: %s did not arrive within %v", n, rankList(waiting), wait))
			}
			return s.Err()
		}
	}
	if s.rank == 0 {
		for _, p := range s.peers[1:] {
			if err := p.send(msgRelease, nil); err != nil {
				s.fail(-1, fmt.Errorf("barrier %d: releasing rank %d: %w", n, p.rank, err))
				return s.Err()
			}
		}
	}
	return nil
}

// usable is the error that stops new work (callers hold s.mu).
func (s *Session) usable() error {
	if s.err != nil {
		return s.err
	}
	if s.closed {
		return fmt.Errorf("dist: rank %d: the session is closed", s.rank)
	}
	return nil
}

// Close leaves the job in good order: the other ranks are told, so the
// closing connections are not taken for a lost process.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	healthy := s.err == nil
	links := s.links()
	s.mu.Unlock()
	for _, l := range links {
		if healthy {
			l.send(msgBye, nil)
		}
		l.conn.Close()
	}
	s.readers.Wait()
	return nil
}

// missing lists the ranks that have not joined yet (rank 0's rendezvous).
func (s *Session) missing() []int {
	var out []int
	for r := 1; r < s.world; r++ {
		if s.peers[r] == nil {
			out = append(out, r)
		}
	}
	return out
}

// rankList words a set of ranks: "rank 2", "ranks 1, 3".
func rankList(rs []int) string {
	rs = slices.Clone(rs)
	slices.Sort(rs)
	if len(rs) == 1 {
		return fmt.Sprintf("rank %d", rs[0])
	}
	s := "ranks "
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprint(r)
	}
	return s
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
