package cuda

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// fakeGraphs plays the device for the planner: issue runs an op (appends
// it to ran), capture stores ops without running them, launch runs a
// stored graph's ops, reading uploads' staging at launch time as a device
// would. Every run must leave ran equal to the ops in the order they came.
type fakeGraphs struct {
	ran      []string
	graphs   map[uintptr][]*opRecord
	next     uintptr
	captures int
	launches int
	destroys int
	failNext bool
	hostMem  [][]byte
	fences   int
	waits    int
}

func newFakeGraphs() *fakeGraphs { return &fakeGraphs{graphs: map[uintptr][]*opRecord{}} }

func (f *fakeGraphs) run(r *opRecord) {
	s := r.name
	if r.kind == opHtoD {
		s += "=" + string(unsafe.Slice((*byte)(r.host), r.n))
	}
	f.ran = append(f.ran, s)
}

func (f *fakeGraphs) issue(r *opRecord) error { f.run(r); return nil }

func (f *fakeGraphs) capture(recs []*opRecord) (uintptr, error) {
	if f.failNext {
		f.failNext = false
		return 0, errors.New("capture refused")
	}
	f.next++
	f.captures++
	f.graphs[f.next] = slices.Clone(recs)
	return f.next, nil
}

func (f *fakeGraphs) launch(exec uintptr) error {
	recs, ok := f.graphs[exec]
	if !ok {
		return fmt.Errorf("no graph %d", exec)
	}
	f.launches++
	for _, r := range recs {
		f.run(r)
	}
	return nil
}

func (f *fakeGraphs) destroy(exec uintptr) { delete(f.graphs, exec); f.destroys++ }

func (f *fakeGraphs) allocHost(n int) (unsafe.Pointer, error) {
	b := make([]byte, n)
	f.hostMem = append(f.hostMem, b)
	return unsafe.Pointer(&b[0]), nil
}

func (f *fakeGraphs) fence(*graphRegion) error     { f.fences++; return nil }
func (f *fakeGraphs) waitFence(*graphRegion) error { f.waits++; return nil }

// step is one op of a scripted region: a kernel (arg changes its
// arguments), an upload of data, or a host read.
type step struct {
	name   string
	arg    byte
	upload string
	read   bool
}

