package optim

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// hostAdamW is the AdamW update in float64 on host slices, the tests'
// independent reference (g is already the true, scaled gradient).
func hostAdamW(p, g, m, v []float64, h Hyper, lr float64, step int) {
	bc1 := 1 - math.Pow(h.Beta1, float64(step))
	bc2 := 1 - math.Pow(h.Beta2, float64(step))
	for j := range p {
		p[j] -= lr * h.WeightDecay * p[j]
		m[j] = h.Beta1*m[j] + (1-h.Beta1)*g[j]
		v[j] = h.Beta2*v[j] + (1-h.Beta2)*g[j]*g[j]
		p[j] -= lr * (m[j] / bc1) / (math.Sqrt(v[j]/bc2) + h.Eps)
	}
}

func randn(r *rand.Rand, n int, std float64) []float64 { return kerneltest.Randn(r, n, std) }

func TestHyperValidate(t *testing.T) {
	ok := DefaultHyper()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	for _, tc := range []struct {
		edit func(h *Hyper)
		want string
	}{
		{func(h *Hyper) { h.LR = -1e-3 }, "lr = -0.001"},
		{func(h *Hyper) { h.LR = math.NaN() }, "lr = NaN"},
		{func(h *Hyper) { h.WeightDecay = -0.1 }, "weight_decay"},
		{func(h *Hyper) { h.Beta1 = 1 }, "beta1"},
		{func(h *Hyper) { h.Beta2 = -0.5 }, "beta2"},
		{func(h *Hyper) { h.Eps = math.Inf(1) }, "eps"},
		{func(h *Hyper) { h.LR, h.WeightDecay = 10, 0.1 }, "lr·weight_decay"},
	} {
		h := ok
		tc.edit(&h)
		err := h.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", h, err, tc.want)
		}
	}
}

func TestPrecisionResolve(t *testing.T) {
	for _, tc := range []struct {
		p       Precision
		c       Capability
		want    Precision
		wantErr string
		dt      kernels.DType
		scaler  ScalerMode
	}{
		{p: Auto, c: Capability{9, 0}, want: BF16, dt: kernels.BF16, scaler: ScaleOff},
		{p: Auto, c: Capability{8, 6}, want: BF16, dt: kernels.BF16, scaler: ScaleOff},
		{p: Auto, c: Capability{7, 5}, want: FP16, dt: kernels.F16, scaler: ScaleDynamic},
		{p: Auto, c: Capability{}, want: FP32, dt: kernels.F32, scaler: ScaleOff},
		{p: BF16, c: Capability{}, want: BF16, dt: kernels.BF16, scaler: ScaleOff},
		{p: BF16, c: Capability{7, 0}, wantErr: "compute capability"},
		{p: FP16, c: Capability{9, 0}, want: FP16, dt: kernels.F16, scaler: ScaleDynamic},
		{p: FP32, c: Capability{9, 0}, want: FP32, dt: kernels.F32, scaler: ScaleOff},
		{p: "fp8", c: Capability{9, 0}, wantErr: "unknown precision"},
	} {
		got, err := tc.p.Resolve(tc.c)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s on %v: error %v, want %q", tc.p, tc.c, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want || got.ComputeDType() != tc.dt || got.DefaultScalerMode() != tc.scaler {
			t.Errorf("%s on %v: %s (%v, scaler %v), %v; want %s (%v, scaler %v)", tc.p, tc.c, got, got.ComputeDType(), got.DefaultScalerMode(), err, tc.want, tc.dt, tc.scaler)
		}
	}
	if _, err := ParsePrecision("bf16"); err != nil {
		t.Error(err)
	}
	if _, err := ParsePrecision("half"); err == nil {
		t.Error("precision half accepted")
	}
}

func TestGroupParams(t *testing.T) {
	names := []string{
		"layers.0.attention.qkv.lora_A.weight", "layers.0.attention.qkv.lora_B.weight",
		"layers.0.attention_norm1.weight", "layers.0.feed_forward.w1.bias",
		"lora_unet_layers_0_qkv.lora_up.weight", "x_embedder.weight",
	}
	var params []Param
	for _, n := range names {
		params = append(params, Param{Name: n})
	}
	base := DefaultHyper()
	groups := GroupParams(params, base, NoDecayRule(), LoRAPlusRule(16))
	got := map[string][]string{}
	for _, g := range groups {
		for _, p := range g.Params {
			got[g.Name] = append(got[g.Name], p.Name)
		}
		switch g.Name {
		case "no_decay":
			if g.WeightDecay != 0 || g.LR != base.LR {
				t.Errorf("no_decay group has %+v", g.Hyper)
			}
		case "lora_B":
			if g.LR != 16*base.LR || g.WeightDecay != base.WeightDecay {
				t.Errorf("lora_B group has %+v", g.Hyper)
			}
		case "default":
			if g.Hyper != base {
				t.Errorf("default group has %+v", g.Hyper)
			}
		}
	}
	want := map[string][]string{
		"default":  {names[0], names[5]},
		"no_decay": {names[2], names[3]},
		"lora_B":   {names[1], names[4]},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("groups %v, want %v", got, want)
	}
}

