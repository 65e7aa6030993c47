package cuda

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestKernelsEmulated runs kernel files on the CPU through a small CUDA
// emulator (testdata/emu): the implicit-GEMM convolution, the fast
// GroupNorm and the tensor-core attention forward at head sizes 64 (the
// device-verified kernel, which checks the emulator's ldmatrix and mma
// layouts), 96 and 256, on bf16 and fp16 operands, and the tiled SIMT
// forward (attention_simt.cu) at 64, 96 and 128 on fp32, bf16 and fp16
// operands, each against a float64
// reference, with cp.async copies landing early and late. It proves
// indexing, tiling, masking and fragment logic without a GPU; it says
// nothing of speed, of real asynchrony or of the device's own rounding. It
// needs g++ and NEWBIE_TRAIN_EMULATE=1 (a minute of compiling and
// emulating).
func TestKernelsEmulated(t *testing.T) {
	cxx, files, emu := emulatorSetup(t)
	checks, err := os.ReadFile("testdata/emu/checks.cpp")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, prog := range []struct {
		name, file string
		late       bool // also run with cp.async copies landing late
	}{
		{"EMU_CONV", "conv_tc.cu", true},
		{"EMU_GN", "groupnorm_fast.cu", true},
		{"EMU_ATTN", "attention_tc.cu", true},
		{"EMU_SIMT", "attention_simt.cu", false},
		{"EMU_CONVGEMM", "conv_gemm.cu", false},
		{"EMU_THIN", "gemm_thin.cu", true},
	} {
		// files[f] is what NVRTC compiles: common.cuh, the file's headers
		// and the file, which the emulator replaces in part.
		src := string(emu) + "\n" + emulatedSource(files[prog.file]) + "\n#line 1 \"checks.cpp\"\n" + string(checks)
		lates := []string{"0", "1"}
		if !prog.late {
			lates = lates[:1]
		}
		for _, late := range lates {
			name := prog.name + map[string]string{"0": "/copies-early", "1": "/copies-late"}[late]
			if !prog.late {
				name = prog.name
			}
			t.Run(name, func(t *testing.T) {
				lines, runErr := runEmulated(t, cxx, dir, prog.name, src, "-D"+prog.name, "-DEMU_LATE="+late)
				for _, line := range lines {
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
}

// emulatorSetup skips unless NEWBIE_TRAIN_EMULATE is set and g++ exists,
// and returns the compiler, the kernel sources and the emulator header.
func emulatorSetup(t *testing.T) (cxx string, files map[string]string, emu []byte) {
	t.Helper()
	if os.Getenv("NEWBIE_TRAIN_EMULATE") == "" {
		t.Skip("set NEWBIE_TRAIN_EMULATE=1 to emulate kernels on the CPU (needs g++)")
	}
	cxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skip("no g++ to build the emulator")
	}
	if _, files, err = kernelIndex(); err != nil {
		t.Fatal(err)
	}
	if emu, err = os.ReadFile("testdata/emu/emu.h"); err != nil {
		t.Fatal(err)
	}
	return cxx, files, emu
}

// runEmulated compiles one emulated program (src, with the -D defines)
// into dir, runs it and returns its output lines and the run's error.
func runEmulated(t *testing.T, cxx, dir, name, src string, defines ...string) ([]string, error) {
	t.Helper()
	cpp := filepath.Join(dir, name+".cpp")
	if err := os.WriteFile(cpp, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name+strings.Join(defines, ""))
	args := append(append([]string{"-std=c++17", "-O2", "-w"}, defines...), "-o", bin, cpp)
	if out, err := exec.Command(cxx, args...).CombinedOutput(); err != nil {
		t.Fatalf("g++: %v\n%s", err, out)
	}
	var out bytes.Buffer
	run := exec.Command(bin)
	run.Stdout, run.Stderr = &out, &out
	runErr := run.Run()
	var lines []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, runErr
}

// emulatedFuncs are the device functions written in PTX that emu.h
// replaces; their CUDA definitions are cut from the sources.
var emulatedFuncs = []string{"f16_to_f32", "f32_to_f16", "smem_u32", "cp16", "cp_commit", "cp_wait0", "cp_wait", "ldsm4", "ldsm4t",
	"red2", "mma16816", "mma16816_f16", "ex2", "pack2", "pack2_f16", "f32_to_bf16", "bf16x2_pack"}

var deviceFuncHead = regexp.MustCompile(`(?m)^(template <[^>\n]*>\n)?__device__ __forceinline__ [^\n(]*?\b(\w+)\(`)

// emulatedSource turns a kernel translation unit into C++ for the emulator:
// the PTX-only functions are removed and the shared-memory qualifiers
// become what the emulator gives them (static block-wide arrays, one
// dynamic buffer).
func emulatedSource(src string) string {
	var b strings.Builder
	for {
		m := deviceFuncHead.FindStringSubmatchIndex(src)
		if m == nil {
			b.WriteString(src)
			break
		}
		name := src[m[4]:m[5]]
		if !slices.Contains(emulatedFuncs, name) {
			b.WriteString(src[:m[1]])
			src = src[m[1]:]
			continue
		}
		b.WriteString(src[:m[0]])
		src = src[m[0]+bodyEnd(src[m[0]:]):]
	}
	out := b.String()
	out = strings.ReplaceAll(out, "extern __shared__ __align__(16)", "extern") // emu.h's smem_raw is aligned
	out = strings.ReplaceAll(out, "extern __shared__", "extern")
	out = strings.ReplaceAll(out, "__shared__", "static")
	out = strings.ReplaceAll(out, "__align__(", "alignas(")
	return out
}

// bodyEnd is the offset just past the brace that closes the first block in
// s, skipping string literals (PTX templates hold braces).
func bodyEnd(s string) int {
	depth, inStr := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case inStr:
		case c == '{':
			depth++
		case c == '}':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return len(s)
}
