package nextdit

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// Golden is an opened reference file in the format of
// ../shared/golden/nextdit/tiny.golden.safetensors: inputs (in.*), the
// output (out.y, out.y_lora) and the gradients of sum(out ⊙ in.grad_out)
// (grad.<weight>, grad.in.*, grad_lora.<PEFT name>), with the architecture
// in __metadata__["config"].
type Golden struct {
	f *safetensors.File
}

// OpenGolden opens a golden reference file and checks that it holds the
// inputs every run needs.
func OpenGolden(path string) (*Golden, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("nextdit: golden: %w", err)
	}
	for _, n := range []string{"in.x", "in.t", "in.cap_feats", "in.cap_mask", "in.grad_out", "out.y"} {
		if _, ok := f.Info(n); !ok {
			f.Close()
			return nil, fmt.Errorf("nextdit: golden %s has no %s; is it a golden reference file?", path, n)
		}
	}
	return &Golden{f: f}, nil
}

// Close unmaps the file.
func (g *Golden) Close() error { return g.f.Close() }

// Path is the file's path.
func (g *Golden) Path() string { return g.f.Path() }

// Config is the architecture the reference was computed with.
func (g *Golden) Config() (Config, error) { return ConfigFromFile(g.f) }

// Has reports whether the file holds a tensor.
func (g *Golden) Has(name string) bool {
	_, ok := g.f.Info(name)
	return ok
}

// Names lists the file's tensors.
func (g *Golden) Names() []string { return g.f.Names() }

// Ref reads a reference tensor as float64.
func (g *Golden) Ref(name string) ([]float64, error) {
	v, err := g.f.Float64(name)
	if err != nil {
		return nil, fmt.Errorf("nextdit: golden: %w", err)
	}
	return v, nil
}

// upload puts a reference tensor on the engine in dtype d.
func (g *Golden) upload(e *ag.Engine, d kernels.DType, name string) (*ag.Tensor, error) {
	info, ok := g.f.Info(name)
	if !ok {
		return nil, fmt.Errorf("nextdit: golden %s has no %s", g.f.Path(), name)
	}
	v, err := g.Ref(name)
	if err != nil {
		return nil, err
	}
	return e.FromFloat64(d, info.Shape, v), nil
}

// Inputs uploads the golden inputs in dtype d, the latent, caption features
// and pooled CLIP embedding marked as inputs so their gradients are kept,
// and returns them with in.grad_out (the seed of the backward).
func (g *Golden) Inputs(e *ag.Engine, d kernels.DType) (Inputs, *ag.Tensor, error) {
	var in Inputs
	x, err := g.upload(e, d, "in.x")
	if err != nil {
		return in, nil, err
	}
	cf, err := g.upload(e, d, "in.cap_feats")
	if err != nil {
		return in, nil, err
	}
	in.X, in.CapFeats = x.Input(), cf.Input()
	if g.Has("in.clip_text_pooled") {
		clip, err := g.upload(e, d, "in.clip_text_pooled")
		if err != nil {
			return in, nil, err
		}
		in.ClipPooled = clip.Input()
	}
	if in.T, err = g.Ref("in.t"); err != nil {
		return in, nil, err
	}
	mask, err := g.Ref("in.cap_mask")
	if err != nil {
		return in, nil, err
	}
	ms, _ := g.f.Info("in.cap_mask")
	if len(ms.Shape) != 2 {
		return in, nil, fmt.Errorf("nextdit: golden in.cap_mask is %v, want [B, L]", ms.Shape)
	}
	if in.CapLens, err = CapLensFromMask(mask, ms.Shape[0], ms.Shape[1]); err != nil {
		return in, nil, err
	}
	gradOut, err := g.upload(e, d, "in.grad_out")
	if err != nil {
		return in, nil, err
	}
	return in, gradOut, e.Err()
}

// Precision is how a parity run computes, with the README's tolerances.
type Precision struct {
	// Name is fp64, fp32 or bf16.
	Name string
	// Storage is the dtype frozen weights are kept in, Master that of
	// trainable ones and of the inputs, Autocast the matmul dtype (0 off).
	Storage, Master, Autocast kernels.DType
	// OutTol and GradTol bound the relative error of the output and of
	// every gradient.
	OutTol, GradTol float64
}

// ParsePrecision maps fp64 (F64 weights and inputs), fp32, and bf16 (F32
// masters under bf16 autocast) to their dtypes and the golden README's
// tolerances.
func ParsePrecision(name string) (Precision, error) {
	switch name {
	case "fp64":
		return Precision{name, kernels.F64, kernels.F64, 0, 1e-6, 1e-6}, nil
	case "fp32":
		return Precision{name, kernels.F32, kernels.F32, 0, 1e-5, 1e-5}, nil
	case "bf16":
		return Precision{name, kernels.F32, kernels.F32, kernels.BF16, 2e-2, 5e-2}, nil
	}
	return Precision{}, fmt.Errorf("nextdit: precision %q: want fp64, fp32 or bf16", name)
}

