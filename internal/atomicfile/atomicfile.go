// Package atomicfile writes files and folders so that a crash (kill -9,
// power loss) leaves either the old version or the new one, never a part,
// and gives every output the program's one file-mode policy: files 0644,
// folders 0755, both narrowed by the user's umask (os.CreateTemp and
// os.MkdirTemp would give 0600 and 0700, which other tools and users on a
// shared machine then cannot read).
//
// A write goes to a hidden temporary sibling named ".<name>.tmp-<random>",
// is fsynced, and is renamed over the target. RemoveStale removes what an
// interrupted write left behind; callers run it only on folders no other
// process is writing (an output folder under its run lock).
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// File and folder modes of everything the program writes (before the
// umask).
const (
	FileMode fs.FileMode = 0o644
	DirMode  fs.FileMode = 0o755
)

// tempMarker sits between a target's name and the random suffix of its
// temporary sibling.
const tempMarker = ".tmp-"

// asideSuffix ends the name an existing folder is moved to while its
// replacement is renamed into place.
const asideSuffix = ".old"

// TempName is the hidden temporary sibling name for target base (without
// the random part): ".<base>.tmp-".
func TempName(base string) string { return "." + base + tempMarker }

func random() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// create makes a new temporary sibling of path, a file or a folder, with
// the policy's mode.
func create(path string, dir bool) (string, *os.File, error) {
	parent, base := filepath.Split(filepath.Clean(path))
	if parent == "" {
		parent = "."
	}
	for range 100 {
		r, err := random()
		if err != nil {
			return "", nil, err
		}
		tmp := filepath.Join(parent, TempName(base)+r)
		if dir {
			err = os.Mkdir(tmp, DirMode)
			if err == nil {
				return tmp, nil, nil
			}
		} else {
			f, ferr := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
			if ferr == nil {
				return tmp, f, nil
			}
			err = ferr
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", nil, err
		}
	}
	return "", nil, fmt.Errorf("no free temporary name beside %s", path)
}

// TempDir creates an empty hidden temporary folder beside target (mode
// 0755) for the caller to fill and then pass to ReplaceDir.
func TempDir(target string) (string, error) {
	tmp, _, err := create(target, true)
	return tmp, err
}

// WriteFile writes path atomically: write fills the temporary file, which
// is then fsynced and renamed over path. On any error path is untouched
// and the temporary file removed.
func WriteFile(path string, write func(io.Writer) error) (err error) {
	tmp, f, err := create(path, false)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = write(f); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	SyncDir(filepath.Dir(path))
	return nil
}

// WriteBytes writes b to path atomically (see WriteFile).
func WriteBytes(path string, b []byte) error {
	return WriteFile(path, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// ReplaceDir renames the filled temporary folder tmp (from TempDir) to
// target. An existing target is moved aside first and removed once the new
// one is in place, so a crash leaves the old folder, the new one, or the
// old one under its aside name (which RemoveStale puts back).
func ReplaceDir(tmp, target string) error {
	SyncDir(tmp)
	var aside string
	if _, err := os.Lstat(target); err == nil {
		aside = tmp + asideSuffix
		if err := os.Rename(target, aside); err != nil {
			return fmt.Errorf("moving the old %s aside: %w", target, err)
		}
	}
	if err := os.Rename(tmp, target); err != nil {
		if aside != "" {
			os.Rename(aside, target)
		}
		return fmt.Errorf("renaming %s into place: %w", tmp, err)
	}
	SyncDir(filepath.Dir(target))
	if aside != "" {
		os.RemoveAll(aside)
	}
	return nil
}

// Remove deletes a file or a whole folder so that a kill midway leaves a
// temporary (which RemoveStale takes) rather than a folder with some files
// missing that still looks like the real one: it is renamed first.
func Remove(path string) error {
	parent, base := filepath.Split(filepath.Clean(path))
	doomed := filepath.Join(parent, TempName(base)+"deleting")
	if err := os.Rename(path, doomed); err != nil {
		return err
	}
	return os.RemoveAll(doomed)
}

// SyncDir persists a folder's entries (a rename inside it). Failures are
// ignored: they cannot undo a complete rename.
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// pidTemp matches the temporary name older versions' safetensors.Write
// used ("<name>.tmp-<pid>").
var pidTemp = regexp.MustCompile(`\.tmp-\d+$`)

// IsTemp reports whether a folder entry's name is a temporary of an
// interrupted atomic write: ".<name>.tmp-<random>" (this package),
// ".tmp-<name>" (older state folders), "<name>.tmp-<pid>" (older
// safetensors files), or an aside of any of them.
func IsTemp(name string) bool {
	name = strings.TrimSuffix(name, asideSuffix)
	return strings.HasPrefix(name, ".") && strings.Contains(name, tempMarker) || pidTemp.MatchString(name)
}

// target is the name an aside folder was moved from, when its name says it
// (".<base>.tmp-<random>.old" → base).
func target(name string) (string, bool) {
	if !strings.HasSuffix(name, asideSuffix) || !strings.HasPrefix(name, ".") {
		return "", false
	}
	i := strings.LastIndex(name, tempMarker)
	if i <= 1 {
		return "", false
	}
	return name[1:i], true
}

// RemoveStale removes the temporaries interrupted writes left directly in
// dir and returns what it removed. An aside whose original is missing (the
// crash came between the two renames of ReplaceDir) is renamed back
// instead, and listed as restored. dir must not be written by anyone else
// meanwhile. A missing dir is not an error.
func RemoveStale(dir string) (removed, restored []string, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cleaning %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !IsTemp(name) {
			continue
		}
		p := filepath.Join(dir, name)
		if orig, ok := target(name); ok {
			op := filepath.Join(dir, orig)
			if _, serr := os.Lstat(op); errors.Is(serr, fs.ErrNotExist) {
				if err := os.Rename(p, op); err != nil {
					errs = append(errs, err)
					continue
				}
				restored = append(restored, op)
				continue
			}
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	if len(errs) > 0 {
		return removed, restored, fmt.Errorf("cleaning %s: %w", dir, errors.Join(errs...))
	}
	return removed, restored, nil
}
