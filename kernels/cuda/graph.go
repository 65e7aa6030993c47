package cuda

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

// graphAPI holds the driver's graph entry points, resolved apart from the
// others: a driver without them still runs everything, without graphs.
type graphAPI struct {
	beginCapture, endCapture, instantiate, launch, execDestroy, destroy sym
}

func newGraphAPI() *graphAPI {
	return &graphAPI{
		beginCapture: sym{name: "cuStreamBeginCapture_v2"}, endCapture: sym{name: "cuStreamEndCapture"},
		instantiate: sym{name: "cuGraphInstantiateWithFlags"}, launch: sym{name: "cuGraphLaunch"},
		execDestroy: sym{name: "cuGraphExecDestroy"}, destroy: sym{name: "cuGraphDestroy"},
	}
}

func (g *graphAPI) all() []*sym {
	return []*sym{&g.beginCapture, &g.endCapture, &g.instantiate, &g.launch, &g.execDestroy, &g.destroy}
}

// captureModeRelaxed is CU_STREAM_CAPTURE_MODE_RELAXED: allocation stays
// legal during a capture.
const captureModeRelaxed = 2

// graphsOff says why a new backend runs without graphs ("" when it uses
// them): NEWBIE_TRAIN_CUDA_OFF names "graphs", or the driver lacks them.
func graphsOff(l *libs, off map[string]bool) string {
	switch {
	case off[fastGraphs]:
		return fastPathEnv + " names " + fastGraphs
	case l.graphErr != nil:
		return l.graphErr.Error()
	}
	return ""
}

// BeginGraph opens a graph region (see kernels.Graphs).
func (c *Backend) BeginGraph(key string) {
	if !c.enter("BeginGraph") {
		c.leave()
		return
	}
	defer c.leave()
	if c.timing {
		return // a timing window launches every op by itself
	}
	if err := c.plan.begin(cudaGraphs{c}, key); err != nil {
		c.failf("BeginGraph %s: %v", key, err)
	}
}

// EndGraph closes the region, running its last segment.
func (c *Backend) EndGraph() {
	if !c.enter("EndGraph") {
		c.leave()
		return
	}
	defer c.leave()
	if c.timing {
		return
	}
	if err := c.plan.end(cudaGraphs{c}); err != nil {
		c.failf("EndGraph: %v", err)
	}
}

// SetOff turns off exactly the named fast paths (fastpath.go's names, as
// NEWBIE_TRAIN_CUDA_OFF lists them), between graph regions.
func (c *Backend) SetOff(names string) error {
	off, err := parseFastPathsOff(names)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.plan.active() {
		return fmt.Errorf("cuda: SetOff(%q) inside a graph region", names)
	}
	c.off = off
	c.plan.off = graphsOff(c.l, off)
	c.plan.stats.Off = c.plan.off
	return nil
}

// Switches reports the backend's fast paths (fastpath.go), each on or off,
// and why graph replay is off when it is.
func (c *Backend) Switches() string {
	var parts []string
	for _, f := range fastPaths {
		state := "on"
		if !c.fast(f) {
			state = "off"
		}
		parts = append(parts, f+" "+state)
	}
	s := fastPathEnv + ": " + strings.Join(parts, ", ")
	if c.plan.off != "" && c.fast(fastGraphs) {
		s += " (graphs unavailable: " + c.plan.off + ")"
	}
	return s
}

// GraphStats reports what the graph regions did since the backend opened.
func (c *Backend) GraphStats() kernels.GraphStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.plan.stats
}

// hostRead closes the current segment before a host read. Callers hold
// c.mu with the context current.
func (c *Backend) hostRead() {
	if err := c.plan.hostRead(cudaGraphs{c}); err != nil {
		c.failf("graph segment: %v", err)
	}
}

// queue hands one op to the current region. Callers hold c.mu.
func (c *Backend) queue(r *opRecord) {
	if err := c.plan.add(cudaGraphs{c}, r); err != nil {
		c.failf("%s: %v", r.name, err)
	}
}

// cudaGraphs carries the planner's decisions out on the backend's stream.
// Its methods run with c.mu held and the context current.
type cudaGraphs struct{ c *Backend }

var _ graphDriver = cudaGraphs{}

// issue queues one recorded op.
func (g cudaGraphs) issue(r *opRecord) error {
	c := g.c
	switch r.kind {
	case opKernel:
		area := unsafe.Slice((*byte)(c.args), argAreaBytes)
		const ptrBytes = 8 * 128
		copy(area[ptrBytes:], r.args)
		for i, o := range r.offs {
			binary.LittleEndian.PutUint64(area[8*i:], uint64(uintptr(c.args)+uintptr(ptrBytes+o)))
		}
		if res := c.l.drv.launchKernel.call(r.fn, uintptr(r.grid.x), uintptr(r.grid.y), uintptr(r.grid.z), uintptr(r.block), 1, 1,
			uintptr(r.smem), c.stream, uintptr(c.args), 0); res != 0 {
			return fmt.Errorf("launch %s (grid %d×%d×%d, block %d, smem %d): %s", r.name, r.grid.x, r.grid.y, r.grid.z, r.block, r.smem, c.l.drv.errText(res))
		}
	case opBlas:
		args := append([]uintptr(nil), r.bargs...)
		args[r.alphaAt] = c.hostScalar(argAreaBytes-32, r.alpha, r.f64)
		args[r.betaAt] = c.hostScalar(argAreaBytes-16, r.beta, r.f64)
		if res := r.blas.call(args...); res != 0 {
			return fmt.Errorf("%s: cuBLAS status %d", r.name, res)
		}
	case opHtoD:
		if res := c.l.drv.memcpyHtoDAsync.call(uintptr(r.dst), uintptr(r.host), uintptr(r.n), c.stream); res != 0 {
			return fmt.Errorf("cuMemcpyHtoDAsync: %s", c.l.drv.errText(res))
		}
	default:
		return fmt.Errorf("unknown recorded op %d", r.kind)
	}
	return nil
}

