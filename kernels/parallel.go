package kernels

import (
	"runtime"
	"sync"
)

// ParallelFor runs body over [0, n) split into contiguous chunks of at
// least grain items, one goroutine per chunk, up to the number of CPUs.
// Each index is handled by exactly one call, so results do not depend on
// scheduling. The CPU backend's kernels and the host-side conversions of
// whole weight tensors (decoding a file's values, encoding them for a
// backend) share it.
func ParallelFor(n, grain int, body func(lo, hi int)) {
	if n <= 0 {
		return
	}
	workers := runtime.GOMAXPROCS(0)
	if grain < 1 {
		grain = 1
	}
	chunks := min(workers, (n+grain-1)/grain)
	if chunks <= 1 {
		body(0, n)
		return
	}
	var wg sync.WaitGroup
	per := (n + chunks - 1) / chunks
	for lo := 0; lo < n; lo += per {
		hi := min(lo+per, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			body(lo, hi)
		}()
	}
	wg.Wait()
}
