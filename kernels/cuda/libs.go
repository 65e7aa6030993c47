package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ebitengine/purego"
)

// libDirs lists, in search order, the folders that may hold the CUDA
// toolkit's libraries (libcublas, libcublasLt, libnvrtc): the toolkit named
// by CUDA_HOME or CUDA_PATH, /usr/local/cuda, every LD_LIBRARY_PATH entry,
// and the nvidia/*/lib folders that PyTorch's pip wheels install. The order
// matters: an explicitly named toolkit wins over whatever a Python
// environment happens to carry.
func libDirs(getenv func(string) string, glob func(string) ([]string, error)) []string {
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if d == "" || seen[d] {
			return
		}
		seen[d] = true
		dirs = append(dirs, d)
	}
	for _, root := range toolkitRoots(getenv) {
		add(filepath.Join(root, "lib64"))
		add(filepath.Join(root, "lib"))
		add(filepath.Join(root, "targets", "x86_64-linux", "lib"))
	}
	for _, d := range strings.Split(getenv("LD_LIBRARY_PATH"), ":") {
		add(d)
	}
	for _, site := range sitePackages(getenv, glob) {
		matches, _ := glob(filepath.Join(site, "nvidia", "*", "lib"))
		sort.Strings(matches)
		for _, m := range matches {
			add(m)
		}
	}
	return dirs
}

// toolkitRoots are the CUDA toolkit folders named by the environment, then
// the conventional install location.
func toolkitRoots(getenv func(string) string) []string {
	var roots []string
	for _, v := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if d := getenv(v); d != "" {
			roots = append(roots, d)
		}
	}
	return append(roots, "/usr/local/cuda")
}

// sitePackages guesses the Python package folders where PyTorch-style
// nvidia-* wheels live: the active virtual environment, PYTHONPATH, the user
// site and the usual system and /opt locations.
func sitePackages(getenv func(string) string, glob func(string) ([]string, error)) []string {
	var out []string
	if v := getenv("VIRTUAL_ENV"); v != "" {
		m, _ := glob(filepath.Join(v, "lib", "python3*", "site-packages"))
		out = append(out, m...)
	}
	for _, d := range strings.Split(getenv("PYTHONPATH"), ":") {
		if d != "" {
			out = append(out, d)
		}
	}
	patterns := []string{
		"/usr/local/lib/python3*/dist-packages",
		"/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3*/dist-packages",
		"/usr/lib/python3*/site-packages",
		"/opt/*/.venv/lib/python3*/site-packages",
		"/opt/*/lib/python3*/site-packages",
	}
	if h := getenv("HOME"); h != "" {
		patterns = append(patterns, filepath.Join(h, ".local", "lib", "python3*", "site-packages"))
	}
	for _, p := range patterns {
		m, _ := glob(p)
		sort.Strings(m)
		out = append(out, m...)
	}
	return out
}

// libCandidates returns the file paths tried, in order, for a library base
// name such as "libcublas": the CUDA 13 soname in every folder, then the
// CUDA 12 one.
func libCandidates(base string, dirs []string) []string {
	var out []string
	for _, ver := range []string{".so.13", ".so.12"} {
		for _, d := range dirs {
			out = append(out, filepath.Join(d, base+ver))
		}
	}
	return out
}

// openFirst dlopens the first candidate that exists and loads. The error,
// when none does, names the library and every path tried, so a user can see
// at once what to install or which variable to set.
func openFirst(what string, candidates []string, exists func(string) bool) (uintptr, string, error) {
	var tried []string
	var loadErrs []string
	for _, p := range candidates {
		if !exists(p) {
			tried = append(tried, p)
			continue
		}
		h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return h, p, nil
		}
		loadErrs = append(loadErrs, fmt.Sprintf("%s: %v", p, err))
	}
	msg := fmt.Sprintf("%s not found; looked for %s", what, strings.Join(tried, ", "))
	if len(loadErrs) > 0 {
		msg += "; found but failed to load: " + strings.Join(loadErrs, "; ")
	}
	return 0, "", errors.New(msg + " (set CUDA_HOME to the CUDA toolkit, or add its lib64 folder to LD_LIBRARY_PATH)")
}

// openDriver loads libcuda.so.1 through the dynamic loader (the driver is
// installed system-wide, usually outside the toolkit), then from the
// folders where container runtimes mount it.
func openDriver() (uintptr, error) {
	h, err := purego.Dlopen("libcuda.so.1", purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err == nil {
		return h, nil
	}
	firstErr := err
	extra := []string{"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib"}
	for _, d := range extra {
		p := filepath.Join(d, "libcuda.so.1")
		if !fileExists(p) {
			continue
		}
		if h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL); err == nil {
			return h, nil
		}
	}
	return 0, fmt.Errorf("the NVIDIA driver library libcuda.so.1 was not found: the dynamic loader (LD_LIBRARY_PATH=%q and the ld.so cache) said %v; also looked in %s (is an NVIDIA driver installed?)",
		os.Getenv("LD_LIBRARY_PATH"), firstErr, strings.Join(extra, ", "))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