// capture records the ops into a graph on the stream (nothing runs) and
// instantiates it.
func (g cudaGraphs) capture(recs []*opRecord) (uintptr, error) {
	c, api := g.c, g.c.l.graph
	if r := api.beginCapture.call(c.stream, captureModeRelaxed); r != 0 {
		return 0, fmt.Errorf("cuStreamBeginCapture: %s", c.l.drv.errText(r))
	}
	var first error
	for _, r := range recs {
		if err := g.issue(r); err != nil && first == nil {
			first = err
		}
	}
	var graph uintptr
	var pin runtime.Pinner
	pin.Pin(&graph)
	r := api.endCapture.call(c.stream, uintptr(unsafe.Pointer(&graph)))
	pin.Unpin()
	if first == nil && r != 0 {
		first = fmt.Errorf("cuStreamEndCapture: %s", c.l.drv.errText(r))
	}
	if first != nil {
		if graph != 0 {
			api.destroy.call(graph)
		}
		return 0, first
	}
	var exec uintptr
	pin.Pin(&exec)
	r = api.instantiate.call(uintptr(unsafe.Pointer(&exec)), graph, 0)
	pin.Unpin()
	api.destroy.call(graph) // the executable graph keeps what it needs
	if r != 0 {
		return 0, fmt.Errorf("cuGraphInstantiateWithFlags: %s", c.l.drv.errText(r))
	}
	return exec, nil
}

func (g cudaGraphs) launch(exec uintptr) error {
	if r := g.c.l.graph.launch.call(exec, g.c.stream); r != 0 {
		return fmt.Errorf("cuGraphLaunch: %s", g.c.l.drv.errText(r))
	}
	return nil
}

func (g cudaGraphs) destroy(exec uintptr) { g.c.l.graph.execDestroy.call(exec) }

// allocHost returns pinned host memory for a region's staging; Close
// frees it.
func (g cudaGraphs) allocHost(n int) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	var pin runtime.Pinner
	pin.Pin(&p)
	defer pin.Unpin()
	if r := g.c.l.drv.memAllocHost.call(uintptr(unsafe.Pointer(&p)), uintptr(n)); r != 0 {
		return nil, fmt.Errorf("cuMemAllocHost(%d) for graph staging: %s", n, g.c.l.drv.errText(r))
	}
	g.c.staging = append(g.c.staging, p)
	return p, nil
}

// fence records the region's event after the work queued so far.
func (g cudaGraphs) fence(rg *graphRegion) error {
	d := g.c.l.drv
	if rg.event == 0 {
		var ev uintptr
		var pin runtime.Pinner
		pin.Pin(&ev)
		r := d.eventCreate.call(uintptr(unsafe.Pointer(&ev)), cuEventDisableTiming)
		pin.Unpin()
		if r != 0 {
			return fmt.Errorf("cuEventCreate: %s", d.errText(r))
		}
		rg.event = ev
		g.c.events = append(g.c.events, ev)
	}
	if r := d.eventRecord.call(rg.event, g.c.stream); r != 0 {
		return fmt.Errorf("cuEventRecord: %s", d.errText(r))
	}
	return nil
}

// waitFence blocks until the device has passed the region's last fence.
func (g cudaGraphs) waitFence(rg *graphRegion) error {
	if rg.event == 0 {
		return nil
	}
	if r := g.c.l.drv.eventSynchronize.call(rg.event); r != 0 {
		return fmt.Errorf("cuEventSynchronize: %s", g.c.l.drv.errText(r))
	}
	return nil
}

// releaseGraphs destroys the graphs, events and staging memory (Close).
func (c *Backend) releaseGraphs() {
	g := cudaGraphs{c}
	c.plan.release(g)
	for _, ev := range append(c.events, c.timerEvents...) {
		c.l.drv.eventDestroy.call(ev)
	}
	for _, p := range c.staging {
		c.l.drv.memFreeHost.call(uintptr(p))
	}
	c.events, c.timerEvents, c.staging = nil, nil, nil
}

// stageUpload copies an upload into the region's staging and queues its
// copy to dptr. Callers hold c.mu.
func (c *Backend) stageUpload(dptr uint64, src []byte) bool {
	host, err := c.plan.cur.stage(cudaGraphs{c}, len(src))
	if err != nil {
		c.failf("Upload: %v", err)
		return false
	}
	copy(unsafe.Slice((*byte)(host), len(src)), src)
	c.queue(&opRecord{kind: opHtoD, name: "Upload", dst: dptr, n: len(src), host: host})
	return c.err == nil
}
