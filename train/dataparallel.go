package train

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/dist"
	"github.com/newbie-train/newbie-train/kernels"
)

// Data-parallel training. Every rank runs this same program over the same
// sequence of batches (the loader's, identical on every rank); a step
// takes world × gradient_accumulation consecutive batches of it, rank r
// the r-th run of gradient_accumulation (dist.Shard's split), and the
// gradients are summed over the ranks during the last backward. So the
// ranks' sum adds, in rank order, exactly the micro-batches one process
// with world × gradient_accumulation micro-batches would accumulate, and
// every rank takes the same optimizer step.
//
// What makes the numbers equal the one-process run's is that every random
// choice is the one that run makes for the same batch position:
//
//   - the timesteps are keyed by the batch's global position already;
//   - the noise of a batch is drawn where the one-process run draws it: at
//     the step's offset of the engine's stream plus the noise sizes of the
//     step's earlier batches, which the ranks tell each other at the start
//     of each step (stepStart), with the stop flag;
//   - adapter dropout (lora.dropout > 0): on one rank the stream runs on as
//     in a plain run; on several, each batch draws from a stream keyed by
//     its global position (dropoutStream), since where the one-process run
//     would draw depends on the shapes of every earlier batch's forward.
//     That run's masks are then not reproduced: the losses differ from the
//     one-process run's by the chance of the masks, not bitwise.
//
// Each step ends with the ranks telling each other their micro-batches'
// losses (agreeLoss): every rank logs, counts non-finite steps and stops on
// the same numbers.

// dropoutStream separates the per-batch dropout streams of a job of several
// ranks from the other draws; a batch at position p starts at p·2⁴⁰, room
// for 10¹² draws per batch.
const dropoutStream = 0x64726f70 // "drop"

// rank is this process's rank in the job the options describe.
func (o Options) rank() int {
	if o.Comm != nil {
		return o.Comm.Rank()
	}
	return o.Dist.Rank
}

func (r *run) rank0() bool { return r.comm == nil || r.comm.Rank() == 0 }

// ranksText is the log's note of a job's size ("" for one process).
func (r *run) ranksText() string {
	if !r.parallel {
		return ""
	}
	return fmt.Sprintf(" on each of %d ranks", r.comm.WorldSize())
}

// openDevice opens the backend — the GPU of the local rank in a job — and
// joins the job.
func (r *run) openDevice(ctx context.Context) error {
	cfg, o := r.cfg, r.opts
	gpu := cfg.GPU
	if o.Dist.Distributed() && o.Comm == nil {
		if cfg.IsSet("gpu") && cfg.GPU != o.Dist.LocalRank {
			return configErr(fmt.Errorf("gpu: %d, but this process is local rank %d of a job, which drives GPU %d: leave gpu out of a job's config (each rank takes the GPU of its LOCAL_RANK; CUDA_VISIBLE_DEVICES chooses which GPUs those are)", cfg.GPU, o.Dist.LocalRank, o.Dist.LocalRank))
		}
		gpu = o.Dist.LocalRank
	}
	r.b, r.capab = o.Backend, capabilityOf(o.Backend)
	if r.b == nil {
		b, capability, err := OpenBackend(cfg.Device, gpu, r.log)
		if err != nil {
			return err
		}
		r.b, r.capab = b, capability
	}
	switch {
	case o.Comm != nil:
		r.comm, r.parallel = o.Comm, true
		r.exchange = NewExchange(r.b, r.comm)
	case o.Dist.Distributed():
		r.stageNow("joining the other ranks")
		c, err := dist.Open(ctx, r.b, o.Dist, dist.Options{Timeout: time.Duration(cfg.Dist.Timeout) * time.Second})
		if err != nil {
			return err
		}
		r.comm, r.parallel = c, true
		r.exchange = NewExchange(r.b, r.comm)
	default:
		c, err := dist.Open(ctx, r.b, dist.Single(), dist.Options{})
		if err != nil {
			return err
		}
		r.comm = c
	}
	return nil
}

