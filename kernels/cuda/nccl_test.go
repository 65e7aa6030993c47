package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// The CUDA backend brings NCCL to dist without importing it.
var _ dist.NativeBackend = (*Backend)(nil)

// ncclRankVar makes the test binary act as one rank of a launched job
// (ncclRankMain) instead of running the tests.
const ncclRankVar = "NEWBIE_NCCL_TEST_RANK"

func TestMain(m *testing.M) {
	if mode := os.Getenv(ncclRankVar); mode != "" {
		os.Exit(ncclRankMain(mode))
	}
	os.Exit(m.Run())
}

func TestNCCLCandidates(t *testing.T) {
	env := map[string]string{"LD_LIBRARY_PATH": "/opt/ld", "VIRTUAL_ENV": "/venv"}
	glob := func(p string) ([]string, error) {
		switch p {
		case "/venv/lib/python3*/site-packages":
			return []string{"/venv/lib/python3.12/site-packages"}, nil
		case "/venv/lib/python3.12/site-packages/nvidia/*/lib":
			return []string{"/venv/lib/python3.12/site-packages/nvidia/nccl/lib", "/venv/lib/python3.12/site-packages/nvidia/cublas/lib"}, nil
		}
		return nil, nil
	}
	cands := ncclCandidates(libDirs(func(k string) string { return env[k] }, glob))
	for _, want := range []string{
		"/usr/local/cuda/lib64/libnccl.so.2",
		"/opt/ld/libnccl.so.2",
		"/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2",
		"/usr/lib/x86_64-linux-gnu/libnccl.so.2",
	} {
		found := false
		for _, c := range cands {
			found = found || c == want
		}
		if !found {
			t.Fatalf("%s is not among the candidates %v", want, cands)
		}
	}
	_, _, err := openFirst("libnccl.so.2 (NCCL)", cands, func(string) bool { return false })
	for _, c := range cands {
		if !strings.Contains(err.Error(), c) {
			t.Fatalf("the error does not name %s: %v", c, err)
		}
	}
}

func TestNCCLDefaults(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"unset", map[string]string{}, "0"},
		{"the user's choice stays", map[string]string{"NCCL_NVLS_ENABLE": "1"}, "1"},
	} {
		env := tt.env
		err := setNCCLDefaults(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, func(k, v string) error { env[k] = v; return nil })
		if err != nil || env["NCCL_NVLS_ENABLE"] != tt.want {
			t.Fatalf("%s: NCCL_NVLS_ENABLE=%q (%v), want %q", tt.name, env["NCCL_NVLS_ENABLE"], err, tt.want)
		}
	}
	if got := ncclVersionText(22105); got != "2.21.5" {
		t.Fatalf("version 22105 reads %s", got)
	}
	if got := ncclVersionText(2804); got != "2.8.4" {
		t.Fatalf("version 2804 reads %s", got)
	}
}

// openNCCLGPU opens the backend on device dev, or skips when there is no
// GPU or no NCCL.
func openNCCLGPU(t *testing.T, dev int) *Backend {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no GPU here: %v", err)
	}
	api, err := loadNCCL()
	if err != nil {
		t.Skipf("no NCCL here: %v", err)
	}
	t.Logf("NCCL %s from %s; NCCL_NVLS_ENABLE=%q", ncclVersionText(api.version), api.path, os.Getenv("NCCL_NVLS_ENABLE"))
	b, err := New(dev)
	if err != nil {
		t.Fatalf("open cuda backend on device %d: %v", dev, err)
	}
	t.Cleanup(b.Close)
	return b
}

func visibleGPUs() int {
	l, err := loadLibs()
	if err != nil {
		return 0
	}
	n, _ := l.deviceCount()
	return n
}

// randomValues draws n standard-normal values from a stream of seed.
func randomValues(seed uint64, n int) []float64 {
	return kerneltest.Randn(rand.New(rand.NewPCG(seed, 7)), n, 1)
}

func putBuf(t *testing.T, b kernels.Backend, d kernels.DType, v []float64) kernels.Buffer {
	buf, _ := kerneltest.Put(t, b, d, v)
	return buf
}

