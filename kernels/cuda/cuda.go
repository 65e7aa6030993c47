// Package cuda is the GPU implementation of kernels.Backend for NVIDIA
// GPUs. It needs no CUDA at build time: the driver (libcuda), cuBLAS and
// NVRTC are opened at run time through purego, the kernels are CUDA C++
// sources embedded in the binary, compiled by NVRTC for the GPU found and
// cached on disk, and device memory comes from a caching allocator so a
// training step never calls cuMemAlloc per tensor.
//
// All work is queued on one stream per backend and never awaited op by op;
// the first failure (a bad argument, a CUDA error, a kernel-detected fault
// such as an id out of range) is kept and reported by Sync or Download,
// together with the ops queued since the last good Sync.
//
// Inside a graph region (kernels.Graphs: a training step, a model
// evaluation) the ops are recorded as well; a region that repeats its ops
// at the same addresses is captured as CUDA graphs and replayed (graph.go,
// graph_plan.go). The fused block ops (fused.go) and the other fast paths
// can be turned off by name with NEWBIE_TRAIN_CUDA_OFF (fastpath.go).
package cuda

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	kernels.Register("cuda", func(device int) (kernels.Backend, error) { return New(device) })
}

// argAreaBytes is the pinned host area kernel arguments are packed into.
// cuLaunchKernel copies the arguments before it returns, so one area per
// backend is reused by every launch.
const argAreaBytes = 16 << 10

// Backend is the CUDA implementation of kernels.Backend on one device. Like
// a CUDA stream it is meant for one goroutine at a time; its methods are
// nevertheless serialised by a mutex, so concurrent use is safe, merely
// not parallel.
type Backend struct {
	mu     sync.Mutex
	l      *libs
	dev    *deviceState
	stream uintptr
	blas   uintptr
	name   string

	alloc     *cachingAllocator
	args      unsafe.Pointer // argAreaBytes of pinned host memory
	errWord   uint64         // device int32[4]: kernel-detected faults
	workspace uint64         // cuBLAS workspace
	wsSize    int64

	err    error
	recent []string // ops queued since the last good Sync
	closed bool

	// off holds the fast paths turned off (see fastpath.go).
	off map[string]bool
	// plan decides how the ops of graph regions run (graph.go); staging and
	// events are the pinned memory and events its regions hold.
	plan    *graphPlanner
	staging []unsafe.Pointer
	events  []uintptr
	// timing is set inside a kernels.DeviceTimer window (timer.go), which
	// runs graph regions as plain launches; marks counts the window's
	// timerEvents recorded so far (the events are reused across windows).
	timing      bool
	marks       int
	timerEvents []uintptr
}

var _ kernels.Backend = (*Backend)(nil)

// buffer is a device allocation of n elements of one dtype.
type buffer struct {
	dt    kernels.DType
	n     int
	ptr   uint64
	size  int64
	owner *Backend
	freed bool
}

// DType returns the element type.
func (b *buffer) DType() kernels.DType { return b.dt }

// Len returns the number of elements.
func (b *buffer) Len() int { return b.n }

// deviceState is what every backend on one device shares: the primary
// context (the driver's one context per device, so modules loaded in it
// serve every backend) and the loaded kernel modules.
type deviceState struct {
	ordinal int
	cuDev   int32
	ctx     uintptr
	name    string
	arch    int
	sms     int
	maxSmem int

	modMu sync.Mutex
	funcs map[string]uintptr // kernel name → CUfunction
	mods  map[string]uintptr // source file → CUmodule
	// smemSet records the dynamic shared memory each kernel was allowed.
	smemSet map[uintptr]int
	cache   kernelCache
}

var (
	devicesMu sync.Mutex
	devices   = map[int]*deviceState{}
)

