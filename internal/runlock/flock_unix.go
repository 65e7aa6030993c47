//go:build unix

package runlock

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockFile opens (creating) the lock file and takes its flock without
// waiting. The lock is the file's, not the name's: if the holder released
// (removed the file) between our open and our flock, we hold a lock on a
// removed file, so the name is checked to still be that file, and the
// whole thing retried if not.
func lockFile(path string) (*os.File, error) {
	for range 50 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				h, _ := Read(path)
				return nil, &HeldError{Path: path, Holder: h}
			}
			return nil, fmt.Errorf("lock %s: %w (the folder's filesystem may not support locks)", path, err)
		}
		fi, err1 := f.Stat()
		pi, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi, pi) {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("lock %s: the lock file keeps being replaced by other processes", path)
}

// unlockFile removes the name while still holding the lock (so nobody can
// lock the old file after we let go), then releases it.
func unlockFile(path string, f *os.File) error {
	err := os.Remove(path)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unlock %s: %w", path, err)
	}
	return nil
}
