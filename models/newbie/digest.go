package newbie

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

// Encoder identities are part of every cache key, and the cache decides
// what to encode before any encoder is loaded, so they are computed from
// the files: a content digest of the weights (not their names or dates),
// of the tokenizer (its own Identity), the architecture and the dtypes.
// The digest reads every byte of the weights — 8 GB for Gemma 3 4B — so it
// is spread over the cores: each file is cut into 16 MiB chunks hashed in
// parallel (a worker holds one chunk), and the digest is the SHA-256 of the
// chunks' SHA-256s. Results are remembered for the process by path, size
// and modification time.

// digestChunk is the piece of a file each worker hashes.
const digestChunk = 16 << 20

// digestPrefix marks the digest scheme in identities.
const digestPrefix = "sha256x16M:"

var digestMemo sync.Map // fileKey → string

// fileKey identifies a file's version for the memo.
type fileKey struct {
	path  string
	size  int64
	mtime int64
}

// digestFiles is the content digest of files, in order.
func digestFiles(files []string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		d, err := digestFile(f)
		if err != nil {
			return "", err
		}
		h.Write([]byte(d))
	}
	return digestPrefix + hex.EncodeToString(h.Sum(nil)), nil
}

// digestFile is one file's digest: SHA-256 over its size and its chunks'
// SHA-256s.
func digestFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("newbie: digest: %w", err)
	}
	key := fileKey{path, st.Size(), st.ModTime().UnixNano()}
	if d, ok := digestMemo.Load(key); ok {
		return d.(string), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("newbie: digest: %w", err)
	}
	defer f.Close()
	n := int((st.Size() + digestChunk - 1) / digestChunk)
	sums := make([][sha256.Size]byte, n)
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(n, 1)) {
		wg.Go(func() {
			buf := make([]byte, digestChunk)
			for i := range next {
				k, err := f.ReadAt(buf, int64(i)*digestChunk)
				if err != nil && err != io.EOF {
					errs[i] = err
					continue
				}
				sums[i] = sha256.Sum256(buf[:k])
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	h := sha256.New()
	h.Write(binary.LittleEndian.AppendUint64(nil, uint64(st.Size())))
	for i, s := range sums {
		if errs[i] != nil {
			return "", fmt.Errorf("newbie: digest of %s: %w", path, errs[i])
		}
		h.Write(s[:])
	}
	d := hex.EncodeToString(h.Sum(nil))
	digestMemo.Store(key, d)
	return d, nil
}