// New opens the CUDA backend on device ordinal dev.
func New(dev int) (*Backend, error) {
	off, err := fastPathsOffFromEnv()
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	l, err := loadLibs()
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ds, err := openDevice(l, dev)
	if err != nil {
		return nil, err
	}
	c := &Backend{l: l, dev: ds, off: off, plan: newGraphPlanner(graphsOff(l, off))}
	c.name = fmt.Sprintf("cuda:%d (%s)", dev, ds.name)
	d := l.drv
	if r := d.ctxSetCurrent.call(ds.ctx); r != 0 {
		return nil, fmt.Errorf("cuCtxSetCurrent: %s", d.errText(r))
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	var stream uintptr
	pin.Pin(&stream)
	// A non-blocking stream: it never waits on the legacy default stream,
	// which other libraries in the process may be using.
	if r := d.streamCreate.call(uintptr(unsafe.Pointer(&stream)), 1); r != 0 {
		return nil, fmt.Errorf("cuStreamCreate: %s", d.errText(r))
	}
	c.stream = stream
	var area unsafe.Pointer
	pin.Pin(&area)
	if r := d.memAllocHost.call(uintptr(unsafe.Pointer(&area)), argAreaBytes); r != 0 {
		d.streamDestroy.call(stream)
		return nil, fmt.Errorf("cuMemAllocHost (kernel argument area): %s", d.errText(r))
	}
	c.args = area
	c.alloc = newCachingAllocator(devMem{c})
	if c.errWord, _, err = c.alloc.get(16); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.clearErrWord(); err != nil {
		c.Close()
		return nil, err
	}
	var h uintptr
	pin.Pin(&h)
	if r := l.blas.create.call(uintptr(unsafe.Pointer(&h))); r != 0 {
		c.Close()
		return nil, fmt.Errorf("cublasCreate: status %d", r)
	}
	c.blas = h
	c.wsSize = blasWorkspaceBytes
	if c.workspace, _, err = c.alloc.get(c.wsSize); err != nil {
		c.Close()
		return nil, err
	}
	if r := l.blas.setStream.call(h, stream); r != 0 {
		c.Close()
		return nil, fmt.Errorf("cublasSetStream: status %d", r)
	}
	if r := l.blas.setWorkspace.call(h, uintptr(c.workspace), uintptr(c.wsSize)); r != 0 {
		c.Close()
		return nil, fmt.Errorf("cublasSetWorkspace: status %d", r)
	}
	// Default math: fp32 GEMMs stay fp32 (no TF32) as the contract asks.
	if r := l.blas.setMathMode.call(h, cublasDefaultMath); r != 0 {
		c.Close()
		return nil, fmt.Errorf("cublasSetMathMode: status %d", r)
	}
	// Counters start after the backend's own blocks, which no caller holds.
	c.alloc.mu.Lock()
	c.alloc.allocated, c.alloc.peak = 0, 0
	c.alloc.mu.Unlock()
	return c, nil
}

func openDevice(l *libs, dev int) (*deviceState, error) {
	devicesMu.Lock()
	defer devicesMu.Unlock()
	if ds, ok := devices[dev]; ok {
		return ds, nil
	}
	n, err := l.deviceCount()
	if err != nil {
		return nil, err
	}
	if dev < 0 || dev >= n {
		return nil, fmt.Errorf("cuda device %d does not exist (%d found)", dev, n)
	}
	d := l.drv
	var pin runtime.Pinner
	defer pin.Unpin()
	ds := &deviceState{ordinal: dev, funcs: map[string]uintptr{}, mods: map[string]uintptr{}, cache: kernelCache{dir: defaultCacheDir()}}
	pin.Pin(&ds.cuDev)
	if r := d.deviceGet.call(uintptr(unsafe.Pointer(&ds.cuDev)), uintptr(dev)); r != 0 {
		return nil, fmt.Errorf("cuDeviceGet(%d): %s", dev, d.errText(r))
	}
	nameBuf := make([]byte, 256)
	pin.Pin(&nameBuf[0])
	if r := d.deviceGetName.call(uintptr(unsafe.Pointer(&nameBuf[0])), 256, uintptr(ds.cuDev)); r != 0 {
		return nil, fmt.Errorf("cuDeviceGetName: %s", d.errText(r))
	}
	ds.name = strings.TrimRight(string(nameBuf), "\x00")
	attr := func(a int) (int, error) {
		var v int32
		var p runtime.Pinner
		p.Pin(&v)
		defer p.Unpin()
		if r := d.deviceGetAttribute.call(uintptr(unsafe.Pointer(&v)), uintptr(a), uintptr(ds.cuDev)); r != 0 {
			return 0, fmt.Errorf("cuDeviceGetAttribute(%d): %s", a, d.errText(r))
		}
		return int(v), nil
	}
	major, err := attr(attrComputeCapabilityMajor)
	if err != nil {
		return nil, err
	}
	minor, err := attr(attrComputeCapabilityMinor)
	if err != nil {
		return nil, err
	}
	ds.arch = major*10 + minor
	if ds.sms, err = attr(attrMultiprocessorCount); err != nil {
		return nil, err
	}
	if ds.maxSmem, err = attr(attrMaxSharedPerBlockOptin); err != nil {
		return nil, err
	}
	pin.Pin(&ds.ctx)
	if r := d.primaryCtxRetain.call(uintptr(unsafe.Pointer(&ds.ctx)), uintptr(ds.cuDev)); r != 0 {
		return nil, fmt.Errorf("cuDevicePrimaryCtxRetain: %s", d.errText(r))
	}
	devices[dev] = ds
	return ds, nil
}

// Name identifies the backend and its GPU.
func (c *Backend) Name() string { return c.name }

// Arch is the GPU's compute capability as major·10+minor (90 on Hopper).
func (c *Backend) Arch() int { return c.dev.arch }

// enter makes the device's context current on a locked OS thread (a CUDA
// context is current per thread, and the Go scheduler moves goroutines
// between threads) and records the op for error reports. Every exported
// method that touches the GPU brackets its work with enter/leave.
func (c *Backend) enter(op string) bool {
	c.mu.Lock()
	runtime.LockOSThread()
	if c.closed {
		c.failf("%s: backend is closed", op)
		return false
	}
	if r := c.l.drv.ctxSetCurrent.call(c.dev.ctx); r != 0 {
		c.failf("%s: cuCtxSetCurrent: %s", op, c.l.drv.errText(r))
		return false
	}
	if len(c.recent) < 64 {
		c.recent = append(c.recent, op)
	} else {
		c.recent[63] = "…"
	}
	return true
}

func (c *Backend) leave() {
	runtime.UnlockOSThread()
	c.mu.Unlock()
}

// failf records the first failure; later ones are dropped, as the first
// fault on a GPU stream poisons what follows. Callers hold c.mu.
func (c *Backend) failf(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("cuda: "+format, args...)
	}
}

