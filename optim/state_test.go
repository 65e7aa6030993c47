package optim

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// resumeRun is a small training run with every stateful piece switched on:
// fp16 dynamic scaling with a short growth interval, clipping, accumulation
// over two micro-batches, a cosine schedule with warmup and floor, and
// parameter groups with different lr, betas and decay.
type resumeRun struct {
	be     *cpu.Backend
	params []Param
	o      *Optimizer
}

var resumeShapes = []struct {
	name string
	n    int
}{{"blocks.0.lora_A.weight", 13}, {"blocks.0.lora_B.weight", 100}, {"blocks.0.norm.weight", 7}}

func newResumeRun(t *testing.T, masters [][]byte) *resumeRun {
	t.Helper()
	be := cpu.New()
	run := &resumeRun{be: be}
	for i, s := range resumeShapes {
		init := make([]float64, s.n)
		for j := range init {
			init[j] = kernels.NormalAt(77, uint64(1000*i+j), 0, 1)
		}
		p := newParam(t, be, s.name, kernels.F32, init)
		if masters != nil {
			be.Upload(p.Master, 0, masters[i])
		}
		run.params = append(run.params, p)
	}
	base := Hyper{LR: 3e-3, WeightDecay: 0.05, Beta1: 0.9, Beta2: 0.99, Eps: 1e-8}
	groups := GroupParams(run.params, base, NoDecayRule(), LoRAPlusRule(4))
	groups[len(groups)-1].Beta2 = 0.999 // a second fused call
	scaler := DefaultScalerConfig(ScaleDynamic)
	scaler.GrowthInterval = 3
	o, err := New(be, groups, Config{
		Precision: FP16, Scaler: scaler, MaxGradNorm: 0.5, AccumSteps: 2,
		Schedule: Schedule{Kind: Cosine, TotalSteps: 12, WarmupSteps: 2, MinRatio: 0.1},
	})
	if err != nil {
		t.Fatal(err)
	}
	run.o = o
	return run
}

// iterate runs optimizer iteration it: two micro-batches of gradients drawn
// from Philox (iteration 4 overflows), summed and scaled by the loss scale.
func (r *resumeRun) iterate(t *testing.T, it int) StepResult {
	t.Helper()
	r.o.ZeroGrad()
	scale := r.o.LossScale()
	for i, p := range r.params {
		g := make([]float64, p.Grad.Len())
		for mb := range 2 {
			for j := range g {
				g[j] += scale * kernels.NormalAt(uint64(100+it), uint64(mb*1_000_000+1000*i+j), 0, 0.3)
			}
			r.o.AddMicroBatch()
		}
		if it == 4 && i == 1 {
			g[17] = math.Inf(1)
		}
		setGrad(r.be, p, g)
	}
	res, err := r.o.Step()
	if err != nil {
		t.Fatalf("iteration %d: %v", it, err)
	}
	return res
}

func (r *resumeRun) masters(t *testing.T) [][]byte {
	t.Helper()
	out := make([][]byte, len(r.params))
	for i, p := range r.params {
		out[i] = make([]byte, p.Master.Len()*4)
		if err := r.be.Download(out[i], p.Master, 0); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestResumeIdentical runs 12 iterations straight, and again with a save
// after 6 (through JSON, as a checkpoint would store it) into a fresh backend
// and optimizer; weights and optimizer state must agree bit for bit.
func TestResumeIdentical(t *testing.T) {
	const total, cut = 12, 6
	straight := newResumeRun(t, nil)
	for it := range total {
		straight.iterate(t, it)
	}
	if straight.o.Scaler().Skipped() != 1 {
		t.Fatalf("the run skipped %d steps, want the 1 planted overflow", straight.o.Scaler().Skipped())
	}

	first := newResumeRun(t, nil)
	for it := range cut {
		first.iterate(t, it)
	}
	st, err := first.o.State()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var loaded State
	if err := json.Unmarshal(blob, &loaded); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(loaded, st) {
		t.Fatal("state changed through JSON")
	}

	second := newResumeRun(t, first.masters(t))
	if err := second.o.SetState(loaded); err != nil {
		t.Fatal(err)
	}
	for it := cut; it < total; it++ {
		second.iterate(t, it)
	}

	wantM, gotM := straight.masters(t), second.masters(t)
	for i := range wantM {
		if !bytes.Equal(wantM[i], gotM[i]) {
			t.Errorf("%s: resumed weights differ from the straight run", resumeShapes[i].name)
		}
	}
	want, err := straight.o.State()
	if err != nil {
		t.Fatal(err)
	}
	got, err := second.o.State()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("resumed optimizer state differs: step %d/%d, scaler %+v/%+v", got.Step, want.Step, got.Scaler, want.Scaler)
	}
}

// TestSetStateRefuses checks that states from other parameter sets, dtypes
// or versions are refused with an error naming the problem, leaving the
// optimizer as it was.
func TestSetStateRefuses(t *testing.T) {
	run := newResumeRun(t, nil)
	run.iterate(t, 0)
	good, err := run.o.State()
	if err != nil {
		t.Fatal(err)
	}
	clone := func() State {
		var s State
		blob, _ := json.Marshal(good)
		_ = json.Unmarshal(blob, &s)
		return s
	}
	for _, tc := range []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"version", func(s *State) { s.Version = 99 }, "version 99"},
		{"missing tensor", func(s *State) { s.Tensors = s.Tensors[1:] }, "holds 2 parameters"},
		{"renamed", func(s *State) { s.Tensors[0].Name = "other" }, "no moments for parameter"},
		{"short", func(s *State) { s.Tensors[2].M = s.Tensors[2].M[:8] }, "bytes of moments"},
		{"dtype", func(s *State) { s.Tensors[1].DType = "F64" }, "is F64["},
		{"scaler mode", func(s *State) { s.Scaler.Mode = "off" }, "mode"},
		{"schedule", func(s *State) { s.Schedule.MinRatio = 2 }, "min_lr_ratio"},
	} {
		s := clone()
		tc.edit(&s)
		err := run.o.SetState(s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	after, err := run.o.State()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, good) {
		t.Error("a refused state changed the optimizer")
	}
}