// AdapterFunc attaches trainable adapters to a loaded model (masters in
// dtype master) and returns their tensors keyed "<layer>.lora_A" and
// "<layer>.lora_B" (layer = the linear's module path). It is how a parity
// run gets a LoRA without this package depending on models/lora.
type AdapterFunc func(m *Model, master kernels.DType) (map[string]*ag.Tensor, error)

// GoldenOptions tune RunGolden.
type GoldenOptions struct {
	Precision Precision
	// Checkpoint runs the blocks under activation checkpointing.
	Checkpoint bool
	// Config is the architecture when the weights carry none in their
	// metadata; nil uses the golden file's.
	Config *Config
	// Adapter, when set, attaches a LoRA to the frozen base: the run is
	// then compared with out.y_lora, grad.in.x_lora and grad_lora.*.
	// Without it every base weight is trainable and the run is compared
	// with out.y, grad.in.* and every grad.<weight>.
	Adapter AdapterFunc
}

// GoldenReport holds the relative errors ‖ours−ref‖/‖ref‖ of one run.
type GoldenReport struct {
	// Output is the error of the model's output.
	Output float64
	// Inputs, Params and LoRA are the gradient errors by reference name
	// (grad.in.x, grad.layers.0.attention.qkv.weight,
	// grad_lora.base_model.model.….lora_A.default.weight).
	Inputs, Params, LoRA map[string]float64
}

// Worst returns the largest error of a group and its name ("" when the
// group is empty). NaN counts as the worst.
func Worst(group map[string]float64) (float64, string) {
	names := make([]string, 0, len(group))
	for n := range group {
		names = append(names, n)
	}
	sort.Strings(names)
	w, wn := 0.0, ""
	for _, n := range names {
		if e := group[n]; wn == "" || e > w || (math.IsNaN(e) && !math.IsNaN(w)) {
			w, wn = e, n
		}
	}
	return w, wn
}

// Pass reports whether every error is within the precision's tolerances;
// failures lists the groups that are not.
func (r *GoldenReport) Pass(p Precision) (ok bool, failures []string) {
	within := func(e, tol float64) bool { return e <= tol } // false for NaN
	if !within(r.Output, p.OutTol) {
		failures = append(failures, fmt.Sprintf("output %.3g > %.0e", r.Output, p.OutTol))
	}
	for _, g := range []struct {
		name string
		m    map[string]float64
	}{{"input gradients", r.Inputs}, {"parameter gradients", r.Params}, {"LoRA gradients", r.LoRA}} {
		if w, n := Worst(g.m); n != "" && !within(w, p.GradTol) {
			failures = append(failures, fmt.Sprintf("%s %.3g > %.0e (%s)", g.name, w, p.GradTol, n))
		}
	}
	return len(failures) == 0, failures
}

