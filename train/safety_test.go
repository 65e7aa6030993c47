package train

import (
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/internal/fixtures"
	"github.com/newbie-train/newbie-train/optim"
)

// TestNaNWeightsSaveAndStop (defect 2): on NaN base weights every loss is
// NaN; the saves on the way still work (the loss curve in state.json holds
// null, every JSONL line parses), and after train.nonfinite_limit such
// steps the run stops with a clear error, keeping the last saved state.
func TestNaNWeightsSaveAndStop(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 50, 3, 4)
	cfg.Model.Weights = fixtures.NaNWeights(t)
	cfg.Train.NonFiniteLimit = 7
	var log strings.Builder
	_, err := Run(context.Background(), cfg, Options{Log: &log})
	if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "7 consecutive steps (1–7") || !strings.Contains(err.Error(), "state-00000006") {
		t.Fatalf("run on NaN weights: %v\n%s", err, log.String())
	}
	path, _, err := checkpoints.LatestState(filepath.Join(cfg.Save.Output, "states"))
	if err != nil || filepath.Base(path) != "state-00000006" {
		t.Fatalf("latest state %s (%v), want the last save, step 6", path, err)
	}
	st, err := checkpoints.LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Curve []*float64 `json:"loss_curve"`
	}
	if err := json.Unmarshal(st.JSON["trainer"], &info); err != nil || len(info.Curve) != 6 || info.Curve[0] != nil {
		t.Errorf("saved loss curve %v (%v), want six nulls", info.Curve, err)
	}
	raw, _ := os.ReadFile(cfg.Logging.LogFile)
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["loss"] != nil {
			t.Errorf("log line %q: %v", line, err)
		}
	}
	if !strings.Contains(log.String(), "loss NaN (all") {
		t.Errorf("the log does not say the loss is NaN:\n%s", log.String())
	}
	// The state resumes (its NaN curve reads back) and the LoRA is intact.
	var info2 resumeInfo
	if err := json.Unmarshal(st.JSON["trainer"], &info2); err != nil || !math.IsNaN(float64(info2.Curve[2])) {
		t.Errorf("curve reads back as %v (%v)", info2.Curve, err)
	}
}

// TestChecksBeforeEncoding: what can fail without a model fails before
// anything is encoded, as a ConfigError: a validation split of one image,
// a batch larger than the dataset, an empty dataset, a resume with no
// state, drop_last with no full batch.
func TestChecksBeforeEncoding(t *testing.T) {
	for _, c := range []struct {
		name   string
		images int
		edit   func(*testing.T, *Options, string)
		want   string
	}{
		{"split of one image", 1, func(t *testing.T, o *Options, dir string) {}, "train.validation.split 0.5 of 1 images leaves 0 for training"},
		{"batch larger than the dataset", 3, nil, "train.batch_size 4 is larger than the training set's 3 samples"},
		{"empty dataset", 0, nil, "no usable images"},
		{"resume without a state", 4, func(t *testing.T, o *Options, dir string) { o.Resume = "latest" }, "no complete training state"},
		{"resume target missing", 4, func(t *testing.T, o *Options, dir string) { o.Resume = filepath.Join(dir, "nowhere") }, "nowhere"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := demoConfigN(t, dir, 4, 0, c.images)
			o := Options{}
			switch c.name {
			case "split of one image":
				cfg.Train.Validation.Split = 0.5
			case "batch larger than the dataset":
				cfg.Train.BatchSize = 4
			}
			if c.edit != nil {
				c.edit(t, &o, dir)
			}
			var log strings.Builder
			o.Log = &log
			_, err := Run(context.Background(), cfg, o)
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a ConfigError with %q", err, c.want)
			}
			if strings.Contains(log.String(), "encode cache") || strings.Contains(log.String(), "encoders:") {
				t.Errorf("it encoded before refusing:\n%s", log.String())
			}
			if _, err := os.Stat(cfg.Data.Cache); err == nil {
				t.Errorf("the cache folder was created")
			}
		})
	}
}

// TestBatchSizesReported: bucket-pure batches smaller than batch_size are
// said, not hidden.
func TestBatchSizesReported(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 1, 0, 5)
	cfg.Train.BatchSize, cfg.Train.WarmupSteps = 2, 0
	var log strings.Builder
	if _, err := Run(context.Background(), cfg, Options{Log: &log}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "batches: 3 per epoch, 2 of train.batch_size 2 and 1 of 1") {
		t.Errorf("the partial batch is not reported:\n%s", log.String())
	}
}

