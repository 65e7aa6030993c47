package cuda

import (
	"bytes"
	"fmt"
	"slices"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

// This file is the device-independent half of graph replay: what an op
// queued inside a region is (opRecord), when two runs of a region issued
// the same ops, and the decisions per segment — run plainly and record,
// capture, replay, or run plainly because the ops changed. graph.go
// carries the decisions out with the driver; tests drive the planner with
// a fake.

// opKind is what an opRecord issues.
type opKind uint8

const (
	opKernel opKind = iota + 1 // cuLaunchKernel
	opBlas                     // a cuBLAS call
	opHtoD                     // cuMemcpyHtoDAsync from the region's staging
)

// opRecord is one op as the stream receives it, with everything needed to
// issue it again later and to compare it with the op of another run.
type opRecord struct {
	kind opKind
	name string
	// kernel: the function, launch shape and packed argument bytes (each
	// argument starting at offs[i] of args).
	fn          uintptr
	grid        dims
	block, smem int
	args        []byte
	offs        []int
	// cuBLAS: the entry point and its arguments; the scalars at alphaAt
	// and betaAt are host pointers, filled in from alpha and beta when the
	// call is issued.
	blas            *sym
	bargs           []uintptr
	alphaAt, betaAt int
	alpha, beta     float64
	f64             bool
	// HtoD: n bytes from the staging copy at host to dst. The contents are
	// not part of the op's identity: a replay copies the new ones.
	dst  uint64
	n    int
	host unsafe.Pointer
}

// same reports whether two records issue the same op.
func (r *opRecord) same(o *opRecord) bool {
	if r.kind != o.kind {
		return false
	}
	switch r.kind {
	case opKernel:
		return r.fn == o.fn && r.grid == o.grid && r.block == o.block && r.smem == o.smem &&
			bytes.Equal(r.args, o.args) && slices.Equal(r.offs, o.offs)
	case opBlas:
		if r.blas != o.blas || len(r.bargs) != len(o.bargs) || r.alphaAt != o.alphaAt || r.betaAt != o.betaAt ||
			r.alpha != o.alpha || r.beta != o.beta || r.f64 != o.f64 {
			return false
		}
		for i := range r.bargs {
			if i != r.alphaAt && i != r.betaAt && r.bargs[i] != o.bargs[i] {
				return false
			}
		}
		return true
	case opHtoD:
		return r.dst == o.dst && r.n == o.n && r.host == o.host
	}
	return false
}

// sameRecords reports whether two segments issue the same ops in order.
func sameRecords(a, b []*opRecord) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].same(b[i]) {
			return false
		}
	}
	return true
}

// graphDriver is what the planner needs from the device.
type graphDriver interface {
	// issue queues one op plainly.
	issue(r *opRecord) error
	// capture records the ops into a graph without running them and
	// returns the instantiated graph.
	capture(recs []*opRecord) (exec uintptr, err error)
	// launch queues a captured graph; destroy frees it.
	launch(exec uintptr) error
	destroy(exec uintptr)
	// allocHost returns n bytes of pinned host memory for staging (kept
	// until close).
	allocHost(n int) (unsafe.Pointer, error)
	// fence marks the stream's position after a segment that read staging;
	// waitFence blocks until the stream has passed the last fence.
	fence(rg *graphRegion) error
	waitFence(rg *graphRegion) error
}

// segment is one recorded piece of a region: its ops and, once two runs
// agreed, its graph.
type segment struct {
	recs   []*opRecord
	exec   uintptr
	failed bool // capture failed once: run plainly from now on
}

// graphRegion is what is known of one key: its segments in run order and
// the staging memory its uploads copy through.
type graphRegion struct {
	segs []*segment
	// staging: pinned blocks and the bump position of this run.
	blocks [][]byte
	at     int
	// event is the fence after the last segment that read staging (0 none).
	event uintptr
	// read is whether this run's segments have read staging since the
	// last fence.
	read bool
}