func TestNewErrors(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(1, 2))
	a := newParam(t, be, "a", kernels.F32, randn(r, 7, 1))
	b := newParam(t, be, "b", kernels.F32, randn(r, 13, 1))
	d := newParam(t, be, "d", kernels.F64, randn(r, 13, 1))
	short, _ := be.Alloc(kernels.F32, 6)
	bf, _ := be.Alloc(kernels.BF16, 13)
	h := DefaultHyper()
	for _, tc := range []struct {
		name   string
		groups []Group
		cfg    Config
		want   string
	}{
		{"no groups", nil, Config{}, "no parameter groups"},
		{"empty groups", []Group{{Name: "x", Hyper: h}}, Config{}, "hold no parameters"},
		{"duplicate", []Group{{Name: "x", Hyper: h, Params: []Param{a}}, {Name: "y", Hyper: h, Params: []Param{a}}}, Config{}, "parameter a is in group x and again in group y"},
		{"bad hyper", []Group{{Name: "x", Hyper: Hyper{LR: -1, Beta1: 0.9, Beta2: 0.9}, Params: []Param{a}}}, Config{}, "group x: lr = -1"},
		{"grad length", []Group{{Name: "x", Hyper: h, Params: []Param{{Name: "s", Master: a.Master, Grad: short}}}}, Config{}, "gradient has 6 elements, master 7"},
		{"bf16 master", []Group{{Name: "x", Hyper: h, Params: []Param{{Name: "s", Master: bf, Grad: bf}}}}, Config{}, "want F32"},
		{"mixed masters", []Group{{Name: "x", Hyper: h, Params: []Param{b, d}}}, Config{}, "share one dtype"},
		{"bf16 on volta", []Group{{Name: "x", Hyper: h, Params: []Param{a}}}, Config{Precision: BF16, Capability: Capability{7, 0}}, "compute capability"},
		{"clip", []Group{{Name: "x", Hyper: h, Params: []Param{a}}}, Config{MaxGradNorm: -1}, "max_grad_norm"},
		{"schedule", []Group{{Name: "x", Hyper: h, Params: []Param{a}}}, Config{Schedule: Schedule{Kind: Linear}}, "lr schedule: total_steps"},
		{"scaler", []Group{{Name: "x", Hyper: h, Params: []Param{a}}}, Config{Scaler: ScalerConfig{Mode: ScaleDynamic, BackoffFactor: 2}}, "backoff_factor"},
	} {
		o, err := New(be, tc.groups, tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
		if o != nil {
			o.Close()
		}
	}
}

// TestClipping sets gradients whose global norm is known by hand and checks
// the norm, the clip coefficient and the update, with a static loss scale and
// two accumulated micro-batches folded in.
func TestClipping(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxNorm float64
		coef    float64
	}{
		{"clipped", 6.5, 6.5 / (13 + 1e-6)},
		{"under the limit", 20, 1},
		{"off", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := cpu.New()
			r := rand.New(rand.NewPCG(3, 4))
			p0 := [][]float64{randn(r, 2, 1), randn(r, 1, 1), randn(r, 3, 1)}
			// True averaged gradients: (3, 4), (12), (0, 0, 0): norm 13.
			trueG := [][]float64{{3, 4}, {12}, {0, 0, 0}}
			const scale, micro = 1024.0, 2
			params := []Param{
				newParam(t, be, "u", kernels.F64, p0[0]),
				newParam(t, be, "w", kernels.F64, p0[1]),
				newParam(t, be, "z", kernels.F64, p0[2]),
			}
			h := Hyper{LR: 0.1, WeightDecay: 0.05, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
			o, err := New(be, []Group{{Name: "all", Params: params, Hyper: h}},
				Config{Precision: FP16, Scaler: ScalerConfig{Mode: ScaleStatic, InitScale: scale}, MaxGradNorm: tc.maxNorm, AccumSteps: micro})
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			// The summed, scaled gradients of two micro-batches.
			for i, p := range params {
				g := make([]float64, len(trueG[i]))
				for j := range g {
					g[j] = trueG[i][j] * scale * micro
				}
				setGrad(be, p, g)
			}
			if o.AddMicroBatch() {
				t.Fatal("step due after one of two micro-batches")
			}
			if !o.AddMicroBatch() {
				t.Fatal("step not due after two of two micro-batches")
			}
			res, err := o.Step()
			if err != nil {
				t.Fatal(err)
			}
			if !res.Applied || math.Abs(res.GradNorm-13) > 1e-12 || math.Abs(res.ClipCoef-tc.coef) > 1e-15 || res.LossScale != scale {
				t.Fatalf("result %+v, want applied, norm 13, coef %g, scale %g", res, tc.coef, scale)
			}
			for i, p := range params {
				want := append([]float64(nil), p0[i]...)
				g := make([]float64, len(want))
				for j := range g {
					g[j] = trueG[i][j] * tc.coef
				}
				hostAdamW(want, g, make([]float64, len(g)), make([]float64, len(g)), h, h.LR, 1)
				kerneltest.Check(t, p.Name, download(t, be, p.Master), want, 1e-12)
			}
		})
	}
}

