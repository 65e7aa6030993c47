package cuda

import (
	"embed"
	"encoding/binary"
	"fmt"
	"math"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unsafe"
)

// sources holds the kernel files. common.cuh is prepended to every .cu,
// and the headers fileHeaders names to the files that use them (NVRTC sees
// one self-contained translation unit; no CUDA headers are needed, so only
// libnvrtc is required at run time, not the toolkit).
//
//go:embed *.cu *.cuh
var sources embed.FS

// fileHeaders lists, per kernel file, the shared headers it is compiled
// with after common.cuh: tc.cuh holds the tensor-core and cp.async
// primitives, which only files for sm_80 and later may use.
var fileHeaders = map[string][]string{"attention_tc.cu": {"tc.cuh"}, "conv_tc.cu": {"tc.cuh"}, "gemm_thin.cu": {"tc.cuh"}}

var kernelDecl = regexp.MustCompile(`extern "C"\s+__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(`)

var (
	indexOnce  sync.Once
	kernelFile map[string]string // kernel name → .cu file
	fileSource map[string]string // .cu file → full source (common.cuh included)
	indexErr   error
	// nvrtcOptions are added to every compile (after the architecture,
	// C++17 and -default-device); NT_CUDA lets a source tell it is built by
	// this backend.
	nvrtcOptions = []string{"-DNT_CUDA=1"}
	// fileOptions adds per-file NVRTC options: random.cu must not fuse
	// multiply-adds, so its float64 math rounds exactly as Go's does.
	fileOptions = map[string][]string{"random.cu": {"--fmad=false"}}
)

// kernelIndex maps every extern "C" kernel to the file defining it.
func kernelIndex() (map[string]string, map[string]string, error) {
	indexOnce.Do(func() {
		common, err := sources.ReadFile("common.cuh")
		if err != nil {
			indexErr = fmt.Errorf("embedded common.cuh: %w", err)
			return
		}
		ents, err := sources.ReadDir(".")
		if err != nil {
			indexErr = err
			return
		}
		kernelFile, fileSource = map[string]string{}, map[string]string{}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".cu") {
				continue
			}
			src, err := sources.ReadFile(e.Name())
			if err != nil {
				indexErr = err
				return
			}
			full := string(common)
			for _, h := range fileHeaders[e.Name()] {
				hs, err := sources.ReadFile(h)
				if err != nil {
					indexErr = fmt.Errorf("embedded %s (a header of %s): %w", h, e.Name(), err)
					return
				}
				full += "\n#line 1 \"" + h + "\"\n" + string(hs)
			}
			full += "\n#line 1 \"" + e.Name() + "\"\n" + string(src)
			fileSource[e.Name()] = full
			for _, m := range kernelDecl.FindAllStringSubmatchIndex(string(src), -1) {
				name := string(src[m[2]:m[3]])
				if inMacro(string(src), m[0]) {
					// Its instantiations would be launched by names the
					// index never sees: every launch of them would fail.
					indexErr = fmt.Errorf("%s: kernel %s is declared inside a #define; write each kernel out", e.Name(), name)
					return
				}
				if prev, dup := kernelFile[name]; dup {
					indexErr = fmt.Errorf("kernel %s defined in both %s and %s", name, prev, e.Name())
					return
				}
				kernelFile[name] = e.Name()
			}
		}
	})
	return kernelFile, fileSource, indexErr
}

// inMacro reports whether offset at of src lies in a preprocessor
// directive: on a line starting with # or continued from one by a
// trailing backslash.
func inMacro(src string, at int) bool {
	start := strings.LastIndexByte(src[:at], '\n') + 1
	for {
		if strings.HasPrefix(strings.TrimLeft(src[start:], " \t"), "#") {
			return true
		}
		if start == 0 {
			return false
		}
		prev := strings.LastIndexByte(src[:start-1], '\n') + 1
		if !strings.HasSuffix(strings.TrimRight(src[prev:start-1], " \t\r"), "\\") {
			return false
		}
		start = prev
	}
}

