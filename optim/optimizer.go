package optim

import (
	"errors"
	"fmt"
	"math"

	"github.com/newbie-train/newbie-train/kernels"
)

// clipEps is added to the global norm before dividing, as
// torch.nn.utils.clip_grad_norm_ does, so a zero gradient never divides by 0.
const clipEps = 1e-6

// Config configures an Optimizer beyond its parameter groups.
type Config struct {
	// Precision of the run (Auto is resolved with Capability).
	Precision  Precision
	Capability Capability
	// Scaler configures the loss scaler; a zero Mode takes the precision's
	// default (dynamic for fp16, off otherwise) with GradScaler's defaults
	// for any factor left zero.
	Scaler ScalerConfig
	// MaxGradNorm clips the gradients' global L2 norm (after unscaling and
	// averaging) to this value; 0 disables clipping.
	MaxGradNorm float64
	// AccumSteps is the number of micro-batches whose gradients are summed
	// into one step (0 means 1); Step averages them.
	AccumSteps int
	// Schedule moves the learning rates; the zero value keeps them constant.
	Schedule Schedule
}

// Optimizer is AdamW over parameter groups on one backend, with the loss
// scaler, clipping, accumulation and the lr schedule around it. It is used
// by one goroutine, like the backend it drives.
type Optimizer struct {
	be        kernels.Backend
	groups    []Group
	cfg       Config
	precision Precision
	scaler    *Scaler
	dt        kernels.DType // masters' dtype: scratch scalars use it

	params []Param // all parameters, in group order
	group  []int   // group index of params[i]
	m, v   []kernels.Buffer
	grads  []kernels.Buffer // params[i].Grad, for NonFinite and SumSquares

	// calls group tensors by (β1, β2, eps): one fused AdamW call each.
	calls []adamwCall

	flag, sumSq, gradScale kernels.Buffer // one-element scratch on the device

	step  int // applied updates: AdamW's t before this step and the schedule position
	micro int // micro-batches accumulated toward the next step
}

// adamwCall lists the parameters (indices into Optimizer.params) that share
// the scalars of one fused AdamW call.
type adamwCall struct {
	beta1, beta2, eps float64
	idx               []int
}

// New validates the groups and config and allocates zeroed first and second
// moments (in the masters' dtype) for every parameter.
func New(be kernels.Backend, groups []Group, cfg Config) (*Optimizer, error) {
	if be == nil {
		return nil, errors.New("optim: no backend")
	}
	dt, err := validateGroups(groups)
	if err != nil {
		return nil, fmt.Errorf("optim: %w", err)
	}
	prec := cfg.Precision
	if prec == "" {
		prec = Auto
	}
	if prec, err = prec.Resolve(cfg.Capability); err != nil {
		return nil, fmt.Errorf("optim: %w", err)
	}
	sc := cfg.Scaler
	if sc.Mode == ScaleDefault {
		sc.Mode = prec.DefaultScalerMode()
	}
	def := DefaultScalerConfig(sc.Mode)
	if sc.InitScale == 0 {
		sc.InitScale = def.InitScale
	}
	if sc.GrowthFactor == 0 {
		sc.GrowthFactor = def.GrowthFactor
	}
	if sc.BackoffFactor == 0 {
		sc.BackoffFactor = def.BackoffFactor
	}
	if sc.GrowthInterval == 0 {
		sc.GrowthInterval = def.GrowthInterval
	}
	scaler, err := NewScaler(sc)
	if err != nil {
		return nil, fmt.Errorf("optim: %w", err)
	}
	if math.IsNaN(cfg.MaxGradNorm) || math.IsInf(cfg.MaxGradNorm, 0) || cfg.MaxGradNorm < 0 {
		return nil, fmt.Errorf("optim: max_grad_norm = %g: want a finite value ≥ 0 (0 disables clipping)", cfg.MaxGradNorm)
	}
	if cfg.AccumSteps < 0 {
		return nil, fmt.Errorf("optim: accumulation steps = %d: want ≥ 1", cfg.AccumSteps)
	}
	if cfg.AccumSteps == 0 {
		cfg.AccumSteps = 1
	}
	if cfg.Schedule.Kind != "" {
		if err := cfg.Schedule.Validate(); err != nil {
			return nil, fmt.Errorf("optim: lr schedule: %w", err)
		}
	}
	cfg.Scaler = sc

	o := &Optimizer{be: be, groups: groups, cfg: cfg, precision: prec, scaler: scaler, dt: dt}
	for gi, g := range groups {
		for _, p := range g.Params {
			o.params = append(o.params, p)
			o.group = append(o.group, gi)
			o.grads = append(o.grads, p.Grad)
		}
	}
	ok := false
	defer func() {
		if !ok {
			o.Close()
		}
	}()
	for _, p := range o.params {
		m, err := be.Alloc(dt, p.Master.Len())
		if err != nil {
			return nil, fmt.Errorf("optim: first moment of %s: %w", p.Name, err)
		}
		o.m = append(o.m, m)
		v, err := be.Alloc(dt, p.Master.Len())
		if err != nil {
			return nil, fmt.Errorf("optim: second moment of %s: %w", p.Name, err)
		}
		o.v = append(o.v, v)
		be.Fill(m, 0)
		be.Fill(v, 0)
	}
	for _, b := range []*kernels.Buffer{&o.flag, &o.sumSq, &o.gradScale} {
		if *b, err = be.Alloc(dt, 1); err != nil {
			return nil, fmt.Errorf("optim: scratch scalar: %w", err)
		}
	}
	for i := range o.params {
		h := groups[o.group[i]].Hyper
		found := false
		for c := range o.calls {
			if cl := &o.calls[c]; cl.beta1 == h.Beta1 && cl.beta2 == h.Beta2 && cl.eps == h.Eps {
				cl.idx = append(cl.idx, i)
				found = true
				break
			}
		}
		if !found {
			o.calls = append(o.calls, adamwCall{beta1: h.Beta1, beta2: h.Beta2, eps: h.Eps, idx: []int{i}})
		}
	}
	if err := be.Sync(); err != nil {
		return nil, fmt.Errorf("optim: zeroing optimizer state: %w", err)
	}
	ok = true
	return o, nil
}

