package cuda

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// cacheMagic starts every cache file; the format version is part of it so a
// layout change makes old entries unreadable rather than misread.
const cacheMagic = "newbie-train cubin v1\n"

// kernelCache keeps compiled CUBINs on disk so a program compiles each
// kernel source once per (source, GPU architecture, NVRTC version). Entries
// carry a SHA-256 of their payload: a truncated or corrupted file is rebuilt,
// never loaded into the GPU.
type kernelCache struct {
	dir string
}

// defaultCacheDir is os.UserCacheDir()/newbie-train/cuda, or "" (no disk
// cache, compile every time) when the user has no cache folder.
func defaultCacheDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "newbie-train", "cuda")
}

// cacheKey names the entry for one source compiled for one architecture by
// one NVRTC version (and one set of options).
func cacheKey(name, src string, arch, rtcMajor, rtcMinor int, opts []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00nvrtc %d.%d\x00", name, src, archTarget(arch), rtcMajor, rtcMinor)
	for _, o := range opts {
		fmt.Fprintf(h, "%s\x00", o)
	}
	return fmt.Sprintf("%s-sm%d-%s", name, arch, hex.EncodeToString(h.Sum(nil))[:24])
}

func (c *kernelCache) path(key string) string { return filepath.Join(c.dir, key+".cubin") }

// load returns a cached payload when the entry exists and its checksum
// holds. A bad entry is removed so the rebuild can replace it.
func (c *kernelCache) load(key string) ([]byte, bool) {
	if c.dir == "" {
		return nil, false
	}
	raw, err := os.ReadFile(c.path(key))
	if err != nil {
		return nil, false
	}
	payload, ok := decodeEntry(raw)
	if !ok {
		os.Remove(c.path(key))
		return nil, false
	}
	return payload, true
}

// store writes an entry atomically (temporary file, then rename), so a
// crash mid-write leaves either the old entry or none, never half of one.
func (c *kernelCache) store(key string, payload []byte) error {
	if c.dir == "" {
		return nil
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("kernel cache: %w", err)
	}
	f, err := os.CreateTemp(c.dir, key+".tmp*")
	if err != nil {
		return fmt.Errorf("kernel cache: %w", err)
	}
	_, werr := f.Write(encodeEntry(payload))
	cerr := f.Close()
	if werr != nil || cerr != nil {
		os.Remove(f.Name())
		return fmt.Errorf("kernel cache: write %s: %v %v", f.Name(), werr, cerr)
	}
	if err := os.Rename(f.Name(), c.path(key)); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("kernel cache: %w", err)
	}
	return nil
}

// getOrBuild returns the cached payload for key, or builds, stores and
// returns it. A failure to write the cache is not fatal: the build result
// is still good, only the next start will compile again.
func (c *kernelCache) getOrBuild(key string, build func() ([]byte, error)) ([]byte, error) {
	if p, ok := c.load(key); ok {
		return p, nil
	}
	p, err := build()
	if err != nil {
		return nil, err
	}
	_ = c.store(key, p)
	return p, nil
}

func encodeEntry(payload []byte) []byte {
	sum := sha256.Sum256(payload)
	out := make([]byte, 0, len(cacheMagic)+len(sum)+len(payload))
	out = append(out, cacheMagic...)
	out = append(out, sum[:]...)
	return append(out, payload...)
}

func decodeEntry(raw []byte) ([]byte, bool) {
	if !bytes.HasPrefix(raw, []byte(cacheMagic)) || len(raw) < len(cacheMagic)+sha256.Size+1 {
		return nil, false
	}
	rest := raw[len(cacheMagic):]
	payload := rest[sha256.Size:]
	sum := sha256.Sum256(payload)
	if !bytes.Equal(sum[:], rest[:sha256.Size]) {
		return nil, false
	}
	return payload, true
}
