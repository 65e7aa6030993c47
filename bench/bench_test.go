package bench

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

func TestBenchValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		o    Options
		want string // "" means valid
	}{
		{"defaults", Options{}, ""},
		{"tiny on cpu", Options{Backend: "cpu", Preset: "tiny", Resolution: 48}, ""},
		{"unknown preset", Options{Preset: "huge"}, "unknown preset"},
		{"tiny at full depth on cpu", Options{Backend: "cpu", Preset: "tiny", Layers: 36}, ""},
		{"negative layers", Options{Layers: -1}, "layers -1"},
		{"compare on the cpu", Options{Backend: "cpu", Preset: "tiny", CompareOff: []string{"", "graphs"}}, "no optional paths"},
		{"unknown backend", Options{Backend: "tpu"}, `backend "tpu"`},
		{"full model on cpu", Options{Backend: "cpu"}, "use --preset tiny"},
		{"lumina2 on cpu", Options{Backend: "cpu", Preset: "lumina2"}, "use --preset tiny"},
		{"negative batch", Options{Batch: -1}, "batch -1"},
		{"negative steps", Options{Steps: -3}, "steps -3"},
		{"resolution off the patch grid", Options{Resolution: 1000}, "multiple of 16"},
		{"resolution below one patch", Options{Resolution: -16}, "multiple of 16"},
		{"negative caption", Options{CaptionTokens: -7}, "caption length -7"},
		{"negative rank", Options{Rank: -2}, "rank -2"},
		{"NaN alpha", Options{Alpha: math.NaN()}, "alpha"},
		{"infinite alpha", Options{Alpha: math.Inf(1)}, "alpha"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.o.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("want valid, got %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v; want one mentioning %q", err, c.want)
			}
		})
	}
}

// TestStepFLOPs checks the FLOP count against the anchor's formula written
// out by hand, and against the figure the anchor itself printed on the H200
// (2026-11-28: 249.3 TFLOP/s at 0.3275 s/step, 3,557,084,992 parameters of
// which 70,451,200 LoRA). Our parameter count includes norm_final.weight
// (2304), which the anchor's model does not have.
func TestStepFLOPs(t *testing.T) {
	cfg, err := nextdit.Preset("newbie-exp0.1")
	if err != nil {
		t.Fatal(err)
	}
	anchorFrozen := 3557084992.0 - 70451200.0
	for _, c := range []struct {
		batch, caption, image int
	}{{1, 256, 4096}, {2, 256, 4096}, {3, 77, 1369}} {
		s := float64(c.caption + c.image)
		b := float64(c.batch)
		lin := 2 * (anchorFrozen + 2304) * b * s
		attn := 4 * s * s * 2304 * 40 * b
		want := 2*lin + 3*attn
		got := StepFLOPs(cfg, c.batch, c.caption, c.image)
		if r := math.Abs(got-want) / want; r > 1e-12 {
			t.Errorf("%+v: %g FLOPs, want %g (rel %g)", c, got, want, r)
		}
	}
	got := StepFLOPs(cfg, 1, 256, 4096)
	anchor := 249.3e12 * 0.3275 // the anchor's TFLOP/s × its s/step
	if r := math.Abs(got-anchor) / anchor; r > 1e-3 {
		t.Errorf("%g FLOPs per step; the anchor's figures imply %g (rel %g)", got, anchor, r)
	}
}

