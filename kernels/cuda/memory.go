package cuda

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/newbie-train/newbie-train/kernels"
)

var (
	_ kernels.DeviceMemory  = (*Backend)(nil)
	_ kernels.AllocRounding = (*Backend)(nil)
	_ kernels.ConstantArena = (*Backend)(nil)
)

// DeviceMemory reports the device's free and total bytes as the driver
// counts them (cuMemGetInfo): free excludes the blocks this backend's
// caching allocator holds, live or cached.
func (c *Backend) DeviceMemory() (free, total int64, err error) {
	if !c.enter("DeviceMemory") {
		defer c.leave()
		return 0, 0, fmt.Errorf("cuda: device memory: backend unusable: %v", c.err)
	}
	defer c.leave()
	var f, t uint64
	var p runtime.Pinner
	p.Pin(&f)
	p.Pin(&t)
	defer p.Unpin()
	if r := c.l.drv.memGetInfo.call(uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t))); r != 0 {
		return 0, 0, fmt.Errorf("cuda: cuMemGetInfo: %s", c.l.drv.errText(r))
	}
	return int64(f), int64(t), nil
}

// AllocSize is the bytes the caching allocator holds for a request of n
// bytes (its size class).
func (c *Backend) AllocSize(n int64) int64 { return roundSize(n) }
