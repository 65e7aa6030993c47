package cuda

import (
	"fmt"
	"sync"
)

// Size classes of the caching allocator. Small blocks round to 512 bytes
// (the alignment every kernel's 16-byte vector access needs, and then some);
// large ones to 2 MiB, the driver's own allocation granularity, so a cached
// block is reused by any tensor of nearly the same size.
const (
	smallAlign = 512
	largeAlign = 2 << 20
	smallLimit = 1 << 20
)

// roundSize is the size class of a request of n bytes.
func roundSize(n int64) int64 {
	if n <= 0 {
		return 0
	}
	if n < smallLimit {
		return (n + smallAlign - 1) / smallAlign * smallAlign
	}
	return (n + largeAlign - 1) / largeAlign * largeAlign
}

// deviceMemory is what the allocator needs from the device: raw allocation,
// release, and a way to wait until queued work no longer uses freed blocks.
// The real backend passes cuMemAlloc/cuMemFree/stream sync; tests a fake.
type deviceMemory interface {
	alloc(bytes int64) (uint64, error)
	free(ptr uint64)
	sync() error
}

// errOutOfMemory is returned by deviceMemory.alloc when the device is full,
// which makes the allocator release its cache and try once more.
type errOutOfMemory struct{ bytes int64 }

func (e errOutOfMemory) Error() string {
	return fmt.Sprintf("out of GPU memory allocating %d bytes", e.bytes)
}

// cachingAllocator hands out device blocks from per-size free lists and
// asks the device only when a list is empty. Work runs on one stream, so a
// block freed on the host and reused by the next allocation is safe: the
// new owner's kernels queue behind the old owner's.
type cachingAllocator struct {
	mu        sync.Mutex
	dev       deviceMemory
	free      map[int64][]uint64
	blocks    map[uint64]int64 // every block held from the device, live or cached
	allocated int64
	peak      int64
	reserved  int64
}

func newCachingAllocator(dev deviceMemory) *cachingAllocator {
	return &cachingAllocator{dev: dev, free: map[int64][]uint64{}, blocks: map[uint64]int64{}}
}

// get returns a block of at least n bytes and its size class.
func (a *cachingAllocator) get(n int64) (uint64, int64, error) {
	size := roundSize(n)
	if size == 0 {
		return 0, 0, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.free[size]; len(l) > 0 {
		p := l[len(l)-1]
		a.free[size] = l[:len(l)-1]
		a.account(size)
		return p, size, nil
	}
	p, err := a.dev.alloc(size)
	if _, oom := err.(errOutOfMemory); oom {
		// The cache may hold enough in other size classes: give it back
		// to the driver (after the stream drains) and retry once.
		if serr := a.releaseLocked(); serr != nil {
			return 0, 0, serr
		}
		p, err = a.dev.alloc(size)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("alloc %d bytes (%d held by live buffers, %d reserved): %w", n, a.allocated, a.reserved, err)
	}
	a.reserved += size
	a.blocks[p] = size
	a.account(size)
	return p, size, nil
}

func (a *cachingAllocator) account(size int64) {
	a.allocated += size
	a.peak = max(a.peak, a.allocated)
}

// put returns a block to its free list.
func (a *cachingAllocator) put(p uint64, size int64) {
	if size == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.free[size] = append(a.free[size], p)
	a.allocated -= size
}

// release gives every cached block back to the device.
func (a *cachingAllocator) release() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.releaseLocked()
}

func (a *cachingAllocator) releaseLocked() error {
	if err := a.dev.sync(); err != nil {
		return err
	}
	for size, l := range a.free {
		for _, p := range l {
			a.dev.free(p)
			delete(a.blocks, p)
			a.reserved -= size
		}
		delete(a.free, size)
	}
	return nil
}

func (a *cachingAllocator) stats() (allocated, peak, reserved int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.allocated, a.peak, a.reserved
}

func (a *cachingAllocator) resetPeak() {
	a.mu.Lock()
	a.peak = a.allocated
	a.mu.Unlock()
}

// releaseAll gives every block back to the device, live ones included: the
// owner is closing and its buffers die with it.
func (a *cachingAllocator) releaseAll() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.dev.sync()
	for p := range a.blocks {
		a.dev.free(p)
	}
	a.blocks = map[uint64]int64{}
	a.free = map[int64][]uint64{}
	a.allocated, a.reserved = 0, 0
	return err
}