// leaveJob ends this rank's part of the job: in good order after a run
// that finished or stopped where every rank decided to on the same agreed
// numbers (an interrupt, a loss that stayed non-finite), with an abort that
// tells the others why after a failure of its own. A test's communicator
// is the test's to close.
func (r *run) leaveJob(err error) {
	if r.comm == nil {
		return
	}
	if err != nil && !r.stopAgreed {
		r.comm.Abort(err)
	}
	r.exchange.Free()
	if r.opts.Comm == nil {
		r.comm.Close()
	}
}

// rank0Only runs work on rank 0 while the other ranks wait for it at a
// barrier — up to timeout (0: dist.timeout; negative: as long as it
// takes) — and, in a plain run, just runs it. A failure of the work is
// rank 0's error; the others learn of it when rank 0 aborts the job.
func (r *run) rank0Only(what string, timeout time.Duration, work func() error) error {
	if r.rank0() {
		if err := work(); err != nil {
			return err
		}
	}
	if !r.parallel {
		return nil
	}
	if err := r.comm.Barrier(timeout); err != nil {
		return fmt.Errorf("waiting for %s: %w", what, err)
	}
	return nil
}

// startLoader (re)starts the loader at a step boundary from, taking this
// rank's batches of every step.
func (r *run) startLoader(from data.Cursor) error {
	if r.loader != nil {
		r.loader.Close()
		r.loader = nil
	}
	var take func(int64) bool
	if r.parallel {
		world, accum := r.comm.WorldSize(), max(r.cfg.Train.GradientAccumulation, 1)
		rank := r.comm.Rank()
		take = func(i int64) bool { return int(i%int64(world*accum))/accum == rank }
	}
	l, err := data.NewShardLoader(r.encoded, from, take)
	if err != nil {
		return err
	}
	r.loader, r.loaderStart = l, r.micro
	return nil
}

// imageTokens is the number of image tokens of latents of shape
// [B, C, H, W]: what the timestep shift follows.
func (r *run) imageTokens(shape []int) int {
	p := r.model.Config().PatchSize
	return (shape[2] / p) * (shape[3] / p)
}

// stepShare runs this rank's part of the next data-parallel step: its
// micro-batches, with the noise and timesteps the one-process run draws for
// those batch positions, the step with its gradients summed over the ranks,
// and the step's loss agreed. samples counts the step's samples over every
// rank. stop reports that some rank was interrupted: every rank then stops
// before the step.
func (r *run) stepShare(ctx context.Context, accum int) (out StepOutcome, samples int, stop bool, err error) {
	world, rank := r.comm.WorldSize(), r.comm.Rank()
	batches := make([]*data.Batch, accum)
	sizes := make([]int, accum)
	for i := range batches {
		if batches[i], err = r.loader.Next(); err != nil {
			return out, 0, false, err
		}
		sizes[i] = len(batches[i].Latents)
		samples += len(batches[i].Samples)
	}
	stop, samples, all, err := r.stepStart(ctx.Err() != nil, samples, sizes)
	if err != nil || stop {
		return out, 0, stop, err
	}
	seed, base := r.e.RandomState()
	first := rank * accum
	offset := base
	for _, n := range all[:first] {
		offset += uint64(n)
	}
	micro := make([]MicroBatch, 0, accum)
	for i, b := range batches {
		pos := r.micro + uint64(first+i)
		fb := r.uploadBatch(b)
		shape := fb.X1.Shape()
		r.e.SeedRandom(seed, offset)
		mb := MicroBatch{
			FlowBatch: fb,
			X0:        r.e.Normal(kernels.F32, shape),
			T:         r.sampler.Sample(r.cfg.Train.Seed, int(pos), shape[0], r.imageTokens(shape)),
		}
		offset += uint64(sizes[i])
		if world > 1 && r.cfg.LoRA.Dropout > 0 {
			mb.dropout = &randomStart{seed: seed ^ dropoutStream, offset: pos << 40}
		}
		micro = append(micro, mb)
	}
	r.micro += uint64(world * accum)
	if out, err = r.runStep(micro); err != nil {
		return out, samples, false, err
	}
	if world > 1 {
		// The stream continues where the one-process run's stands after
		// the step's noise. (On one rank it has run on from there through
		// the dropout draws, as in a plain run.)
		end := base
		for _, n := range all {
			end += uint64(n)
		}
		r.e.SeedRandom(seed, end)
	}
	out.Loss, err = r.agreeLoss(out.Losses)
	return out, samples, false, err
}

