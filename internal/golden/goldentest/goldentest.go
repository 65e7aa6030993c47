// Package goldentest is the test side of package golden: it finds golden
// files or skips the test with a message saying where CI keeps them, and
// fails a test with the relative error and tolerance of a comparison.
package goldentest

import (
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden"
)

// Path returns the golden file or folder at parts (below ../shared/golden
// or $NEWBIE_GOLDEN), or skips the test when it is absent.
func Path(t testing.TB, parts ...string) string {
	t.Helper()
	p, err := golden.Path(parts...)
	if err != nil {
		t.Skipf("golden data absent (CI keeps ../shared/golden beside the checkout; %s overrides): %v", golden.EnvDir, err)
	}
	return p
}

// Open maps the golden file at parts, or skips when it is absent; the file
// is closed when the test ends.
func Open(t testing.TB, parts ...string) *golden.File {
	t.Helper()
	f, err := golden.Open(Path(t, parts...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Tensor reads a reference tensor, failing the test when it cannot.
func Tensor(t testing.TB, f *golden.File, name string) golden.Tensor {
	t.Helper()
	v, err := f.Tensor(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Rows reads a [B, L] integer reference tensor, failing the test when it
// cannot.
func Rows(t testing.TB, f *golden.File, name string) [][]int32 {
	t.Helper()
	v, err := f.Rows(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Check logs the comparison of got with want and fails the test when it is
// beyond tol. It returns the result.
func Check(t testing.TB, name string, got, want []float64, tol float64) golden.Result {
	t.Helper()
	r := golden.Compare(name, got, want, tol)
	if r.OK() {
		t.Log(r)
	} else {
		t.Error(r)
	}
	return r
}
