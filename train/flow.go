package train

import (
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// FlowBatch is one micro-batch on the device: clean latents and their
// conditioning.
type FlowBatch struct {
	// X1 is the clean latent [B, C, H, W] (data, t = 1).
	X1 *ag.Tensor
	// CapFeats [B, L, D] with each sample's CapLens real tokens first.
	CapFeats *ag.Tensor
	CapLens  []int
	// ClipPooled [B, P], nil for models without the CLIP-pooled path.
	ClipPooled *ag.Tensor
}

// FlowLoss is the flow-matching loss of one micro-batch for noise x0 (shaped
// like X1) and per-sample timesteps t: the mean over samples of each
// sample's mean squared error between the model's velocity at
// x_t = t·x1 + (1−t)·x0 and the target x1 − x0. (Samples of a batch share
// one bucket, hence one size, so this is the plain mean.) The loss is a
// float32 [1] tensor (float64 for a float64 model) on the tape.
func FlowLoss(m *nextdit.Model, b FlowBatch, x0 *ag.Tensor, t []float64) (*ag.Tensor, error) {
	shape := b.X1.Shape()
	if len(shape) != 4 || len(t) != shape[0] {
		return nil, fmt.Errorf("flow loss: %d timesteps for latents %v", len(t), shape)
	}
	e := b.X1.Engine()
	d := b.X1.DType()
	omt := make([]float64, len(t))
	for i, v := range t {
		omt[i] = 1 - v
	}
	bshape := []int{shape[0], 1, 1, 1}
	tt := e.FromFloat64(d, bshape, t)
	ot := e.FromFloat64(d, bshape, omt)
	a, c := ag.Mul(tt, b.X1), ag.Mul(ot, x0)
	xt := ag.Add(a, c)
	target := ag.Sub(b.X1, x0)
	for _, r := range []*ag.Tensor{tt, ot, a, c} {
		r.Release()
	}
	pred, err := m.Forward(nextdit.Inputs{X: xt, T: t, CapFeats: b.CapFeats, CapLens: b.CapLens, ClipPooled: b.ClipPooled})
	if err != nil {
		return nil, err
	}
	loss := ag.MSE(pred, target)
	pred.Release()
	target.Release()
	xt.Release()
	if err := e.Err(); err != nil {
		return nil, fmt.Errorf("flow loss: %w", err)
	}
	return loss, nil
}
