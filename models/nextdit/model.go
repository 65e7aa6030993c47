package nextdit

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// Options choose how a Model stores and runs its weights.
type Options struct {
	// DType is the storage dtype of frozen weights: BF16 (the default when
	// zero), F32, or F64 for float64 parity checks.
	DType kernels.DType
	// Checkpoint runs every transformer block (refiners and joint layers)
	// under autograd.Checkpoint: its activations are recomputed in the
	// backward instead of being kept.
	Checkpoint bool
	// CheckpointBlocks, when positive with Checkpoint set, checkpoints only
	// that many of the blocks, spread evenly over the forward's order
	// (context refiners, noise refiners, joint layers); the others keep
	// their activations. Fewer checkpointed blocks recompute less and hold
	// more memory; the gradients are the same bits either way.
	CheckpointBlocks int
	// FP8Base stores the frozen weights of the linear layers as FP8 E4M3
	// with a scale per output row (autograd.QuantizeFP8; kohya's
	// --fp8_base): about half the memory of bf16 weights, each product
	// running on the weight dequantised for it. Off by default; norms,
	// biases and everything trainable keep DType.
	FP8Base bool
	// RecomputeNorms drops the outputs of the blocks' norms from the tape
	// after the forward and recomputes them in the backward: the pre-norms
	// of the attention and the feed-forward (the inputs of the qkv and
	// w1/w3 products) and the attention branch's post-norm (x1, the
	// feed-forward pre-norm's input), from the tensors their ops keep
	// anyway, and the q/k norms with the rotation (q, k and v, from qkv),
	// each through autograd.Recompute.
	// Per token and block that keeps three model-width tensors and q/k/v
	// fewer, for one more pass over each source in the backward. The
	// gradients are the same bits.
	// Checkpointed blocks keep theirs (their tape is rebuilt anyway).
	RecomputeNorms bool
	// RecomputeFFNBlocks, when positive, is how many of the blocks (spread
	// evenly, the last one last: Config.RecomputedFFNBlock) drop their
	// feed-forward's
	// h1 and h3 — the SwiGLU's inputs, the widest tensors a block keeps —
	// after the forward and run the w1 and w3 products again for the
	// SwiGLU's backward (autograd.Recompute): two SwiGLU-width tensors a
	// token fewer kept in each, for two products more. The gradients are
	// the same bits. A checkpointed block is not counted twice.
	RecomputeFFNBlocks int
}

func (o Options) withDefaults() (Options, error) {
	if o.DType == 0 {
		o.DType = kernels.BF16
	}
	switch o.DType {
	case kernels.BF16, kernels.F16, kernels.F32, kernels.F64:
	default:
		return o, fmt.Errorf("nextdit: storage dtype %v is not a float dtype", o.DType)
	}
	return o, nil
}

// LinearHook adds a low-rank update to the model's linear layers without
// the model knowing where it comes from: LoRA adapters implement it.
//
// The hook hands over the update's parts instead of computing the update,
// so that the model can fold it into the layer's own matrix product
// (autograd.LoRALinear: no update-sized tensor, no add pass, and x's two
// gradient contributions summed by the product), and so that for the
// feed-forward's w2 it can recompute the update's input under a checkpoint
// rather than keep the block's widest activation for it.
type LinearHook interface {
	// LinearAdapter returns the update scale·(h·aᵀ)·bᵀ of the linear layer
	// name (its weight's key prefix, e.g. "layers.0.attention.qkv") for the
	// input x: h is what the update reads, shaped like x — x itself, or a
	// new tensor (dropout of x) that the caller releases when done with it
	// —, a is [rank, in] and b [out, rank]. ok is false when the layer is
	// to be left alone (not adapted, or the update is merged into the
	// weight); nothing is created then.
	LinearAdapter(name string, x *autograd.Tensor) (h, a, b *autograd.Tensor, scale float64, ok bool)
}

// PlainInputHook is implemented by hooks that can tell, before being asked
// for an update, that layer name's update reads the layer's input itself
// (h is x: no dropout). The feed-forward's down projection then runs as one
// op with its update (autograd.SwiGLULoRALinear), which never keeps the
// SwiGLU output.
type PlainInputHook interface {
	UpdateReadsInput(name string) bool
}

