//go:build !unix

package safetensors

import (
	"errors"
	"os"
)

// mapFile is unavailable off Unix; Open falls back to reading the file.
func mapFile(*os.File, int64) ([]byte, error) { return nil, errors.New("mmap not supported") }

func unmapFile([]byte) error { return nil }
