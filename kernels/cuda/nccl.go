package cuda

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/newbie-train/newbie-train/kernels"
)

// NCCL constants (nccl.h).
const (
	ncclSuccess    = 0
	ncclInProgress = 7

	ncclFloat32  = 7
	ncclBfloat16 = 9
	ncclSum      = 0

	ncclUniqueIDBytes = 128
	ncclConfigMagic   = 0xcafebeef
	ncclUndefInt      = math.MinInt32
	// ncclConfigVersion is the layout of ncclConfig below (NCCL 2.17's
	// first eight fields); a newer library reads those and defaults the
	// rest, an older one (2.14 to 2.16) reads the ones it knows.
	ncclConfigVersion = 21700
	// ncclMinVersion is the first NCCL with non-blocking communicators,
	// ncclCommInitRankConfig and ncclCommFinalize.
	ncclMinVersion = 21400

	cuEventDisableTiming = 2
	cudaErrorNotReady    = 600
)

// ncclUniqueID is ncclUniqueId, passed by value to ncclCommInitRankConfig.
type ncclUniqueID struct{ Internal [ncclUniqueIDBytes]byte }

// ncclConfig is the head of ncclConfig_t as NCCL 2.17 lays it out.
type ncclConfig struct {
	Size                                       uintptr
	Magic, Version                             uint32
	Blocking, CGAClusterSize, MinCTAs, MaxCTAs int32
	NetName                                    uintptr
}

// ncclAPI holds the NCCL entry points, and the one driver call the
// watchdog needs beyond the backend's.
type ncclAPI struct {
	path    string
	version int

	getVersion, getUniqueID                                 sym
	commGetAsyncError, commFinalize, commDestroy, commAbort sym
	groupStart, groupEnd, allReduce, broadcast              sym
	initRankConfig                                          func(comm *uintptr, nranks int32, id ncclUniqueID, rank int32, cfg *ncclConfig) int32
	// errorString and lastError return static C strings, which purego
	// copies into Go strings.
	errorString func(result int32) string
	lastError   func(comm uintptr) string
	eventQuery  sym
}

var (
	ncclOnce sync.Once
	ncclVal  *ncclAPI
	ncclErr  error
)

// loadNCCL opens libnccl.so.2 once per process.
func loadNCCL() (*ncclAPI, error) {
	ncclOnce.Do(func() { ncclVal, ncclErr = openNCCL() })
	return ncclVal, ncclErr
}

// ncclSystemDirs are where distribution packages (libnccl2) install NCCL.
var ncclSystemDirs = []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/local/lib"}

