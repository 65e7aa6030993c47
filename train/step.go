package train

import (
	"fmt"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/dist"
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
	// Comm, when set, makes the step one rank's part of a data-parallel
	// step: during the last micro-batch's backward the gradients are summed
	// over the ranks in buckets, each as soon as the backward has finished
	// it, and the optimizer averages over every rank's micro-batches. Every
	// rank then holds the same gradients and takes the same step.
	Comm dist.Communicator

	reducer *dist.Reducer
	index   map[*ag.Tensor]int // a LoRA tensor's place in OptimParams
	// bucketBytes overrides bucketBytes (tests: buckets small enough that
	// the tiny model has several).
	bucketBytes int64
	// replanned: the buckets follow the backward's order (after the first
	// step).
	replanned bool
}

// MicroBatch is one micro-batch with the noise and timesteps drawn for it.
type MicroBatch struct {
	FlowBatch
	X0 *ag.Tensor
	T  []float64
	// dropout, when set, is where the micro-batch's adapter dropout draws
	// from (the engine's stream is left as it is otherwise).
	dropout *randomStart
}

// randomStart is a seed and offset of the engine's counter-based stream.
type randomStart struct{ seed, offset uint64 }

// StepOutcome is what one step did.
type StepOutcome struct {
	// Loss is the mean of the micro-batches' unscaled losses; Losses are
	// those losses, in order.
	Loss   float64
	Losses []float64
	optim.StepResult
}

// bucketBytes is the size gradients are grouped to for summing: PyTorch
// DDP's default bucket_cap_mb of 25.
const bucketBytes = 25 << 20

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
	for _, t := range loraTensors(s) {
		ps = append(ps, optim.Param{Name: t.Name, Master: t.Buffer(), Grad: t.Grad().Buffer()})
	}
	return ps
}

// AttachWorkingCopies gives every adapter matrix of s a working copy in
// the compute dtype d (bf16 or fp16 autocast; nothing for fp32): a kept
// tensor that the forward reads instead of casting the fp32 master anew
// every step (autograd.Tensor.SetWorking) and that opt — built over
// OptimParams(s) — writes in the pass that updates the master. It casts the
// masters into them once, so attach after loading or resuming them; a
// master written any other way later needs opt.RefreshWorking before the
// next forward. The
// copies take the bytes the per-step casts took, and 478 cast kernels a
// step at full size are saved (961 with checkpointing, whose recomputes
// cast again).
func AttachWorkingCopies(s *lora.Set, opt *optim.Optimizer, d kernels.DType) error {
	if d != kernels.BF16 && d != kernels.F16 {
		return nil
	}
	ts := loraTensors(s)
	if len(ts) == 0 {
		return nil
	}
	e := ts[0].Engine()
	bufs := make([]kernels.Buffer, len(ts))
	for i, t := range ts {
		w := e.Zeros(d, t.Shape()).Keep()
		if err := e.Err(); err != nil {
			return fmt.Errorf("working copy of %s: %w", t.Name, err)
		}
		if err := t.SetWorking(w); err != nil {
			return err
		}
		bufs[i] = w.Buffer()
	}
	if err := opt.SetWorking(bufs); err != nil {
		return err
	}
	opt.RefreshWorking()
	return e.Err()
}

// loraTensors are a set's A and B matrices in OptimParams order.
func loraTensors(s *lora.Set) []*ag.Tensor {
	var ts []*ag.Tensor
	for _, a := range s.Adapters() {
		ts = append(ts, a.A, a.B)
	}
	return ts
}