// check records a driver error from a call.
func (c *Backend) check(what string, r int32) bool {
	if r != 0 {
		c.failf("%s: %s", what, c.l.drv.errText(r))
		return false
	}
	return true
}

// buf checks that b is a live buffer of this backend; on failure it records
// why, naming the op and the operand.
func (c *Backend) buf(op, operand string, b kernels.Buffer) *buffer {
	cb, ok := b.(*buffer)
	if !ok || cb == nil {
		c.failf("%s: operand %s is not a cuda buffer (%T)", op, operand, b)
		return nil
	}
	if cb.owner != c {
		c.failf("%s: operand %s belongs to another backend", op, operand)
		return nil
	}
	if cb.freed {
		c.failf("%s: operand %s was freed", op, operand)
		return nil
	}
	return cb
}

// optBuf is buf for operands that may be nil.
func (c *Backend) optBuf(op, operand string, b kernels.Buffer) (*buffer, bool) {
	if b == nil {
		return nil, true
	}
	if cb, ok := b.(*buffer); ok && cb == nil {
		return nil, true
	}
	cb := c.buf(op, operand, b)
	return cb, cb != nil
}

// Alloc returns a buffer of n elements from the caching allocator.
func (c *Backend) Alloc(d kernels.DType, n int) (kernels.Buffer, error) {
	return c.allocFrom("alloc", c.alloc.get, d, n)
}

// ReserveConstants announces that count constants of n bytes in all (a
// model's weights) follow: AllocConstant packs them into one device
// allocation.
func (c *Backend) ReserveConstants(n int64, count int) { c.alloc.reserveConstants(n, count) }

// AllocConstant is Alloc for a buffer that lives until its model is
// released, carved at 512-byte alignment from the arena ReserveConstants
// announced (see cachingAllocator.getConstant).
func (c *Backend) AllocConstant(d kernels.DType, n int) (kernels.Buffer, error) {
	return c.allocFrom("alloc constant", c.alloc.getConstant, d, n)
}

