package cuda

import (
	"os"
	"slices"
	"sort"
	"testing"
)

// TestKernelSourcesCompile compiles every embedded .cu file for sm_75, sm_89
// and sm_90 with whatever NVRTC is found (NEWBIE_TRAIN_NVRTC names a library
// file, else the normal discovery). NVRTC needs no GPU, so this runs on
// machines without one whenever the library exists, and skips otherwise.
func TestKernelSourcesCompile(t *testing.T) {
	var rtc *nvrtcAPI
	if p := os.Getenv("NEWBIE_TRAIN_NVRTC"); p != "" {
		r, err := loadNVRTC(p)
		if err != nil {
			t.Fatal(err)
		}
		rtc = r
	} else {
		dirs := libDirs(os.Getenv, globFiles)
		var found string
		for _, c := range libCandidates("libnvrtc", dirs) {
			if fileExists(c) {
				found = c
				break
			}
		}
		if found == "" {
			t.Skip("no libnvrtc found (set NEWBIE_TRAIN_NVRTC to check the kernel sources without a GPU)")
		}
		r, err := loadNVRTC(found)
		if err != nil {
			t.Skip(err)
		}
		rtc = r
	}
	_, files, err := kernelIndex()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	// The GPUs people train on: Turing (sm_75, 16 GB cards, fp16), Ada
	// (sm_89, Ampere's features and more) and Hopper (sm_90a). The
	// tensor-core files (those compiled with tc.cuh) need
	// sm_80 (bf16 mma.sync, cp.async); the backend never launches them below
	// that (tensorCoreAttention, convTC).
	for _, arch := range []int{75, 89, 90} {
		for _, f := range names {
			if arch < 80 && slices.Contains(fileHeaders[f], "tc.cuh") {
				continue
			}
			t.Run(archTarget(arch)+"/"+f, func(t *testing.T) { compileOne(t, rtc, f, files[f], arch) })
		}
	}
	if len(KernelNames()) < 20 {
		t.Errorf("only %d kernels indexed: %v", len(KernelNames()), KernelNames())
	}
}

// compileOne builds one kernel file for arch and checks that a CUBIN came out
// (NEWBIE_TRAIN_NVRTC_VERBOSE logs ptxas's register report,
// NEWBIE_TRAIN_CUBIN_DIR keeps the CUBINs).
func compileOne(t *testing.T, rtc *nvrtcAPI, f, src string, arch int) {
	opts := append(append([]string(nil), nvrtcOptions...), fileOptions[f]...)
	if os.Getenv("NEWBIE_TRAIN_NVRTC_VERBOSE") != "" {
		opts = append(opts, "--ptxas-options=-v")
	}
	cubin, log, err := rtc.compileLog(f, src, arch, opts)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("NEWBIE_TRAIN_NVRTC_VERBOSE") != "" {
		t.Log(log)
	}
	if dir := os.Getenv("NEWBIE_TRAIN_CUBIN_DIR"); dir != "" {
		if err := os.WriteFile(dir+"/"+archTarget(arch)+"-"+f+".cubin", cubin, 0o644); err != nil {
			t.Error(err)
		}
	}
	if len(cubin) == 0 {
		t.Fatal("empty cubin")
	}
}