// stage returns n bytes of the region's staging for one upload. The n-th
// upload of every run lands at the same place, so a replayed copy reads the
// bytes of the current run.
func (rg *graphRegion) stage(d graphDriver, n int) (unsafe.Pointer, error) {
	const blockBytes = 1 << 20
	start := 0
	for _, b := range rg.blocks {
		end := start + len(b)
		if rg.at+n <= end {
			off := rg.at - start
			rg.at += n
			return unsafe.Pointer(&b[off]), nil
		}
		// Too little left in this block: the upload goes to the next.
		rg.at = max(rg.at, end)
		start = end
	}
	size := max(blockBytes, n)
	p, err := d.allocHost(size)
	if err != nil {
		return nil, err
	}
	rg.blocks = append(rg.blocks, unsafe.Slice((*byte)(p), size))
	rg.at = start + n
	return p, nil
}

// graphPlanner decides, segment by segment, how the ops of regions run.
type graphPlanner struct {
	off     string // why graphs are off ("" when on)
	regions map[string]*graphRegion
	cur     *graphRegion
	depth   int // nested BeginGraph calls inside the current region
	seg     int // index of the segment being filled
	// pending is the segment being filled; deferred is whether its ops
	// are held until it closes (a recorded segment to compare with
	// exists) or were issued as they came (first run: recording).
	pending  []*opRecord
	deferred bool
	// chunk is the most ops a segment holds, sinceHost the segments
	// closed since the last host read (segments start short after a host
	// read so the device starts again soon, then grow to chunk).
	chunk, sinceHost int
	stats            kernels.GraphStats
}

// graphChunk is the most ops one segment (one graph) holds: long enough
// that launches are few, short enough that the device runs one segment
// while the host compares the next.
const graphChunk = 256

func newGraphPlanner(off string) *graphPlanner {
	return &graphPlanner{off: off, regions: map[string]*graphRegion{}, chunk: graphChunk, stats: kernels.GraphStats{Off: off}}
}

// active reports whether ops are going into a region.
func (p *graphPlanner) active() bool { return p.cur != nil }

// begin opens the region of key (or counts a nested call). The staging of
// the key's last run may still be read by the device: wait for it before
// this run overwrites it.
func (p *graphPlanner) begin(d graphDriver, key string) error {
	if p.off != "" {
		return nil
	}
	if p.cur != nil {
		p.depth++
		return nil
	}
	rg := p.regions[key]
	if rg == nil {
		rg = &graphRegion{}
		p.regions[key] = rg
	}
	p.cur, p.seg, p.sinceHost, rg.at, rg.read = rg, 0, 0, 0, false
	p.stats.Runs++
	p.open()
	return d.waitFence(rg)
}

// open starts the next segment.
func (p *graphPlanner) open() {
	p.pending = nil
	p.deferred = p.seg < len(p.cur.segs)
}

// limit is the length at which the current segment closes.
func (p *graphPlanner) limit() int { return min(p.chunk, 32<<min(p.sinceHost, 3)) }

// add takes one op of the current region: issued now while recording,
// held otherwise; a full segment closes.
func (p *graphPlanner) add(d graphDriver, r *opRecord) error {
	p.pending = append(p.pending, r)
	if r.kind == opHtoD {
		p.cur.read = true
	}
	if !p.deferred {
		if err := d.issue(r); err != nil {
			return err
		}
	}
	if len(p.pending) >= p.limit() {
		return p.close(d, false)
	}
	return nil
}

// close ends the current segment and runs it as the plan says; host tells
// that a host read follows (the next segments start short).
func (p *graphPlanner) close(d graphDriver, host bool) error {
	rg := p.cur
	recs := p.pending
	i := p.seg
	p.seg++
	if host {
		p.sinceHost = 0
	} else {
		p.sinceHost++
	}
	err := p.run(d, rg, i, recs)
	if err == nil && rg.read {
		err = d.fence(rg)
		rg.read = false
	}
	p.open()
	return err
}

