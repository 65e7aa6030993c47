package cpu

import "github.com/newbie-train/newbie-train/kernels"

// RandNormal fills dst with element i = kernels.NormalAt(seed, offset+i,
// mean, std): computed in float64 and stored once (through float32 for
// BF16/F16, like every store of this backend). Because each element depends
// only on its index, the draw is split across goroutines freely.
func (c *Backend) RandNormal(dst kernels.Buffer, seed, offset uint64, mean, std float64) {
	d := c.floatOperand("RandNormal", "dst", dst, -1)
	if d == nil {
		return
	}
	randFill(d, func(i uint64) float64 { return kernels.NormalAt(seed, offset+i, mean, std) })
}

// RandUniform fills dst with element i = kernels.UniformAt(seed, offset+i,
// lo, hi), computed in float64 and stored once.
func (c *Backend) RandUniform(dst kernels.Buffer, seed, offset uint64, lo, hi float64) {
	d := c.floatOperand("RandUniform", "dst", dst, -1)
	if d == nil {
		return
	}
	randFill(d, func(i uint64) float64 { return kernels.UniformAt(seed, offset+i, lo, hi) })
}

// randFill stores f(i) at every element i of d.
func randFill(d *buffer, f func(uint64) float64) {
	kernels.ParallelFor(d.n, 4096, func(lo, hi int) {
		var tmp [ewChunk]float64
		for i := lo; i < hi; i += ewChunk {
			m := min(ewChunk, hi-i)
			for k := range tmp[:m] {
				tmp[k] = f(uint64(i + k))
			}
			writeReal(d, i, tmp[:m])
		}
	})
}