// TestSkipNonFinite puts an Inf or NaN into one gradient in each scaler mode
// and checks that nothing moves (weights, moments, t), the skip is counted and
// only the dynamic scale backs off; the next clean step applies as step 1.
func TestSkipNonFinite(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prec      Precision
		mode      ScalerMode
		bad       float64
		scaleNext float64
	}{
		{"fp16 dynamic inf", FP16, ScaleDefault, math.Inf(1), 32768},
		{"fp16 static nan", FP16, ScaleStatic, math.NaN(), 65536},
		{"bf16 off -inf", BF16, ScaleDefault, math.Inf(-1), 1},
		{"fp32 off huge", FP32, ScaleOff, 1e30, 1}, // finite, but its square overflows float32
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := cpu.New()
			r := rand.New(rand.NewPCG(5, 6))
			init := [][]float64{randn(r, 7, 1), randn(r, 13, 1)}
			params := []Param{newParam(t, be, "a", kernels.F32, init[0]), newParam(t, be, "b", kernels.F32, init[1])}
			h := DefaultHyper()
			o, err := New(be, []Group{{Name: "all", Params: params, Hyper: h}}, Config{Precision: tc.prec, Scaler: ScalerConfig{Mode: tc.mode}})
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			scale := o.LossScale()
			g0 := randn(r, 7, 1)
			g1 := randn(r, 13, 1)
			for j := range g0 {
				g0[j] *= scale
			}
			for j := range g1 {
				g1[j] *= scale
			}
			bad := append([]float64(nil), g1...)
			bad[11] = tc.bad
			setGrad(be, params[0], g0)
			setGrad(be, params[1], bad)
			before, err := o.State()
			if err != nil {
				t.Fatal(err)
			}
			res, err := o.Step()
			if err != nil {
				t.Fatal(err)
			}
			if res.Applied || o.StepCount() != 0 || o.Scaler().Skipped() != 1 || o.LossScale() != tc.scaleNext {
				t.Fatalf("after a bad step: %+v, t=%d, skipped %d, scale %g; want skipped, t=0, 1 skip, scale %g",
					res, o.StepCount(), o.Scaler().Skipped(), o.LossScale(), tc.scaleNext)
			}
			after, err := o.State()
			if err != nil {
				t.Fatal(err)
			}
			for i := range after.Tensors {
				if !bytes.Equal(after.Tensors[i].M, before.Tensors[i].M) || !bytes.Equal(after.Tensors[i].V, before.Tensors[i].V) {
					t.Errorf("moments of %s changed on a skipped step", after.Tensors[i].Name)
				}
			}
			for i, p := range params {
				kerneltest.Check(t, p.Name+" after skip", download(t, be, p.Master), kerneltest.Quantize(kernels.F32, init[i]), 0)
			}

			// A clean step at the new scale is update 1.
			s2 := o.LossScale()
			for _, g := range [][]float64{g0, g1} {
				for j := range g {
					g[j] = g[j] / scale * s2
				}
			}
			setGrad(be, params[0], g0)
			setGrad(be, params[1], g1)
			grads := [][]float64{download(t, be, params[0].Grad), download(t, be, params[1].Grad)}
			res, err = o.Step()
			if err != nil || !res.Applied || o.StepCount() != 1 {
				t.Fatalf("clean step: %+v, %v, t=%d", res, err, o.StepCount())
			}
			for i, p := range params {
				// The applied update zeroed the gradient it read.
				kerneltest.Check(t, p.Name+" gradient after clean step", download(t, be, p.Grad), make([]float64, len(grads[i])), 0)
				g := grads[i]
				for j := range g {
					g[j] /= s2
				}
				want := kerneltest.Quantize(kernels.F32, init[i])
				hostAdamW(want, g, make([]float64, len(g)), make([]float64, len(g)), h, h.LR, 1)
				kerneltest.Check(t, p.Name+" after clean step", download(t, be, p.Master), want, 1e-6)
			}
		})
	}
}

