package train

import (
	"fmt"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// Stepper runs optimizer steps of a LoRA on a frozen model: every
// micro-batch's loss is scaled and back-propagated into the adapters' fp32
// gradients, then one optimizer step unscales, checks, clips and updates.
type Stepper struct {
	Model *nextdit.Model
	LoRA  *lora.Set
	Opt   *optim.Optimizer
}

// MicroBatch is one micro-batch with the noise and timesteps drawn for it.
type MicroBatch struct {
	FlowBatch
	X0 *ag.Tensor
	T  []float64
}

// StepOutcome is what one step did.
type StepOutcome struct {
	// Loss is the mean of the micro-batches' unscaled losses.
	Loss float64
	optim.StepResult
}

// stepKey names a step's shape for its graph region: the micro-batches'
// latent shapes and caption lengths.
func stepKey(micro []MicroBatch) string {
	var sb strings.Builder
	sb.WriteString("train.Step")
	for _, mb := range micro {
		fmt.Fprintf(&sb, " %v/%v", mb.X1.Shape(), mb.CapLens)
	}
	return sb.String()
}

// OptimParams lists a LoRA set's A and B matrices as optimizer parameters,
// named as PEFT names them in memory-free form (<layer>.lora_A / .lora_B).
func OptimParams(s *lora.Set) []optim.Param {
	var ps []optim.Param
	for _, a := range s.Adapters() {
		for _, t := range []*ag.Tensor{a.A, a.B} {
			ps = append(ps, optim.Param{Name: t.Name, Master: t.Buffer(), Grad: t.Grad().Buffer()})
		}
	}
	return ps
}

// Step runs one optimizer step over the micro-batches and ends the engine's
// step (freeing every activation). The caller owns the micro-batches'
// tensors only until Step returns. On a backend with graphs (CUDA) the step
// is a graph region keyed by the micro-batches' shapes: a step that
// repeats one before it is replayed as captured graphs (see
// kernels.Graphs), with the same results.
func (s *Stepper) Step(micro []MicroBatch) (StepOutcome, error) {
	e := s.Model.Engine()
	kernels.BeginGraph(e.Backend(), stepKey(micro))
	defer kernels.EndGraph(e.Backend())
	var out StepOutcome
	losses := make([]*ag.Tensor, 0, len(micro))
	defer func() {
		for _, l := range losses {
			l.Release()
		}
	}()
	for i, mb := range micro {
		loss, err := FlowLoss(s.Model, mb.FlowBatch, mb.X0, mb.T)
		if err != nil {
			e.EndStep()
			return out, fmt.Errorf("micro-batch %d: %w", i, err)
		}
		losses = append(losses, loss.Keep())
		scaled := ag.Scale(loss, s.Opt.LossScale())
		if err := e.Backward(scaled); err != nil {
			e.EndStep()
			return out, fmt.Errorf("micro-batch %d backward: %w", i, err)
		}
		s.Opt.AddMicroBatch()
	}
	res, err := s.Opt.Step()
	out.StepResult = res
	if err != nil {
		e.EndStep()
		return out, err
	}
	for _, l := range losses {
		v, err := l.Item()
		if err != nil {
			e.EndStep()
			return out, err
		}
		out.Loss += v / float64(len(losses))
	}
	s.Opt.ZeroGrad()
	return out, e.EndStep()
}
