package cuda

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// sym is one C entry point resolved at run time. Calls go through
// purego.SyscallN (no reflection, no cgo), so every argument is a uintptr.
type sym struct {
	name string
	fn   uintptr
}

// call invokes the symbol and returns its C int result (CUresult,
// cublasStatus_t and nvrtcResult are all ints, 0 meaning success).
func (s *sym) call(args ...uintptr) int32 {
	r, _, _ := purego.SyscallN(s.fn, args...)
	return int32(r)
}

// resolve looks up every symbol in the library handle, reporting the first
// one missing with the library's path (a too-old library is the usual cause).
func resolve(h uintptr, lib string, syms ...*sym) error {
	for _, s := range syms {
		p, err := purego.Dlsym(h, s.name)
		if err != nil || p == 0 {
			return fmt.Errorf("%s has no symbol %s (too old a version?)", lib, s.name)
		}
		s.fn = p
	}
	return nil
}

// driverAPI holds the CUDA driver entry points the backend uses.
type driverAPI struct {
	init, driverVersion, deviceGetCount, deviceGet, deviceGetName, deviceGetAttribute sym
	primaryCtxRetain, primaryCtxRelease, ctxSetCurrent                                sym
	streamCreate, streamSynchronize, streamDestroy                                    sym
	memAlloc, memFree, memAllocHost, memFreeHost, memGetInfo                          sym
	memcpyHtoDAsync, memcpyDtoHAsync, memcpyDtoDAsync                                 sym
	moduleLoadData, moduleGetFunction, moduleUnload, launchKernel, funcSetAttribute   sym
	eventCreate, eventRecord, eventSynchronize, eventElapsedTime, eventDestroy        sym
	getErrorName, getErrorString                                                      sym
}

func newDriverAPI() *driverAPI {
	return &driverAPI{
		init: sym{name: "cuInit"}, driverVersion: sym{name: "cuDriverGetVersion"},
		deviceGetCount: sym{name: "cuDeviceGetCount"}, deviceGet: sym{name: "cuDeviceGet"},
		deviceGetName: sym{name: "cuDeviceGetName"}, deviceGetAttribute: sym{name: "cuDeviceGetAttribute"},
		primaryCtxRetain: sym{name: "cuDevicePrimaryCtxRetain"}, primaryCtxRelease: sym{name: "cuDevicePrimaryCtxRelease_v2"},
		ctxSetCurrent: sym{name: "cuCtxSetCurrent"},
		streamCreate:  sym{name: "cuStreamCreate"}, streamSynchronize: sym{name: "cuStreamSynchronize"},
		streamDestroy: sym{name: "cuStreamDestroy_v2"},
		memAlloc:      sym{name: "cuMemAlloc_v2"}, memFree: sym{name: "cuMemFree_v2"},
		memAllocHost: sym{name: "cuMemAllocHost_v2"}, memFreeHost: sym{name: "cuMemFreeHost"},
		memGetInfo:      sym{name: "cuMemGetInfo_v2"},
		memcpyHtoDAsync: sym{name: "cuMemcpyHtoDAsync_v2"}, memcpyDtoHAsync: sym{name: "cuMemcpyDtoHAsync_v2"},
		memcpyDtoDAsync: sym{name: "cuMemcpyDtoDAsync_v2"},
		moduleLoadData:  sym{name: "cuModuleLoadData"}, moduleGetFunction: sym{name: "cuModuleGetFunction"},
		moduleUnload: sym{name: "cuModuleUnload"}, launchKernel: sym{name: "cuLaunchKernel"},
		funcSetAttribute: sym{name: "cuFuncSetAttribute"},
		eventCreate:      sym{name: "cuEventCreate"}, eventRecord: sym{name: "cuEventRecord"},
		eventSynchronize: sym{name: "cuEventSynchronize"}, eventElapsedTime: sym{name: "cuEventElapsedTime"},
		eventDestroy: sym{name: "cuEventDestroy_v2"},
		getErrorName: sym{name: "cuGetErrorName"}, getErrorString: sym{name: "cuGetErrorString"},
	}
}

func (d *driverAPI) all() []*sym {
	return []*sym{&d.init, &d.driverVersion, &d.deviceGetCount, &d.deviceGet, &d.deviceGetName, &d.deviceGetAttribute,
		&d.primaryCtxRetain, &d.primaryCtxRelease, &d.ctxSetCurrent,
		&d.streamCreate, &d.streamSynchronize, &d.streamDestroy,
		&d.memAlloc, &d.memFree, &d.memAllocHost, &d.memFreeHost, &d.memGetInfo,
		&d.memcpyHtoDAsync, &d.memcpyDtoHAsync, &d.memcpyDtoDAsync,
		&d.moduleLoadData, &d.moduleGetFunction, &d.moduleUnload, &d.launchKernel, &d.funcSetAttribute,
		&d.eventCreate, &d.eventRecord, &d.eventSynchronize, &d.eventElapsedTime, &d.eventDestroy,
		&d.getErrorName, &d.getErrorString}
}

