package data

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestSymlinksAndNestedFolders: linked "N_name" folders and linked images
// are read; a link back to an ancestor is refused as a loop; a broken link
// and every folder that is not read (nested ones, "N_name" folders beside
// images) are reported by name; hidden folders are ignored; a configured
// folder given twice under two names is read once.
func TestSymlinksAndNestedFolders(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	img := func(path string) {
		writeFile(t, path, pngBytes(t, smoothImage(r, 40, 40)))
		writeFile(t, strings.TrimSuffix(path, ".png")+".txt", []byte("1girl"))
	}
	elsewhere := t.TempDir()
	img(filepath.Join(elsewhere, "2_linked", "l.png"))
	img(filepath.Join(elsewhere, "single", "s.png"))

	root := t.TempDir()
	img(filepath.Join(root, "10_alice", "a.png"))
	img(filepath.Join(root, "10_alice", "extras", "e.png"))  // nested inside an N_name folder
	img(filepath.Join(root, "10_alice", ".thumbs", "t.png")) // hidden: ignored
	must(t, os.Symlink(filepath.Join(elsewhere, "2_linked"), filepath.Join(root, "2_linked")))
	must(t, os.Symlink(root, filepath.Join(root, "3_loop")))
	must(t, os.Symlink(filepath.Join(root, "gone"), filepath.Join(root, "4_broken")))
	must(t, os.Symlink(filepath.Join(elsewhere, "single", "s.png"), filepath.Join(root, "10_alice", "s.png")))
	must(t, os.Symlink(filepath.Join(elsewhere, "single", "s.txt"), filepath.Join(root, "10_alice", "s.txt")))
	os.MkdirAll(filepath.Join(root, "notes"), 0o755) // a plain folder among N_name ones

	flat := t.TempDir() // images and an N_name folder side by side
	img(filepath.Join(flat, "f.png"))
	img(filepath.Join(flat, "5_unused", "u.png"))
	alias := filepath.Join(t.TempDir(), "alias")
	must(t, os.Symlink(flat, alias))

	o := testOptions(root)
	o.Folders = []Folder{{Path: root}, {Path: flat}, {Path: alias}}
	ds, rep, err := Scan(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, it := range ds.Items {
		kept = append(kept, fmt.Sprintf("%s×%d", filepath.Base(it.Path), it.Repeats))
	}
	sort.Strings(kept)
	if want := []string{"a.png×10", "f.png×1", "l.png×2", "s.png×10"}; strings.Join(kept, " ") != strings.Join(want, " ") {
		t.Errorf("kept %v, want %v", kept, want)
	}
	reasons := map[string]string{}
	for _, p := range rep.Skipped {
		reasons[filepath.Base(p.Path)] = p.Reason
	}
	for name, want := range map[string]string{
		"3_loop":   "symbolic link loop",
		"4_broken": "broken symbolic link",
		"extras":   "nested folder, not read",
		"notes":    "nested folder, not read",
		"5_unused": "nested folder, not read",
		"alias":    "the same folder as " + flat,
	} {
		if !strings.Contains(reasons[name], want) {
			t.Errorf("%s: reason %q, want %q", name, reasons[name], want)
		}
	}
	if len(rep.Skipped) != 6 {
		t.Errorf("skipped %v, want the six above", rep.Skipped)
	}
	if !strings.Contains(rep.Table(), "extras: nested folder") {
		t.Errorf("the report table does not name the nested folder:\n%s", rep.Table())
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
