package cuda

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFusedKernelsEmulated runs the fused block ops' kernels on the CPU
// through the CUDA emulator of TestKernelsEmulated (testdata/emu/emu.h):
// NormScale's bf16 row kernels of rownorm_vec.cu (and the plain RMSNorm
// kernels they extend), and fused_norm.cu's generic NormScale kernels, the
// factor's gradient passes and QKVNormRope (bf16 lane-group and generic),
// each against a float64 reference (testdata/emu/fused_checks.cpp). Like
// that test it proves indexing and lane-group logic without a GPU, not
// speed or the device's own rounding; it needs g++ and
// NEWBIE_TRAIN_EMULATE=1.
func TestFusedKernelsEmulated(t *testing.T) {
	if os.Getenv("NEWBIE_TRAIN_EMULATE") == "" {
		t.Skip("set NEWBIE_TRAIN_EMULATE=1 to emulate the fused kernels on the CPU (needs g++)")
	}
	cxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skip("no g++ to build the emulator")
	}
	_, files, err := kernelIndex()
	if err != nil {
		t.Fatal(err)
	}
	emu, err := os.ReadFile("testdata/emu/emu.h")
	if err != nil {
		t.Fatal(err)
	}
	checks, err := os.ReadFile("testdata/emu/fused_checks.cpp")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, prog := range []struct{ name, file string }{{"EMU_NS", "rownorm_vec.cu"}, {"EMU_FUSED", "fused_norm.cu"}} {
		t.Run(prog.name, func(t *testing.T) {
			src := string(emu) + "\n" + emulatedSource(files[prog.file]) + "\n#line 1 \"fused_checks.cpp\"\n" + string(checks)
			cpp := filepath.Join(dir, prog.name+".cpp")
			if err := os.WriteFile(cpp, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			bin := filepath.Join(dir, prog.name)
			if out, err := exec.Command(cxx, "-std=c++17", "-O2", "-w", "-D"+prog.name, "-o", bin, cpp).CombinedOutput(); err != nil {
				t.Fatalf("g++: %v\n%s", err, out)
			}
			var out bytes.Buffer
			run := exec.Command(bin)
			run.Stdout, run.Stderr = &out, &out
			runErr := run.Run()
			sc := bufio.NewScanner(&out)
			for sc.Scan() {
				line := sc.Text()
				t.Log(line)
				if !strings.HasPrefix(line, "PASS ") {
					t.Error(line)
				}
			}
			if runErr != nil {
				t.Errorf("emulated run: %v", runErr)
			}
		})
	}
}
