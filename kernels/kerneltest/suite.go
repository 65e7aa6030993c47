// Package kerneltest is the conformance suite every kernels.Backend must
// pass. Each case draws fresh random inputs (never zeros), runs one op on the
// backend under test, and compares the result with a naive float64 reference
// written here, independent of any backend, by ‖ours−ref‖/‖ref‖ under a
// tolerance set by the dtypes involved.
//
// A backend's own tests call Run; the CPU backend runs it in CI and the CUDA
// backend on the GPU machine.
package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

// A Case checks one op (or a family of ops) on a backend.
type Case func(t *testing.T, b kernels.Backend)

var (
	casesMu sync.Mutex
	cases   = map[string]Case{}
)

// register adds a case under a unique name; files of this package call it
// from init.
func register(name string, c Case) {
	casesMu.Lock()
	defer casesMu.Unlock()
	if _, dup := cases[name]; dup {
		panic("kerneltest: case " + name + " registered twice")
	}
	cases[name] = c
}

// Run runs every case as a subtest against the backend open returns. A fresh
// backend is opened per case so one case's failure cannot leak into another.
func Run(t *testing.T, open func(t *testing.T) kernels.Backend) {
	casesMu.Lock()
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	casesMu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		c := cases[name]
		t.Run(name, func(t *testing.T) {
			b := open(t)
			c(t, b)
			if err := b.Sync(); err != nil {
				t.Fatalf("backend reported: %v", err)
			}
		})
	}
}

// Tol is the largest relative error accepted for results computed from
// operands of dtype in and stored in dtype out.
func Tol(in, out kernels.DType) float64 {
	worst := func(d kernels.DType) float64 {
		switch d {
		case kernels.F64:
			return 1e-12
		case kernels.F32:
			return 1e-5
		default:
			return 1e-2
		}
	}
	return max(worst(in), worst(out))
}

// Rng returns a generator seeded from the test's name, so a failure
// reproduces while different cases still draw different numbers.
func Rng(t *testing.T) *rand.Rand {
	var h uint64 = 1469598103934665603
	for _, c := range []byte(t.Name()) {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return rand.New(rand.NewPCG(h, 0x9e3779b97f4a7c15))
}

// Randn returns n standard-normal values scaled by std.
func Randn(r *rand.Rand, n int, std float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64() * std
	}
	return v
}

// Quantize returns v as a buffer of dtype d would hold it, so references are
// computed from exactly the values the backend sees.
func Quantize(d kernels.DType, v []float64) []float64 {
	return kernels.DecodeF64(d, kernels.EncodeF64(d, v))
}

// Put allocates a buffer of dtype d holding v (rounded to d) and returns it
// with the rounded values.
func Put(t *testing.T, b kernels.Backend, d kernels.DType, v []float64) (kernels.Buffer, []float64) {
	t.Helper()
	buf, err := b.Alloc(d, len(v))
	if err != nil {
		t.Fatalf("alloc %v[%d]: %v", d, len(v), err)
	}
	b.Upload(buf, 0, kernels.EncodeF64(d, v))
	return buf, Quantize(d, v)
}

// Poisoned allocates a buffer of n elements filled with NaN (or -1 for I32),
// so an element an op forgets to write shows up in the comparison.
func Poisoned(t *testing.T, b kernels.Backend, d kernels.DType, n int) kernels.Buffer {
	t.Helper()
	buf, err := b.Alloc(d, n)
	if err != nil {
		t.Fatalf("alloc %v[%d]: %v", d, n, err)
	}
	if d == kernels.I32 {
		b.Fill(buf, -1)
	} else {
		b.Fill(buf, math.NaN())
	}
	return buf
}

// Get downloads a buffer as float64 values.
func Get(t *testing.T, b kernels.Backend, buf kernels.Buffer) []float64 {
	t.Helper()
	raw := make([]byte, buf.Len()*buf.DType().Size())
	if err := b.Download(raw, buf, 0); err != nil {
		t.Fatalf("download: %v", err)
	}
	return kernels.DecodeF64(buf.DType(), raw)
}

// Check fails the test when got is further than tol from want.
func Check(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if e := kernels.RelErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g (first values got %v want %v)", what, e, tol, head(got), head(want))
	}
}

func head(v []float64) string {
	if len(v) > 4 {
		v = v[:4]
	}
	return fmt.Sprintf("%.6g", v)
}

// OpenCUDA opens the GPU backend, or skips the test where there is none.
// The caller's package registers "cuda" (a blank import of kernels/cuda).
func OpenCUDA(t testing.TB) kernels.Backend {
	t.Helper()
	b, err := kernels.Open("cuda", 0)
	if err != nil {
		t.Skipf("no CUDA device, GPU test skipped: %v", err)
	}
	return b
}
