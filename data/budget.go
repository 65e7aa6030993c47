package data

import "sync"

// pixelBudget bounds how many pixels are decoded at once across the
// workers of a scan or a cache build: a decoded image costs 4–8 bytes a
// pixel, its float copy 12 more, so with the budget at max_pixels the
// decoders together hold at most about 20 bytes × max_pixels, whatever the
// number of workers (one 64 MP image, or many small ones side by side).
type pixelBudget struct {
	mu    sync.Mutex
	cond  *sync.Cond
	limit int64
	used  int64
}

func newPixelBudget(limit int) *pixelBudget {
	if limit <= 0 {
		limit = DefaultMaxPixels
	}
	b := &pixelBudget{limit: int64(limit)}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// acquire waits until n pixels fit in the budget and takes them. An image
// larger than the whole budget (never the case after the scan's size
// check) waits for an empty budget. It returns what to give back.
func (b *pixelBudget) acquire(n int) int64 {
	if b == nil {
		return 0
	}
	want := min(int64(n), b.limit)
	b.mu.Lock()
	for b.used+want > b.limit {
		b.cond.Wait()
	}
	b.used += want
	b.mu.Unlock()
	return want
}

// release gives back what acquire took.
func (b *pixelBudget) release(n int64) {
	if b == nil || n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}
