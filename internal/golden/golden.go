// Package golden reads the reference numbers the upstream PyTorch code
// computed (../shared/golden beside the checkout; see its README) and
// compares this program's tensors with them: one relative-error measure,
// one result type carrying the tolerance it was judged by, one report.
// Tests compare through goldentest; `newbie-train parity` and the replay of
// the reference training run compare through this package directly.
package golden

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// EnvDir names the environment variable that overrides where the golden
// folder (the one holding nextdit/, vae/, gemma3/, …) is: the GPU machine
// gets a copy somewhere else.
const EnvDir = "NEWBIE_GOLDEN"

// Dir returns the golden folder: $NEWBIE_GOLDEN when set, else
// shared/golden beside the checkout that holds the working directory (the
// folder above the nearest go.mod's).
func Dir() (string, error) {
	if d := os.Getenv(EnvDir); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("golden: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(filepath.Dir(d), "shared", "golden"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("golden: no go.mod above %s to find ../shared/golden from; set %s", wd, EnvDir)
		}
	}
}

// Path is the golden folder joined with parts, when that file or folder
// exists.
func Path(parts ...string) (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(append([]string{d}, parts...)...)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("golden: %w", err)
	}
	return p, nil
}

// File is an opened golden safetensors file.
type File struct {
	*safetensors.File
}

// Open maps a golden file.
func Open(path string) (*File, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("golden: %w", err)
	}
	return &File{f}, nil
}

// Tensor is one reference tensor, widened to float64.
type Tensor struct {
	Name   string
	Shape  []int
	Values []float64
}

// Tensor reads a reference tensor; a missing name is an error naming the
// file.
func (f *File) Tensor(name string) (Tensor, error) {
	info, ok := f.Info(name)
	if !ok {
		return Tensor{}, fmt.Errorf("golden: %s has no tensor %s", f.Path(), name)
	}
	v, err := f.Float64(name)
	if err != nil {
		return Tensor{}, fmt.Errorf("golden: %s: %w", f.Path(), err)
	}
	return Tensor{Name: name, Shape: info.Shape, Values: v}, nil
}

// Rows reads a [B, L] tensor of integers (token ids, masks; stored as I32
// or F32) as B rows of int32.
func (f *File) Rows(name string) ([][]int32, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	if len(t.Shape) != 2 {
		return nil, fmt.Errorf("golden: %s: %s is %v, want [B, L]", f.Path(), name, t.Shape)
	}
	rows := make([][]int32, t.Shape[0])
	for b := range rows {
		rows[b] = make([]int32, t.Shape[1])
		for i := range rows[b] {
			v := t.Values[b*t.Shape[1]+i]
			if v != math.Trunc(v) || math.Abs(v) > math.MaxInt32 {
				return nil, fmt.Errorf("golden: %s: %s[%d,%d] = %g is not an integer", f.Path(), name, b, i, v)
			}
			rows[b][i] = int32(v)
		}
	}
	return rows, nil
}

// Result is one comparison: what was compared, its relative error and the
// tolerance it is held to.
type Result struct {
	Name string
	Err  float64
	Tol  float64
}

// OK reports whether the error is within the tolerance (a NaN error never
// is).
func (r Result) OK() bool { return r.Err <= r.Tol }

// String is the result as one line.
func (r Result) String() string {
	verdict := "ok"
	if !r.OK() {
		verdict = "BEYOND TOLERANCE"
	}
	return fmt.Sprintf("%s: rel err %.3g (tolerance %.3g) %s", r.Name, r.Err, r.Tol, verdict)
}

// Compare measures got against want by kernels.RelErr.
func Compare(name string, got, want []float64, tol float64) Result {
	return Result{Name: name, Err: kernels.RelErr(got, want), Tol: tol}
}

// ErrBeyondTolerance is what Results.Err wraps when any comparison failed.
var ErrBeyondTolerance = errors.New("beyond tolerance")

// Results is a list of comparisons, in the order they were made.
type Results []Result

// Failed lists the results beyond their tolerance.
func (rs Results) Failed() Results {
	var out Results
	for _, r := range rs {
		if !r.OK() {
			out = append(out, r)
		}
	}
	return out
}

// Err is nil when every result is within its tolerance, and otherwise an
// error wrapping ErrBeyondTolerance that names the worst one.
func (rs Results) Err() error {
	bad := rs.Failed()
	if len(bad) == 0 {
		return nil
	}
	worst := bad[0]
	for _, r := range bad[1:] {
		if !(r.Err/r.Tol <= worst.Err/worst.Tol) {
			worst = r
		}
	}
	return fmt.Errorf("%d of %d comparisons %w, worst %s: %.3g > %.3g", len(bad), len(rs), ErrBeyondTolerance, worst.Name, worst.Err, worst.Tol)
}

// Write prints the results as an aligned table.
func (rs Results) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "tensor\trel err\ttolerance\t")
	for _, r := range rs {
		verdict := "ok"
		if !r.OK() {
			verdict = "BEYOND"
		}
		fmt.Fprintf(tw, "%s\t%.3g\t%.3g\t%s\n", r.Name, r.Err, r.Tol, verdict)
	}
	return tw.Flush()
}
