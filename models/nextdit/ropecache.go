package nextdit

import (
	"fmt"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// ropeSet is one shape's RoPE tables on the device: caption [B, L, hd/2],
// image [B, N, hd/2] and joint [B, S, hd/2], cosines and sines, in the
// activation dtype.
type ropeSet struct {
	capCos, capSin, imgCos, imgSin, jCos, jSin *autograd.Tensor
}

func (r *ropeSet) release() {
	for _, t := range []*autograd.Tensor{r.capCos, r.capSin, r.imgCos, r.imgSin, r.jCos, r.jSin} {
		t.Release()
	}
}

// ropeCacheSize is how many shapes' tables a model keeps: a sampler's run
// repeats one shape, a bucketed training run a few.
const ropeCacheSize = 8

// ropeKey names the tables of one batch shape.
func ropeKey(d kernels.DType, capLens []int, l, ht, wt, s int) string {
	return fmt.Sprintf("%v/%v/%d/%dx%d/%d", d, capLens, l, ht, wt, s)
}

// rope returns the RoPE tables of a batch shape, computed on the host and
// uploaded the first time the shape is seen and kept on the device after
// that: every later evaluation of the shape (each sampling step, each
// training step of a bucket) reads the same buffers, with no host work, no
// upload and, under graph replay, no copy node reading host memory. The
// tables belong to the model (Release frees them), not to the caller.
func (m *Model) rope(capLens []int, l, ht, wt, s int) *ropeSet {
	act := m.actDType()
	key := ropeKey(act, capLens, l, ht, wt, s)
	if r, ok := m.ropes[key]; ok {
		return r
	}
	c, e := m.cfg, m.e
	b, n, half := len(capLens), ht*wt, c.HeadDim()/2
	t := buildRope(c, capLens, l, ht, wt, s)
	up := func(shape []int, v []float64) *autograd.Tensor { return e.FromFloat64(act, shape, v).Keep() }
	r := &ropeSet{
		capCos: up([]int{b, l, half}, t.capCos), capSin: up([]int{b, l, half}, t.capSin),
		imgCos: up([]int{b, n, half}, t.imgCos), imgSin: up([]int{b, n, half}, t.imgSin),
		jCos: up([]int{b, s, half}, t.jointCos), jSin: up([]int{b, s, half}, t.jointSin),
	}
	if m.ropes == nil {
		m.ropes = map[string]*ropeSet{}
	}
	if len(m.ropeOrder) == ropeCacheSize {
		old := m.ropeOrder[0]
		m.ropes[old].release()
		delete(m.ropes, old)
		m.ropeOrder = m.ropeOrder[1:]
	}
	m.ropes[key] = r
	m.ropeOrder = append(m.ropeOrder, key)
	return r
}

// releaseRopes frees the kept tables.
func (m *Model) releaseRopes() {
	for _, r := range m.ropes {
		r.release()
	}
	m.ropes, m.ropeOrder = nil, nil
}
