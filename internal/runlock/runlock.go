// Package runlock keeps two processes from writing one folder at once: a
// lock file whose lock the kernel holds for the process (flock on Unix), so
// a killed process's lock is free the moment it dies — stale locks need no
// guessing from PIDs — and two starters racing for it cannot both win.
//
// The file also says who holds it (PID, host, start time, what it is
// doing), for the message a refused second process prints and for the
// "took over the lock of …" note after a crash. Release removes the file,
// so a folder whose run ended cleanly holds no lock file.
package runlock

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Holder describes the process that holds (or held) a lock.
type Holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Started time.Time `json:"started"`
	// What is a line about the holder's work ("training, config 1a2b…").
	What string `json:"what,omitempty"`
}

// String is "PID 123 on host, started 2026-12-02 10:00:00 (training …)".
func (h Holder) String() string {
	s := fmt.Sprintf("PID %d", h.PID)
	if h.Host != "" {
		s += " on " + h.Host
	}
	if !h.Started.IsZero() {
		s += ", started " + h.Started.Local().Format("2006-01-02 15:04:05")
	}
	if h.What != "" {
		s += " (" + h.What + ")"
	}
	return s
}

// HeldError is returned by Acquire when a live process holds the lock.
type HeldError struct {
	Path string
	// Holder is who holds it; zero when it has not written its details
	// yet (it acquired the lock a moment ago).
	Holder Holder
}

func (e *HeldError) Error() string {
	if e.Holder.PID == 0 {
		return fmt.Sprintf("%s is locked by another process that is just starting", e.Path)
	}
	return fmt.Sprintf("%s is locked by %s", e.Path, e.Holder)
}

// Lock is a held lock; Release gives it up.
type Lock struct {
	path string
	f    *os.File
}

// Acquire takes the lock file at path for this process, describing it by
// what. When the file names a holder that is gone (it was killed), the
// lock is taken over and that holder is returned as stale. When a live
// process holds it, the error is a *HeldError naming that process.
func Acquire(path, what string) (l *Lock, stale *Holder, err error) {
	host, _ := os.Hostname()
	me := Holder{PID: os.Getpid(), Host: host, Started: time.Now().UTC().Truncate(time.Second), What: what}
	f, err := lockFile(path)
	if err != nil {
		return nil, nil, err
	}
	var prev Holder
	if raw, rerr := readAll(f); rerr == nil && len(raw) > 0 && json.Unmarshal(raw, &prev) == nil && prev.PID != 0 {
		stale = &prev
	}
	raw, _ := json.Marshal(me)
	if err := rewrite(f, append(raw, '\n')); err != nil {
		unlockFile(path, f)
		return nil, nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{path: path, f: f}, stale, nil
}

// Release removes the lock file and gives the lock up. It is safe to call
// more than once.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := unlockFile(l.path, l.f)
	l.f = nil
	return err
}

// Read returns who the lock file at path names, without taking the lock;
// an absent file is reported as os.ErrNotExist.
func Read(path string) (Holder, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Holder{}, err
	}
	var h Holder
	if err := json.Unmarshal(raw, &h); err != nil {
		return Holder{}, fmt.Errorf("lock %s: %w", path, err)
	}
	return h, nil
}

func readAll(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, st.Size())
	n, err := f.ReadAt(b, 0)
	if err != nil && n != len(b) {
		return nil, err
	}
	return b[:n], nil
}

func rewrite(f *os.File, b []byte) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	return f.Sync()
}