// TestNCCLWorldOne: through real NCCL with one rank, a sum and a broadcast
// are the identity (bit for bit), directly and through dist.Open, and an
// abort returns at once and fails later calls.
func TestNCCLWorldOne(t *testing.T) {
	b := openNCCLGPU(t, 0)
	id, err := b.CollectiveID()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := b.OpenCollective(id, 0, 1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dist.ParseEnv(func(k string) string { return map[string]string{"RANK": "0", "WORLD_SIZE": "1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	comm, err := dist.Open(context.Background(), b, env, dist.Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f32 := randomValues(1, 1<<20+3)
	bf16 := kerneltest.Quantize(kernels.BF16, randomValues(2, 4097))
	bufs := []kernels.Buffer{putBuf(t, b, kernels.F32, f32), putBuf(t, b, kernels.BF16, bf16)}
	want := [][]float64{kerneltest.Quantize(kernels.F32, f32), bf16}
	for name, sum := range map[string]func() error{
		"NCCL":      func() error { return nc.AllReduceSum(bufs) },
		"dist":      func() error { return comm.AllReduceSum(bufs...) },
		"broadcast": func() error { return nc.Broadcast(bufs[0], 0) },
	} {
		if err := sum(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, buf := range bufs {
			got := kerneltest.Get(t, b, buf)
			for k := range got {
				if math.Float64bits(got[k]) != math.Float64bits(want[i][k]) {
					t.Fatalf("%s: buffer %d element %d became %v, was %v", name, i, k, got[k], want[i][k])
				}
			}
		}
	}
	if err := comm.Barrier(0); err != nil {
		t.Fatal(err)
	}
	if err := comm.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	start := time.Now()
	nc.Abort(errors.New("the test aborts"))
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("abort took %v", d)
	}
	if err := nc.AllReduceSum(bufs); err == nil || !strings.Contains(err.Error(), "the test aborts") {
		t.Fatalf("a sum after the abort: %v", err)
	}
	if err := nc.Close(); err != nil {
		t.Fatalf("close after abort: %v", err)
	}
	if err := b.Sync(); err != nil {
		t.Fatalf("the backend after the abort: %v", err)
	}
}

// TestNCCLTwoGPUs: two ranks on two GPUs of this process sum and
// broadcast against the float64 reference; then one rank aborts, as a dead
// one stops taking part, and the other's next sum fails within its
// timeout instead of hanging.
func TestNCCLTwoGPUs(t *testing.T) {
	if n := visibleGPUs(); n < 2 {
		t.Skipf("%d GPU(s) visible; this test needs 2", n)
	}
	bs := []*Backend{openNCCLGPU(t, 0), openNCCLGPU(t, 1)}
	id, err := bs[0].CollectiveID()
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 5 * time.Second
	ncs := make([]collective, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); ncs[r], errs[r] = bs[r].OpenCollective(id, r, 2, timeout) }()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	sizes := map[kernels.DType]int{kernels.F32: 1<<22 + 5, kernels.BF16: 1<<16 + 1}
	for _, d := range []kernels.DType{kernels.F32, kernels.BF16} {
		vals := [][]float64{randomValues(uint64(d), sizes[d]), randomValues(uint64(d)+100, sizes[d])}
		want := make([]float64, sizes[d])
		bufs := make([]kernels.Buffer, 2)
		for r := range 2 {
			stored := kerneltest.Quantize(d, vals[r])
			for k := range want {
				want[k] += stored[k]
			}
			bufs[r] = putBuf(t, bs[r], d, vals[r])
		}
		for r := range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); errs[r] = ncs[r].AllReduceSum([]kernels.Buffer{bufs[r]}) }()
		}
		wg.Wait()
		tol := 1e-6
		if d == kernels.BF16 {
			tol = 1e-2
		}
		for r := range 2 {
			if errs[r] != nil {
				t.Fatalf("%v rank %d: %v", d, r, errs[r])
			}
			e := kernels.RelErr(kerneltest.Get(t, bs[r], bufs[r]), want)
			t.Logf("%v sum of %d elements, rank %d: relative error %.3g", d, sizes[d], r, e)
			if e > tol {
				t.Fatalf("%v rank %d: relative error %.3g > %g", d, r, e, tol)
			}
		}
		for r := range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); errs[r] = ncs[r].Broadcast(bufs[r], 1) }()
		}
		wg.Wait()
		root := kerneltest.Get(t, bs[1], bufs[1])
		got := kerneltest.Get(t, bs[0], bufs[0])
		for k := range got {
			if errs[0] != nil || errs[1] != nil || got[k] != root[k] {
				t.Fatalf("%v broadcast: %v %v; element %d is %v on rank 0, %v on rank 1", d, errs[0], errs[1], k, got[k], root[k])
			}
		}
	}
	ncs[1].Abort(errors.New("rank 1 stops"))
	start := time.Now()
	buf := putBuf(t, bs[0], kernels.F32, randomValues(9, 1<<20))
	if err := ncs[0].AllReduceSum([]kernels.Buffer{buf}); err != nil {
		t.Logf("the sum failed when queued: %v", err)
	}
	syncErr := bs[0].Sync()
	for ncs[0].Err() == nil && time.Since(start) < 4*timeout {
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("rank 0 after %v: %v (backend sync: %v)", took.Round(time.Millisecond), ncs[0].Err(), syncErr)
	if ncs[0].Err() == nil {
		t.Fatalf("rank 0 saw no error %v after its peer stopped", took)
	}
	if took > 4*timeout {
		t.Fatalf("rank 0 took %v to fail (timeout %v)", took, timeout)
	}
	for _, nc := range ncs {
		nc.Close()
	}
}