// play runs one region of the script through the planner and returns the
// ops the fake device ran (host reads appear as "|").
func play(t *testing.T, p *graphPlanner, f *fakeGraphs, key string, script []step) []string {
	t.Helper()
	f.ran = nil
	if err := p.begin(f, key); err != nil {
		t.Fatal(err)
	}
	for _, s := range script {
		var err error
		switch {
		case s.read:
			err = p.hostRead(f)
			f.ran = append(f.ran, "|")
		case s.upload != "":
			host, serr := p.cur.stage(f, len(s.upload))
			if serr != nil {
				t.Fatal(serr)
			}
			copy(unsafe.Slice((*byte)(host), len(s.upload)), s.upload)
			err = p.add(f, &opRecord{kind: opHtoD, name: s.name, dst: 0x1000, n: len(s.upload), host: host})
		default:
			err = p.add(f, &opRecord{kind: opKernel, name: s.name, fn: 7, grid: dims{1, 1, 1}, block: 32, args: []byte{s.arg}, offs: []int{0}})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := p.end(f); err != nil {
		t.Fatal(err)
	}
	return f.ran
}

// want is what plain execution of the script runs.
func want(script []step) []string {
	var out []string
	for _, s := range script {
		switch {
		case s.read:
			out = append(out, "|")
		case s.upload != "":
			out = append(out, s.name+"="+s.upload)
		default:
			out = append(out, s.name)
		}
	}
	return out
}

// script makes a region of n kernels with an upload of data after the
// third and a host read after the tenth.
func script(n int, data string) []step {
	var s []step
	for i := range n {
		s = append(s, step{name: fmt.Sprintf("k%d", i), arg: byte(i)})
		if i == 2 {
			s = append(s, step{name: "up", upload: data})
		}
		if i == 9 {
			s = append(s, step{read: true})
		}
	}
	return s
}

// TestGraphPlanner: a region runs plainly and is recorded the first time,
// is captured the second and replayed after, and every run — whatever the
// planner chose — runs exactly the ops it was given, in order, uploads
// with the bytes of their own run.
func TestGraphPlanner(t *testing.T) {
	p, f := newGraphPlanner(""), newFakeGraphs()
	for run, data := range []string{"aa", "bb", "cc", "dd"} {
		sc := script(300, data)
		if got := play(t, p, f, "step", sc); !slices.Equal(got, want(sc)) {
			t.Fatalf("run %d ran %v…, want %v…", run, got[:12], want(sc)[:12])
		}
		st := p.stats
		switch run {
		case 0:
			if st.Recorded == 0 || st.Captured != 0 || f.captures != 0 {
				t.Errorf("first run: %+v, %d captures; want recording only", st, f.captures)
			}
		case 1:
			if st.Captured != st.Recorded || st.Replayed != 0 {
				t.Errorf("second run: %+v; want every recorded segment captured", st)
			}
		case 3:
			if st.Replayed != 2*st.Captured || st.Mismatched != 0 || st.OpsGraphed != 3*st.OpsPlain {
				t.Errorf("fourth run: %+v; want two replays of every segment and no plain ops since the first run", st)
			}
		}
	}
	if f.waits != 4 || f.fences != 4 {
		t.Errorf("%d waits and %d fences for 4 runs with one upload segment each", f.waits, f.fences)
	}
	// Segments start short after a host read and grow to graphChunk.
	if p.stats.Segments/4 < 300/graphChunk+2 {
		t.Errorf("%d segments a run", p.stats.Segments/4)
	}

	// A run that changes one kernel's arguments runs that segment plainly
	// (and makes it the record); the others still replay.
	before := p.stats
	sc := script(300, "ee")
	sc[20].arg = 99
	if got := play(t, p, f, "step", sc); !slices.Equal(got, want(sc)) {
		t.Fatalf("changed run ran %v", got)
	}
	d := p.stats.Sub(before)
	if d.Mismatched != 1 || d.Replayed != d.Segments-1 {
		t.Errorf("changed run: %+v; want one segment differing, the rest replayed", d)
	}
	// Back to the original: that segment differs again, then is captured.
	for i := range 2 {
		before = p.stats
		sc = script(300, "ff")
		if got := play(t, p, f, "step", sc); !slices.Equal(got, want(sc)) {
			t.Fatalf("run after the change ran %v", got)
		}
		d = p.stats.Sub(before)
		if (i == 0 && d.Mismatched != 1) || (i == 1 && d.Captured != 1) {
			t.Errorf("run %d after the change: %+v", i, d)
		}
	}

	// Another key has its own record: recorded first, not compared with
	// "step".
	before = p.stats
	sc = script(40, "gg")
	play(t, p, f, "eval", sc)
	if d := p.stats.Sub(before); d.Recorded != d.Segments || d.Replayed != 0 {
		t.Errorf("new key: %+v", d)
	}
}

// TestGraphPlannerStagingStable: the n-th upload of every run lands at the
// same staging address (a captured copy reads the current run's bytes),
// large uploads get blocks of their own.
func TestGraphPlannerStagingStable(t *testing.T) {
	p, f := newGraphPlanner(""), newFakeGraphs()
	sizes := []int{100, 1 << 20, 7, 3 << 20, 1<<20 - 50, 64}
	var first []unsafe.Pointer
	for run := range 3 {
		if err := p.begin(f, "k"); err != nil {
			t.Fatal(err)
		}
		var got []unsafe.Pointer
		for _, n := range sizes {
			h, err := p.cur.stage(f, n)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, h)
		}
		if err := p.end(f); err != nil {
			t.Fatal(err)
		}
		if run == 0 {
			first = got
			// No two uploads of a run overlap.
			for i := range got {
				for j := range got {
					a, b := uintptr(got[i]), uintptr(got[j])
					if i != j && a < b+uintptr(sizes[j]) && b < a+uintptr(sizes[i]) {
						t.Errorf("uploads %d and %d overlap", i, j)
					}
				}
			}
		} else if !slices.Equal(got, first) {
			t.Errorf("run %d staged at other addresses", run)
		}
	}
	if len(f.hostMem) > len(sizes) {
		t.Errorf("%d staging blocks for %v bytes a run", len(f.hostMem), sizes)
	}
}

// TestGraphPlannerFallbacks: a refused capture runs plainly and is not
// tried again; ops held when the allocator must give memory back run at
// once, in order; nested regions are one region; graphs off runs nothing
// through the planner.
func TestGraphPlannerFallbacks(t *testing.T) {
	p, f := newGraphPlanner(""), newFakeGraphs()
	sc := script(20, "xy")
	play(t, p, f, "k", sc)
	f.failNext = true
	if got := play(t, p, f, "k", sc); !slices.Equal(got, want(sc)) {
		t.Fatalf("run with a refused capture ran %v", got)
	}
	if p.stats.Failed != 1 || !strings.Contains(p.stats.LastFailure, "capture refused") {
		t.Errorf("stats after a refused capture: %+v", p.stats)
	}
	before := p.stats
	play(t, p, f, "k", sc)
	if d := p.stats.Sub(before); d.Failed != 0 || d.Replayed != d.Segments-1 {
		t.Errorf("after the refusal: %+v; the refused segment runs plainly, the other replays", d)
	}

	// flushPlain in the middle of a held segment.
	f.ran = nil
	if err := p.begin(f, "k"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := p.add(f, &opRecord{kind: opKernel, name: fmt.Sprintf("k%d", i), fn: 7, grid: dims{1, 1, 1}, block: 32, args: []byte{byte(i)}, offs: []int{0}}); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			if err := p.flushPlain(f); err != nil {
				t.Fatal(err)
			}
			if len(f.ran) != 3 {
				t.Fatalf("flushPlain ran %v, want the 3 held ops", f.ran)
			}
		}
	}
	if err := p.end(f); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.ran, []string{"k0", "k1", "k2", "k3", "k4"}) {
		t.Errorf("ran %v", f.ran)
	}

	// Nested: the inner BeginGraph/EndGraph change nothing.
	q, g := newGraphPlanner(""), newFakeGraphs()
	for range 3 {
		g.ran = nil
		q.begin(g, "outer")
		q.add(g, &opRecord{kind: opKernel, name: "a", fn: 1, args: []byte{1}, offs: []int{0}})
		q.begin(g, "inner")
		q.add(g, &opRecord{kind: opKernel, name: "b", fn: 1, args: []byte{2}, offs: []int{0}})
		q.end(g)
		q.add(g, &opRecord{kind: opKernel, name: "c", fn: 1, args: []byte{3}, offs: []int{0}})
		q.end(g)
		if !slices.Equal(g.ran, []string{"a", "b", "c"}) || q.active() {
			t.Fatalf("nested regions ran %v (active %v)", g.ran, q.active())
		}
	}
	if q.stats.Runs != 3 || q.stats.Segments != 3 || q.stats.Replayed != 1 {
		t.Errorf("nested regions: %+v; want one segment a run", q.stats)
	}

	off := newGraphPlanner(fastPathEnv + " names graphs")
	off.begin(g, "k")
	if off.active() || off.stats.Off == "" {
		t.Errorf("graphs off: active %v, stats %+v", off.active(), off.stats)
	}
}

