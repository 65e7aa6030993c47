// Package lora adds low-rank adapters (LoRA, Hu et al. 2021) to the linear
// layers of a Next-DiT model, with PEFT's semantics so that adapters trained
// here load into diffusers/PEFT and ComfyUI and the other way round:
//
//	y = base(x) + (alpha/rank) · B·A·dropout(x)
//
// A [rank, in] and B [out, rank] are fp32 master Params (f64 in parity
// checks) while the base weights stay frozen in their storage dtype. The
// adapters reach the model through nextdit's LinearHook, so the model never
// knows about LoRA. Merge folds the update into the base weights (for
// inference or export of a merged model) and Unmerge takes it out again.
package lora

import (
	"fmt"
	"math"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// DefaultTargets are the NewBie trainer's LoRA targets: attention and
// SwiGLU projections and the adaLN modulation of every block, refiner and
// the final layer.
var DefaultTargets = []string{
	"attention.qkv", "attention.out",
	"feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
	"adaLN_modulation.1",
}

// Init chooses how fresh adapters start. B starts at zero in both, so a new
// adapter leaves the model's output unchanged.
type Init uint8

const (
	// InitPEFT draws A from Kaiming-uniform with a = √5, as PEFT and
	// torch.nn.Linear do: U(−1/√in, 1/√in).
	InitPEFT Init = iota
	// InitGaussian draws A from N(0, 1/rank) (PEFT's "gaussian").
	InitGaussian
)

// Config describes a set of adapters.
type Config struct {
	Rank  int
	Alpha float64 // the update is scaled by Alpha/Rank
	// Dropout is the probability of dropping an input element of the
	// adapter path during training (0 for none).
	Dropout float64
	// Targets are PEFT-style module patterns: a linear layer is adapted when
	// its name equals a pattern or ends with "." + pattern. Empty means
	// DefaultTargets.
	Targets []string
	Init    Init
	// Seed drives the initial draw of A (counter-based, so reproducible).
	Seed uint64
	// Master is the dtype of A and B: F32 (default) or F64 for parity checks.
	Master kernels.DType
}

// Adapter is the pair of low-rank matrices on one linear layer.
type Adapter struct {
	// Name is the linear layer's name, e.g. "layers.0.attention.qkv".
	Name    string
	In, Out int
	A, B    *ag.Tensor // [rank, in], [out, rank]
}

// Set is every adapter on one model; it is the model's LinearHook while
// attached.
type Set struct {
	cfg      Config
	model    *nextdit.Model
	scale    float64
	adapters map[string]*Adapter
	order    []string
	merged   bool
	train    bool
}

// Matches reports whether the linear layer name is selected by a PEFT-style
// target pattern.
func Matches(name, pattern string) bool {
	return name == pattern || strings.HasSuffix(name, "."+pattern)
}

// Attach creates adapters on every linear layer of m that a target selects,
// initialised as cfg says, and routes the model's linears through them
// (replacing any hook the model had). A pattern that selects nothing is an
// error: it is almost always a misspelt target.
func Attach(m *nextdit.Model, cfg Config) (*Set, error) {
	if cfg.Rank <= 0 {
		return nil, fmt.Errorf("lora: rank must be positive, got %d", cfg.Rank)
	}
	if cfg.Alpha <= 0 {
		return nil, fmt.Errorf("lora: alpha must be positive, got %g", cfg.Alpha)
	}
	if cfg.Dropout < 0 || cfg.Dropout >= 1 {
		return nil, fmt.Errorf("lora: dropout %g is outside [0, 1)", cfg.Dropout)
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = append([]string(nil), DefaultTargets...)
	}
	if cfg.Master == 0 {
		cfg.Master = kernels.F32
	}
	if cfg.Master != kernels.F32 && cfg.Master != kernels.F64 {
		return nil, fmt.Errorf("lora: master dtype must be F32 or F64, got %v", cfg.Master)
	}
	s := &Set{cfg: cfg, model: m, scale: cfg.Alpha / float64(cfg.Rank), adapters: map[string]*Adapter{}, train: true}
	used := map[string]bool{}
	e := m.Engine()
	for _, li := range m.Linears() {
		hit := false
		for _, p := range cfg.Targets {
			if Matches(li.Name, p) {
				hit, used[p] = true, true
			}
		}
		if !hit {
			continue
		}
		idx := len(s.order)
		a := initA(cfg, idx, li.In)
		ad := &Adapter{
			Name: li.Name, In: li.In, Out: li.Out,
			A: e.Param(li.Name+".lora_A", cfg.Master, []int{cfg.Rank, li.In}, a),
			B: e.Param(li.Name+".lora_B", cfg.Master, []int{li.Out, cfg.Rank}, make([]float64, li.Out*cfg.Rank)),
		}
		s.adapters[li.Name] = ad
		s.order = append(s.order, li.Name)
	}
	var unused []string
	for _, p := range cfg.Targets {
		if !used[p] {
			unused = append(unused, p)
		}
	}
	if len(unused) > 0 {
		s.Release()
		return nil, fmt.Errorf("lora: target patterns %v match no linear layer of the model", unused)
	}
	if err := e.Err(); err != nil {
		s.Release()
		return nil, fmt.Errorf("lora: allocating adapters: %w", err)
	}
	m.SetHook(s)
	return s, nil
}

// initA draws adapter idx's A [rank, in] from the counter-based generator:
// each adapter owns its own range of counters, so the draw does not depend
// on the order adapters are touched.
func initA(cfg Config, idx, in int) []float64 {
	n := cfg.Rank * in
	v := make([]float64, n)
	base := uint64(idx) << 32
	switch cfg.Init {
	case InitGaussian:
		std := 1 / math.Sqrt(float64(cfg.Rank))
		for i := range v {
			v[i] = kernels.NormalAt(cfg.Seed, base+uint64(i), 0, std)
		}
	default:
		// kaiming_uniform_(a=√5): gain √(2/(1+5)), bound gain·√(3/fan_in) = 1/√fan_in.
		bound := 1 / math.Sqrt(float64(in))
		for i := range v {
			v[i] = kernels.UniformAt(cfg.Seed, base+uint64(i), -bound, bound)
		}
	}
	return v
}

// Config returns the set's configuration (targets filled in).
func (s *Set) Config() Config { return s.cfg }

// Scale is alpha/rank.
func (s *Set) Scale() float64 { return s.scale }

// Adapters returns the adapters in the model's layer order.
func (s *Set) Adapters() []*Adapter {
	out := make([]*Adapter, len(s.order))
	for i, n := range s.order {
		out[i] = s.adapters[n]
	}
	return out
}

// Adapter returns the adapter on the named linear layer, or nil.
func (s *Set) Adapter(name string) *Adapter { return s.adapters[name] }

// Params returns every A and B, for the optimizer (A then B per adapter).
func (s *Set) Params() []*ag.Tensor {
	var out []*ag.Tensor
	for _, a := range s.Adapters() {
		out = append(out, a.A, a.B)
	}
	return out
}

// SetTraining turns dropout on (training) or off (evaluation).
func (s *Set) SetTraining(on bool) { s.train = on }

// Merged reports whether the updates are folded into the base weights.
func (s *Set) Merged() bool { return s.merged }

// LinearAdapter implements nextdit.LinearHook: the adapter's A, B and
// alpha/rank for an adapted layer, with h = dropout(x) while training with
// dropout (x itself otherwise); not ok for other layers or while merged.
func (s *Set) LinearAdapter(name string, x *ag.Tensor) (h, a, b *ag.Tensor, scale float64, ok bool) {
	ad := s.adapters[name]
	if ad == nil || s.merged {
		return nil, nil, nil, 0, false
	}
	h = x
	if s.train && s.cfg.Dropout > 0 {
		h = ag.Dropout(x, s.cfg.Dropout)
	}
	return h, ad.A, ad.B, s.scale, true
}

// UpdateReadsInput reports whether layer name's update reads the layer's
// input unchanged: it is adapted, not merged, and no dropout applies
// (nextdit.PlainInputHook).
func (s *Set) UpdateReadsInput(name string) bool {
	return s.adapters[name] != nil && !s.merged && !(s.train && s.cfg.Dropout > 0)
}

// Detach removes the set from the model's linears (the model then runs its
// base weights alone, or merged ones).
func (s *Set) Detach() {
	if s.model.Hook() == nil {
		return
	}
	if h, ok := s.model.Hook().(*Set); ok && h == s {
		s.model.SetHook(nil)
	}
}

// Release detaches the set and frees its adapters.
func (s *Set) Release() {
	s.Detach()
	for _, a := range s.adapters {
		a.A.Release()
		a.B.Release()
	}
	s.adapters = map[string]*Adapter{}
	s.order = nil
}

// Merge adds scale·B·A into every adapted base weight, in place, and stops
// adding the update in the forward. Call it between steps (the engine's
// per-step cast cache would otherwise keep the unmerged weight).
func (s *Set) Merge() error {
	if s.merged {
		return fmt.Errorf("lora: already merged")
	}
	if err := s.fold(s.scale); err != nil {
		return err
	}
	s.merged = true
	return nil
}

// Unmerge subtracts what Merge added (exactly up to the storage dtype's
// rounding) and resumes adding the update in the forward.
func (s *Set) Unmerge() error {
	if !s.merged {
		return fmt.Errorf("lora: not merged")
	}
	if err := s.fold(-s.scale); err != nil {
		return err
	}
	s.merged = false
	return nil
}

// fold computes W += alpha·B·A for every adapter on the backend, in the
// masters' precision: a weight stored in another dtype is widened, updated
// and rounded back once.
func (s *Set) fold(alpha float64) error {
	e := s.model.Engine()
	be := e.Backend()
	for _, n := range s.order {
		a := s.adapters[n]
		w := s.model.Weight(n + ".weight")
		if w == nil || w.Buffer() == nil {
			return fmt.Errorf("lora: merging %s: the model has no live weight %s.weight", n, n)
		}
		if a.A.Buffer() == nil || a.B.Buffer() == nil {
			return fmt.Errorf("lora: merging %s: adapter was released", n)
		}
		if w.FP8Scale() != nil {
			return fmt.Errorf("lora: merging %s: its base weight is stored in fp8 (FP8Base), which a merge would have to requantise; merge into a bf16 or f32 model", n)
		}
		md := a.A.DType()
		dst := w.Buffer()
		if w.DType() != md {
			tmp, err := be.Alloc(md, w.Len())
			if err != nil {
				return fmt.Errorf("lora: merging %s: %w", n, err)
			}
			be.Cast(tmp, w.Buffer())
			dst = tmp
		}
		be.Gemm(kernels.GemmArgs{
			M: a.Out, N: a.In, K: s.cfg.Rank, Batch: 1, Alpha: alpha, Beta: 1,
			A: a.B.Buffer(), LDA: s.cfg.Rank, StrideA: a.Out * s.cfg.Rank,
			B: a.A.Buffer(), LDB: a.In, StrideB: s.cfg.Rank * a.In,
			C: dst, LDC: a.In, StrideC: a.Out * a.In,
		})
		if dst != w.Buffer() {
			be.Cast(w.Buffer(), dst)
			be.Free(dst)
		}
	}
	if err := be.Sync(); err != nil {
		return fmt.Errorf("lora: merging: %w", err)
	}
	return nil
}