// TestResumeLonger: a resume may raise train.max_steps (the losses up to
// the state are the same, the schedule becomes the one over the new
// length), and is refused for any other change, each named with its old
// and new value, and for a shorter run.
func TestResumeLonger(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 4, 2, 4)
	if _, err := Run(context.Background(), cfg, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	before := losses(t, cfg.Logging.LogFile)
	changed := *cfg
	changed.Train.MaxSteps, changed.Train.LearningRate, changed.LoRA.Dropout = 8, 5e-4, 0.1
	_, err := Run(context.Background(), &changed, Options{Resume: "latest", Log: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "train.learning_rate: 0.001 → 0.0005") || !strings.Contains(err.Error(), "lora.dropout: 0 → 0.1") || strings.Contains(err.Error(), "train.max_steps:") {
		t.Fatalf("resume with other settings: %v", err)
	}
	if id, err := readIdentity(cfg.Save.Output); err != nil || id.ConfigHash != cfg.Hash() {
		t.Errorf("a refused resume changed run.json (%v)", err)
	}
	same := *cfg
	if _, err := Run(context.Background(), &same, Options{Resume: "latest", Log: io.Discard}); err == nil || !strings.Contains(err.Error(), "--set train.max_steps=") {
		t.Errorf("resume at the last step: %v", err)
	}
	longer := *cfg
	longer.Train.MaxSteps = 8
	var log strings.Builder
	if _, err := Run(context.Background(), &longer, Options{Resume: "latest", Log: &log}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "train.max_steps: 4 → 8") {
		t.Errorf("the log does not say the run got longer:\n%s", log.String())
	}
	after := losses(t, cfg.Logging.LogFile)
	for step, v := range before {
		if after[step] != v {
			t.Errorf("step %d: %v before, %v after", step, v, after[step])
		}
	}
	sched := longer.Schedule(8)
	raw, _ := os.ReadFile(cfg.Logging.LogFile)
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec struct {
			Step int     `json:"step"`
			LR   float64 `json:"lr"`
		}
		json.Unmarshal([]byte(line), &rec)
		if rec.Step > 4 && math.Abs(rec.LR-optimLR(sched, longer.Train.LearningRate, rec.Step)) > 1e-12 {
			t.Errorf("step %d: lr %v, the 8-step schedule says %v", rec.Step, rec.LR, optimLR(sched, longer.Train.LearningRate, rec.Step))
		}
	}
	shorter := longer
	shorter.Train.MaxSteps = 6
	if _, err := Run(context.Background(), &shorter, Options{Resume: "latest", Log: io.Discard}); err == nil || !strings.Contains(err.Error(), "train.max_steps: 8 → 6") {
		t.Errorf("resume of a shorter run: %v", err)
	}
}

// optimLR is the schedule's learning rate at a (1-based) step.
func optimLR(s optim.Schedule, base float64, step int) float64 { return base * s.Factor(step-1) }