// ncclCandidates lists the paths tried for libnccl.so.2: every folder the
// CUDA libraries are looked for in (the toolkit, LD_LIBRARY_PATH, and
// PyTorch's nvidia/*/lib folders, nvidia/nccl/lib among them), then the
// system library folders.
func ncclCandidates(dirs []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, d := range append(append([]string(nil), dirs...), ncclSystemDirs...) {
		p := filepath.Join(d, "libnccl.so.2")
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// setNCCLDefaults keeps NVLink multicast (NVLS) off unless the user chose:
// on shared machines a program using it can take the host's GPUs out of
// service. NCCL reads its environment when it starts, so this runs before
// the library is opened.
func setNCCLDefaults(lookup func(string) (string, bool), set func(k, v string) error) error {
	if _, chosen := lookup("NCCL_NVLS_ENABLE"); chosen {
		return nil
	}
	return set("NCCL_NVLS_ENABLE", "0")
}

func openNCCL() (*ncclAPI, error) {
	if err := setNCCLDefaults(os.LookupEnv, os.Setenv); err != nil {
		return nil, fmt.Errorf("nccl: setting NCCL_NVLS_ENABLE: %w", err)
	}
	if _, err := loadLibs(); err != nil {
		return nil, err
	}
	h, path, err := openFirst("libnccl.so.2 (NCCL)", ncclCandidates(libDirs(os.Getenv, globFiles)), fileExists)
	if err != nil {
		return nil, fmt.Errorf("%w; NCCL comes with PyTorch (the nvidia-nccl-cu* wheel) or the libnccl2 package", err)
	}
	api := &ncclAPI{path: path,
		getVersion: sym{name: "ncclGetVersion"}, getUniqueID: sym{name: "ncclGetUniqueId"},
		commGetAsyncError: sym{name: "ncclCommGetAsyncError"}, commFinalize: sym{name: "ncclCommFinalize"},
		commDestroy: sym{name: "ncclCommDestroy"}, commAbort: sym{name: "ncclCommAbort"},
		groupStart: sym{name: "ncclGroupStart"}, groupEnd: sym{name: "ncclGroupEnd"},
		allReduce: sym{name: "ncclAllReduce"}, broadcast: sym{name: "ncclBroadcast"},
		eventQuery: sym{name: "cuEventQuery"},
	}
	var version int32
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&version)
	if err := resolve(h, path, &api.getVersion); err != nil {
		return nil, err
	}
	if r := api.getVersion.call(uintptr(unsafe.Pointer(&version))); r != ncclSuccess {
		return nil, fmt.Errorf("nccl: ncclGetVersion (%s): result %d", path, r)
	}
	api.version = int(version)
	if api.version < ncclMinVersion {
		return nil, fmt.Errorf("nccl: %s is NCCL %s; need 2.14 or newer (non-blocking communicators, which make an abort possible)", path, ncclVersionText(api.version))
	}
	if err := resolve(h, path, &api.getUniqueID, &api.commGetAsyncError,
		&api.commFinalize, &api.commDestroy, &api.commAbort, &api.groupStart, &api.groupEnd, &api.allReduce, &api.broadcast); err != nil {
		return nil, err
	}
	// ncclCommInitRankConfig takes the 128-byte id by value: RegisterFunc
	// lays the struct out as the platform's C calling convention wants.
	for name, fptr := range map[string]any{"ncclCommInitRankConfig": &api.initRankConfig, "ncclGetErrorString": &api.errorString, "ncclGetLastError": &api.lastError} {
		fn, err := purego.Dlsym(h, name)
		if err != nil || fn == 0 {
			return nil, fmt.Errorf("%s has no symbol %s (too old a version?)", path, name)
		}
		purego.RegisterFunc(fptr, fn)
	}
	dh, err := openDriver()
	if err != nil {
		return nil, err
	}
	if err := resolve(dh, "libcuda.so.1", &api.eventQuery); err != nil {
		return nil, err
	}
	return api, nil
}

// ncclVersionText renders NCCL_VERSION_CODE as "2.21.5".
func ncclVersionText(v int) string {
	if v < 10000 { // before 2.9: X*1000 + Y*100 + Z
		return fmt.Sprintf("%d.%d.%d", v/1000, v%1000/100, v%100)
	}
	return fmt.Sprintf("%d.%d.%d", v/10000, v%10000/100, v%100)
}

// errText words an NCCL result with the library's last message.
func (a *ncclAPI) errText(r int32, comm uintptr) string {
	s := fmt.Sprintf("NCCL result %d (%s)", r, a.errorString(r))
	if last := a.lastError(comm); last != "" {
		s += ": " + last
	}
	return s
}

// CollectiveID makes an NCCL unique id: rank 0 makes it and the rendezvous
// hands it to the others. With OpenCollective this implements
// dist.NativeBackend.
func (c *Backend) CollectiveID() ([]byte, error) {
	api, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	var id ncclUniqueID
	var pin runtime.Pinner
	pin.Pin(&id)
	defer pin.Unpin()
	if r := api.getUniqueID.call(uintptr(unsafe.Pointer(&id))); r != ncclSuccess {
		return nil, fmt.Errorf("nccl: ncclGetUniqueId: %s", api.errText(r, 0))
	}
	return append([]byte(nil), id.Internal[:]...), nil
}

// collective is dist.NativeCollective spelled out. The two are the same
// unnamed interface type, so this package implements dist.NativeBackend
// without importing dist (which sits above kernels).
type collective = interface {
	AllReduceSum(bufs []kernels.Buffer) error
	Broadcast(buf kernels.Buffer, root int) error
	Err() error
	Abort(reason error)
	Close() error
}

// NCCL is one rank of an NCCL communicator on a backend's device. Sums and
// broadcasts are queued on the backend's stream in order with its other
// work. The communicator is non-blocking (NCCL's blocking=0), so no call
// waits on another rank; a watchdog polls NCCL's asynchronous error and
// the progress of every queued collective, and aborts the communicator
// when NCCL reports an error or a collective has not finished within the
// timeout — a dead or stuck peer then becomes an error (Err) instead of a
// hang, and the stream the backend waits on is freed.
type NCCL struct {
	b           *Backend
	api         *ncclAPI
	rank, world int
	timeout     time.Duration

	// callMu serialises calls into NCCL on comm; it is taken after the
	// backend's lock, never before, and Abort takes it alone.
	callMu   sync.Mutex
	comm     uintptr     // 0 once aborted or destroyed
	stopping atomic.Bool // an abort waits for callMu: pollers give up

	mu      sync.Mutex // guards err, pending, queued
	err     error
	pending []ncclOp
	queued  int

	stop, done chan struct{}
	closed     bool
}

// ncclOp is a queued collective the watchdog follows.
type ncclOp struct {
	what   string
	event  uintptr
	queued time.Time
}

var _ collective = (*NCCL)(nil)

// ncclPollInterval is how often the watchdog looks at the communicator.
const ncclPollInterval = 20 * time.Millisecond

// OpenCollective joins an NCCL communicator of world ranks as rank, with
// the id rank 0 made (CollectiveID). It returns once every rank has
// joined, or fails after timeout, which also bounds every collective.
func (c *Backend) OpenCollective(id []byte, rank, world int, timeout time.Duration) (collective, error) {
	if len(id) != ncclUniqueIDBytes {
		return nil, fmt.Errorf("nccl: the unique id has %d bytes, want %d", len(id), ncclUniqueIDBytes)
	}
	if world < 1 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("nccl: rank %d of %d", rank, world)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("nccl: timeout %v", timeout)
	}
	api, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	n := &NCCL{b: c, api: api, rank: rank, world: world, timeout: timeout, stop: make(chan struct{}), done: make(chan struct{})}
	if err := n.join(id); err != nil {
		return nil, err
	}
	go n.watch()
	return n, nil
}