// TestNCCLProcesses launches two ranks as processes through dist.Launch,
// each on its GPU: they sum through dist.Open and leave in good order;
// then rank 1's process dies mid-job and rank 0 fails at once with an
// error naming it, instead of hanging in its next sum.
func TestNCCLProcesses(t *testing.T) {
	if n := visibleGPUs(); n < 2 {
		t.Skipf("%d GPU(s) visible; this test needs 2", n)
	}
	openNCCLGPU(t, 0)
	for _, mode := range []string{"sum", "die"} {
		t.Run(mode, func(t *testing.T) {
			var out strings.Builder
			var mu sync.Mutex
			w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
			start := time.Now()
			err := dist.Launch{Ranks: 2, Args: []string{"-test.run=^$"}, Env: append(os.Environ(), ncclRankVar+"="+mode),
				Stdout: w, Stderr: w, Grace: time.Minute}.Run(context.Background())
			took := time.Since(start)
			mu.Lock()
			text := out.String()
			mu.Unlock()
			t.Logf("%s: %v after %v\n%s", mode, err, took.Round(time.Millisecond), text)
			switch mode {
			case "sum":
				if err != nil || strings.Count(text, "sum ok") != 2 {
					t.Fatalf("the job failed: %v", err)
				}
			case "die":
				var re *dist.RankExitError
				if !errors.As(err, &re) || re.Rank != 1 {
					t.Fatalf("error %v, want rank 1's exit", err)
				}
				if !strings.Contains(text, "rank 0 failed as it should:") || !strings.Contains(text, "rank 1") {
					t.Fatal("rank 0 did not report the lost rank")
				}
				if took > 30*time.Second {
					t.Fatalf("the job took %v to end", took)
				}
			}
		})
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// ncclRankMain is one rank of TestNCCLProcesses' job.
func ncclRankMain(mode string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	env, err := dist.ParseEnv(os.Getenv)
	if err != nil {
		return fail(err)
	}
	if mode == "die" && env.Rank == 0 {
		signal.Ignore(syscall.SIGTERM) // stay to report what this rank sees
	}
	b, err := New(env.LocalRank)
	if err != nil {
		return fail(err)
	}
	comm, err := dist.Open(context.Background(), b, env, dist.Options{Timeout: 20 * time.Second})
	if err != nil {
		return fail(err)
	}
	n := 1 << 20
	buf, err := b.Alloc(kernels.F32, n)
	if err != nil {
		return fail(err)
	}
	b.Fill(buf, float64(env.Rank+1))
	if err := comm.AllReduceSum(buf); err != nil {
		return fail(err)
	}
	raw := make([]byte, 4*n)
	if err := b.Download(raw, buf, 0); err != nil {
		return fail(err)
	}
	want := float64(env.WorldSize * (env.WorldSize + 1) / 2)
	for _, v := range kernels.DecodeF64(kernels.F32, raw) {
		if v != want {
			return fail(fmt.Errorf("rank %d: the sum is %v, want %v", env.Rank, v, want))
		}
	}
	fmt.Printf("rank %d: sum ok\n", env.Rank)
	if err := comm.Barrier(0); err != nil {
		return fail(err)
	}
	if mode == "die" {
		if env.Rank == 1 {
			os.Exit(1) // no Close: as if the process were killed
		}
		for range 1000 {
			comm.AllReduceSum(buf)
			b.Sync()
			if err := comm.Err(); err != nil {
				fmt.Printf("rank 0 failed as it should: %v\n", err)
				return 7
			}
		}
		return fail(errors.New("rank 0 saw no error after rank 1 died"))
	}
	if err := comm.Close(); err != nil {
		return fail(err)
	}
	return 0
}
