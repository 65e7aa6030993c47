package dist

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
)

// NewInProcess returns the ranks of a job run by goroutines of one
// process, rank r on backends[r] (one backend per rank, each used only by
// its rank's goroutine). It is the data-parallel logic's test double on the
// CPU backend: collectives meet in host memory, and sums are made in rank
// order — rank 0 + rank 1 + … — F32 in float32 and BF16 rounded to bf16
// after each addition, so a result is the same bit for bit on every run,
// and equals a single process adding the ranks' values in that order.
//
// A rank that waits in a collective longer than timeout (DefaultTimeout
// when zero) for the others fails the job, as does a mismatch (one rank
// sums while another broadcasts, or buffers differ).
func NewInProcess(backends []kernels.Backend, timeout time.Duration) []Communicator {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	j := &inJob{world: len(backends), timeout: timeout, failed: make(chan struct{}), closed: make([]bool, len(backends))}
	out := make([]Communicator, len(backends))
	for r, b := range backends {
		out[r] = &inRank{job: j, rank: r, b: b}
	}
	return out
}

// inJob is what the ranks of an in-process job share.
type inJob struct {
	world   int
	timeout time.Duration

	mu     sync.Mutex
	err    error
	failed chan struct{}
	closed []bool
	round  *inRound // the collective the ranks are meeting in, nil between
}

// inRound is one collective: what each rank brought and, once all have
// come, the result.
type inRound struct {
	desc    string // the call, for mismatch messages
	first   int    // the rank that opened it
	root    int    // Broadcast's root
	dtypes  []kernels.DType
	data    [][][]byte // [rank][buffer] host bytes
	arrived []bool
	count   int
	result  [][]byte
	done    chan struct{}
}

type inRank struct {
	job  *inJob
	rank int
	b    kernels.Backend
}

func (r *inRank) Rank() int      { return r.rank }
func (r *inRank) WorldSize() int { return r.job.world }

func (r *inRank) AllReduceSum(bufs ...kernels.Buffer) error {
	if err := checkReduceDTypes(bufs); err != nil {
		return err
	}
	return r.collective(describe("AllReduceSum", bufs), -1, bufs, 0)
}

func (r *inRank) Broadcast(buf kernels.Buffer, root int) error {
	if err := checkRoot(root, r.job.world); err != nil {
		return err
	}
	if buf == nil {
		return fmt.Errorf("dist: Broadcast: buffer is nil")
	}
	return r.collective(describe(fmt.Sprintf("Broadcast(root %d)", root), []kernels.Buffer{buf}), root, []kernels.Buffer{buf}, 0)
}

func (r *inRank) Barrier(timeout time.Duration) error {
	return r.collective("Barrier", -1, nil, timeout)
}

func (r *inRank) Err() error {
	r.job.mu.Lock()
	defer r.job.mu.Unlock()
	return r.job.err
}

func (r *inRank) Abort(reason error) {
	r.job.fail(fmt.Errorf("rank %d aborted: %v", r.rank, reason))
}

func (r *inRank) Close() error {
	j := r.job
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed[r.rank] {
		return nil
	}
	j.closed[r.rank] = true
	if j.round != nil && !j.round.arrived[r.rank] {
		j.failLocked(fmt.Errorf("rank %d closed its communicator while %s waited in %s", r.rank, rankList(j.round.waiting(true)), j.round.desc))
	}
	return nil
}

// describe words a collective call with its buffers, e.g.
// "AllReduceSum(F32[10], BF16[3])".
func describe(op string, bufs []kernels.Buffer) string {
	parts := make([]string, len(bufs))
	for i, b := range bufs {
		parts[i] = fmt.Sprintf("%v[%d]", b.DType(), b.Len())
	}
	return op + "(" + strings.Join(parts, ", ") + ")"
}

func (j *inJob) fail(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.failLocked(err)
}

func (j *inJob) failLocked(err error) {
	if j.err == nil {
		j.err = fmt.Errorf("dist: in-process job: %w", err)
		close(j.failed)
	}
}

// waiting lists the ranks that have (arrived) or have not come yet.
func (rd *inRound) waiting(arrived bool) []int {
	var out []int
	for r, a := range rd.arrived {
		if a == arrived {
			out = append(out, r)
		}
	}
	return out
}

