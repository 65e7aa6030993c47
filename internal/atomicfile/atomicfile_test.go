package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestWriteFileFailureKeepsOld: a failed write leaves the old file and no
// temporary.
func TestWriteFileFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteBytes(p, []byte("old")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := WriteFile(p, func(w io.Writer) error { w.Write([]byte("half")); return boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v, want the fill error", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("file now %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left %d entries", len(ents))
	}
}

// TestRemoveStale: temporaries of every writer are removed, an aside whose
// original is gone is put back, and other files stay.
func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, folder bool) {
		p := filepath.Join(dir, name)
		if folder {
			os.Mkdir(p, 0o755)
			os.WriteFile(filepath.Join(p, "inner"), []byte("x"), 0o644)
		} else {
			os.WriteFile(p, []byte("x"), 0o644)
		}
	}
	mk("keep.safetensors", false)
	mk(".hidden-but-mine", false)
	mk(".lora.safetensors.tmp-1a2b3c", false) // an interrupted WriteFile
	mk("lora.safetensors.tmp-4242", false)    // an interrupted safetensors.Write
	mk(".tmp-state-00000005-99", true)        // an old-style state temporary
	mk(".lora_peft.tmp-abc", true)            // an interrupted folder write
	mk(".state-00000007.tmp-def.old", true)   // aside of a state whose rename never came
	mk("state-00000008", true)                // ...and one whose did
	mk(".state-00000008.tmp-0ff.old", true)   //
	removed, restored, err := RemoveStale(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	want := []string{".hidden-but-mine", "keep.safetensors", "state-00000007", "state-00000008"}
	if !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
	if len(removed) != 5 || len(restored) != 1 || filepath.Base(restored[0]) != "state-00000007" {
		t.Errorf("removed %v, restored %v", removed, restored)
	}
	if _, err := os.Stat(filepath.Join(dir, "state-00000007", "inner")); err != nil {
		t.Errorf("restored folder lost its contents: %v", err)
	}
	if _, _, err := RemoveStale(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("missing folder: %v", err)
	}
}
