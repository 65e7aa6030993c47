package newbie

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDigest: the content digest of a file of several chunks is stable,
// changes with one byte anywhere (the memo follows the file's size and
// modification time), and does not depend on the file's name.
func TestDigest(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, digestChunk+12345)
	for i := range data {
		data[i] = byte(i * 7)
	}
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "renamed.bin")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	da, err := digestFiles([]string{a})
	if err != nil {
		t.Fatal(err)
	}
	db, _ := digestFiles([]string{b})
	again, _ := digestFiles([]string{a})
	if da != db || da != again {
		t.Errorf("digests %s, %s, %s of the same bytes", da, db, again)
	}
	data[digestChunk+100]++
	if err := os.WriteFile(a, data, 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute)
	os.Chtimes(a, future, future)
	if dc, _ := digestFiles([]string{a}); dc == da {
		t.Error("a changed byte in the second chunk left the digest as it was")
	}
	if _, err := digestFiles([]string{filepath.Join(dir, "none")}); err == nil {
		t.Error("a missing file has a digest")
	}
}
