package textenc

import (
	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// ropeCache keeps the rotary tables of the last batch shape a model ran:
// an encoder called batch after batch (a dataset's captions) rebuilds and
// uploads the same [B, L, headDim/2] tables every call otherwise — for
// Gemma 3 4B at 8×512 two million values cast on the host, about 5 % of the
// forward on the H200. The tables are kept tensors, freed by release.
type ropeCache struct {
	entries []ropeEntry
}

type ropeEntry struct {
	d        kernels.DType
	r        Rope
	headDim  int
	b, l     int
	cos, sin *ag.Tensor
}

// tables returns the cached tables for the shape, building them (and
// dropping the entries of any other shape) when missing. The caller must
// not release them.
func (c *ropeCache) tables(e *ag.Engine, d kernels.DType, r Rope, headDim, b, l int) (cos, sin *ag.Tensor) {
	for _, en := range c.entries {
		if en.d == d && en.r == r && en.headDim == headDim && en.b == b && en.l == l {
			return en.cos, en.sin
		}
	}
	// A batch of another shape: the old tables will not be asked for
	// again soon (Gemma asks for two per shape, local and global).
	kept := c.entries[:0]
	for _, en := range c.entries {
		if en.b == b && en.l == l {
			kept = append(kept, en)
		} else {
			en.cos.Release()
			en.sin.Release()
		}
	}
	c.entries = kept
	cos, sin = ropeTensors(e, d, r, headDim, b, l)
	if e.Err() != nil {
		// Not cached: the failure surfaces through the engine, and a
		// later batch after EndStep builds them afresh.
		return cos, sin
	}
	c.entries = append(c.entries, ropeEntry{d: d, r: r, headDim: headDim, b: b, l: l, cos: cos.Keep(), sin: sin.Keep()})
	return cos, sin
}

// release frees every cached table.
func (c *ropeCache) release() {
	for _, en := range c.entries {
		en.cos.Release()
		en.sin.Release()
	}
	c.entries = nil
}
