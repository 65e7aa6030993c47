package cuda

import (
	"container/heap"
	"fmt"
	"slices"
	"sync"
)

// Size classes of the caching allocator. Small blocks round to 512 bytes
// (the alignment every kernel's 16-byte vector access needs, and then some),
// medium ones to 64 KiB, large ones to 2 MiB. Small and medium blocks are
// carved from shared slabs rather than asked of the driver one by one: the
// driver hands out whole 2 MiB pages, so a 1.2 MB LoRA tensor or a 9 KB norm
// weight would otherwise hold a page each (0.84 GiB over the full model's
// LoRA state and weights, measured).
const (
	smallAlign  = 512
	smallLimit  = 1 << 20
	mediumAlign = 64 << 10
	largeAlign  = 2 << 20
	// defaultSlab is the size of a slab; blocks up to a quarter of it are
	// carved from slabs.
	defaultSlab = 32 << 20
)

// roundSize is the size class of a request of n bytes.
func roundSize(n int64) int64 {
	if n <= 0 {
		return 0
	}
	align := int64(largeAlign)
	switch {
	case n < smallLimit:
		align = smallAlign
	case n < defaultSlab/4:
		align = mediumAlign
	}
	return (n + align - 1) / align * align
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

// freeList is one size class's cached blocks, a min-heap of addresses.
type freeList []uint64

func (l freeList) Len() int           { return len(l) }
func (l freeList) Less(i, j int) bool { return l[i] < l[j] }
func (l freeList) Swap(i, j int)      { l[i], l[j] = l[j], l[i] }
func (l *freeList) Push(x any)        { *l = append(*l, x.(uint64)) }
func (l *freeList) Pop() any {
	old := *l
	p := old[len(old)-1]
	*l = old[:len(old)-1]
	return p
}

// cachingAllocator hands out device blocks from per-size free lists and
// asks the device only when a list is empty. Work runs on one stream, so a
// block freed on the host and reused by the next allocation is safe: the
// new owner's kernels queue behind the old owner's.
//
// A request takes the lowest-addressed free block of its class, so which
// block it gets depends on the set of free blocks, not on the order they
// were freed in: a training step that allocates and frees the same sequence
// as the last one, from the same free set, gets the same addresses — what
// replaying a captured graph of the step needs (graph.go).
type cachingAllocator struct {
	mu        sync.Mutex
	dev       deviceMemory
	free      map[int64]*freeList
	blocks    map[uint64]int64 // blocks held from the device, live or cached
	allocated int64
	peak      int64
	reserved  int64

	// Slabs: small and medium blocks are carved from the current slab by a
	// bump pointer; carved blocks are cached and reused like the others but
	// only whole slabs go back to the device (at releaseAll).
	slabSize int64
	slabs    []uint64
	slabBase uint64
	slabUsed int64
	carved   map[uint64]bool

	// Constant arenas: a model's frozen weights, announced by
	// reserveConstants, are packed at 512-byte alignment into one device
	// allocation instead of one 2 MiB-rounded block each (NewBie's 239
	// large weights waste 0.29 GiB that way). An arena goes back to the
	// device when its last block is freed: models are released whole.
	constHint int64
	arenas    []*constArena
	inArena   map[uint64]*constArena
}

// constArena is one device allocation that constants are carved from by a
// bump pointer.
type constArena struct {
	base       uint64
	size, used int64
	live       int
}

func newCachingAllocator(dev deviceMemory) *cachingAllocator {
	return &cachingAllocator{dev: dev, free: map[int64]*freeList{}, blocks: map[uint64]int64{},
		slabSize: defaultSlab, carved: map[uint64]bool{}, inArena: map[uint64]*constArena{}}
}

// constAlign is the alignment of blocks carved from constant arenas.
const constAlign = 512

// reserveConstants announces that count constants of n bytes in all
// follow: the next arena is made large enough for all of them, each
// rounded to constAlign.
func (a *cachingAllocator) reserveConstants(n int64, count int) {
	a.mu.Lock()
	a.constHint = n + int64(count)*constAlign
	a.mu.Unlock()
}

// getConstant returns a block for a buffer that lives until its model is
// released: carved from an arena with room (first fit), from a new arena of
// the announced size, or, with no announcement pending, an ordinary block.
func (a *cachingAllocator) getConstant(n int64) (uint64, int64, error) {
	size := (n + constAlign - 1) / constAlign * constAlign
	if size == 0 {
		return 0, 0, nil
	}
	a.mu.Lock()
	var ar *constArena
	for _, c := range a.arenas {
		if c.used+size <= c.size {
			ar = c
			break
		}
	}
	if ar == nil && a.constHint > 0 {
		want := (max(a.constHint, size) + largeAlign - 1) / largeAlign * largeAlign
		a.constHint = 0
		base, err := a.deviceAlloc(want)
		if err != nil {
			a.mu.Unlock()
			return 0, 0, fmt.Errorf("alloc a %d-byte arena for constants (%d held by live buffers, %d reserved): %w", want, a.allocated, a.reserved, err)
		}
		ar = &constArena{base: base, size: want}
		a.arenas = append(a.arenas, ar)
		a.reserved += want
	}
	if ar == nil {
		a.mu.Unlock()
		return a.get(n)
	}
	p := ar.base + uint64(ar.used)
	ar.used += size
	ar.live++
	a.inArena[p] = ar
	a.account(size)
	a.mu.Unlock()
	return p, size, nil
}

// putConstant frees a block carved from an arena and reports whether p was
// one; the arena goes back to the device with its last block.
func (a *cachingAllocator) putConstant(p uint64, size int64) bool {
	ar := a.inArena[p]
	if ar == nil {
		return false
	}
	delete(a.inArena, p)
	a.allocated -= size
	if ar.live--; ar.live > 0 {
		return true
	}
	a.arenas = slices.DeleteFunc(a.arenas, func(c *constArena) bool { return c == ar })
	a.reserved -= ar.size
	// Queued kernels may still read the arena's last blocks. A failed sync
	// means a broken context: the arena is then left to the context's
	// teardown rather than freed under a kernel that may still run.
	if a.dev.sync() == nil {
		a.dev.free(ar.base)
	}
	return true
}

// deviceAlloc asks the device for size bytes, giving the cache back and
// retrying once when the device is full.
func (a *cachingAllocator) deviceAlloc(size int64) (uint64, error) {
	p, err := a.dev.alloc(size)
	if _, oom := err.(errOutOfMemory); oom {
		// The cache may hold enough in other size classes: give it back
		// to the driver (after the stream drains) and retry once.
		if serr := a.releaseLocked(); serr != nil {
			return 0, serr
		}
		p, err = a.dev.alloc(size)
	}
	return p, err
}

// get returns a block of at least n bytes and its size class.
func (a *cachingAllocator) get(n int64) (uint64, int64, error) {
	size := roundSize(n)
	if size == 0 {
		return 0, 0, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.free[size]; l != nil && l.Len() > 0 {
		p := heap.Pop(l).(uint64)
		a.account(size)
		return p, size, nil
	}
	if size <= a.slabSize/4 {
		if a.slabBase == 0 || a.slabUsed+size > a.slabSize {
			base, err := a.deviceAlloc(a.slabSize)
			if err != nil {
				return 0, 0, fmt.Errorf("alloc %d bytes (a new %d-byte slab; %d held by live buffers, %d reserved): %w", n, a.slabSize, a.allocated, a.reserved, err)
			}
			a.slabs = append(a.slabs, base)
			a.slabBase, a.slabUsed = base, 0
			a.reserved += a.slabSize
		}
		p := a.slabBase + uint64(a.slabUsed)
		a.slabUsed += size
		a.carved[p] = true
		a.account(size)
		return p, size, nil
	}
	p, err := a.deviceAlloc(size)
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
	if a.putConstant(p, size) {
		return
	}
	l := a.free[size]
	if l == nil {
		l = &freeList{}
		a.free[size] = l
	}
	heap.Push(l, p)
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
		kept := freeList{}
		for _, p := range *l {
			if a.carved[p] { // part of a slab: stays cached
				kept = append(kept, p)
				continue
			}
			a.dev.free(p)
			delete(a.blocks, p)
			a.reserved -= size
		}
		if len(kept) == 0 {
			delete(a.free, size)
		} else {
			heap.Init(&kept)
			a.free[size] = &kept
		}
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
	for _, p := range a.slabs {
		a.dev.free(p)
	}
	for _, ar := range a.arenas {
		a.dev.free(ar.base)
	}
	a.arenas, a.inArena, a.constHint = nil, map[uint64]*constArena{}, 0
	a.blocks = map[uint64]int64{}
	a.free = map[int64]*freeList{}
	a.carved = map[uint64]bool{}
	a.slabs, a.slabBase, a.slabUsed = nil, 0, 0
	a.allocated, a.reserved = 0, 0
	return err
}