// Close frees the optimizer's moments and scratch buffers (not the
// parameters, which the caller owns).
func (o *Optimizer) Close() {
	for _, b := range o.m {
		o.be.Free(b)
	}
	for _, b := range o.v {
		o.be.Free(b)
	}
	for _, b := range []kernels.Buffer{o.flag, o.sumSq, o.gradScale} {
		if b != nil {
			o.be.Free(b)
		}
	}
	o.m, o.v, o.flag, o.sumSq, o.gradScale = nil, nil, nil, nil, nil
}

// Precision is the run's resolved precision.
func (o *Optimizer) Precision() Precision { return o.precision }

// Scaler is the loss scaler (read its Scale before each backward).
func (o *Optimizer) Scaler() *Scaler { return o.scaler }

// LossScale is the factor to multiply the loss by (seed the backward with)
// for the current step.
func (o *Optimizer) LossScale() float64 { return o.scaler.Scale() }

// StepCount is the number of updates applied so far (skipped steps do not
// count), AdamW's t of the last update.
func (o *Optimizer) StepCount() int { return o.step }

// LRs are the learning rates the next update will use, one per group.
func (o *Optimizer) LRs() []float64 {
	f := o.cfg.Schedule.Factor(o.step)
	out := make([]float64, len(o.groups))
	for i, g := range o.groups {
		out[i] = g.LR * f
	}
	return out
}

// ZeroGrad sets every gradient to zero, ready to accumulate the next step.
func (o *Optimizer) ZeroGrad() {
	for _, g := range o.grads {
		o.be.Fill(g, 0)
	}
}

// AddMicroBatch records that one more micro-batch's gradients have been
// added into the gradient buffers and reports whether the step is due
// (AccumSteps have been added). Step averages over the micro-batches
// recorded since the last step.
func (o *Optimizer) AddMicroBatch() (due bool) {
	o.micro++
	return o.micro >= o.cfg.AccumSteps
}

// PendingMicroBatches is the number of micro-batches added since the last
// step.
func (o *Optimizer) PendingMicroBatches() int { return o.micro }

// SetWorking gives the parameters working copies after construction, in
// group order (nil where a parameter has none): for callers that learn the
// compute dtype from the optimizer's resolved Precision. Each must have its
// master's length. Call RefreshWorking before a forward reads them.
func (o *Optimizer) SetWorking(working []kernels.Buffer) error {
	if len(working) != len(o.params) {
		return fmt.Errorf("optim: %d working copies for %d parameters", len(working), len(o.params))
	}
	for i, w := range working {
		if w != nil && w.Len() != o.params[i].Master.Len() {
			return fmt.Errorf("optim: parameter %s: working copy has %d elements, master %d", o.params[i].Name, w.Len(), o.params[i].Master.Len())
		}
	}
	for i, w := range working {
		o.params[i].Working = w
	}
	return nil
}

