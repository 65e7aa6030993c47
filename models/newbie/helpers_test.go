package newbie

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// tinyFolders caches one tiny random model folder per layout for the
// package's tests (writing one takes a fraction of a second, and most
// tests only read it); a test that changes files copies the folder first.
var tinyFolders struct {
	sync.Mutex
	dirs map[Layout]string
	root string
}

// tinyModel returns a tiny random model folder in layout l, written once.
func tinyModel(t *testing.T, l Layout) string {
	t.Helper()
	tinyFolders.Lock()
	defer tinyFolders.Unlock()
	if tinyFolders.dirs == nil {
		root, err := os.MkdirTemp("", "newbie-tiny-")
		if err != nil {
			t.Fatal(err)
		}
		tinyFolders.root, tinyFolders.dirs = root, map[Layout]string{}
	}
	if d, ok := tinyFolders.dirs[l]; ok {
		return d
	}
	dir := filepath.Join(tinyFolders.root, string(l))
	if _, err := WriteRandom(dir, RandomOptions{Layout: l, Size: SizeTiny, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	tinyFolders.dirs[l] = dir
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tinyFolders.root != "" {
		os.RemoveAll(tinyFolders.root)
	}
	os.Exit(code)
}

// copyTree copies a folder (the tiny model) into a fresh temporary one.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		return copyFile(p, filepath.Join(dst, rel))
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// rewrite copies a safetensors file to dst with every key renamed by
// rename (dropped when it returns "") and metadata replaced by meta.
func rewrite(t *testing.T, src, dst string, rename func(string) string, meta map[string]string) {
	t.Helper()
	f, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []safetensors.Tensor
	for _, info := range f.Tensors() {
		name := info.Name
		if rename != nil {
			name = rename(name)
		}
		if name == "" {
			continue
		}
		b, err := f.Bytes(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: append([]byte(nil), b...)})
	}
	if err := safetensors.Write(dst, ts, meta); err != nil {
		t.Fatal(err)
	}
}

// readJSON reads a JSON file as a string (for metadata).
func readJSON(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return string(b)
}
