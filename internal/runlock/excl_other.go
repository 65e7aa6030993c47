//go:build !unix

package runlock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// lockFile creates the lock file exclusively. Without flock a dead
// holder's file cannot be told from a live one's: the error says how to
// clear it by hand.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		h, _ := Read(path)
		return nil, fmt.Errorf("%w (on this system a crashed run's lock is not detected: delete the file if no run is using the folder)", &HeldError{Path: path, Holder: h})
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

func unlockFile(path string, f *os.File) error {
	f.Close()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unlock %s: %w", path, err)
	}
	return nil
}