// allocFrom is Alloc and AllocConstant: n elements of d from get.
func (c *Backend) allocFrom(op string, get func(int64) (uint64, int64, error), d kernels.DType, n int) (kernels.Buffer, error) {
	if n < 0 || d.Size() == 0 {
		return nil, fmt.Errorf("cuda: %s of %d elements of %v", op, n, d)
	}
	if !c.enter("Alloc") {
		defer c.leave()
		return nil, fmt.Errorf("cuda: %s: backend unusable: %v", op, c.err)
	}
	defer c.leave()
	ptr, size, err := get(int64(n) * int64(d.Size()))
	if err != nil {
		return nil, fmt.Errorf("cuda: %s %v[%d]: %w", op, d, n, err)
	}
	return &buffer{dt: d, n: n, ptr: ptr, size: size, owner: c}, nil
}

// Free returns a buffer's block to the allocator's cache. Freeing nil does
// nothing.
func (c *Backend) Free(b kernels.Buffer) {
	if b == nil {
		return
	}
	if cb, ok := b.(*buffer); ok && cb == nil {
		return
	}
	if !c.enter("Free") {
		c.leave()
		return
	}
	defer c.leave()
	cb := c.buf("Free", "b", b)
	if cb == nil {
		return
	}
	cb.freed = true
	c.alloc.put(cb.ptr, cb.size)
}

// MemStats reports bytes held by live buffers, their peak, and bytes held
// from the device (the allocator's cache included).
func (c *Backend) MemStats() kernels.MemStats {
	a, p, r := c.alloc.stats()
	return kernels.MemStats{Allocated: a, Peak: p, Reserved: r}
}

// ResetPeak sets the peak to what is allocated now.
func (c *Backend) ResetPeak() { c.alloc.resetPeak() }

// Upload copies host bytes into dst from element off. The copy is queued on
// the stream; the driver stages pageable memory before returning, so src may
// be reused at once.
func (c *Backend) Upload(dst kernels.Buffer, off int, src []byte) {
	if !c.enter("Upload") {
		c.leave()
		return
	}
	defer c.leave()
	b := c.buf("Upload", "dst", dst)
	if b == nil {
		return
	}
	sz := b.dt.Size()
	if len(src)%sz != 0 || off < 0 || off+len(src)/sz > b.n {
		c.failf("Upload: %d bytes at element %d do not fit a %v buffer of %d elements", len(src), off, b.dt, b.n)
		return
	}
	if len(src) == 0 {
		return
	}
	c.htod(b.ptr+uint64(off*sz), src)
}

// htod queues a host-to-device copy from Go memory. Callers hold c.mu.
func (c *Backend) htod(dptr uint64, src []byte) bool {
	if c.plan.active() {
		return c.stageUpload(dptr, src)
	}
	var pin runtime.Pinner
	pin.Pin(&src[0])
	r := c.l.drv.memcpyHtoDAsync.call(uintptr(dptr), uintptr(unsafe.Pointer(&src[0])), uintptr(len(src)), c.stream)
	pin.Unpin()
	return c.check("cuMemcpyHtoDAsync", r)
}

// Download waits for queued work, copies len(dst) bytes from src (from
// element off) and returns the first failure of any queued op.
func (c *Backend) Download(dst []byte, src kernels.Buffer, off int) error {
	if !c.enter("Download") {
		c.leave()
		return c.Sync()
	}
	c.hostRead()
	b := c.buf("Download", "src", src)
	if b != nil {
		sz := b.dt.Size()
		if len(dst)%sz != 0 || off < 0 || off+len(dst)/sz > b.n {
			c.failf("Download: %d bytes at element %d do not fit a %v buffer of %d elements", len(dst), off, b.dt, b.n)
		} else if len(dst) > 0 && c.err == nil {
			var pin runtime.Pinner
			pin.Pin(&dst[0])
			r := c.l.drv.memcpyDtoHAsync.call(uintptr(unsafe.Pointer(&dst[0])), uintptr(b.ptr+uint64(off*sz)), uintptr(len(dst)), c.stream)
			c.check("cuMemcpyDtoHAsync", r)
			c.check("cuStreamSynchronize", c.l.drv.streamSynchronize.call(c.stream))
			pin.Unpin()
		}
	}
	c.leave()
	return c.Sync()
}