// runStep runs the optimizer step over micro-batches under the run's
// autocast.
func (r *run) runStep(micro []MicroBatch) (StepOutcome, error) {
	prev := r.e.SetAutocast(r.autocast)
	defer r.e.SetAutocast(prev)
	return r.stepper.Step(micro)
}

// Limbs: the agreements travel as F32 sums in which each value comes from
// one rank and the others add zeros, which is exact for whole numbers below
// 2²⁴; a batch's noise size is sent as two 16-bit halves.
const limb = 1 << 16

// stepStart is the agreement at the start of a step: whether any rank
// stops, how many samples the step has over all ranks, and the noise size
// of each of the step's world × accum batches, in batch order.
func (r *run) stepStart(stop bool, samples int, sizes []int) (anyStop bool, allSamples int, all []int, err error) {
	world, accum := r.comm.WorldSize(), len(sizes)
	v := make([]float32, 2+2*world*accum)
	if stop {
		v[0] = 1
	}
	v[1] = float32(samples)
	for i, n := range sizes {
		if n >= limb*limb {
			return false, 0, nil, fmt.Errorf("a batch of %d latent values: more than the %d a step's agreement carries", n, limb*limb-1)
		}
		k := 2 + 2*(r.comm.Rank()*accum+i)
		v[k], v[k+1] = float32(n/limb), float32(n%limb)
	}
	if err := r.allReduce(v); err != nil {
		return false, 0, nil, fmt.Errorf("agreeing on the step's start with the other ranks: %w", err)
	}
	all = make([]int, world*accum)
	for k := range all {
		all[k] = int(v[2+2*k])*limb + int(v[3+2*k])
	}
	return v[0] > 0, int(v[1]), all, nil
}

func (r *run) agreeLoss(own []float64) (float64, error) { return r.exchange.AgreeLoss(own) }

func (r *run) allReduce(v []float32) error { return r.exchange.allReduce(v) }

// Exchange carries the small agreements of a data-parallel step between
// the ranks, through device buffers it keeps (one per length). The
// trainer's steps use it, and so does the benchmark of a job.
type Exchange struct {
	b    kernels.Backend
	comm dist.Communicator
	bufs map[int]kernels.Buffer
}

// NewExchange returns the exchange of one rank, on its backend b.
func NewExchange(b kernels.Backend, comm dist.Communicator) *Exchange {
	return &Exchange{b: b, comm: comm}
}

// AgreeLoss makes every rank's micro-batch losses known to all and returns
// the step's loss: their mean in batch order (rank 0's micro-batches, then
// rank 1's, …), the number the one-process run computes.
func (x *Exchange) AgreeLoss(own []float64) (float64, error) {
	world, accum := x.comm.WorldSize(), len(own)
	v := make([]float32, world*accum)
	for i, l := range own {
		v[x.comm.Rank()*accum+i] = float32(l)
	}
	if err := x.allReduce(v); err != nil {
		return 0, fmt.Errorf("agreeing on the step's loss with the other ranks: %w", err)
	}
	all := make([]float64, len(v))
	for i, l := range v {
		all[i] = float64(l)
	}
	return meanLoss(all), nil
}

// allReduce sums v over the ranks, in place.
func (x *Exchange) allReduce(v []float32) error {
	if x.bufs == nil {
		x.bufs = map[int]kernels.Buffer{}
	}
	buf := x.bufs[len(v)]
	if buf == nil {
		var err error
		if buf, err = x.b.Alloc(kernels.F32, len(v)); err != nil {
			return err
		}
		x.bufs[len(v)] = buf
	}
	raw := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
	}
	x.b.Upload(buf, 0, raw)
	if err := x.comm.AllReduceSum(buf); err != nil {
		return err
	}
	if err := x.b.Download(raw, buf, 0); err != nil {
		return errors.Join(err, x.comm.Err())
	}
	if err := x.comm.Err(); err != nil {
		return err
	}
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return nil
}

