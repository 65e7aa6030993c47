package optim

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/newbie-train/newbie-train/kernels"
)

// Param is one trainable tensor as the optimizer sees it.
type Param struct {
	// Name identifies the parameter in groups, errors and saved state
	// (e.g. "layers.3.attention.qkv.lora_A.weight"); names are unique.
	Name string
	// Master holds the weights the optimizer updates in place: F32, or F64
	// in numerical checks.
	Master kernels.Buffer
	// Grad holds the gradient summed over the step's micro-batches, of the
	// same length as Master (F32 in training; any float dtype is read).
	Grad kernels.Buffer
	// Working, when not nil, is the copy of the weights the forward reads, in
	// the compute dtype; the optimizer writes Master into it in every
	// applied update's pass (and on RefreshWorking), once per step as the
	// design asks.
	Working kernels.Buffer
}

// Hyper are the AdamW hyperparameters of one parameter group, named and
// defined as torch.optim.AdamW's.
type Hyper struct {
	LR          float64 // learning rate at schedule factor 1
	WeightDecay float64 // decoupled decay: p −= lr·wd·p before the Adam update
	Beta1       float64 // first-moment decay
	Beta2       float64 // second-moment decay
	Eps         float64 // added to √v̂ in the denominator
}

// DefaultHyper returns torch.optim.AdamW's defaults: lr 1e−3, betas
// (0.9, 0.999), eps 1e−8, weight decay 1e−2.
func DefaultHyper() Hyper {
	return Hyper{LR: 1e-3, WeightDecay: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
}

// Validate checks the ranges PyTorch accepts (lr, eps and weight decay ≥ 0,
// betas in [0, 1)), and that every value is finite, naming the bad one.
func (h Hyper) Validate() error {
	var errs []error
	check := func(name string, v float64, ok bool, want string) {
		if math.IsNaN(v) || math.IsInf(v, 0) || !ok {
			errs = append(errs, fmt.Errorf("%s = %g: want %s", name, v, want))
		}
	}
	check("lr", h.LR, h.LR >= 0, "a finite value ≥ 0")
	check("weight_decay", h.WeightDecay, h.WeightDecay >= 0, "a finite value ≥ 0")
	check("beta1", h.Beta1, h.Beta1 >= 0 && h.Beta1 < 1, "0 ≤ beta1 < 1")
	check("beta2", h.Beta2, h.Beta2 >= 0 && h.Beta2 < 1, "0 ≤ beta2 < 1")
	check("eps", h.Eps, h.Eps >= 0, "a finite value ≥ 0")
	if h.LR*h.WeightDecay >= 1 {
		// p·(1 − lr·wd) would flip or zero every weight each step.
		errs = append(errs, fmt.Errorf("lr·weight_decay = %g: want < 1 (the decay factor 1 − lr·wd must stay positive)", h.LR*h.WeightDecay))
	}
	return errors.Join(errs...)
}

// Group is a set of parameters sharing hyperparameters, as one of
// torch.optim's param_groups.
type Group struct {
	Name   string // for errors and logs, e.g. "default", "no_decay", "lora_B"
	Params []Param
	Hyper
}

// Rule sends the parameters whose names match to a group of its own, with
// the base hyperparameters edited by Apply. Rules are tried in order; the
// first that matches wins.
type Rule struct {
	Group string
	Match func(name string) bool
	Apply func(h *Hyper)
}

// NoDecayRule puts biases and normalisation weights into a group without
// weight decay, the usual practice (decaying a norm's gain toward zero
// fights the norm).
func NoDecayRule() Rule {
	return Rule{Group: "no_decay", Match: IsBiasOrNorm, Apply: func(h *Hyper) { h.WeightDecay = 0 }}
}

// LoRAPlusRule gives LoRA's B matrices (PEFT "lora_B", kohya "lora_up") the
// learning rate ratio × base, as LoRA+ (Hayou et al., 2024) prescribes; the
// paper suggests ratios around 16.
func LoRAPlusRule(ratio float64) Rule {
	return Rule{
		Group: "lora_B",
		Match: func(name string) bool { return strings.Contains(name, "lora_B") || strings.Contains(name, "lora_up") },
		Apply: func(h *Hyper) { h.LR *= ratio },
	}
}

// IsBiasOrNorm reports whether a parameter name is a bias or belongs to a
// normalisation layer (any path element containing "norm", as in
// "attention_norm1.weight" or "q_norm.weight").
func IsBiasOrNorm(name string) bool {
	parts := strings.Split(name, ".")
	if parts[len(parts)-1] == "bias" {
		return true
	}
	for _, p := range parts[:len(parts)-1] {
		if strings.Contains(strings.ToLower(p), "norm") {
			return true
		}
	}
	return false
}

// GroupParams splits params into groups by rules: each parameter goes to the
// first rule that matches it, or to the group "default" with base. Groups
// keep the order default, then rules; empty groups are left out.
func GroupParams(params []Param, base Hyper, rules ...Rule) []Group {
	groups := make([]Group, len(rules)+1)
	groups[0] = Group{Name: "default", Hyper: base}
	for i, r := range rules {
		h := base
		if r.Apply != nil {
			r.Apply(&h)
		}
		groups[i+1] = Group{Name: r.Group, Hyper: h}
	}
	for _, p := range params {
		g := 0
		for i, r := range rules {
			if r.Match != nil && r.Match(p.Name) {
				g = i + 1
				break
			}
		}
		groups[g].Params = append(groups[g].Params, p)
	}
	out := groups[:0]
	for _, g := range groups {
		if len(g.Params) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// validateGroups checks every group's hyperparameters and every parameter's
// buffers, and that names are unique. All masters must share one dtype (F32,
// or F64 in checks) so the step's scratch scalars have one precision.
func validateGroups(groups []Group) (kernels.DType, error) {
	if len(groups) == 0 {
		return 0, errors.New("no parameter groups")
	}
	seen := map[string]string{}
	var dt kernels.DType
	n := 0
	for gi, g := range groups {
		gname := g.Name
		if gname == "" {
			gname = fmt.Sprintf("#%d", gi)
		}
		if err := g.Hyper.Validate(); err != nil {
			return 0, fmt.Errorf("group %s: %w", gname, err)
		}
		for _, p := range g.Params {
			if p.Name == "" {
				return 0, fmt.Errorf("group %s: a parameter has no name", gname)
			}
			if other, dup := seen[p.Name]; dup {
				return 0, fmt.Errorf("parameter %s is in group %s and again in group %s", p.Name, other, gname)
			}
			seen[p.Name] = gname
			if p.Master == nil || p.Grad == nil {
				return 0, fmt.Errorf("parameter %s: master and gradient buffers are required", p.Name)
			}
			md := p.Master.DType()
			if md != kernels.F32 && md != kernels.F64 {
				return 0, fmt.Errorf("parameter %s: master is %v, want F32 (or F64 in checks)", p.Name, md)
			}
			if dt == 0 {
				dt = md
			} else if md != dt {
				return 0, fmt.Errorf("parameter %s: master is %v but others are %v (all masters share one dtype)", p.Name, md, dt)
			}
			if !p.Grad.DType().IsFloat() {
				return 0, fmt.Errorf("parameter %s: gradient is %v, want a float dtype", p.Name, p.Grad.DType())
			}
			if p.Grad.Len() != p.Master.Len() {
				return 0, fmt.Errorf("parameter %s: gradient has %d elements, master %d", p.Name, p.Grad.Len(), p.Master.Len())
			}
			if p.Working != nil && p.Working.Len() != p.Master.Len() {
				return 0, fmt.Errorf("parameter %s: working copy has %d elements, master %d", p.Name, p.Working.Len(), p.Master.Len())
			}
			n++
		}
	}
	if n == 0 {
		return 0, errors.New("the parameter groups hold no parameters")
	}
	return dt, nil
}
