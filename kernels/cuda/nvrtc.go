package cuda

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/ebitengine/purego"
)

// nvrtcAPI holds the NVRTC entry points used to compile the embedded kernels.
type nvrtcAPI struct {
	version, createProgram, compileProgram, destroyProgram sym
	getLogSize, getLog, getCUBINSize, getCUBIN, errString  sym
}

func newNVRTCAPI() *nvrtcAPI {
	return &nvrtcAPI{
		version: sym{name: "nvrtcVersion"}, createProgram: sym{name: "nvrtcCreateProgram"},
		compileProgram: sym{name: "nvrtcCompileProgram"}, destroyProgram: sym{name: "nvrtcDestroyProgram"},
		getLogSize: sym{name: "nvrtcGetProgramLogSize"}, getLog: sym{name: "nvrtcGetProgramLog"},
		getCUBINSize: sym{name: "nvrtcGetCUBINSize"}, getCUBIN: sym{name: "nvrtcGetCUBIN"},
		errString: sym{name: "nvrtcGetErrorString"},
	}
}

func (n *nvrtcAPI) all() []*sym {
	return []*sym{&n.version, &n.createProgram, &n.compileProgram, &n.destroyProgram,
		&n.getLogSize, &n.getLog, &n.getCUBINSize, &n.getCUBIN, &n.errString}
}

func (n *nvrtcAPI) errText(r int32) string {
	// nvrtcGetErrorString returns a static C string; purego converts a
	// string result itself, which avoids turning an integer into a pointer.
	var f func(int32) string
	purego.RegisterFunc(&f, n.errString.fn)
	if s := f(r); s != "" {
		return s
	}
	return fmt.Sprintf("nvrtcResult %d", r)
}

// Version returns NVRTC's (major, minor).
func (n *nvrtcAPI) Version() (int, int, error) {
	var v [2]int32
	var p runtime.Pinner
	p.Pin(&v)
	defer p.Unpin()
	if r := n.version.call(uintptr(unsafe.Pointer(&v[0])), uintptr(unsafe.Pointer(&v[1]))); r != 0 {
		return 0, 0, fmt.Errorf("nvrtcVersion: %s", n.errText(r))
	}
	return int(v[0]), int(v[1]), nil
}

// archTarget is the NVRTC target for an SM architecture: Hopper (90) is
// built as sm_90a, whose cubins run only on sm_90 devices — the ones it is
// compiled for here — and which enables the warpgroup MMA (wgmma) the
// attention kernels use there.
func archTarget(arch int) string {
	if arch == 90 {
		return "sm_90a"
	}
	return fmt.Sprintf("sm_%d", arch)
}

// compile builds src for the given SM architecture (e.g. 90) to a CUBIN.
// The error carries NVRTC's log, which names the failing line.
func (n *nvrtcAPI) compile(name, src string, arch int, opts []string) ([]byte, error) {
	cubin, _, err := n.compileLog(name, src, arch, opts)
	return cubin, err
}

// compileLog is compile that also returns NVRTC's log (warnings, and the
// register report when asked for with --ptxas-options=-v).
func (n *nvrtcAPI) compileLog(name, src string, arch int, opts []string) ([]byte, string, error) {
	var pin runtime.Pinner
	defer pin.Unpin()
	srcC, nameC := cBytes(src), cBytes(name)
	pin.Pin(&srcC[0])
	pin.Pin(&nameC[0])
	var prog uintptr
	pin.Pin(&prog)
	if r := n.createProgram.call(uintptr(unsafe.Pointer(&prog)), uintptr(unsafe.Pointer(&srcC[0])), uintptr(unsafe.Pointer(&nameC[0])), 0, 0, 0); r != 0 {
		return nil, "", fmt.Errorf("nvrtcCreateProgram %s: %s", name, n.errText(r))
	}
	defer n.destroyProgram.call(uintptr(unsafe.Pointer(&prog)))
	all := append([]string{"--gpu-architecture=" + archTarget(arch), "--std=c++17", "-default-device"}, opts...)
	ptrs := make([]unsafe.Pointer, len(all))
	for i, o := range all {
		b := cBytes(o)
		pin.Pin(&b[0])
		ptrs[i] = unsafe.Pointer(&b[0])
	}
	pin.Pin(&ptrs[0])
	r := n.compileProgram.call(prog, uintptr(len(ptrs)), uintptr(unsafe.Pointer(&ptrs[0])))
	log := n.log(prog, &pin)
	if r != 0 {
		return nil, log, fmt.Errorf("nvrtc compile %s (%s): %s\n%s", name, archTarget(arch), n.errText(r), log)
	}
	var size uint64
	pin.Pin(&size)
	if r := n.getCUBINSize.call(prog, uintptr(unsafe.Pointer(&size))); r != 0 {
		return nil, log, fmt.Errorf("nvrtcGetCUBINSize %s: %s", name, n.errText(r))
	}
	if size == 0 {
		return nil, log, fmt.Errorf("nvrtc %s: empty CUBIN", name)
	}
	out := make([]byte, size)
	pin.Pin(&out[0])
	if r := n.getCUBIN.call(prog, uintptr(unsafe.Pointer(&out[0]))); r != 0 {
		return nil, log, fmt.Errorf("nvrtcGetCUBIN %s: %s", name, n.errText(r))
	}
	return out, log, nil
}

func (n *nvrtcAPI) log(prog uintptr, pin *runtime.Pinner) string {
	var size uint64
	pin.Pin(&size)
	if n.getLogSize.call(prog, uintptr(unsafe.Pointer(&size))) != 0 || size <= 1 {
		return ""
	}
	buf := make([]byte, size)
	pin.Pin(&buf[0])
	if n.getLog.call(prog, uintptr(unsafe.Pointer(&buf[0]))) != 0 {
		return ""
	}
	return string(buf[:size-1])
}

// loadNVRTC opens an NVRTC library by path on its own, without the driver:
// compiling needs no GPU, so the kernel sources can be checked anywhere
// NVRTC is installed.
func loadNVRTC(path string) (*nvrtcAPI, error) {
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	n := newNVRTCAPI()
	if err := resolve(h, path, n.all()...); err != nil {
		return nil, err
	}
	return n, nil
}