// RefreshWorking casts every master into its working copy (the once-per-step
// cast of the design), for masters changed outside Step (a loaded state);
// an applied update refreshes them in its own pass.
func (o *Optimizer) RefreshWorking() {
	for _, p := range o.params {
		if p.Working != nil {
			o.be.Cast(p.Working, p.Master)
		}
	}
}

// StepResult reports one call of Step.
type StepResult struct {
	// Applied is false when a non-finite gradient was found and the update
	// skipped (weights, moments and t unchanged).
	Applied bool
	// GradNorm is the global L2 norm of the true gradients (unscaled and
	// averaged over micro-batches) before clipping; +Inf or NaN on a skip.
	GradNorm float64
	// ClipCoef is the factor clipping applied (1 when not clipped).
	ClipCoef float64
	// LossScale is the scale the gradients carried; the scaler has been
	// updated for the next step when Step returns.
	LossScale float64
	// LR is the first group's learning rate of this update (0 when skipped).
	LR float64
}

// Step finishes one optimizer step. It checks all gradients for inf/NaN in
// one pass and takes their sum of squares in another, reads both (the
// step's one synchronisation), and then either skips the update (counting
// it, backing the loss scale off in dynamic mode) or runs the fused AdamW
// with the gradients multiplied by (1/scale)·(1/micro-batches)·clip. A sum
// of squares that overflows float32 is treated as non-finite too: gradients
// that large are an overflow in all but name. An applied update leaves the
// gradients zero and every working copy refreshed (the fused AdamW writes
// both as it goes: kernels.AdamWArgs.Working and ZeroGrads); after a
// skipped one the gradients are as they were: call ZeroGrad before the
// next accumulation. The update itself is queued, not awaited: a failure
// in it is returned by the next synchronisation (the next Step, or the
// caller's Sync).
func (o *Optimizer) Step() (StepResult, error) {
	micro := max(o.micro, 1)
	o.micro = 0
	scale := o.scaler.Scale()
	res := StepResult{LossScale: scale, ClipCoef: 1}

	o.be.NonFinite(o.flag, o.grads)
	o.be.SumSquares(o.sumSq, o.grads)
	raw := make([]byte, o.dt.Size())
	if err := o.be.Download(raw, o.flag, 0); err != nil {
		// The first failure since the last sync: this step's checks or
		// anything queued before them (the last update included).
		return res, fmt.Errorf("optim: step after update %d: %w", o.step, err)
	}
	found := kernels.DecodeF64(o.dt, raw)[0] != 0
	if err := o.be.Download(raw, o.sumSq, 0); err != nil {
		return res, fmt.Errorf("optim: gradient norm: %w", err)
	}
	ss := kernels.DecodeF64(o.dt, raw)[0]

	// The unscale factor as GradScaler forms it (1/scale rounded to
	// float32), then the average over micro-batches.
	inv := o.scaler.InvScale() / float64(micro)
	res.GradNorm = math.Sqrt(ss) * inv
	if found || math.IsNaN(ss) || math.IsInf(ss, 0) {
		if !found {
			res.GradNorm = math.Inf(1)
		}
		o.scaler.Update(true)
		return res, nil
	}

	if o.cfg.MaxGradNorm > 0 {
		if c := o.cfg.MaxGradNorm / (res.GradNorm + clipEps); c < 1 {
			res.ClipCoef = c
		}
	}
	o.be.Upload(o.gradScale, 0, kernels.EncodeF64(o.dt, []float64{inv * res.ClipCoef}))

	f := o.cfg.Schedule.Factor(o.step)
	for _, cl := range o.calls {
		a := kernels.AdamWArgs{
			Beta1: cl.beta1, Beta2: cl.beta2, Eps: cl.eps, Step: o.step + 1,
			GradScale: o.gradScale, Skip: o.flag, ZeroGrads: true,
		}
		for _, i := range cl.idx {
			h := o.groups[o.group[i]].Hyper
			a.Params = append(a.Params, o.params[i].Master)
			a.Working = append(a.Working, o.params[i].Working)
			a.Grads = append(a.Grads, o.params[i].Grad)
			a.M = append(a.M, o.m[i])
			a.V = append(a.V, o.v[i])
			a.LR = append(a.LR, h.LR*f)
			a.WeightDecay = append(a.WeightDecay, h.WeightDecay)
		}
		o.be.AdamW(a)
	}
	o.step++
	o.scaler.Update(false)
	res.Applied = true
	res.LR = o.groups[0].LR * f
	return res, nil
}