// run carries out segment i of rg with the ops of this run.
func (p *graphPlanner) run(d graphDriver, rg *graphRegion, i int, recs []*opRecord) error {
	if len(recs) == 0 {
		p.seg-- // nothing was queued: no segment
		return nil
	}
	p.stats.Segments++
	n := int64(len(recs))
	if !p.deferred { // first run of this segment: issued already
		rg.segs = append(rg.segs, &segment{recs: recs})
		p.stats.Recorded++
		p.stats.OpsPlain += n
		return nil
	}
	sg := rg.segs[i]
	if sameRecords(sg.recs, recs) && !sg.failed {
		if sg.exec == 0 {
			exec, err := d.capture(recs)
			if err != nil {
				sg.failed = true
				p.stats.Failed++
				p.stats.LastFailure = fmt.Sprintf("capture of %d ops (first %s): %v", len(recs), recs[0].name, err)
				return p.plain(d, recs)
			}
			sg.exec = exec
			p.stats.Captured++
		} else {
			p.stats.Replayed++
		}
		if err := d.launch(sg.exec); err != nil {
			d.destroy(sg.exec)
			sg.exec, sg.failed = 0, true
			p.stats.Failed++
			p.stats.LastFailure = fmt.Sprintf("graph launch: %v", err)
			return p.plain(d, recs)
		}
		p.stats.OpsGraphed += n
		return nil
	}
	if !sameRecords(sg.recs, recs) {
		// The ops changed: this run's become the record, its graph goes.
		if sg.exec != 0 {
			d.destroy(sg.exec)
		}
		*sg = segment{recs: recs}
		p.stats.Mismatched++
	}
	return p.plain(d, recs)
}

// plain issues held ops one by one.
func (p *graphPlanner) plain(d graphDriver, recs []*opRecord) error {
	p.stats.OpsPlain += int64(len(recs))
	for _, r := range recs {
		if err := d.issue(r); err != nil {
			return err
		}
	}
	return nil
}

// hostRead closes the current segment before the host reads or waits for
// the device.
func (p *graphPlanner) hostRead(d graphDriver) error {
	if p.cur == nil {
		return nil
	}
	return p.close(d, true)
}

// flushPlain issues the held ops of the current segment plainly, without
// capturing (the allocator is about to give memory they use back to the
// device), and leaves the segment's record to the next comparison.
func (p *graphPlanner) flushPlain(d graphDriver) error {
	if p.cur == nil || !p.deferred {
		return nil
	}
	recs := p.pending
	p.pending = nil
	p.deferred = false // the rest of this segment is issued as it comes
	if err := p.plain(d, recs); err != nil {
		return err
	}
	// The segment is now a plain run: it must not be captured from this
	// run's records, so it counts as changed.
	p.pending = recs
	rg := p.cur
	if p.seg < len(rg.segs) {
		sg := rg.segs[p.seg]
		if sg.exec != 0 {
			d.destroy(sg.exec)
		}
		rg.segs = rg.segs[:p.seg]
		p.stats.Mismatched++
	}
	return nil
}

// end closes the region (the last segment runs now). A nested end only
// counts down.
func (p *graphPlanner) end(d graphDriver) error {
	if p.cur == nil {
		return nil
	}
	if p.depth > 0 {
		p.depth--
		return nil
	}
	err := p.close(d, false)
	// Segments past this run's last stay recorded for a longer run.
	p.cur, p.pending = nil, nil
	return err
}

// release destroys every graph (the backend is closing).
func (p *graphPlanner) release(d graphDriver) {
	for _, rg := range p.regions {
		for _, sg := range rg.segs {
			if sg.exec != 0 {
				d.destroy(sg.exec)
				sg.exec = 0
			}
		}
	}
	p.cur, p.pending = nil, nil
}