// join creates the communicator and waits until NCCL says it is ready.
func (n *NCCL) join(id []byte) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d := n.b.l.drv
	if r := d.ctxSetCurrent.call(n.b.dev.ctx); r != 0 {
		return fmt.Errorf("nccl: cuCtxSetCurrent: %s", d.errText(r))
	}
	var uid ncclUniqueID
	copy(uid.Internal[:], id)
	cfg := &ncclConfig{Size: unsafe.Sizeof(ncclConfig{}), Magic: ncclConfigMagic, Version: ncclConfigVersion,
		Blocking: 0, CGAClusterSize: ncclUndefInt, MinCTAs: ncclUndefInt, MaxCTAs: ncclUndefInt}
	var comm uintptr
	var pin runtime.Pinner
	pin.Pin(cfg)
	pin.Pin(&comm)
	r := n.api.initRankConfig(&comm, int32(n.world), uid, int32(n.rank), cfg)
	pin.Unpin()
	if r != ncclSuccess && r != ncclInProgress {
		if comm != 0 {
			n.api.commAbort.call(comm)
		}
		return fmt.Errorf("nccl: rank %d of %d: ncclCommInitRankConfig (%s, NCCL %s): %s", n.rank, n.world, n.api.path, ncclVersionText(n.api.version), n.api.errText(r, comm))
	}
	n.comm = comm
	if err := n.settle("joining the communicator"); err != nil {
		n.api.commAbort.call(comm)
		n.comm = 0
		return fmt.Errorf("nccl: rank %d of %d: %w (is every rank running and able to reach the others? NCCL_DEBUG=INFO says more)", n.rank, n.world, err)
	}
	return nil
}

// settle waits until the communicator's state leaves ncclInProgress: a
// non-blocking call has then done its host-side work. Callers hold callMu
// (or own the communicator alone, in join).
func (n *NCCL) settle(what string) error {
	deadline := time.Now().Add(n.timeout)
	wait := 50 * time.Microsecond
	var state int32
	var pin runtime.Pinner
	pin.Pin(&state)
	defer pin.Unpin()
	for {
		if r := n.api.commGetAsyncError.call(n.comm, uintptr(unsafe.Pointer(&state))); r != ncclSuccess {
			return fmt.Errorf("%s: ncclCommGetAsyncError: %s", what, n.api.errText(r, n.comm))
		}
		switch state {
		case ncclSuccess:
			return nil
		case ncclInProgress:
		default:
			return fmt.Errorf("%s: %s", what, n.api.errText(state, n.comm))
		}
		if n.stopping.Load() {
			return fmt.Errorf("%s: aborted", what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done within %v", what, n.timeout)
		}
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Millisecond)
	}
}

// AllReduceSum queues, in one NCCL group, the in-place sum over the ranks
// of every buffer (F32 or BF16) on the backend's stream.
func (n *NCCL) AllReduceSum(bufs []kernels.Buffer) error {
	return n.enqueue(fmt.Sprintf("AllReduceSum of %d buffers", len(bufs)), bufs, func(i int, b *buffer, dt uintptr) int32 {
		return n.api.allReduce.call(uintptr(b.ptr), uintptr(b.ptr), uintptr(b.n), dt, ncclSum, n.comm, n.b.stream)
	})
}

