package autograd

import "github.com/newbie-train/newbie-train/kernels"

// Normal returns a step tensor of N(0, 1) draws from the engine's
// counter-based generator; the draw advances the generator's offset by the
// tensor's size, so a run that restores RandomState draws the same values.
func (e *Engine) Normal(d kernels.DType, shape []int) *Tensor {
	t := e.newTensor(d, shape)
	if t.st != nil {
		e.b.RandNormal(t.st.buf, e.rngSeed, e.takeRandom(t.Len()), 0, 1)
	}
	return t
}