// TestInitFrom: lora.init_from starts from an existing LoRA — the first
// loss differs from a fresh start and is the same, bit for bit, under
// another alpha (B is rescaled to keep the update) — and a LoRA that does
// not fit is refused before encoding, naming the misfit.
func TestInitFrom(t *testing.T) {
	src := demoConfigN(t, t.TempDir(), 6, 0, 4)
	res, err := Run(context.Background(), src, Options{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	from := res.LoRAFiles[len(res.LoRAFiles)-1] // the kohya file
	first := func(edit func(cfgAlpha *float64, initFrom *string)) float64 {
		cfg := demoConfigN(t, t.TempDir(), 1, 0, 4)
		cfg.Train.WarmupSteps = 0
		edit(&cfg.LoRA.Alpha, &cfg.LoRA.InitFrom)
		r, err := Run(context.Background(), cfg, Options{Log: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		return r.FirstLoss
	}
	plain := first(func(*float64, *string) {})
	loaded := first(func(_ *float64, f *string) { *f = from })
	rescaled := first(func(a *float64, f *string) { *a, *f = 16, from })
	if loaded == plain || rescaled != loaded {
		t.Errorf("first loss: fresh %v, from the LoRA %v, from it under alpha 16 %v (want the last two equal, not the first)", plain, loaded, rescaled)
	}
	for _, c := range []struct {
		name string
		edit func(rank *int, targets *[]string)
		want string
	}{
		{"rank", func(r *int, _ *[]string) { *r = 4 }, "has rank 8, lora.rank is 4"},
		{"targets", func(_ *int, tg *[]string) { *tg = []string{"attention.qkv"} }, "which lora.targets do not adapt"},
	} {
		cfg := demoConfigN(t, t.TempDir(), 1, 0, 4)
		cfg.Train.WarmupSteps = 0
		cfg.LoRA.InitFrom = from
		c.edit(&cfg.LoRA.Rank, &cfg.LoRA.Targets)
		var log strings.Builder
		_, err := Run(context.Background(), cfg, Options{Log: &log})
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) || strings.Contains(log.String(), "encode cache") {
			t.Errorf("%s misfit: %v", c.name, err)
		}
	}
}

// TestKohyaMetadata: the kohya export carries sd-scripts' ss_* training
// metadata with this run's values.
func TestKohyaMetadata(t *testing.T) {
	cfg := demoConfigN(t, t.TempDir(), 2, 0, 4)
	cfg.Data.Flip = true
	res, err := Run(context.Background(), cfg, Options{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(res.LoRAFiles[2])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	md := f.Metadata()
	for k, v := range map[string]string{
		"ss_network_dim": "8", "ss_network_alpha": "8", "ss_network_module": "networks.lora",
		"ss_learning_rate": "0.001", "ss_max_train_steps": "2", "ss_steps": "2", "ss_resolution": "(64, 64)",
		"ss_num_train_images": "4", "ss_batch_size_per_device": "2", "ss_base_model_version": "tiny",
		"ss_flip_aug": "True", "ss_lr_scheduler": "cosine", "ss_mixed_precision": "no", "ss_seed": "7",
		"ss_output_name": "demo_lora", "ss_num_batches_per_epoch": "2",
	} {
		if md[k] != v {
			t.Errorf("%s = %q, want %q", k, md[k], v)
		}
	}
	var tags map[string]map[string]int
	if err := json.Unmarshal([]byte(md["ss_tag_frequency"]), &tags); err != nil || tags["demo-data"]["demo_girl"] != 4 || tags["demo-data"]["1girl"] != 4 {
		t.Errorf("ss_tag_frequency %s (%v)", md["ss_tag_frequency"], err)
	}
	if len(md["sshs_model_hash"]) != 64 || md["ss_training_started_at"] == "" {
		t.Errorf("sshs_model_hash %q, ss_training_started_at %q", md["sshs_model_hash"], md["ss_training_started_at"])
	}
	if _, ok := md["ss_tag_frequency"]; ok {
		// Only the kohya file carries them.
		g, _ := safetensors.Open(res.LoRAFiles[0])
		defer g.Close()
		if _, ok := g.Metadata()["ss_tag_frequency"]; ok {
			t.Error("the ComfyUI file carries kohya's training metadata too")
		}
	}
}

// TestLossPlot: the curve has tick labels beside both axes (ink in the
// margins), round tick values, and survives non-finite losses.
func TestLossPlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "loss.png")
	losses := []float64{2.3, 2.1, math.NaN(), 1.8, 1.2, math.Inf(1), 1.0, 0.95}
	if err := writeLossCurve(path, losses); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	ink := func(x0, y0, x1, y1 int) int {
		n := 0
		for y := y0; y < y1; y++ {
			for x := x0; x < x1; x++ {
				if r, _, _, _ := img.At(x, y).RGBA(); r < 0x8000 {
					n++
				}
			}
		}
		return n
	}
	if ink(0, marginTop, marginL-6, plotH-marginBottom) < 50 || ink(marginL, plotH-marginBottom+5, plotW-marginR, plotH) < 50 || ink(marginL, 0, plotW, marginTop-2) < 50 {
		t.Error("no tick labels beside the axes or no title")
	}
	for _, c := range []struct {
		lo, hi float64
		want   string
	}{{0.95, 2.3, "0.8 1.0 1.2 1.4 1.6 1.8 2.0 2.2 2.4"}, {1, 8, "1 2 3 4 5 6 7 8"}, {1, 300, "0 50 100 150 200 250 300"}} {
		ticks := niceTicks(c.lo, c.hi, 8)
		var got []string
		for _, v := range ticks {
			got = append(got, formatTick(v, ticks))
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("ticks for [%g, %g]: %v, want %s", c.lo, c.hi, got, c.want)
		}
	}
}