// TestBenchCPU runs the whole benchmark on the tiny model at an awkward
// small size and checks that every figure is consistent and that the
// checkpointing switch really took effect (the checkpointed step runs every
// block's attention twice).
func TestBenchCPU(t *testing.T) {
	res, err := Run(context.Background(), Options{
		Preset: "tiny", Backend: "cpu", Steps: 3, Warmup: 1, Resolution: 48,
		CaptionTokens: 7, Batch: 2, Seed: 11, Profile: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := nextdit.Preset("tiny")
	if res.Backend != "cpu" || res.ImageTokens != 9 || res.Latent != [3]int{16, 6, 6} || res.CaptionTokens != 7 {
		t.Errorf("result describes %q, %d image tokens, latent %v, %d caption tokens", res.Backend, res.ImageTokens, res.Latent, res.CaptionTokens)
	}
	if want := StepFLOPs(cfg, 2, 7, 9); res.FLOPs != want {
		t.Errorf("FLOPs %g, want %g", res.FLOPs, want)
	}
	wantLayers, wantParams := 0, int64(0)
	for _, li := range cfg.Linears() {
		for _, p := range lora.DefaultTargets {
			if lora.Matches(li.Name, p) {
				wantLayers++
				wantParams += int64(32 * (li.In + li.Out))
				break
			}
		}
	}
	if res.LoRALayers != wantLayers || res.LoRAParams != wantParams {
		t.Errorf("LoRA on %d layers with %d parameters, want %d and %d", res.LoRALayers, res.LoRAParams, wantLayers, wantParams)
	}
	if res.BaseBytes <= 0 {
		t.Errorf("base memory %d", res.BaseBytes)
	}
	if len(res.Modes) != 2 || res.Modes[0].Checkpointing || !res.Modes[1].Checkpointing {
		t.Fatalf("runs %+v; want checkpointing off then on", res.Modes)
	}
	attention := map[bool]int{}
	for _, r := range res.Modes {
		if r.Err != "" {
			t.Errorf("checkpointing %v failed: %s", r.Checkpointing, r.Err)
			continue
		}
		if len(r.StepSeconds) != 3 || !(r.Min > 0 && r.Min <= r.Median && r.Median <= r.Max) {
			t.Errorf("checkpointing %v: steps %v, min %g median %g max %g", r.Checkpointing, r.StepSeconds, r.Min, r.Median, r.Max)
		}
		if math.Abs(r.SamplesPerSecond-2/r.Median) > 1e-12 || math.Abs(r.TFLOPs-res.FLOPs/r.Median/1e12) > 1e-12 {
			t.Errorf("checkpointing %v: %g samples/s and %g TFLOP/s do not follow from %g s/step", r.Checkpointing, r.SamplesPerSecond, r.TFLOPs, r.Median)
		}
		if r.PeakBytes < res.BaseBytes || r.ActivationBytes <= 0 || r.ReservedBytes <= 0 {
			t.Errorf("checkpointing %v: peak %d, activations %d, reserved %d, base %d", r.Checkpointing, r.PeakBytes, r.ActivationBytes, r.ReservedBytes, res.BaseBytes)
		}
		if math.IsNaN(r.Loss) || math.IsInf(r.Loss, 0) || r.Loss <= 0 {
			t.Errorf("checkpointing %v: loss %g", r.Checkpointing, r.Loss)
		}
		p := r.Profile
		if p == nil {
			t.Errorf("checkpointing %v: no profile", r.Checkpointing)
			continue
		}
		sum, kinds, loraKinds := 0, map[string]int{}, 0
		for _, k := range p.Kinds {
			sum += k.Count
			kinds[k.Kind] = k.Count
			if strings.HasPrefix(k.Kind, "Gemm (LoRA, ") {
				kinds["Gemm (LoRA)"] += k.Count
				loraKinds++
			}
			if k.Seconds < 0 {
				t.Errorf("%s: %g s", k.Kind, k.Seconds)
			}
		}
		if sum != p.Ops || p.QueueSeconds <= 0 || p.SyncedSeconds <= 0 {
			t.Errorf("checkpointing %v: %d ops but kinds sum to %d; queue %g s, synced %g s", r.Checkpointing, p.Ops, sum, p.QueueSeconds, p.SyncedSeconds)
		}
		if kinds["AdamW"] != 1 || kinds["Gemm"] == 0 || kinds["Gemm (LoRA)"] == 0 || kinds["AttentionGrad"] != 2*cfg.NRefinerLayers+cfg.NLayers {
			t.Errorf("checkpointing %v: AdamW ×%d, Gemm ×%d + %d, AttentionGrad ×%d", r.Checkpointing, kinds["AdamW"], kinds["Gemm"], kinds["Gemm (LoRA)"], kinds["AttentionGrad"])
		}
		if loraKinds < 3 {
			t.Errorf("checkpointing %v: the adapters' products fall in %d kinds, want N=r, K=r and M=r at least", r.Checkpointing, loraKinds)
		}
		attention[r.Checkpointing] = kinds["Attention"]
	}
	if blocks := 2*cfg.NRefinerLayers + cfg.NLayers; attention[false] != blocks || attention[true] != 2*blocks {
		t.Errorf("attention forwards per step: %d without and %d with checkpointing; want %d and %d", attention[false], attention[true], blocks, 2*blocks)
	}
	if res.Modes[1].ActivationBytes >= res.Modes[0].ActivationBytes {
		t.Errorf("checkpointing holds %d bytes of activations at the peak, no fewer than the %d without", res.Modes[1].ActivationBytes, res.Modes[0].ActivationBytes)
	}
	table := res.Table()
	for _, want := range []string{"backend: cpu", "| off |", "| on |", "LoRA r32 α32", "profile, checkpointing on"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

// TestProfilerKeepsFailures checks that the profiler's waits after each op
// do not swallow a failure: the backend clears its error on Sync, so the
// profiler must hand it to the caller's next Sync.
func TestProfilerKeepsFailures(t *testing.T) {
	be := cpu.New()
	p := &profiler{Backend: be}
	a, err := p.Alloc(kernels.F32, 7)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Alloc(kernels.F32, 13)
	if err != nil {
		t.Fatal(err)
	}
	for _, timed := range []bool{false, true} {
		p.begin(timed)
		p.Fill(a, 1.5)
		p.Cast(b, a) // lengths differ: a failure recorded, not a panic
		w := p.end()
		if w.count["Fill F32"] != 1 || w.count["Cast F32→F32"] != 1 {
			t.Errorf("timed %v: counts %v", timed, w.count)
		}
		if timed && w.seconds["Fill F32"] <= 0 {
			t.Errorf("timed: no time for Fill: %v", w.seconds)
		}
		if err := p.Sync(); err == nil || !strings.Contains(err.Error(), "Cast") {
			t.Errorf("timed %v: Sync returned %v, want the Cast failure", timed, err)
		}
		if err := p.Sync(); err != nil {
			t.Errorf("timed %v: second Sync returned %v", timed, err)
		}
	}
	// Outside a window nothing is counted.
	p.Fill(a, 2)
	if len(p.count) != 2 {
		t.Errorf("counted outside a window: %v", p.count)
	}
}

// TestInferCPU times guided evaluations of the tiny model and checks the
// figures agree with each other.
func TestInferCPU(t *testing.T) {
	res, err := Infer(context.Background(), Options{Preset: "tiny", Backend: "cpu", Steps: 3, Warmup: 1, Resolution: 48, CaptionTokens: 7, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != 1 || res.Evals != 3 || res.ImageTokens != 9 {
		t.Fatalf("result %+v", res)
	}
	if row := res.Rows[0]; !(row.Seconds > 0) || math.Abs(row.PerEval-row.Seconds/3) > 1e-12 || row.PeakBytes < res.BaseBytes {
		t.Errorf("row %+v (base %d)", row, res.BaseBytes)
	}
	if table := res.Table(); !strings.Contains(table, "| as opened | 3 |") || !strings.Contains(table, "backend: cpu") {
		t.Errorf("table:\n%s", table)
	}
}

// arenaBackend is a CPU backend that records constant packing calls.
type arenaBackend struct {
	*cpu.Backend
	reserved        int64
	constants, cnts int
}

func (a *arenaBackend) ReserveConstants(n int64, count int) { a.reserved, a.cnts = n, count }

func (a *arenaBackend) AllocConstant(d kernels.DType, n int) (kernels.Buffer, error) {
	a.constants++
	return a.Backend.Alloc(d, n)
}

// TestProfilerPacksConstants: the profiler passes a backend's constant
// packing through (the bench's memory is then the trainer's: the CUDA
// backend packs the frozen weights), and on a backend without it a
// constant is an ordinary buffer.
func TestProfilerPacksConstants(t *testing.T) {
	ab := &arenaBackend{Backend: cpu.New()}
	for _, c := range []struct {
		name string
		be   kernels.Backend
	}{{"packing backend", ab}, {"plain CPU backend", cpu.New()}} {
		p := &profiler{Backend: c.be}
		p.ReserveConstants(64, 2)
		buf, err := p.AllocConstant(kernels.BF16, 32)
		if err != nil {
			t.Fatal(err)
		}
		if buf.DType() != kernels.BF16 || buf.Len() != 32 {
			t.Errorf("%s: constant is %v[%d], want BF16[32]", c.name, buf.DType(), buf.Len())
		}
		p.Free(buf)
	}
	if ab.reserved != 64 || ab.cnts != 2 || ab.constants != 1 {
		t.Errorf("packing backend saw reserve (%d, %d) and %d constants, want (64, 2) and 1", ab.reserved, ab.cnts, ab.constants)
	}
}

// clockBackend is a CPU backend with a fake device timer: each mark reads
// a clock that every Fill advances by 3 ms and every Cast by 5 ms, so the
// profiler's attribution can be checked exactly.
type clockBackend struct {
	*cpu.Backend
	now     float64
	marks   []float64
	started bool
}

func (c *clockBackend) Fill(dst kernels.Buffer, v float64) { c.now += 0.003; c.Backend.Fill(dst, v) }
func (c *clockBackend) Cast(dst, src kernels.Buffer)       { c.now += 0.005; c.Backend.Cast(dst, src) }
func (c *clockBackend) StartTiming() error                 { c.started, c.marks = true, nil; return nil }
func (c *clockBackend) Mark()                              { c.marks = append(c.marks, c.now) }
func (c *clockBackend) StopTiming() ([]float64, error) {
	c.started = false
	out := make([]float64, len(c.marks))
	for i, m := range c.marks {
		out[i] = m - c.marks[0]
	}
	return out, nil
}

// TestProfilerDeviceClock: with a device timer a timed window attributes
// the time between the marks around each op to its kind, and the window's
// span to the whole; without one it falls back to waiting.
func TestProfilerDeviceClock(t *testing.T) {
	cb := &clockBackend{Backend: cpu.New()}
	p := &profiler{Backend: cb}
	a, err := p.Alloc(kernels.F32, 4)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Alloc(kernels.BF16, 4)
	if err != nil {
		t.Fatal(err)
	}
	p.begin(true)
	if !cb.started {
		t.Fatal("the timed window did not start the device timer")
	}
	p.Fill(a, 1)
	cb.now += 0.100 // the device idle between ops: in the span, in no kind
	p.Cast(b, a)
	p.Fill(a, 2)
	w := p.end()
	if cb.started {
		t.Error("the window did not stop the device timer")
	}
	if !w.device {
		t.Fatal("window not marked as device-timed")
	}
	for kind, want := range map[string]float64{"Fill F32": 0.006, "Cast F32→BF16": 0.005} {
		if got := w.seconds[kind]; math.Abs(got-want) > 1e-12 {
			t.Errorf("%s: %g s, want %g", kind, got, want)
		}
	}
	if math.Abs(w.span-0.111) > 1e-12 {
		t.Errorf("span %g s, want 0.111", w.span)
	}
	prof := newProfile(w, w, 1)
	var sb strings.Builder
	prof.writeKinds(&sb)
	if !prof.DeviceClock || !strings.Contains(sb.String(), "device time (s)") || !strings.Contains(prof.clockText("step"), "0.111 s of device time, 0.011 s of it in ops") {
		t.Errorf("profile %+v reads %q / %q", prof, prof.clockText("step"), sb.String())
	}
	p.begin(false) // a counting window leaves the timer alone
	p.Fill(a, 3)
	if w := p.end(); cb.started || w.device {
		t.Errorf("counting window started the timer (device %v)", w.device)
	}
}
