package cuda

import (
	"os"
	"sort"
	"testing"
)

// TestKernelSourcesCompile compiles every embedded .cu file for sm_90 with
// whatever NVRTC is found (NEWBIE_TRAIN_NVRTC names a library file, else the
// normal discovery). NVRTC needs no GPU, so this runs on machines without
// one whenever the library exists, and skips otherwise.
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
	for _, f := range names {
		t.Run(f, func(t *testing.T) {
			opts := append(append([]string(nil), nvrtcOptions...), fileOptions[f]...)
			if os.Getenv("NEWBIE_TRAIN_NVRTC_VERBOSE") != "" {
				opts = append(opts, "--ptxas-options=-v")
			}
			cubin, log, err := rtc.compileLog(f, files[f], 90, opts)
			if err != nil {
				t.Fatal(err)
			}
			if os.Getenv("NEWBIE_TRAIN_NVRTC_VERBOSE") != "" {
				t.Log(log)
			}
			if dir := os.Getenv("NEWBIE_TRAIN_CUBIN_DIR"); dir != "" {
				if err := os.WriteFile(dir+"/"+f+".cubin", cubin, 0o644); err != nil {
					t.Error(err)
				}
			}
			if len(cubin) == 0 {
				t.Fatal("empty cubin")
			}
		})
	}
	if len(KernelNames()) < 20 {
		t.Errorf("only %d kernels indexed: %v", len(KernelNames()), KernelNames())
	}
}