// Model is a Next-DiT network: a Config and its weights on one engine.
type Model struct {
	cfg     Config
	e       *autograd.Engine
	opts    Options
	weights map[string]*autograd.Tensor
	hook    LinearHook
	observe BlockObserver
	// fp8 names the weights stored in fp8 (Options.FP8Base).
	fp8 map[string]bool
	// ropes are the RoPE tables of the shapes seen last, oldest first in
	// ropeOrder (ropecache.go).
	ropes     map[string]*ropeSet
	ropeOrder []string
}

// BlockObserver sees the output of every transformer block (context and
// noise refiners, joint layers) as Forward makes it; block is the block's
// key prefix ("layers.3"). Samplers use it to find where reduced-precision
// activations overflow. It must not release out.
type BlockObserver func(block string, out *autograd.Tensor)

// SetBlockObserver installs f (nil removes it).
func (m *Model) SetBlockObserver(f BlockObserver) { m.observe = f }

// Config returns the model's architecture.
func (m *Model) Config() Config { return m.cfg }

// Engine returns the engine the weights live on.
func (m *Model) Engine() *autograd.Engine { return m.e }

// Options returns the options the model was built with.
func (m *Model) Options() Options { return m.opts }

// SetCheckpoint turns per-block activation checkpointing on (every block)
// or off.
func (m *Model) SetCheckpoint(on bool) { m.opts.Checkpoint, m.opts.CheckpointBlocks = on, 0 }

// SetCheckpointBlocks checkpoints k of the blocks, spread evenly
// (Options.CheckpointBlocks): none for k ≤ 0, every one for k ≥ Blocks.
func (m *Model) SetCheckpointBlocks(k int) {
	m.opts.Checkpoint, m.opts.CheckpointBlocks = k > 0, max(k, 0)
}

// SetRecomputeNorms turns Options.RecomputeNorms on or off.
func (m *Model) SetRecomputeNorms(on bool) { m.opts.RecomputeNorms = on }

// recomputesFFN reports whether block i recomputes its feed-forward's
// inputs (Options.RecomputeFFNBlocks; never a checkpointed block).
func (m *Model) recomputesFFN(i int) bool {
	return !m.checkpointed(i) && m.cfg.RecomputedFFNBlock(i, m.opts.RecomputeFFNBlocks)
}

// checkpointed reports whether block i of the forward's order (see
// Config.Blocks) runs under a checkpoint.
func (m *Model) checkpointed(i int) bool {
	return m.opts.Checkpoint && m.cfg.CheckpointedBlock(i, m.opts.CheckpointBlocks)
}

// SetHook routes every linear layer through h (nil removes the hook).
func (m *Model) SetHook(h LinearHook) { m.hook = h }

// Hook returns the current linear hook, or nil.
func (m *Model) Hook() LinearHook { return m.hook }

// Weight returns the tensor stored under an upstream key name, or nil.
func (m *Model) Weight(name string) *autograd.Tensor { return m.weights[name] }

// Names lists the weight names in the order of Config.Params.
func (m *Model) Names() []string {
	ps := m.cfg.Params()
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

// Linears lists the model's linear layers (names and widths).
func (m *Model) Linears() []LinearInfo { return m.cfg.Linears() }

// newModel checks the config and options and returns an empty model.
func newModel(e *autograd.Engine, cfg Config, opts Options) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Model{cfg: cfg, e: e, opts: opts, weights: map[string]*autograd.Tensor{}}
	if opts.FP8Base {
		m.fp8 = cfg.LinearWeights()
	}
	return m, nil
}

// reserve announces the weights about to be stored (those of the
// parameters loaded says are there) so that the backend packs them into one
// allocation. With fp8 base weights it announces nothing: the wide weights
// pass through a storage-dtype copy that is released once quantised, and
// packing would keep those copies' space.
func (m *Model) reserve(loaded func(ParamShape) bool) {
	if m.opts.FP8Base {
		return
	}
	var n int64
	count := 0
	for _, p := range m.cfg.Params() {
		if loaded(p) {
			n += int64(shapeElems(p.Shape)) * int64(m.opts.DType.Size())
			count++
		}
	}
	m.e.ReserveConstants(n, count)
}