// Broadcast queues the copy of root's buf into every rank's buf.
func (n *NCCL) Broadcast(buf kernels.Buffer, root int) error {
	if root < 0 || root >= n.world {
		return fmt.Errorf("nccl: Broadcast: root %d is not a rank of %d", root, n.world)
	}
	return n.enqueue(fmt.Sprintf("Broadcast from rank %d", root), []kernels.Buffer{buf}, func(i int, b *buffer, dt uintptr) int32 {
		return n.api.broadcast.call(uintptr(b.ptr), uintptr(b.ptr), uintptr(b.n), dt, uintptr(root), n.comm, n.b.stream)
	})
}

// enqueue runs one NCCL group of calls, one per buffer, then records an
// event after it for the watchdog.
func (n *NCCL) enqueue(what string, bufs []kernels.Buffer, call func(i int, b *buffer, dt uintptr) int32) error {
	if err := n.Err(); err != nil {
		return err
	}
	c := n.b
	if !c.enter("nccl " + what) {
		c.leave()
		return fmt.Errorf("nccl: %s: the cuda backend is closed or its context cannot be made current", what)
	}
	defer c.leave()
	// A collective is no op of a graph region: the ops held before it run
	// first (their segment closes), so the stream keeps their order.
	c.hostRead()
	n.callMu.Lock()
	defer n.callMu.Unlock()
	if n.comm == 0 {
		if err := n.Err(); err != nil {
			return err
		}
		return fmt.Errorf("nccl: %s: the communicator is closed", what)
	}
	cbs := make([]*buffer, len(bufs))
	dts := make([]uintptr, len(bufs))
	for i, b := range bufs {
		cb := c.buf("nccl "+what, fmt.Sprintf("bufs[%d]", i), b)
		if cb == nil {
			return fmt.Errorf("nccl: %s: %v", what, c.err)
		}
		switch cb.dt {
		case kernels.F32:
			dts[i] = ncclFloat32
		case kernels.BF16:
			dts[i] = ncclBfloat16
		default:
			return fmt.Errorf("nccl: %s: buffer %d is %v; NCCL sums here are of F32 or BF16", what, i, cb.dt)
		}
		cbs[i] = cb
	}
	if len(cbs) == 0 {
		return nil
	}
	fail := func(step string, r int32) error {
		err := fmt.Errorf("nccl: rank %d of %d: %s: %s: %s", n.rank, n.world, what, step, n.api.errText(r, n.comm))
		n.abortLocked(err)
		return err
	}
	if r := n.api.groupStart.call(); r != ncclSuccess {
		return fail("ncclGroupStart", r)
	}
	for i, cb := range cbs {
		if r := call(i, cb, dts[i]); r != ncclSuccess && r != ncclInProgress {
			n.api.groupEnd.call()
			return fail(fmt.Sprintf("buffer %d", i), r)
		}
	}
	if r := n.api.groupEnd.call(); r != ncclSuccess && r != ncclInProgress {
		return fail("ncclGroupEnd", r)
	}
	if err := n.settle(what); err != nil {
		err = fmt.Errorf("nccl: rank %d of %d: %w", n.rank, n.world, err)
		n.abortLocked(err)
		return err
	}
	var ev uintptr
	var pin runtime.Pinner
	pin.Pin(&ev)
	r := c.l.drv.eventCreate.call(uintptr(unsafe.Pointer(&ev)), cuEventDisableTiming)
	pin.Unpin()
	if !c.check("cuEventCreate", r) || !c.check("cuEventRecord", c.l.drv.eventRecord.call(ev, c.stream)) {
		return fmt.Errorf("nccl: %s: %v", what, c.err)
	}
	n.mu.Lock()
	n.queued++
	n.pending = append(n.pending, ncclOp{what: fmt.Sprintf("%s (collective %d)", what, n.queued), event: ev, queued: time.Now()})
	n.mu.Unlock()
	return nil
}

// Err is the failure that ended the communicator, nil while it works.
func (n *NCCL) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Abort ends the communicator at once (ncclCommAbort): queued collectives
// stop and later calls fail with reason. It may be called from any
// goroutine, also while another waits for the backend's stream.
func (n *NCCL) Abort(reason error) {
	if reason == nil {
		reason = errors.New("nccl: aborted")
	}
	n.mu.Lock()
	if n.err == nil {
		n.err = reason // before a poller that gives up can record its own
	}
	n.mu.Unlock()
	n.stopping.Store(true)
	n.callMu.Lock()
	defer n.callMu.Unlock()
	n.abortLocked(reason)
}

