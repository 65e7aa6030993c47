package configs

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// examples are the documented example configs, built into the binary so
// that it can write them out for a user to start from.
//
//go:embed lora.yaml demo.yaml
var examples embed.FS

// ExampleNames are the names Example accepts: "lora.yaml" (a real run on a
// GPU, every key commented) and "demo.yaml" (the tiny model on the CPU).
var ExampleNames = []string{"lora.yaml", "demo.yaml"}

// Example returns the text of the named example config.
func Example(name string) ([]byte, error) {
	b, err := examples.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("config: no example %q (have %s)", name, orList(ExampleNames))
	}
	return b, nil
}

// WriteExample writes the named example config into dir and returns the
// file's path. An existing file is left alone and reported, so that a
// user's edited config is never overwritten.
func WriteExample(name, dir string) (string, error) {
	b, err := Example(name)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("config: %s already exists; not overwriting it", path)
		}
		return "", fmt.Errorf("config: writing example: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return "", fmt.Errorf("config: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("config: writing %s: %w", path, err)
	}
	return path, nil
}
