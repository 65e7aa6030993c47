package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKernelCache(t *testing.T) {
	c := &kernelCache{dir: t.TempDir()}
	key := cacheKey("a.cu", "src", 90, 13, 0, nil)
	builds := 0
	build := func() ([]byte, error) { builds++; return []byte("cubin-bytes"), nil }
	for i, want := range []int{1, 1} {
		got, err := c.getOrBuild(key, build)
		if err != nil || string(got) != "cubin-bytes" || builds != want {
			t.Fatalf("call %d: %q, %v, %d builds (want %d)", i, got, err, builds, want)
		}
	}
	tests := []struct {
		name    string
		corrupt func(p string)
	}{
		{"flipped payload byte", func(p string) {
			raw, _ := os.ReadFile(p)
			raw[len(raw)-1] ^= 1
			os.WriteFile(p, raw, 0o644)
		}},
		{"truncated", func(p string) {
			raw, _ := os.ReadFile(p)
			os.WriteFile(p, raw[:len(raw)-3], 0o644)
		}},
		{"wrong magic", func(p string) {
			raw, _ := os.ReadFile(p)
			raw[0] = 'X'
			os.WriteFile(p, raw, 0o644)
		}},
		{"empty", func(p string) { os.WriteFile(p, nil, 0o644) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.corrupt(c.path(key))
			before := builds
			got, err := c.getOrBuild(key, build)
			if err != nil || string(got) != "cubin-bytes" || builds != before+1 {
				t.Fatalf("corrupt entry not rebuilt: %q, %v, builds %d→%d", got, err, before, builds)
			}
			if _, ok := c.load(key); !ok {
				t.Fatal("rebuilt entry not stored")
			}
		})
	}
	if k2 := cacheKey("a.cu", "src", 89, 13, 0, nil); k2 == key {
		t.Error("cache key ignores the architecture")
	}
	if k3 := cacheKey("a.cu", "src", 90, 12, 8, nil); k3 == key {
		t.Error("cache key ignores the NVRTC version")
	}
	if k4 := cacheKey("a.cu", "src2", 90, 13, 0, nil); k4 == key {
		t.Error("cache key ignores the source")
	}
	failing := &kernelCache{dir: t.TempDir()}
	if _, err := failing.getOrBuild("x", func() ([]byte, error) { return nil, errors.New("boom") }); err == nil {
		t.Error("build failure not reported")
	}
}

// fakeDevice counts raw allocations and can run out of memory.
type fakeDevice struct {
	next   uint64
	live   map[uint64]int64
	limit  int64
	used   int64
	allocs int
	syncs  int
}

func (f *fakeDevice) alloc(n int64) (uint64, error) {
	if f.used+n > f.limit {
		return 0, errOutOfMemory{n}
	}
	f.next += 1 << 30
	f.live[f.next] = n
	f.used += n
	f.allocs++
	return f.next, nil
}
func (f *fakeDevice) free(p uint64) { f.used -= f.live[p]; delete(f.live, p) }
func (f *fakeDevice) sync() error   { f.syncs++; return nil }

