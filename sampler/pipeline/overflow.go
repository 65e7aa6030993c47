package pipeline

import (
	"errors"
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// ErrOverflow is what an fp16 evaluation whose activations overflowed
// wraps.
var ErrOverflow = errors.New("non-finite activations")

// overflowWatch finds where an fp16 model evaluation first makes ±Inf or
// NaN: fp16 ends at 65504, and a residual stream that grows past it turns
// the sample into NaN and the image black. Each block's output gets the
// backend's non-finite test (one pass over it, no host transfer), whose flag
// is copied into its slot of one flags buffer; the velocity gets the last
// slot; the flags are read once per evaluation.
type overflowWatch struct {
	e       *ag.Engine
	blocks  []string
	slot    map[string]int
	flags   *ag.Tensor // F32 [blocks+1]
	scratch *ag.Tensor // F32 [1]
}

// newOverflowWatch makes a watch over every block of cfg.
func newOverflowWatch(e *ag.Engine, cfg nextdit.Config) *overflowWatch {
	w := &overflowWatch{e: e, slot: map[string]int{}}
	add := func(format string, n int) {
		for i := range n {
			name := fmt.Sprintf(format, i)
			w.slot[name] = len(w.blocks)
			w.blocks = append(w.blocks, name)
		}
	}
	add("context_refiner.%d", cfg.NRefinerLayers)
	add("noise_refiner.%d", cfg.NRefinerLayers)
	add("layers.%d", cfg.NLayers)
	w.blocks = append(w.blocks, "final_layer (the velocity)")
	w.flags = e.Zeros(kernels.F32, []int{len(w.blocks)}).Keep()
	w.scratch = e.Zeros(kernels.F32, []int{1}).Keep()
	return w
}

// flag tests t and records the result in slot i.
func (w *overflowWatch) flag(i int, t *ag.Tensor) {
	be := w.e.Backend()
	be.NonFinite(w.scratch.Buffer(), []kernels.Buffer{t.Buffer()})
	be.Copy2D(w.flags.Buffer(), i, 1, w.scratch.Buffer(), 0, 1, 1, 1)
}

// observe is the model's nextdit.BlockObserver.
func (w *overflowWatch) observe(block string, out *ag.Tensor) {
	if i, ok := w.slot[block]; ok {
		w.flag(i, out)
	}
}

// check tests the velocity, reads the flags and names the first block
// (in the order the forward runs them) whose output was not finite.
func (w *overflowWatch) check(v *ag.Tensor) error {
	w.flag(len(w.blocks)-1, v)
	fs, err := w.flags.Values()
	if err != nil {
		return err
	}
	for i, f := range fs {
		if f != 0 {
			return fmt.Errorf("fp16: %w (±Inf or NaN) in the output of %s: fp16 ends at 65504 and this model's activations go past it; sample with --precision bf16 (or fp32)", ErrOverflow, w.blocks[i])
		}
	}
	return nil
}

// release frees the watch's buffers.
func (w *overflowWatch) release() {
	w.flags.Release()
	w.scratch.Release()
}