// TestOpRecordSame: every field that changes what an op does changes its
// identity; an upload's contents and cuBLAS's scalar pointers do not.
func TestOpRecordSame(t *testing.T) {
	k := opRecord{kind: opKernel, fn: 1, grid: dims{2, 1, 1}, block: 256, smem: 0, args: []byte{1, 2, 3}, offs: []int{0, 1}}
	for name, mut := range map[string]func(r *opRecord){
		"function": func(r *opRecord) { r.fn = 2 },
		"grid":     func(r *opRecord) { r.grid.x = 3 },
		"block":    func(r *opRecord) { r.block = 128 },
		"smem":     func(r *opRecord) { r.smem = 8 },
		"args":     func(r *opRecord) { r.args = []byte{1, 2, 4} },
		"layout":   func(r *opRecord) { r.offs = []int{0, 2} },
		"kind":     func(r *opRecord) { r.kind = opHtoD },
	} {
		o := k
		mut(&o)
		if k.same(&o) {
			t.Errorf("kernel records equal despite a different %s", name)
		}
	}
	var s1, s2 sym
	b := opRecord{kind: opBlas, blas: &s1, bargs: []uintptr{1, 2, 100, 4, 200}, alphaAt: 2, betaAt: 4, alpha: 1, beta: 0}
	o := b
	o.bargs = []uintptr{1, 2, 999, 4, 888}
	if !b.same(&o) {
		t.Error("cuBLAS records differ only in the scalar pointers but compare unequal")
	}
	for name, mut := range map[string]func(r *opRecord){
		"entry": func(r *opRecord) { r.blas = &s2 },
		"arg":   func(r *opRecord) { r.bargs = []uintptr{1, 3, 100, 4, 200} },
		"alpha": func(r *opRecord) { r.alpha = 2 },
		"beta":  func(r *opRecord) { r.beta = 1 },
	} {
		o := b
		mut(&o)
		if b.same(&o) {
			t.Errorf("cuBLAS records equal despite a different %s", name)
		}
	}
	buf := []byte("abcd")
	h := opRecord{kind: opHtoD, dst: 8, n: 4, host: unsafe.Pointer(&buf[0])}
	o = h
	o.dst = 16
	if h.same(&o) {
		t.Error("uploads to different places compare equal")
	}
}

// TestAllocatorAddressesFollowTheFreeSet: two allocators whose blocks were
// freed in different orders hand out the same addresses for the same
// requests — the property graph replay relies on.
func TestAllocatorAddressesFollowTheFreeSet(t *testing.T) {
	sizes := []int64{1000, 5000, 1000, 3 << 20, 1000, 200 << 10, 5000, 3 << 20}
	setup := func(order []int) *cachingAllocator {
		a := newCachingAllocator(&fakeDevice{live: map[uint64]int64{}, limit: 1 << 40})
		ptrs := make([]uint64, len(sizes))
		got := make([]int64, len(sizes))
		for i, n := range sizes {
			p, s, err := a.get(n)
			if err != nil {
				t.Fatal(err)
			}
			ptrs[i], got[i] = p, s
		}
		for _, i := range order {
			a.put(ptrs[i], got[i])
		}
		return a
	}
	a := setup([]int{0, 1, 2, 3, 4, 5, 6, 7})
	b := setup([]int{7, 4, 2, 6, 0, 3, 5, 1})
	for _, n := range []int64{1000, 3 << 20, 1000, 5000, 1000, 200 << 10, 3 << 20, 5000, 1000} {
		pa, _, _ := a.get(n)
		pb, _, _ := b.get(n)
		if pa != pb {
			t.Fatalf("request of %d bytes: %#x from one allocator, %#x from the other", n, pa, pb)
		}
	}
}
