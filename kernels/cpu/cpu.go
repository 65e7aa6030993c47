// Package cpu is the pure-Go reference implementation of kernels.Backend.
//
// It is the oracle every other backend is checked against and the backend
// of the demo, so each op is written to be right first: it rounds to bf16 and
// fp16 exactly where a GPU would (once, when an op stores its result), it
// accumulates in a fixed order so results are bit-reproducible, and it runs
// in parallel over all cores.
package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	kernels.Register("cpu", func(device int) (kernels.Backend, error) {
		if device != 0 {
			return nil, fmt.Errorf("the cpu backend has one device, 0; asked for %d", device)
		}
		return New(), nil
	})
}

// Backend is the CPU implementation of kernels.Backend. It is safe for use
// by one goroutine at a time, like a GPU stream.
type Backend struct {
	mu        sync.Mutex
	err       error
	allocated int64
	peak      int64
}

// New returns a CPU backend.
func New() *Backend { return &Backend{} }

var _ kernels.Backend = (*Backend)(nil)

// Name returns "cpu".
func (c *Backend) Name() string { return "cpu" }

// buffer holds the elements of one dtype in the matching Go slice: F32 in
// f32, F64 in f64, BF16 and F16 as bit patterns in u16, I32 in i32,
// F8E4M3 as bit patterns in u8.
type buffer struct {
	dt    kernels.DType
	n     int
	f32   []float32
	f64   []float64
	u16   []uint16
	u8    []uint8
	i32   []int32
	freed bool
}

func (b *buffer) DType() kernels.DType { return b.dt }
func (b *buffer) Len() int             { return b.n }

// fail records the first failure; later ones are dropped, as on a GPU where
// the first fault poisons the stream.
func (c *Backend) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = fmt.Errorf("cpu: "+format, args...)
	}
}

// buf checks that b is a live buffer of this backend and returns it; on
// failure it records why (naming the op and the operand) and returns nil.
func (c *Backend) buf(op, operand string, b kernels.Buffer) *buffer {
	cb, ok := b.(*buffer)
	if !ok || cb == nil {
		c.fail("%s: operand %s is not a cpu buffer (%T)", op, operand, b)
		return nil
	}
	if cb.freed {
		c.fail("%s: operand %s was freed", op, operand)
		return nil
	}
	return cb
}

// Alloc returns a zero-filled buffer of n elements.
func (c *Backend) Alloc(d kernels.DType, n int) (kernels.Buffer, error) {
	if n < 0 {
		return nil, fmt.Errorf("cpu: alloc of %d elements", n)
	}
	b := &buffer{dt: d, n: n}
	switch d {
	case kernels.F32:
		b.f32 = make([]float32, n)
	case kernels.F64:
		b.f64 = make([]float64, n)
	case kernels.BF16, kernels.F16:
		b.u16 = make([]uint16, n)
	case kernels.I32:
		b.i32 = make([]int32, n)
	case kernels.F8E4M3:
		b.u8 = make([]uint8, n)
	default:
		return nil, fmt.Errorf("cpu: alloc of unknown dtype %v", d)
	}
	c.mu.Lock()
	c.allocated += int64(n * d.Size())
	c.peak = max(c.peak, c.allocated)
	c.mu.Unlock()
	return b, nil
}

// Free releases b; its memory goes back to the Go heap.
func (c *Backend) Free(b kernels.Buffer) {
	if b == nil {
		return
	}
	cb := c.buf("Free", "b", b)
	if cb == nil {
		return
	}
	cb.freed = true
	cb.f32, cb.f64, cb.u16, cb.i32, cb.u8 = nil, nil, nil, nil, nil
	c.mu.Lock()
	c.allocated -= int64(cb.n * cb.dt.Size())
	c.mu.Unlock()
}

// MemStats reports bytes held by live buffers.
func (c *Backend) MemStats() kernels.MemStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return kernels.MemStats{Allocated: c.allocated, Peak: c.peak, Reserved: c.allocated}
}

// ResetPeak sets the peak to what is allocated now.
func (c *Backend) ResetPeak() {
	c.mu.Lock()
	c.peak = c.allocated
	c.mu.Unlock()
}

// Sync returns and clears the first recorded failure.
func (c *Backend) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.err
	c.err = nil
	return err
}

// Upload copies little-endian host bytes into dst from element off.
func (c *Backend) Upload(dst kernels.Buffer, off int, src []byte) {
	b := c.buf("Upload", "dst", dst)
	if b == nil {
		return
	}
	sz := b.dt.Size()
	if len(src)%sz != 0 || off < 0 || off+len(src)/sz > b.n {
		c.fail("Upload: %d bytes at element %d do not fit a %v buffer of %d elements", len(src), off, b.dt, b.n)
		return
	}
	for i := 0; i < len(src)/sz; i++ {
		switch b.dt {
		case kernels.F32:
			b.f32[off+i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		case kernels.F64:
			b.f64[off+i] = math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:]))
		case kernels.BF16, kernels.F16:
			b.u16[off+i] = binary.LittleEndian.Uint16(src[2*i:])
		case kernels.I32:
			b.i32[off+i] = int32(binary.LittleEndian.Uint32(src[4*i:]))
		case kernels.F8E4M3:
			b.u8[off+i] = src[i]
		}
	}
}

// Download copies elements from src (from element off) into host bytes and
// returns the first failure recorded so far.
func (c *Backend) Download(dst []byte, src kernels.Buffer, off int) error {
	b := c.buf("Download", "src", src)
	if b != nil {
		sz := b.dt.Size()
		if len(dst)%sz != 0 || off < 0 || off+len(dst)/sz > b.n {
			c.fail("Download: %d bytes at element %d do not fit a %v buffer of %d elements", len(dst), off, b.dt, b.n)
		} else {
			for i := 0; i < len(dst)/sz; i++ {
				switch b.dt {
				case kernels.F32:
					binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(b.f32[off+i]))
				case kernels.F64:
					binary.LittleEndian.PutUint64(dst[8*i:], math.Float64bits(b.f64[off+i]))
				case kernels.BF16, kernels.F16:
					binary.LittleEndian.PutUint16(dst[2*i:], b.u16[off+i])
				case kernels.I32:
					binary.LittleEndian.PutUint32(dst[4*i:], uint32(b.i32[off+i]))
				case kernels.F8E4M3:
					dst[i] = b.u8[off+i]
				}
			}
		}
	}
	return c.Sync()
}
