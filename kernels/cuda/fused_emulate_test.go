package cuda

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

// TestFusedKernelsEmulated runs the fused block ops' kernels on the CPU
// through the CUDA emulator of TestKernelsEmulated (testdata/emu/emu.h):
// NormScale's bf16 row kernels of rownorm_vec.cu (and the plain RMSNorm
// kernels they extend), reduce.cu's AdamW with its working copies and
// zeroed gradients, and fused_norm.cu's generic NormScale kernels, the
// factor's gradient passes and QKVNormRope (bf16 lane-group and generic),
// each against a float64 reference (testdata/emu/fused_checks.cpp); and
// common.cuh's FP8 E4M3 conversions against kernels' (EMU_FP8). Like
// that test it proves indexing and lane-group logic without a GPU, not
// speed or the device's own rounding; it needs g++ and
// NEWBIE_TRAIN_EMULATE=1.
func TestFusedKernelsEmulated(t *testing.T) {
	cxx, files, emu := emulatorSetup(t)
	checks, err := os.ReadFile("testdata/emu/fused_checks.cpp")
	if err != nil {
		t.Fatal(err)
	}
	shim, err := os.ReadFile("testdata/emu/fused_shim.h")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, prog := range []struct{ name, file string }{
		{"EMU_NS", "rownorm_vec.cu"}, {"EMU_FUSED", "fused_norm.cu"}, {"EMU_FP8", "fused_norm.cu"}, {"EMU_SWIGLU", "elementwise.cu"}, {"EMU_ADAMW", "reduce.cu"},
	} {
		t.Run(prog.name, func(t *testing.T) {
			src := string(emu) + "\n" + string(shim) + "\n" + emulatedSource(files[prog.file]) + "\n#line 1 \"fused_checks.cpp\"\n" + string(checks)
			lines, runErr := runEmulated(t, cxx, dir, prog.name, src, "-D"+prog.name)
			for _, line := range lines {
				if prog.name == "EMU_FP8" {
					if err := checkFP8Line(line); err != nil {
						t.Error(err)
					}
					continue
				}
				t.Log(line)
				if !strings.HasPrefix(line, "PASS ") {
					t.Error(line)
				}
			}
			if prog.name == "EMU_FP8" {
				t.Logf("%d FP8 conversions agree with kernels'", len(lines))
			}
			if runErr != nil {
				t.Errorf("emulated run: %v", runErr)
			}
		})
	}
}

// checkFP8Line compares one line of the EMU_FP8 program, "DEC code bits"
// or "ENC bits code", with kernels' conversions.
func checkFP8Line(line string) error {
	var kind string
	var a, b uint64
	if _, err := fmt.Sscanf(line, "%s %x %x", &kind, &a, &b); err != nil {
		return fmt.Errorf("unreadable line %q: %v", line, err)
	}
	switch kind {
	case "DEC":
		got, want := math.Float32frombits(uint32(b)), kernels.F32FromF8E4M3(uint8(a))
		if got != want && !(math.IsNaN(float64(got)) && math.IsNaN(float64(want))) {
			return fmt.Errorf("code %#02x: the CUDA decode gives %v, kernels %v", a, got, want)
		}
	case "ENC":
		v := math.Float32frombits(uint32(a))
		if want := kernels.F8E4M3FromF32(v); uint8(b) != want {
			return fmt.Errorf("%v (%#08x): the CUDA encode gives %#02x, kernels %#02x", v, a, b, want)
		}
	default:
		return fmt.Errorf("unexpected line %q", line)
	}
	return nil
}