// Free gives the buffers back.
func (x *Exchange) Free() {
	if x == nil {
		return
	}
	for _, b := range x.bufs {
		x.b.Free(b)
	}
	x.bufs = nil
}

// checkAgreement makes sure, once the run is set up, that every rank holds
// what rank 0 holds — the config, the base model, the dataset, the place in
// the run, the LoRA weights and the optimizer state — so that a rank that
// read another config, dataset or state fails the job at once, naming
// what differs, instead of training something else silently. Each is
// compared by a digest rank 0 broadcasts.
func (r *run) checkAgreement() error {
	if !r.parallel {
		return nil
	}
	parts, err := r.agreementParts()
	if err != nil {
		return err
	}
	const limbs = 4 // 64 bits of each digest, 16 a value
	v := make([]float64, len(parts)*limbs)
	for i, p := range parts {
		for k := range limbs {
			v[i*limbs+k] = float64(binary.LittleEndian.Uint16(p.sum[2*k:]))
		}
	}
	buf, err := r.b.Alloc(kernels.F32, len(v))
	if err != nil {
		return err
	}
	defer r.b.Free(buf)
	r.b.Upload(buf, 0, kernels.EncodeF64(kernels.F32, v))
	if err := r.comm.Broadcast(buf, 0); err != nil {
		return fmt.Errorf("comparing this rank's setup with rank 0's: %w", err)
	}
	raw := make([]byte, 4*len(v))
	if err := r.b.Download(raw, buf, 0); err != nil {
		return err
	}
	if err := r.comm.Err(); err != nil {
		return fmt.Errorf("comparing this rank's setup with rank 0's: %w", err)
	}
	got := kernels.DecodeF64(kernels.F32, raw)
	var differ []string
	for i, p := range parts {
		for k := range limbs {
			if got[i*limbs+k] != v[i*limbs+k] {
				differ = append(differ, p.what)
				break
			}
		}
	}
	if len(differ) > 0 {
		return configErr(fmt.Errorf("rank %d differs from rank 0 in %v: every rank must run the same config on the same dataset, base model and state (on several machines: the same files at the same paths)", r.comm.Rank(), differ))
	}
	return nil
}

// agreementPart is one thing checkAgreement compares.
type agreementPart struct {
	what string
	sum  [32]byte
}

func (r *run) agreementParts() ([]agreementPart, error) {
	digest := func(what string, parts ...any) agreementPart {
		h := sha256.New()
		for _, p := range parts {
			fmt.Fprintf(h, "%v\x00", p)
		}
		var p agreementPart
		p.what = what
		copy(p.sum[:], h.Sum(nil))
		return p
	}
	seed, off := r.e.RandomState()
	parts := []agreementPart{
		digest("the config", r.cfg.Hash()),
		digest("the base model", r.baseHash),
		digest("the dataset", r.encoded.Fingerprint, r.batches, r.total),
		digest("the place in the run", r.step, r.micro, r.loader.After(0), seed, off),
	}
	h := sha256.New()
	for _, t := range loraTensors(r.set) {
		v, err := t.Values()
		if err != nil {
			return nil, err
		}
		for _, x := range v {
			binary.Write(h, binary.LittleEndian, math.Float64bits(x))
		}
	}
	ost, err := r.opt.State()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(h, "%d %d %+v %+v", ost.Step, ost.MicroBatches, ost.Scaler, ost.Schedule)
	for _, ts := range ost.Tensors {
		h.Write(ts.M)
		h.Write(ts.V)
	}
	w := agreementPart{what: "the LoRA weights and optimizer state"}
	copy(w.sum[:], h.Sum(nil))
	return append(parts, w), nil
}