// Sync waits for queued work and returns the first failure since the last
// Sync (a bad argument, a CUDA error, or a fault a kernel detected), naming
// the ops queued since the last good Sync; the failure is then cleared.
func (c *Backend) Sync() error {
	if !c.enter("Sync") {
		defer c.leave()
		err := c.err
		c.err = nil
		return err
	}
	defer c.leave()
	c.hostRead()
	if r := c.l.drv.streamSynchronize.call(c.stream); r != 0 {
		c.failf("stream: %s", c.l.drv.errText(r))
	} else {
		var word [4]int32
		var pin runtime.Pinner
		pin.Pin(&word[0])
		r := c.l.drv.memcpyDtoHAsync.call(uintptr(unsafe.Pointer(&word[0])), uintptr(c.errWord), 16, c.stream)
		if c.check("cuMemcpyDtoHAsync (fault word)", r) {
			c.check("cuStreamSynchronize", c.l.drv.streamSynchronize.call(c.stream))
		}
		pin.Unpin()
		if word[0] != 0 {
			c.failf("%s", faultText(word))
			c.clearErrWord()
		}
	}
	err := c.err
	if err != nil {
		ops := c.recent[:len(c.recent)-1] // drop this Sync itself
		err = fmt.Errorf("%w (ops queued since the last good sync: %s)", err, strings.Join(ops, ", "))
	}
	c.err = nil
	c.recent = c.recent[:0]
	return err
}

// Kernel-detected faults, written by kernels into the fault word.
const (
	faultGatherID  = 1
	faultScatterID = 2
)

func faultText(w [4]int32) string {
	switch w[0] {
	case faultGatherID:
		return fmt.Sprintf("Gather: id %d at position %d is out of range [0, %d)", w[1], w[3], w[2])
	case faultScatterID:
		return fmt.Sprintf("ScatterAdd: id %d at position %d is out of range [0, %d)", w[1], w[3], w[2])
	}
	return fmt.Sprintf("kernel fault %d (%d, %d)", w[0], w[1], w[2])
}

func (c *Backend) clearErrWord() error {
	zero := make([]byte, 16)
	if !c.htod(c.errWord, zero) {
		return c.err
	}
	return nil
}

// Close waits for queued work and releases the backend's stream, cuBLAS
// handle, argument area and every cached device block. Buffers still alive
// become unusable.
func (c *Backend) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d := c.l.drv
	d.ctxSetCurrent.call(c.dev.ctx)
	if c.stream != 0 {
		d.streamSynchronize.call(c.stream)
	}
	if c.plan != nil {
		c.plan.flushPlain(cudaGraphs{c})
		if c.stream != 0 {
			d.streamSynchronize.call(c.stream)
		}
		c.releaseGraphs()
	}
	if c.blas != 0 {
		c.l.blas.destroy.call(c.blas)
	}
	if c.alloc != nil {
		c.alloc.releaseAll()
	}
	if c.args != nil {
		d.memFreeHost.call(uintptr(c.args))
	}
	if c.stream != 0 {
		d.streamDestroy.call(c.stream)
	}
	c.closed = true
}

// devMem adapts the driver to the allocator's deviceMemory.
type devMem struct{ c *Backend }

func (m devMem) alloc(bytes int64) (uint64, error) {
	var p uint64
	var pin runtime.Pinner
	pin.Pin(&p)
	defer pin.Unpin()
	r := m.c.l.drv.memAlloc.call(uintptr(unsafe.Pointer(&p)), uintptr(bytes))
	if r == cudaErrorOutOfMemory {
		return 0, errOutOfMemory{bytes}
	}
	if r != 0 {
		return 0, fmt.Errorf("cuMemAlloc(%d): %s", bytes, m.c.l.drv.errText(r))
	}
	return p, nil
}

func (m devMem) free(p uint64) {
	m.c.l.drv.memFree.call(uintptr(p))
}

func (m devMem) sync() error {
	// Ops held for a graph segment may use the blocks about to go back to
	// the device: queue them first.
	if err := m.c.plan.flushPlain(cudaGraphs{m.c}); err != nil {
		return err
	}
	if r := m.c.l.drv.streamSynchronize.call(m.c.stream); r != 0 {
		return fmt.Errorf("cuStreamSynchronize: %s", m.c.l.drv.errText(r))
	}
	return nil
}