// Step runs one optimizer step over the micro-batches and ends the engine's
// step (freeing every activation). The caller owns the micro-batches'
// tensors only until Step returns. On a backend with graphs (CUDA) the step
// is a graph region keyed by the micro-batches' shapes: a step that
// repeats one before it is replayed as captured graphs (see
// kernels.Graphs), with the same results; a collective closes the graph
// segment before it. After an error of a data-parallel step the Stepper is
// not to be used again (the ranks no longer agree on where their sums are);
// a training run stops and aborts the job.
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
	fail := func(err error) (StepOutcome, error) {
		e.OnGradReady(nil)
		e.EndStep()
		return out, err
	}
	for i, mb := range micro {
		var readyErr error
		if s.Comm != nil && i == len(micro)-1 {
			// Set before the forward: a checkpointed block notes the
			// adapters it reads as it runs.
			if err := s.hookReducer(&readyErr); err != nil {
				return fail(err)
			}
		}
		if mb.dropout != nil {
			e.SeedRandom(mb.dropout.seed, mb.dropout.offset)
		}
		loss, err := FlowLoss(s.Model, mb.FlowBatch, mb.X0, mb.T)
		if err != nil {
			return fail(fmt.Errorf("micro-batch %d: %w", i, err))
		}
		losses = append(losses, loss.Keep())
		scaled := ag.Scale(loss, s.Opt.LossScale())
		if err := e.Backward(scaled); err != nil {
			return fail(fmt.Errorf("micro-batch %d backward: %w", i, err))
		}
		s.Opt.AddMicroBatch()
		if s.Comm != nil && i == len(micro)-1 {
			e.OnGradReady(nil)
			err := s.reducer.Finish()
			if readyErr != nil {
				err = readyErr
			}
			if err == nil && !s.replanned {
				err = s.replan()
			}
			if err != nil {
				return fail(fmt.Errorf("summing the gradients over the ranks: %w", err))
			}
			// The sums brought every other rank's micro-batches into the
			// gradients: the optimizer averages over all of them.
			for range (s.Comm.WorldSize() - 1) * len(micro) {
				s.Opt.AddMicroBatch()
			}
		}
	}
	res, err := s.Opt.Step()
	out.StepResult = res
	if err != nil {
		return fail(err)
	}
	for _, l := range losses {
		v, err := l.Item()
		if err != nil {
			return fail(err)
		}
		out.Losses = append(out.Losses, v)
	}
	out.Loss = meanLoss(out.Losses)
	if !res.Applied {
		// An applied update zeroed the gradients as it read them.
		s.Opt.ZeroGrad()
	}
	return out, e.EndStep()
}

// meanLoss is a step's loss: the mean of its micro-batches' losses, added
// in order (so N ranks' losses, put in the order of the batches they took,
// give the number one process accumulating them gives).
func meanLoss(losses []float64) float64 {
	var m float64
	for _, v := range losses {
		m += v / float64(len(losses))
	}
	return m
}

// replan regroups the buckets in the order the first step's backward
// finished the gradients (see dist.Reducer.Replan), rank 0's order for
// every rank, so that the plans agree.
func (s *Stepper) replan() error {
	s.replanned = true
	b := s.Model.Engine().Backend()
	n := len(s.index)
	v := make([]float64, n) // 1 + gradient index, in order; 0 past the end
	for k, i := range s.reducer.Order() {
		v[k] = float64(i + 1)
	}
	buf, err := b.Alloc(kernels.F32, n)
	if err != nil {
		return err
	}
	defer b.Free(buf)
	b.Upload(buf, 0, kernels.EncodeF64(kernels.F32, v))
	if err := s.Comm.Broadcast(buf, 0); err != nil {
		return fmt.Errorf("rank 0's gradient order: %w", err)
	}
	raw := make([]byte, 4*n)
	if err := b.Download(raw, buf, 0); err != nil {
		return err
	}
	var order []int
	for _, x := range kernels.DecodeF64(kernels.F32, raw) {
		if x > 0 {
			order = append(order, int(x)-1)
		}
	}
	return s.reducer.Replan(order)
}

// hookReducer makes the engine report each LoRA gradient that its
// backward has finished to the Reducer, which sums the buckets that are
// complete; the first error lands in *readyErr.
func (s *Stepper) hookReducer(readyErr *error) error {
	ts := loraTensors(s.LoRA)
	if s.reducer == nil {
		grads := make([]kernels.Buffer, len(ts))
		s.index = make(map[*ag.Tensor]int, len(ts))
		for i, t := range ts {
			grads[i] = t.Grad().Buffer()
			s.index[t] = i
		}
		size := s.bucketBytes
		if size == 0 {
			size = bucketBytes
		}
		r, err := dist.NewReducer(s.Comm, grads, size)
		if err != nil {
			return err
		}
		s.reducer = r
	}
	s.Model.Engine().OnGradReady(func(leaf *ag.Tensor) {
		if i, ok := s.index[leaf]; ok && *readyErr == nil {
			*readyErr = s.reducer.Ready(i)
		}
	})
	return nil
}
