//go:build unix

package safetensors

import (
	"os"
	"syscall"
)

// mapFile maps the whole file read-only. MAP_SHARED with PROT_READ means the
// pages come straight from the page cache: nothing is copied and the kernel
// may drop them under memory pressure, which is what lets a 7 GB model load
// without a second copy.
func mapFile(f *os.File, size int64) ([]byte, error) {
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
}

func unmapFile(b []byte) error { return syscall.Munmap(b) }