// Device attributes (CUdevice_attribute) the backend reads.
const (
	attrMultiprocessorCount    = 16
	attrComputeCapabilityMajor = 75
	attrComputeCapabilityMinor = 76
	attrMaxSharedPerBlockOptin = 97
	funcAttrMaxDynamicShared   = 8
	cudaErrorOutOfMemory       = 2
)

// errText renders a CUresult as "CUDA_ERROR_X (text)".
func (d *driverAPI) errText(r int32) string {
	var name, desc unsafe.Pointer
	var p runtime.Pinner
	p.Pin(&name)
	p.Pin(&desc)
	defer p.Unpin()
	d.getErrorName.call(uintptr(r), uintptr(unsafe.Pointer(&name)))
	d.getErrorString.call(uintptr(r), uintptr(unsafe.Pointer(&desc)))
	n, s := cString(name), cString(desc)
	if n == "" {
		return fmt.Sprintf("CUresult %d", r)
	}
	return fmt.Sprintf("%s (%s)", n, s)
}

// cString copies a NUL-terminated C string that lives outside Go's heap.
func cString(p unsafe.Pointer) string {
	if p == nil {
		return ""
	}
	var b strings.Builder
	for i := 0; i < 4096; i++ {
		c := *(*byte)(unsafe.Add(p, i))
		if c == 0 {
			break
		}
		b.WriteByte(c)
	}
	return b.String()
}

// cBytes returns s as a NUL-terminated byte slice for C.
func cBytes(s string) []byte { return append([]byte(s), 0) }

// libs is the process-wide set of loaded libraries: opened once, since a
// dlopen'ed driver cannot be unloaded safely, and shared by every backend.
type libs struct {
	drv      *driverAPI
	graph    *graphAPI
	graphErr error // why the graph entry points are missing (nil: present)
	blas     *blasAPI
	rtc      *nvrtcAPI
	blasPath string
	rtcPath  string
}

var (
	libsOnce sync.Once
	libsVal  *libs
	libsErr  error
)

// loadLibs opens the driver, cuBLAS(Lt) and NVRTC and initialises the driver.
func loadLibs() (*libs, error) {
	libsOnce.Do(func() {
		libsVal, libsErr = openLibs()
	})
	return libsVal, libsErr
}

func openLibs() (*libs, error) {
	h, err := openDriver()
	if err != nil {
		return nil, err
	}
	drv := newDriverAPI()
	if err := resolve(h, "libcuda.so.1", drv.all()...); err != nil {
		return nil, err
	}
	if r := drv.init.call(0); r != 0 {
		return nil, fmt.Errorf("cuInit: %s", drv.errText(r))
	}
	dirs := libDirs(os.Getenv, globFiles)
	if _, _, err := openFirst("libcublasLt", libCandidates("libcublasLt", dirs), fileExists); err != nil {
		return nil, err
	}
	bh, bpath, err := openFirst("libcublas", libCandidates("libcublas", dirs), fileExists)
	if err != nil {
		return nil, err
	}
	blas := newBlasAPI()
	if err := resolve(bh, bpath, blas.all()...); err != nil {
		return nil, err
	}
	rh, rpath, err := openFirst("libnvrtc", libCandidates("libnvrtc", dirs), fileExists)
	if err != nil {
		return nil, err
	}
	rtc := newNVRTCAPI()
	if err := resolve(rh, rpath, rtc.all()...); err != nil {
		return nil, err
	}
	graph := newGraphAPI()
	graphErr := resolve(h, "libcuda.so.1", graph.all()...)
	return &libs{drv: drv, graph: graph, graphErr: graphErr, blas: blas, rtc: rtc, blasPath: bpath, rtcPath: rpath}, nil
}

// Available reports why the CUDA backend cannot run on this machine, or nil
// when it can: the driver and libraries load and at least one GPU exists.
// `device: auto` uses it to fall back to the CPU backend.
func Available() error {
	l, err := loadLibs()
	if err != nil {
		return fmt.Errorf("cuda backend unavailable: %w", err)
	}
	n, err := l.deviceCount()
	if err != nil {
		return fmt.Errorf("cuda backend unavailable: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("cuda backend unavailable: the driver reports no CUDA device")
	}
	return nil
}

func (l *libs) deviceCount() (int, error) {
	var n int32
	var p runtime.Pinner
	p.Pin(&n)
	defer p.Unpin()
	if r := l.drv.deviceGetCount.call(uintptr(unsafe.Pointer(&n))); r != 0 {
		return 0, fmt.Errorf("cuDeviceGetCount: %s", l.drv.errText(r))
	}
	return int(n), nil
}
