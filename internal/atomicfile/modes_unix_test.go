//go:build unix

package atomicfile

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// umask is the process's file-creation mask (read by setting and
// restoring it).
func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

// TestModes: files come out 0644 and folders 0755 (less the umask), not
// the 0600/0700 of os.CreateTemp and os.MkdirTemp.
func TestModes(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "a.png")
	if err := WriteBytes(f, []byte("x")); err != nil {
		t.Fatal(err)
	}
	tmp, err := TempDir(filepath.Join(dir, "folder"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ReplaceDir(tmp, filepath.Join(dir, "folder")); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{f: FileMode &^ umask(), filepath.Join(dir, "folder"): DirMode &^ umask()} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
}