// TestWorkingCopies checks that the forward's working copies are cast from
// the masters after an applied step.
func TestWorkingCopies(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(7, 8))
	p := newParam(t, be, "w", kernels.F32, randn(r, 37, 1))
	p.Working = kerneltest.Poisoned(t, be, kernels.BF16, 37)
	o, err := New(be, []Group{{Name: "all", Params: []Param{p}, Hyper: DefaultHyper()}}, Config{Precision: BF16})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	setGrad(be, p, randn(r, 37, 1))
	if res, err := o.Step(); err != nil || !res.Applied {
		t.Fatalf("step: %+v, %v", res, err)
	}
	kerneltest.Check(t, "working copy", download(t, be, p.Working), kerneltest.Quantize(kernels.BF16, download(t, be, p.Master)), 0)
}

// TestSetWorking: working copies given after construction are written by
// the next applied step; a wrong count or length is refused.
func TestSetWorking(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(7, 9))
	p := newParam(t, be, "w", kernels.F32, randn(r, 37, 1))
	o, err := New(be, []Group{{Name: "all", Params: []Param{p}, Hyper: DefaultHyper()}}, Config{Precision: BF16})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	short := kerneltest.Poisoned(t, be, kernels.BF16, 36)
	if err := o.SetWorking([]kernels.Buffer{short}); err == nil {
		t.Error("a working copy of 36 elements for a master of 37 was accepted")
	}
	if err := o.SetWorking(nil); err == nil {
		t.Error("no working copies for one parameter was accepted")
	}
	w := kerneltest.Poisoned(t, be, kernels.BF16, 37)
	if err := o.SetWorking([]kernels.Buffer{w}); err != nil {
		t.Fatal(err)
	}
	setGrad(be, p, randn(r, 37, 1))
	if res, err := o.Step(); err != nil || !res.Applied {
		t.Fatalf("step: %+v, %v", res, err)
	}
	kerneltest.Check(t, "working copy", download(t, be, w), kerneltest.Quantize(kernels.BF16, download(t, be, p.Master)), 0)
}

// TestLRsFollowSchedule checks that updates use the schedule's factor at the
// count of applied updates, and that a skipped step does not advance it.
func TestLRsFollowSchedule(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(9, 10))
	a := newParam(t, be, "a.weight", kernels.F64, randn(r, 7, 1))
	b := newParam(t, be, "a.bias", kernels.F64, randn(r, 7, 1))
	base := Hyper{LR: 0.01, WeightDecay: 0.1, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
	groups := GroupParams([]Param{a, b}, base, NoDecayRule())
	sched := Schedule{Kind: Linear, TotalSteps: 5, WarmupSteps: 2}
	o, err := New(be, groups, Config{Precision: FP32, Schedule: sched})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	wantLR := []float64{0, 0.005, 0.01, 0.01 * 2 / 3, 0.01 / 3, 0}
	for s, lr := range wantLR {
		if got := o.LRs(); math.Abs(got[0]-lr) > 1e-15 || math.Abs(got[1]-lr) > 1e-15 {
			t.Fatalf("before update %d: lrs %v, want %g for both groups", s+1, got, lr)
		}
		g := randn(r, 7, 1)
		if s == 2 {
			g[3] = math.NaN() // skipped: the schedule must not move
			setGrad(be, a, g)
			if res, _ := o.Step(); res.Applied {
				t.Fatal("NaN step applied")
			}
			g[3] = 1
		}
		setGrad(be, a, g)
		setGrad(be, b, randn(r, 7, 1))
		res, err := o.Step()
		if err != nil || !res.Applied || math.Abs(res.LR-lr) > 1e-15 {
			t.Fatalf("update %d: %+v, %v; want lr %g", s+1, res, err, lr)
		}
	}
}
