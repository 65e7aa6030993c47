package dist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
)

// hostToken is the rendezvous payload of a job whose backend brings no
// collective library: its sums travel over the session (hostCollective).
var hostToken = []byte("newbie-train host collective v1")

// hostCollective is the collective library of a backend that has none (the
// CPU backend): the sums and broadcasts travel over the session's TCP
// connections. Every rank sends its buffers to rank 0, which adds them in
// rank order — rank 0 + rank 1 + …, F32 in float32 and BF16 rounded after
// each addition, as NewInProcess does — and sends the result back. It is
// the job setup's CPU double (and lets a CPU machine run a job); GPUs sum
// through NCCL.
type hostCollective struct {
	s       *Session
	b       kernels.Backend
	timeout time.Duration
}

var _ NativeCollective = (*hostCollective)(nil)

func (h *hostCollective) AllReduceSum(bufs []kernels.Buffer) error {
	return h.round(describe("AllReduceSum", bufs), -1, bufs)
}

func (h *hostCollective) Broadcast(buf kernels.Buffer, root int) error {
	return h.round(describe(fmt.Sprintf("Broadcast(root %d)", root), []kernels.Buffer{buf}), root, []kernels.Buffer{buf})
}

func (h *hostCollective) Err() error         { return h.s.Err() }
func (h *hostCollective) Abort(reason error) { h.s.Abort(reason) }
func (h *hostCollective) Close() error       { return nil } // the group closes the session

// round is one collective: desc names the call (ranks making different
// calls fail the job), root ≥ 0 makes it a broadcast.
func (h *hostCollective) round(desc string, root int, bufs []kernels.Buffer) error {
	s := h.s
	mine := make([][]byte, len(bufs))
	for i, b := range bufs {
		mine[i] = make([]byte, b.Len()*b.DType().Size())
		if root < 0 || root == s.rank {
			if err := h.b.Download(mine[i], b, 0); err != nil {
				err = fmt.Errorf("%s: %w", desc, err)
				s.Abort(err)
				return err
			}
		}
	}
	var result [][]byte
	if s.rank != 0 {
		if err := s.sendData(s.up, encodeRound(desc, mine)); err != nil {
			return err
		}
		raw, err := s.recvData(0, h.timeout, desc)
		if err != nil {
			return err
		}
		if _, result, err = decodeRound(raw, bufs); err != nil {
			s.fail(-1, fmt.Errorf("%s: rank 0's answer: %w", desc, err))
			return s.Err()
		}
	} else {
		all := make([][][]byte, s.world)
		all[0] = mine
		for r := 1; r < s.world; r++ {
			raw, err := s.recvData(r, h.timeout, desc)
			if err != nil {
				return err
			}
			theirs, data, err := decodeRound(raw, bufs)
			switch {
			case err != nil:
				s.fail(-1, fmt.Errorf("%s: rank %d's part: %w", desc, r, err))
				return s.Err()
			case theirs != desc:
				s.fail(-1, fmt.Errorf("rank 0 called %s while rank %d called %s: every rank must make the same calls in the same order", desc, r, theirs))
				return s.Err()
			}
			all[r] = data
		}
		if root >= 0 {
			result = all[root]
		} else {
			result = make([][]byte, len(bufs))
			for i, b := range bufs {
				result[i] = sumInRankOrder(b.DType(), all, i)
			}
		}
		answer := encodeRound(desc, result)
		for _, p := range s.peers[1:] {
			if err := s.sendData(p, answer); err != nil {
				return err
			}
		}
	}
	for i, b := range bufs {
		h.b.Upload(b, 0, result[i])
	}
	return nil
}

// encodeRound lays out a rank's part of a round: the call's description
// and each buffer's bytes, every piece behind its length.
func encodeRound(desc string, bufs [][]byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(desc)))
	out = append(out, desc...)
	for _, b := range bufs {
		out = binary.BigEndian.AppendUint64(out, uint64(len(b)))
		out = append(out, b...)
	}
	return out
}

// decodeRound reads encodeRound's layout, checking each buffer's length
// against bufs.
func decodeRound(raw []byte, bufs []kernels.Buffer) (string, [][]byte, error) {
	if len(raw) < 4 || uint64(len(raw)-4) < uint64(binary.BigEndian.Uint32(raw)) {
		return "", nil, errors.New("a message cut short")
	}
	n := binary.BigEndian.Uint32(raw)
	desc, raw := string(raw[4:4+n]), raw[4+n:]
	out := make([][]byte, len(bufs))
	for i, b := range bufs {
		want := uint64(b.Len() * b.DType().Size())
		if len(raw) < 8 || binary.BigEndian.Uint64(raw) != want || uint64(len(raw)-8) < want {
			return desc, nil, fmt.Errorf("buffer %d is not the %d bytes of %s", i, want, desc)
		}
		out[i], raw = raw[8:8+want], raw[8+want:]
	}
	return desc, out, nil
}

// sendData sends one collective message over l, in chunks of at most
// maxMessage bytes: the first starts with the whole message's length.
func (s *Session) sendData(l *link, data []byte) error {
	msg := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(data)), uint64(len(data)))
	msg = append(msg, data...)
	for len(msg) > 0 {
		n := min(len(msg), maxMessage)
		if err := l.send(msgData, msg[:n]); err != nil {
			s.fail(-1, fmt.Errorf("sending to rank %d: %w", l.rank, err))
			return s.Err()
		}
		msg = msg[n:]
	}
	return nil
}

// takeData adds a chunk received from l (the reader's goroutine; callers
// hold s.mu) and files the message it completes.
func (l *link) takeData(chunk []byte) error {
	if l.partial == nil {
		if len(chunk) < 8 {
			return errors.New("a collective message without its length")
		}
		l.want = binary.BigEndian.Uint64(chunk)
		chunk = chunk[8:]
		l.partial = make([]byte, 0, l.want)
	}
	if uint64(len(l.partial)+len(chunk)) > l.want {
		return fmt.Errorf("a collective message longer than the %d bytes it announced", l.want)
	}
	l.partial = append(l.partial, chunk...)
	if uint64(len(l.partial)) == l.want {
		l.inbox = append(l.inbox, l.partial)
		l.partial = nil
	}
	return nil
}

// recvData returns the next collective message from rank from (rank 0's
// link for every other rank), waiting up to timeout (no limit when ≤ 0).
func (s *Session) recvData(from int, timeout time.Duration, desc string) ([]byte, error) {
	l := s.up
	if s.rank == 0 {
		l = s.peers[from]
	}
	expired, stop := expiry(timeout)
	defer stop()
	for {
		s.mu.Lock()
		if err := s.usable(); err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if len(l.inbox) > 0 {
			m := l.inbox[0]
			l.inbox = l.inbox[1:]
			s.mu.Unlock()
			return m, nil
		}
		gone := l.gone
		s.mu.Unlock()
		if gone {
			s.fail(-1, fmt.Errorf("%s: rank %d has left the job", desc, from))
			return nil, s.Err()
		}
		select {
		case <-s.changed:
		case <-s.failed:
		case <-expired:
			s.fail(-1, fmt.Errorf("%s: rank %d sent nothing within %v", desc, from, timeout))
			return nil, s.Err()
		}
	}
}