// abortLocked records reason (the first failure wins) and aborts the
// communicator; callers hold callMu.
func (n *NCCL) abortLocked(reason error) {
	n.mu.Lock()
	if n.err == nil {
		n.err = reason
	}
	n.mu.Unlock()
	if n.comm == 0 {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n.b.l.drv.ctxSetCurrent.call(n.b.dev.ctx)
	n.api.commAbort.call(n.comm)
	n.comm = 0
}

// watch is the watchdog: it runs until Close.
func (n *NCCL) watch() {
	defer close(n.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n.b.l.drv.ctxSetCurrent.call(n.b.dev.ctx)
	tick := time.NewTicker(ncclPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-tick.C:
			if err := n.check(); err != nil {
				n.Abort(err)
			}
		}
	}
}

// check looks once at NCCL's asynchronous error and at the oldest
// collective still running.
func (n *NCCL) check() error {
	if n.Err() != nil {
		n.dropFinished()
		return nil
	}
	if !n.callMu.TryLock() {
		return nil // a call is under way; it polls NCCL's state itself
	}
	if n.comm != 0 {
		var state int32
		var pin runtime.Pinner
		pin.Pin(&state)
		r := n.api.commGetAsyncError.call(n.comm, uintptr(unsafe.Pointer(&state)))
		pin.Unpin()
		if r == ncclSuccess && state != ncclSuccess && state != ncclInProgress {
			r = state
		}
		if r != ncclSuccess {
			err := fmt.Errorf("nccl: rank %d of %d: %s", n.rank, n.world, n.api.errText(r, n.comm))
			n.callMu.Unlock()
			return err
		}
	}
	n.callMu.Unlock()
	if op, ok := n.dropFinished(); ok && time.Since(op.queued) > n.timeout {
		return fmt.Errorf("nccl: rank %d of %d: %s, queued %v ago, has not finished: a peer rank is gone or stuck", n.rank, n.world, op.what, time.Since(op.queued).Round(time.Millisecond))
	}
	return nil
}

// dropFinished forgets the collectives that have finished and returns the
// oldest one that has not.
func (n *NCCL) dropFinished() (ncclOp, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	d := n.b.l.drv
	for len(n.pending) > 0 {
		op := n.pending[0]
		if r := n.api.eventQuery.call(op.event); r == cudaErrorNotReady {
			return op, true
		}
		d.eventDestroy.call(op.event)
		n.pending = n.pending[1:]
	}
	return ncclOp{}, false
}

// Close waits for the queued collectives — the watchdog still on guard,
// so a lost peer or the timeout ends the wait — then finalizes and
// destroys the communicator; a failed one is aborted.
func (n *NCCL) Close() error {
	if n.closed {
		return nil
	}
	n.closed = true
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n.b.l.drv.ctxSetCurrent.call(n.b.dev.ctx)
	for n.Err() == nil {
		if _, running := n.dropFinished(); !running {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(n.stop)
	<-n.done
	n.callMu.Lock()
	defer n.callMu.Unlock()
	defer n.destroyEvents()
	if n.comm == 0 {
		return nil
	}
	if n.Err() != nil {
		n.abortLocked(n.Err())
		return nil
	}
	if r := n.api.commFinalize.call(n.comm); r != ncclSuccess && r != ncclInProgress {
		err := fmt.Errorf("nccl: rank %d of %d: ncclCommFinalize: %s", n.rank, n.world, n.api.errText(r, n.comm))
		n.abortLocked(err)
		return err
	}
	if err := n.settle("finalizing the communicator"); err != nil {
		err = fmt.Errorf("nccl: rank %d of %d: %w", n.rank, n.world, err)
		n.abortLocked(err)
		return err
	}
	r := n.api.commDestroy.call(n.comm)
	n.comm = 0
	if r != ncclSuccess {
		return fmt.Errorf("nccl: rank %d of %d: ncclCommDestroy: %s", n.rank, n.world, n.api.errText(r, 0))
	}
	return nil
}

// destroyEvents frees the events of collectives still on the books.
func (n *NCCL) destroyEvents() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, op := range n.pending {
		n.b.l.drv.eventDestroy.call(op.event)
	}
	n.pending = nil
}