func TestCachingAllocator(t *testing.T) {
	tests := []struct{ in, want int64 }{
		{0, 0}, {1, 512}, {512, 512}, {513, 1024},
		{1 << 20, 1 << 20}, {(1 << 20) + 1, (1 << 20) + 64<<10}, // medium: 64 KiB classes
		{8 << 20, 8 << 20}, {(8 << 20) + 1, 10 << 20}, // large: 2 MiB classes
	}
	for _, tc := range tests {
		if got := roundSize(tc.in); got != tc.want {
			t.Errorf("roundSize(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
	dev := &fakeDevice{live: map[uint64]int64{}, limit: 8 << 20}
	a := newCachingAllocator(dev)
	a.slabSize = 2 << 20 // blocks up to 512 KiB are carved
	p1, s1, err := a.get(1000)
	if err != nil {
		t.Fatal(err)
	}
	p3, s3, _ := a.get(3000) // carved from the same slab: no new device allocation
	if dev.allocs != 1 || p3 != p1+uint64(s1) {
		t.Errorf("second small block not carved from the slab: %x after %x, %d device allocations", p3, p1, dev.allocs)
	}
	a.put(p3, s3)
	a.put(p1, s1)
	p2, _, _ := a.get(900) // same class: reused
	if p2 != p1 || dev.allocs != 1 {
		t.Errorf("block not reused: %x vs %x, %d device allocations", p2, p1, dev.allocs)
	}
	al, pk, rs := a.stats()
	if al != 1024 || pk != 4096 || rs != 2<<20 {
		t.Errorf("stats %d/%d/%d, want 1024/4096/%d", al, pk, rs, 2<<20)
	}
	big, bs, _ := a.get(6 << 20) // too large to carve: its own device block
	a.put(big, bs)
	a.resetPeak()
	if _, pk, _ := a.stats(); pk != 1024 {
		t.Errorf("peak after reset %d", pk)
	}
	// 6 MiB cached + a 2 MiB slab; a 4 MiB request only fits once the cache
	// is given back (the slab stays: its blocks are carved).
	if _, _, err := a.get(4 << 20); err != nil {
		t.Fatalf("allocation after releasing the cache failed: %v", err)
	}
	if dev.syncs == 0 {
		t.Error("cache released without waiting for the stream")
	}
	if _, _, err := a.get(16 << 20); err == nil || !strings.Contains(err.Error(), "out of GPU memory") {
		t.Errorf("oversized allocation: %v", err)
	}
	if err := a.releaseAll(); err != nil || len(dev.live) != 0 {
		t.Errorf("releaseAll left %d blocks (%v)", len(dev.live), err)
	}
}

// TestConstantArena checks that announced constants are packed into one
// device allocation at 512-byte alignment, counted at that size, and that
// the allocation goes back to the device with the last of them; and that
// with nothing announced a constant is an ordinary block.
func TestConstantArena(t *testing.T) {
	dev := &fakeDevice{live: map[uint64]int64{}, limit: 1 << 40}
	a := newCachingAllocator(dev)
	sizes := []int64{(40 << 20) + 1000, 18 << 20, 700, (10 << 20) + 3}
	var total int64
	for _, n := range sizes {
		total += n
	}
	a.reserveConstants(total, len(sizes))
	type blk struct {
		p    uint64
		size int64
	}
	var bs []blk
	for _, n := range sizes {
		p, size, err := a.getConstant(n)
		if err != nil {
			t.Fatal(err)
		}
		if want := (n + 511) / 512 * 512; size != want {
			t.Errorf("constant of %d bytes holds %d, want %d", n, size, want)
		}
		if len(bs) > 0 && p != bs[len(bs)-1].p+uint64(bs[len(bs)-1].size) {
			t.Errorf("constant %d not packed after the previous one: %x", len(bs), p)
		}
		bs = append(bs, blk{p, size})
	}
	if dev.allocs != 1 {
		t.Errorf("%d device allocations for the announced constants, want 1", dev.allocs)
	}
	al, _, rs := a.stats()
	if want := int64(1000+512-1000%512) + 40<<20 + 18<<20 + 1024 + (10<<20 + 512); al != want {
		t.Errorf("allocated %d, want %d", al, want)
	}
	if rs != 70<<20 { // 68.00… MiB announced, rounded to 2 MiB
		t.Errorf("reserved %d, want %d", rs, 70<<20)
	}
	// The arena's tail takes a later constant (first fit) without a hint;
	// with no room and no hint a constant is an ordinary block.
	tp, ts, _ := a.getConstant(1 << 20)
	if dev.allocs != 1 || tp != bs[3].p+uint64(bs[3].size) {
		t.Errorf("tail not used: %x, %d device allocations", tp, dev.allocs)
	}
	op, os, _ := a.getConstant(9 << 20)
	if dev.allocs != 2 || os != 10<<20 {
		t.Errorf("unannounced constant: %d device allocations, size %d", dev.allocs, os)
	}
	a.put(op, os)
	if _, ok := a.free[os]; !ok {
		t.Error("an ordinary constant was not cached as a block of its class")
	}
	a.put(tp, ts)
	for i, b := range bs {
		if i == len(bs)-1 && len(dev.live) != 2 {
			t.Errorf("arena freed before its last block: %d device blocks live", len(dev.live))
		}
		a.put(b.p, b.size)
	}
	if len(dev.live) != 1 || dev.syncs == 0 {
		t.Errorf("arena not given back after its last block (%d device blocks live, %d syncs)", len(dev.live), dev.syncs)
	}
	if al, _, rs := a.stats(); al != 0 || rs != 10<<20 {
		t.Errorf("after freeing: allocated %d, reserved %d", al, rs)
	}
}

func TestLibraryDiscovery(t *testing.T) {
	env := map[string]string{"CUDA_HOME": "/opt/cuda-x", "LD_LIBRARY_PATH": "/a:/b", "VIRTUAL_ENV": "/venv"}
	glob := func(p string) ([]string, error) {
		switch p {
		case "/venv/lib/python3*/site-packages":
			return []string{"/venv/lib/python3.12/site-packages"}, nil
		case "/venv/lib/python3.12/site-packages/nvidia/*/lib":
			return []string{"/venv/lib/python3.12/site-packages/nvidia/cu13/lib"}, nil
		}
		return nil, nil
	}
	dirs := libDirs(func(k string) string { return env[k] }, glob)
	want := []string{"/opt/cuda-x/lib64", "/usr/local/cuda/lib64", "/a", "/b", "/venv/lib/python3.12/site-packages/nvidia/cu13/lib"}
	pos := map[string]int{}
	for i, d := range dirs {
		pos[d] = i
	}
	last := -1
	for _, w := range want {
		i, ok := pos[w]
		if !ok || i < last {
			t.Fatalf("dirs %v: %s missing or out of order", dirs, w)
		}
		last = i
	}
	cands := libCandidates("libnvrtc", []string{"/x", "/y"})
	if cands[0] != "/x/libnvrtc.so.13" || cands[1] != "/y/libnvrtc.so.13" || cands[2] != "/x/libnvrtc.so.12" {
		t.Errorf("candidates %v: want .13 in every folder, then .12", cands)
	}
	_, _, err := openFirst("libnvrtc", cands, func(string) bool { return false })
	if err == nil {
		t.Fatal("no error for a missing library")
	}
	for _, c := range cands {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("error does not name %s: %v", c, err)
		}
	}
}

func TestAvailableWithoutGPU(t *testing.T) {
	err := Available()
	if err == nil {
		t.Skip("a GPU is present")
	}
	if !strings.Contains(err.Error(), "cuda backend unavailable") {
		t.Errorf("Available() = %v, want a reason", err)
	}
	if _, err := New(0); err == nil {
		t.Error("New succeeded where Available failed")
	}
}

func TestKernelIndex(t *testing.T) {
	names := KernelNames()
	wants := []string{"fill_f", "attn_fwd_d", "adamw", "mt_partial_f", "rope_bf16_vec", "conv_dw_d", "attn_fwd_tc256", "attn_fwd_tc256_f16"}
	// Every RMSNorm row kernel rowKernel can name (Gemma's norms take the
	// _wf ones: a 2026-12-03 refactor had declared them in a macro, out of
	// the index's sight, and every bf16 Gemma encode failed on the GPU).
	for _, base := range []string{"rmsnorm_bf16_rows", "rmsnorm_bf16_rows_wf"} {
		for _, cols := range []int{64, 256, 2560, 8192} {
			name, _, _ := rowKernel(base, cols)
			wants = append(wants, name)
		}
	}
	// Every tensor-core forward attnFastFwd can name, bf16 and fp16, and
	// every SIMT forward attnSIMTFwd can, fp32, bf16 and fp16.
	for _, d := range []string{"64", "96", "128"} {
		for _, sfx := range []string{"", "_f16"} {
			wants = append(wants, "attn_fwd_tc"+d+sfx, "attn_fwd_wg"+d+sfx)
		}
		for _, sfx := range []string{"", "_bf16", "_f16"} {
			wants = append(wants, "attn_fwd_simt"+d+sfx)
		}
	}
	for _, want := range wants {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("kernel %s not indexed", want)
		}
	}
	kf, files, err := kernelIndex()
	if err != nil {
		t.Fatal(err)
	}
	// Every __global__ in a file is a kernel the index knows: a
	// declaration the index's pattern misses could not be launched.
	perFile := map[string]int{}
	for _, f := range kf {
		perFile[f]++
	}
	for f := range files {
		src, err := sources.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(stripComments(string(src)), "__global__"); n != perFile[f] {
			t.Errorf("%s: %d __global__ declarations, %d kernels indexed", f, n, perFile[f])
		}
	}
	for f, src := range files {
		if !strings.HasPrefix(src, "// common.cuh") || filepath.Ext(f) != ".cu" {
			t.Errorf("%s: source does not start with common.cuh", f)
		}
	}
}

// stripComments removes // and /* */ comments from CUDA source (string
// literals in kernel files hold no comment markers).
func stripComments(src string) string {
	var b strings.Builder
	for i := 0; i < len(src); {
		switch {
		case strings.HasPrefix(src[i:], "//"):
			j := strings.IndexByte(src[i:], '\n')
			if j < 0 {
				return b.String()
			}
			i += j
		case strings.HasPrefix(src[i:], "/*"):
			j := strings.Index(src[i+2:], "*/")
			if j < 0 {
				return b.String()
			}
			i += j + 4
		default:
			b.WriteByte(src[i])
			i++
		}
	}
	return b.String()
}

func TestInMacro(t *testing.T) {
	for _, c := range []struct {
		src  string
		want bool
	}{
		{"extern \"C\" __global__ void k() {}", false},
		{"int a;\nextern \"C\" __global__ void k() {}", false},
		{"#define K(N) \\\n  extern \"C\" __global__ void N() {}", true},
		{"#define K(N) \\\n  int x; \\\n  extern \"C\" __global__ void N() {}", true},
		{"  #define K(N) extern \"C\" __global__ void N() {}", true},
		{"#define A 1\nextern \"C\" __global__ void k() {}", false},
		{"int a; \\\nextern \"C\" __global__ void k() {}", false},
	} {
		at := strings.Index(c.src, "extern")
		if got := inMacro(c.src, at); got != c.want {
			t.Errorf("inMacro(%q) = %v, want %v", c.src, got, c.want)
		}
	}
}

func TestStructBytes(t *testing.T) {
	b := structBytes(3, uint64(1<<40), 0.5)
	if len(b) != 24 || b[0] != 3 || b[13] != 1 || b[23] != 0x3f {
		t.Errorf("structBytes = %x", b)
	}
	if itoa(-120) != "-120" || itoa(0) != "0" {
		t.Error("itoa")
	}
}

func TestVecBroadcast(t *testing.T) {
	for _, c := range []struct {
		dst, a, b  []int
		mode, s, d int
		ok         bool
	}{
		{[]int{2, 3, 8}, []int{2, 3, 8}, []int{2, 3, 8}, 0, 1, 1, true},
		{[]int{2, 3, 8}, []int{2, 3, 8}, []int{2, 1, 8}, 1, 3, 8, true},  // adaLN scale over tokens
		{[]int{2, 3, 8}, []int{1, 1, 8}, []int{2, 3, 8}, 2, 6, 8, true},  // a bias row on the left
		{[]int{2, 3, 8}, []int{2, 3, 8}, []int{2, 3, 1}, 0, 0, 0, false}, // a column: generic kernel
		{[]int{2, 3, 4}, []int{2, 3, 4}, []int{2, 1, 4}, 0, 0, 0, false}, // rows of 4: not 16 bytes
		{[]int{2, 3, 8}, []int{2, 1, 8}, []int{2, 1, 8}, 0, 0, 0, false}, // both broadcast
		{[]int{3, 5}, []int{3, 5}, []int{3, 5}, 0, 1, 1, false},          // 15 elements
	} {
		same := fmt.Sprint(c.a) == fmt.Sprint(c.dst) && fmt.Sprint(c.b) == fmt.Sprint(c.dst)
		mode, s, d, ok := vecBroadcast(c.dst, c.a, c.b, same)
		if ok != c.ok || (ok && (mode != c.mode || s != c.s || d != c.d)) {
			t.Errorf("vecBroadcast(%v, %v, %v) = %d %d %d %v, want %d %d %d %v", c.dst, c.a, c.b, mode, s, d, ok, c.mode, c.s, c.d, c.ok)
		}
	}
}

// TestParseFastPathsOff: NEWBIE_TRAIN_CUDA_OFF takes the known names in any
// order with spaces and empty items, and refuses an unknown one by name.
func TestParseFastPathsOff(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		bad  string
	}{
		{"", nil, ""},
		{"conv", []string{"conv"}, ""},
		{" groupnorm , attn256,", []string{"groupnorm", "attn256"}, ""},
		{"conv,gropunorm", nil, "gropunorm"},
	} {
		off, err := parseFastPathsOff(tc.in)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("%q: error %v, want one naming %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || len(off) != len(tc.want) {
			t.Errorf("%q: %v, %v; want %v", tc.in, off, err, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !off[w] {
				t.Errorf("%q: %s not turned off", tc.in, w)
			}
		}
	}
}