// KernelNames lists the kernels in the embedded sources (for tests and
// diagnostics).
func KernelNames() []string {
	kf, _, _ := kernelIndex()
	out := make([]string, 0, len(kf))
	for k := range kf {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// function returns the loaded kernel, compiling (or reading from the disk
// cache) and loading its file on first use. Callers hold c.mu with the
// context current.
func (c *Backend) function(name string) (uintptr, error) {
	ds := c.dev
	ds.modMu.Lock()
	defer ds.modMu.Unlock()
	if f, ok := ds.funcs[name]; ok {
		return f, nil
	}
	kf, fs, err := kernelIndex()
	if err != nil {
		return 0, err
	}
	file, ok := kf[name]
	if !ok {
		return 0, fmt.Errorf("no kernel named %s in the embedded sources", name)
	}
	mod, ok := ds.mods[file]
	if !ok {
		cubin, err := compileCached(c.l.rtc, &ds.cache, file, fs[file], ds.arch)
		if err != nil {
			return 0, err
		}
		var pin runtime.Pinner
		pin.Pin(&cubin[0])
		pin.Pin(&mod)
		r := c.l.drv.moduleLoadData.call(uintptr(unsafe.Pointer(&mod)), uintptr(unsafe.Pointer(&cubin[0])))
		pin.Unpin()
		if r != 0 {
			return 0, fmt.Errorf("cuModuleLoadData %s: %s", file, c.l.drv.errText(r))
		}
		ds.mods[file] = mod
	}
	var f uintptr
	cname := cBytes(name)
	var pin runtime.Pinner
	pin.Pin(&f)
	pin.Pin(&cname[0])
	r := c.l.drv.moduleGetFunction.call(uintptr(unsafe.Pointer(&f)), mod, uintptr(unsafe.Pointer(&cname[0])))
	pin.Unpin()
	if r != 0 {
		return 0, fmt.Errorf("cuModuleGetFunction %s: %s", name, c.l.drv.errText(r))
	}
	ds.funcs[name] = f
	return f, nil
}

// compileCached compiles a kernel file for arch through the disk cache.
func compileCached(rtc *nvrtcAPI, cache *kernelCache, file, src string, arch int) ([]byte, error) {
	major, minor, err := rtc.Version()
	if err != nil {
		return nil, err
	}
	opts := append(append([]string(nil), nvrtcOptions...), fileOptions[file]...)
	key := cacheKey(file, src, arch, major, minor, opts)
	return cache.getOrBuild(key, func() ([]byte, error) {
		return rtc.compile(file, src, arch, opts)
	})
}

// dims is a launch grid.
type dims struct{ x, y, z int }

// grid1 sizes a grid-stride launch over n items with the given block size:
// enough blocks to fill the GPU several times over, never more than needed.
func (c *Backend) grid1(n, block int) dims {
	g := (n + block - 1) / block
	g = min(g, c.dev.sms*16)
	return dims{max(g, 1), 1, 1}
}

// launch packs the arguments into the pinned argument area and queues the
// kernel. Arguments are uint64 (device pointers), int (passed as 64-bit
// long long), float64 (double) or []byte (a struct passed by value). Every
// kernel parameter in the .cu files uses one of these so sizes always agree.
// Callers hold c.mu with the context current.
func (c *Backend) launch(name string, g dims, block, smem int, args ...any) {
	if c.err != nil {
		return // the stream is already failed; queue nothing more
	}
	f, err := c.function(name)
	if err != nil {
		c.failf("%s: %v", name, err)
		return
	}
	if smem > 48<<10 && !c.dev.raiseSmem(f, smem, c.l.drv) {
		c.failf("%s: %d bytes of shared memory exceed the device's %d per block", name, smem, c.dev.maxSmem)
		return
	}
	area := unsafe.Slice((*byte)(c.args), argAreaBytes)
	const ptrBytes = 8 * 128
	if len(args) > 128 {
		c.failf("%s: %d kernel arguments", name, len(args))
		return
	}
	off := ptrBytes
	var offs []int // argument starts, kept for a graph region's record
	if c.plan.active() {
		offs = make([]int, 0, len(args))
	}
	for i, a := range args {
		start := off
		if offs != nil {
			offs = append(offs, start-ptrBytes)
		}
		switch v := a.(type) {
		case uint64:
			binary.LittleEndian.PutUint64(area[off:], v)
			off += 8
		case int:
			binary.LittleEndian.PutUint64(area[off:], uint64(int64(v)))
			off += 8
		case float64:
			binary.LittleEndian.PutUint64(area[off:], math.Float64bits(v))
			off += 8
		case []byte:
			if off+len(v) > argAreaBytes {
				c.failf("%s: kernel arguments exceed %d bytes", name, argAreaBytes)
				return
			}
			copy(area[off:], v)
			// Zero the padding: a graph region compares the packed bytes.
			clear(area[off+len(v) : min(off+(len(v)+7)&^7, argAreaBytes)])
			off += (len(v) + 7) &^ 7
		default:
			c.failf("%s: kernel argument %d has unsupported type %T", name, i, a)
			return
		}
		binary.LittleEndian.PutUint64(area[8*i:], uint64(uintptr(c.args)+uintptr(start)))
	}
	if offs != nil {
		c.queue(&opRecord{kind: opKernel, name: name, fn: f, grid: g, block: block, smem: smem,
			args: append([]byte(nil), area[ptrBytes:off]...), offs: offs})
		return
	}
	r := c.l.drv.launchKernel.call(f, uintptr(g.x), uintptr(g.y), uintptr(g.z), uintptr(block), 1, 1,
		uintptr(smem), c.stream, uintptr(c.args), 0)
	if r != 0 {
		c.failf("launch %s (grid %d×%d×%d, block %d, smem %d): %s", name, g.x, g.y, g.z, block, smem, c.l.drv.errText(r))
	}
}

// structBytes packs int64/float64 fields into a C struct of 8-byte members.
func structBytes(fields ...any) []byte {
	out := make([]byte, 8*len(fields))
	for i, f := range fields {
		switch v := f.(type) {
		case int:
			binary.LittleEndian.PutUint64(out[8*i:], uint64(int64(v)))
		case uint64:
			binary.LittleEndian.PutUint64(out[8*i:], v)
		case float64:
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(v))
		}
	}
	return out
}

// raiseSmem lifts a kernel's dynamic shared-memory limit above the default
// 48 KiB (needed once per kernel and size; the driver refuses more than the
// device's opt-in maximum minus the kernel's static shared memory).
func (ds *deviceState) raiseSmem(f uintptr, bytes int, d *driverAPI) bool {
	ds.modMu.Lock()
	defer ds.modMu.Unlock()
	if ds.smemSet == nil {
		ds.smemSet = map[uintptr]int{}
	}
	if ds.smemSet[f] >= bytes {
		return true
	}
	if d.funcSetAttribute.call(f, funcAttrMaxDynamicShared, uintptr(bytes)) != 0 {
		return false
	}
	ds.smemSet[f] = bytes
	return true
}