// shapeElems is the number of elements of a tensor of this shape.
func shapeElems(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// store keeps a frozen weight just built or loaded, quantised to fp8 first
// when the options ask for it and it is a linear layer's weight (so a
// loader holds at most one wide weight beyond the quantised ones).
func (m *Model) store(name string, w *autograd.Tensor) error {
	if !m.fp8[name] {
		m.weights[name] = w
		return nil
	}
	q, err := autograd.QuantizeFP8(w)
	w.Release()
	if err != nil {
		return fmt.Errorf("nextdit: fp8 base weight %s: %w", name, err)
	}
	m.weights[name] = q
	return nil
}

// NewRandom builds a model with random weights drawn from seed: linear
// weights N(0, 1/fan_in), biases N(0, 0.02²), norm weights N(1, 0.1²). Every path carries signal (unlike the upstream zero initialisations),
// which is what tests and throughput runs need; it is not a training init.
func NewRandom(e *autograd.Engine, cfg Config, opts Options, seed uint64) (*Model, error) {
	m, err := newModel(e, cfg, opts)
	if err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(seed, 0x6e657874646974))
	m.reserve(func(ParamShape) bool { return true })
	for _, p := range cfg.Params() {
		n := 1
		for _, s := range p.Shape {
			n *= s
		}
		v := make([]float64, n)
		switch {
		case len(p.Shape) == 2:
			std := 1 / math.Sqrt(float64(p.Shape[1]))
			for i := range v {
				v[i] = r.NormFloat64() * std
			}
		case strings.HasSuffix(p.Name, ".bias"):
			for i := range v {
				v[i] = r.NormFloat64() * 0.02
			}
		default: // norm weights
			for i := range v {
				v[i] = 1 + r.NormFloat64()*0.1
			}
		}
		if err := m.store(p.Name, e.Constant(p.Name, m.opts.DType, p.Shape, v)); err != nil {
			m.Release()
			return nil, err
		}
	}
	if err := e.Err(); err != nil {
		m.Release()
		return nil, fmt.Errorf("nextdit: allocating random weights: %w", err)
	}
	return m, nil
}

// Release frees every weight (and its gradient) and the kept RoPE tables.
func (m *Model) Release() {
	for _, w := range m.weights {
		w.Release()
	}
	m.releaseRopes()
	m.weights = map[string]*autograd.Tensor{}
}

// SetTrainable turns the weights whose names match into trainable Params
// with a master copy in dtype master (F32 for training; F64 for parity
// checks; 0 means F32, or F64 when the model stores F64), replacing the
// frozen Constants. It returns the names it converted, sorted.
func (m *Model) SetTrainable(match func(name string) bool, master kernels.DType) ([]string, error) {
	if master == 0 {
		master = kernels.F32
		if m.opts.DType == kernels.F64 {
			master = kernels.F64
		}
	}
	if master != kernels.F32 && master != kernels.F64 {
		return nil, fmt.Errorf("nextdit: SetTrainable: master dtype must be F32 or F64, got %v", master)
	}
	var done []string
	for name, w := range m.weights {
		if !match(name) || w.RequiresGrad() {
			continue
		}
		v, err := w.Values()
		if err != nil {
			return done, fmt.Errorf("nextdit: SetTrainable %s: %w", name, err)
		}
		p := m.e.Param(name, master, w.Shape(), v)
		w.Release()
		m.weights[name] = p
		done = append(done, name)
	}
	sort.Strings(done)
	return done, m.e.Err()
}

// Trainable returns the weights that are Params, in the order of Params.
func (m *Model) Trainable() []*autograd.Tensor {
	var out []*autograd.Tensor
	for _, n := range m.Names() {
		if w := m.weights[n]; w != nil && w.RequiresGrad() {
			out = append(out, w)
		}
	}
	return out
}