// collective brings this rank's buffers to the round, waits for the
// others (up to timeout: the job's when 0, no limit when negative) and
// writes the result back. root ≥ 0 makes it a broadcast.
func (r *inRank) collective(desc string, root int, bufs []kernels.Buffer, timeout time.Duration) error {
	j := r.job
	data := make([][]byte, len(bufs))
	if root < 0 || root == r.rank {
		for i, b := range bufs {
			data[i] = make([]byte, b.Len()*b.DType().Size())
			if err := r.b.Download(data[i], b, 0); err != nil {
				err = fmt.Errorf("rank %d: %s: %w", r.rank, desc, err)
				j.fail(err)
				return j.failure()
			}
		}
	}
	j.mu.Lock()
	if j.err != nil {
		j.mu.Unlock()
		return j.err
	}
	if j.closed[r.rank] {
		j.mu.Unlock()
		return fmt.Errorf("dist: rank %d: %s on a closed communicator", r.rank, desc)
	}
	for q, c := range j.closed {
		if c {
			j.failLocked(fmt.Errorf("rank %d called %s, but rank %d has closed its communicator", r.rank, desc, q))
			j.mu.Unlock()
			return j.failure()
		}
	}
	rd := j.round
	if rd == nil {
		rd = &inRound{desc: desc, first: r.rank, root: root, data: make([][][]byte, j.world), arrived: make([]bool, j.world), done: make(chan struct{})}
		for _, b := range bufs {
			rd.dtypes = append(rd.dtypes, b.DType())
		}
		j.round = rd
	} else if rd.desc != desc {
		j.failLocked(fmt.Errorf("rank %d called %s while rank %d called %s: every rank must make the same calls in the same order", r.rank, desc, rd.first, rd.desc))
		j.mu.Unlock()
		return j.failure()
	}
	rd.arrived[r.rank] = true
	rd.data[r.rank] = data
	rd.count++
	if rd.count == j.world {
		rd.result = rd.combine()
		j.round = nil
		close(rd.done)
	}
	j.mu.Unlock()

	if timeout == 0 {
		timeout = j.timeout
	}
	expired, stop := expiry(timeout)
	defer stop()
	select {
	case <-rd.done:
	case <-j.failed:
		select {
		case <-rd.done: // completed before the failure: the result stands
		default:
			return j.failure()
		}
	case <-expired:
		j.mu.Lock()
		j.failLocked(fmt.Errorf("rank %d waited %v in %s for %s", r.rank, timeout, desc, rankList(rd.waiting(false))))
		j.mu.Unlock()
		return j.failure()
	}
	for i, b := range bufs {
		r.b.Upload(b, 0, rd.result[i])
	}
	return nil
}

func (j *inJob) failure() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// combine makes the round's result from every rank's bytes.
func (rd *inRound) combine() [][]byte {
	if rd.root >= 0 {
		return rd.data[rd.root]
	}
	out := make([][]byte, len(rd.dtypes))
	for i, d := range rd.dtypes {
		out[i] = sumInRankOrder(d, rd.data, i)
	}
	return out
}

// sumInRankOrder adds buffer i of every rank, rank 0 first, each addition
// in float32 and stored (rounded) in the buffer's dtype.
func sumInRankOrder(d kernels.DType, data [][][]byte, i int) []byte {
	get, put := elementCodec(d)
	size := d.Size()
	acc := append([]byte(nil), data[0][i]...)
	for _, rank := range data[1:] {
		src := rank[i]
		for k := 0; k < len(acc); k += size {
			put(acc[k:], get(acc[k:])+get(src[k:]))
		}
	}
	return acc
}

// elementCodec reads and writes one little-endian element of an F32 or
// BF16 buffer as float32 (writing BF16 rounds to nearest even).
func elementCodec(d kernels.DType) (get func([]byte) float32, put func([]byte, float32)) {
	if d == kernels.BF16 {
		return func(b []byte) float32 { return kernels.F32FromBF16(binary.LittleEndian.Uint16(b)) },
			func(b []byte, v float32) { binary.LittleEndian.PutUint16(b, kernels.BF16FromF32(v)) }
	}
	return func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) },
		func(b []byte, v float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(v)) }
}