// RunGolden loads weights (any layout Load reads) on backend be, runs the
// golden inputs forward and the backward of sum(y ⊙ in.grad_out) in the
// given precision, and returns the relative error of the output and of
// every gradient the golden file holds. Reference tensors the run cannot
// produce, and gradients the run has but the file lacks, are errors: a
// partial comparison would pass silently.
func RunGolden(be kernels.Backend, weights, goldenPath string, opts GoldenOptions) (*GoldenReport, error) {
	p := opts.Precision
	if p.Name == "" {
		return nil, errors.New("nextdit: RunGolden: no precision given")
	}
	g, err := OpenGolden(goldenPath)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	cfg := opts.Config
	if cfg == nil {
		gc, err := g.Config()
		if err != nil {
			return nil, err
		}
		cfg = &gc
	}
	e := ag.New(be)
	storage := p.Master // every base weight becomes a trainable master
	if opts.Adapter != nil {
		storage = p.Storage
	}
	m, err := LoadWithConfig(e, weights, cfg, Options{DType: storage, Checkpoint: opts.Checkpoint})
	if err != nil {
		return nil, err
	}
	defer m.Release()
	var lora map[string]*ag.Tensor
	if opts.Adapter != nil {
		if lora, err = opts.Adapter(m, p.Master); err != nil {
			return nil, err
		}
		defer func() {
			m.SetHook(nil)
			for _, t := range lora {
				t.Release()
			}
		}()
	} else if _, err := m.SetTrainable(func(string) bool { return true }, p.Master); err != nil {
		return nil, err
	}
	in, gradOut, err := g.Inputs(e, p.Master)
	if err != nil {
		return nil, err
	}
	prev := e.SetAutocast(p.Autocast)
	y, err := m.Forward(in)
	if err != nil {
		e.SetAutocast(prev)
		return nil, err
	}
	loss := ag.SumAll(ag.Mul(y, gradOut))
	e.SetAutocast(prev)
	yv, err := y.Values()
	if err != nil {
		return nil, fmt.Errorf("nextdit: golden forward: %w", err)
	}
	if err := e.Backward(loss); err != nil {
		return nil, fmt.Errorf("nextdit: golden backward: %w", err)
	}
	rep := &GoldenReport{Inputs: map[string]float64{}, Params: map[string]float64{}, LoRA: map[string]float64{}}
	compare := func(got *ag.Tensor, ref string, into map[string]float64) error {
		if got == nil {
			return fmt.Errorf("nextdit: golden %s: the run produced no such gradient", ref)
		}
		v, err := got.Values()
		if err != nil {
			return fmt.Errorf("nextdit: reading the value compared with %s: %w", ref, err)
		}
		want, err := g.Ref(ref)
		if err != nil {
			return err
		}
		if len(v) != len(want) {
			return fmt.Errorf("nextdit: golden %s has %d values, the run %d", ref, len(want), len(v))
		}
		into[ref] = kernels.RelErr(v, want)
		return nil
	}
	suffix := ""
	if lora != nil {
		suffix = "_lora"
	}
	want, err := g.Ref("out.y" + suffix)
	if err != nil {
		return nil, err
	}
	if len(want) != len(yv) {
		return nil, fmt.Errorf("nextdit: golden out.y%s has %d values, the model gave %d", suffix, len(want), len(yv))
	}
	rep.Output = kernels.RelErr(yv, want)
	for _, x := range []struct {
		name string
		t    *ag.Tensor
	}{{"x", in.X}, {"cap_feats", in.CapFeats}, {"clip_text_pooled", in.ClipPooled}} {
		ref := "grad.in." + x.name + suffix
		if !g.Has(ref) || x.t == nil {
			continue
		}
		if err := compare(x.t.Grad(), ref, rep.Inputs); err != nil {
			return nil, err
		}
	}
	if lora == nil {
		if err := compareParams(g, m, compare, rep.Params); err != nil {
			return nil, err
		}
	} else if err := compareLoRA(g, lora, compare, rep.LoRA); err != nil {
		return nil, err
	}
	if err := e.EndStep(); err != nil {
		return nil, err
	}
	return rep, nil
}

// goldenPEFT is how PEFT names an adapter tensor in memory, which is how
// the golden file keys the LoRA gradients.
func goldenPEFT(layer, which string) string {
	return "grad_lora.base_model.model." + layer + ".lora_" + which + ".default.weight"
}

// compareParams checks every grad.<weight> of the file against the model's
// gradients, and that every used weight was compared.
func compareParams(g *Golden, m *Model, compare func(*ag.Tensor, string, map[string]float64) error, into map[string]float64) error {
	for _, name := range g.Names() {
		key, ok := strings.CutPrefix(name, "grad.")
		if !ok || strings.HasPrefix(key, "in.") {
			continue
		}
		w := m.Weight(key)
		if w == nil {
			return fmt.Errorf("nextdit: golden has %s but the model has no weight %s", name, key)
		}
		if err := compare(w.Grad(), name, into); err != nil {
			return err
		}
	}
	var absent []string
	for _, n := range m.Names() {
		if _, ok := into["grad."+n]; !ok && n != "norm_final.weight" {
			absent = append(absent, n)
		}
	}
	if len(absent) > 0 {
		return fmt.Errorf("nextdit: golden %s has no gradient for %d weights (%s …)", g.Path(), len(absent), absent[0])
	}
	return nil
}

// compareLoRA checks every adapter gradient against grad_lora.*, and that
// the file has no adapter gradient the run lacks.
func compareLoRA(g *Golden, lora map[string]*ag.Tensor, compare func(*ag.Tensor, string, map[string]float64) error, into map[string]float64) error {
	names := make([]string, 0, len(lora))
	for n := range lora {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		layer, which, ok := strings.Cut(n, ".lora_")
		if !ok || (which != "A" && which != "B") {
			return fmt.Errorf("nextdit: adapter tensor %q is not named <layer>.lora_A or <layer>.lora_B", n)
		}
		ref := goldenPEFT(layer, which)
		if !g.Has(ref) {
			return fmt.Errorf("nextdit: the LoRA adapts %s, which golden %s has no gradient for (%s)", layer, g.Path(), ref)
		}
		if err := compare(lora[n].Grad(), ref, into); err != nil {
			return err
		}
	}
	for _, n := range g.Names() {
		if _, done := into[n]; strings.HasPrefix(n, "grad_lora.") && !done {
			return fmt.Errorf("nextdit: golden %s has %s, which the LoRA does not adapt", g.Path(), n)
		}
	}
	if len(into) == 0 {
		return fmt.Errorf("nextdit: golden %s has no LoRA gradients (grad_lora.*) to compare with", g.Path())
	}
	return nil
}
