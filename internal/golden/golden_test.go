package golden

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func TestResults(t *testing.T) {
	rs := Results{
		Compare("a", []float64{1}, []float64{1}, 1e-6),
		Compare("b", []float64{1.1}, []float64{1}, 1e-2),
		Compare("c", []float64{1.5}, []float64{1}, 1e-2),
		{Name: "nan", Err: math.NaN(), Tol: 1},
	}
	if !rs[0].OK() || rs[1].OK() || rs[3].OK() {
		t.Fatalf("OK wrong: %v", rs)
	}
	if n := len(rs.Failed()); n != 3 {
		t.Errorf("%d failed, want 3", n)
	}
	err := rs.Err()
	if !errors.Is(err, ErrBeyondTolerance) || !strings.Contains(err.Error(), "worst nan") {
		t.Errorf("Err = %v, want the NaN named as worst", err)
	}
	if (Results{rs[0]}).Err() != nil {
		t.Error("a passing result gave an error")
	}
	var b strings.Builder
	if err := rs.Write(&b); err != nil || !strings.Contains(b.String(), "BEYOND") {
		t.Errorf("Write: %v\n%s", err, b.String())
	}
}

func TestDir(t *testing.T) {
	t.Setenv(EnvDir, "")
	d, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	// This package sits two folders below the module root.
	wd, _ := os.Getwd()
	if want := filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(wd))), "shared", "golden"); d != want {
		t.Errorf("Dir = %s, want %s", d, want)
	}
	t.Setenv(EnvDir, "/elsewhere")
	if d, _ := Dir(); d != "/elsewhere" {
		t.Errorf("Dir with %s set = %s", EnvDir, d)
	}
	if _, err := Path("no-such-file"); err == nil {
		t.Error("Path of a missing file gave no error")
	}
}

func TestRows(t *testing.T) {
	p := filepath.Join(mustDir(t), "gemma3", "gemma_tiny.golden.safetensors")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("golden data absent: %v", err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := f.Rows("in.input_ids")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0][0] != 2 {
		t.Errorf("input_ids rows %v: want 2 rows starting with <bos> = 2", rows)
	}
	if _, err := f.Rows("out.hidden_states_m2"); err == nil {
		t.Error("Rows of a [B, L, D] tensor gave no error")
	}
	if _, err := f.Tensor("no.such"); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("missing tensor: %v, want an error naming the file", err)
	}
}

func mustDir(t *testing.T) string {
	d, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestFrozenDType(t *testing.T) {
	for name, want := range map[string]kernels.DType{"fp64": kernels.F64, "fp32": kernels.F32, "bf16": kernels.BF16} {
		if d, err := FrozenDType(name); err != nil || d != want {
			t.Errorf("FrozenDType(%q) = %v, %v; want %v", name, d, err, want)
		}
	}
	if _, err := FrozenDType("fp8"); err == nil || !strings.Contains(err.Error(), "fp8") {
		t.Errorf("FrozenDType(fp8): %v", err)
	}
}
