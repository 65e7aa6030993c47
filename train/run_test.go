package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/fixtures"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"

	_ "github.com/newbie-train/newbie-train/kernels/cpu"
	_ "github.com/newbie-train/newbie-train/kernels/cuda"
)

// demoConfig writes the demo's dataset into a temporary folder and returns
// the demo config pointed at it, shortened to steps.
func demoConfig(t *testing.T, dir string, steps, saveEvery int) *configs.Config {
	t.Helper()
	return demoConfigN(t, dir, steps, saveEvery, 8)
}

// demoConfigN is demoConfig with a dataset of n images.
func demoConfigN(t *testing.T, dir string, steps, saveEvery, n int) *configs.Config {
	t.Helper()
	raw, err := configs.Example("demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "demo.yaml"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(filepath.Join(dir, "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := data.WriteDemoDataset(cfg.Data.Folders[0].Path, n, cfg.Data.Resolution); err != nil {
		t.Fatal(err)
	}
	if _, err := newbie.WriteDemoModel(cfg.Model.Path); err != nil {
		t.Fatal(err)
	}
	cfg.Train.MaxSteps = steps
	cfg.Train.WarmupSteps = 2
	cfg.Save.Every = saveEvery
	cfg.Save.Formats = []string{"comfyui", "peft", "kohya"}
	cfg.Logging.Every = 1
	return cfg
}

// losses reads the JSONL log's per-step losses.
func losses(t *testing.T, path string) map[int]float64 { return fixtures.LogLosses(t, path) }

// TestDemoTrainsAndOutputsLoad runs the demo briefly: the loss falls, and
// every LoRA file it writes reads back with the trained values.
func TestDemoTrainsAndOutputsLoad(t *testing.T) {
	dir := t.TempDir()
	cfg := demoConfig(t, dir, 30, 0)
	res, err := Run(context.Background(), cfg, Options{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 30 || !(res.LastLoss < res.FirstLoss) {
		t.Errorf("30 steps: loss %v → %v (steps %d), want a falling loss", res.FirstLoss, res.LastLoss, res.Steps)
	}
	if len(res.LoRAFiles) != 3 {
		t.Fatalf("LoRA files %v, want three formats", res.LoRAFiles)
	}
	var ref *checkpoints.LoRA
	for _, p := range res.LoRAFiles {
		l, format, err := checkpoints.ReadLoRA(p)
		if err != nil {
			t.Fatalf("read back %s: %v", p, err)
		}
		if l.Rank != 8 || len(l.Layers) != 35 || l.Meta[checkpoints.MetaSteps] != "30" {
			t.Errorf("%s (%s): rank %d, %d layers, steps %q", p, format, l.Rank, len(l.Layers), l.Meta[checkpoints.MetaSteps])
		}
		if ref == nil {
			ref = l
			continue
		}
		for name, layer := range ref.Layers {
			for i, v := range layer.B {
				if l.Layers[name].B[i] != v {
					t.Fatalf("%s: %s.B[%d] = %v, the first format has %v", p, name, i, l.Layers[name].B[i], v)
				}
			}
		}
	}
	nonzero := false
	for _, layer := range ref.Layers {
		for _, v := range layer.B {
			nonzero = nonzero || v != 0
		}
	}
	if !nonzero {
		t.Error("every B matrix is still zero: the LoRA did not train")
	}
	if _, err := os.Stat(filepath.Join(cfg.Save.Output, "demo_lora-loss.png")); err != nil {
		t.Errorf("no loss curve: %v", err)
	}
	if got := len(losses(t, cfg.Logging.LogFile)); got != 30 {
		t.Errorf("JSONL log has %d steps, want 30", got)
	}
}

// TestResumeIsBitwise: a run stopped at a save and resumed gives the same
// losses, bit for bit, and the same final LoRA as an uninterrupted run.
func TestResumeIsBitwise(t *testing.T) {
	full := demoConfig(t, t.TempDir(), 12, 6)
	if _, err := Run(context.Background(), full, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	want := losses(t, full.Logging.LogFile)

	half := demoConfig(t, t.TempDir(), 12, 6)
	ctx, cancel := context.WithCancel(context.Background())
	stopAt := &stopAfter{steps: 6, cancel: cancel}
	_, err := Run(ctx, half, Options{Log: stopAt})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v, want ErrInterrupted", err)
	}
	if _, err := Run(context.Background(), half, Options{Resume: "latest", Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	got := losses(t, half.Logging.LogFile)
	for step := 1; step <= 12; step++ {
		if got[step] != want[step] {
			t.Errorf("step %d: resumed loss %v, uninterrupted %v", step, got[step], want[step])
		}
	}
	a, _, err := checkpoints.ReadLoRA(filepath.Join(full.Save.Output, "demo_lora.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := checkpoints.ReadLoRA(filepath.Join(half.Save.Output, "demo_lora.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for name, layer := range a.Layers {
		for i, v := range layer.A {
			if b.Layers[name].A[i] != v {
				t.Fatalf("final %s.A[%d]: resumed %v, uninterrupted %v", name, i, b.Layers[name].A[i], v)
			}
		}
	}
}

// stopAfter cancels the run once the log reports the given step.
type stopAfter struct {
	steps  int
	cancel context.CancelFunc
}

func (s *stopAfter) Write(p []byte) (int, error) {
	if strings.HasPrefix(string(p), "step ") {
		var n, total int
		if _, err := fmt.Sscanf(string(p), "step %d/%d", &n, &total); err == nil && n >= s.steps {
			s.cancel()
		}
	}
	return len(p), nil
}

// TestInterruptLeavesLoadableStateAndNoPartialFiles: a cancellation mid-run
// saves a state that loads, and no temporary files remain.
func TestInterruptLeavesLoadableStateAndNoPartialFiles(t *testing.T) {
	cfg := demoConfig(t, t.TempDir(), 40, 0)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Run(ctx, cfg, Options{Log: &stopAfter{steps: 3, cancel: cancel}})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("got %v, want ErrInterrupted", err)
	}
	path, skipped, err := checkpoints.LatestState(filepath.Join(cfg.Save.Output, "states"))
	if err != nil || len(skipped) != 0 {
		t.Fatalf("latest state: %v (skipped %v)", err, skipped)
	}
	st, err := checkpoints.LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Step < 1 || st.Step >= 40 {
		t.Errorf("state at step %d, want an interrupted step", st.Step)
	}
	filepath.Walk(cfg.Save.Output, func(p string, info os.FileInfo, err error) error {
		if err == nil && (strings.Contains(filepath.Base(p), ".tmp") || strings.HasPrefix(filepath.Base(p), ".")) {
			t.Errorf("partial file left behind: %s", p)
		}
		return nil
	})
}

// TestResumeRefusesOtherConfig: a state written for another learning rate
// is refused with the reason.
func TestResumeRefusesOtherConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := demoConfig(t, dir, 4, 2)
	if _, err := Run(context.Background(), cfg, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	cfg.Train.MaxSteps = 8
	cfg.Train.LearningRate = 5e-4
	_, err := Run(context.Background(), cfg, Options{Resume: "latest", Log: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "config") {
		t.Fatalf("resume with another config: %v, want a refusal naming the config", err)
	}
}

// TestTrainsFromWeightsFile: a run whose base comes from a weights file
// (the golden tiny weights) loads it, records its hash in the LoRA, and
// trains.
func TestTrainsFromWeightsFile(t *testing.T) {
	weights, err := filepath.Abs(goldentest.Path(t, "nextdit", "tiny.weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := demoConfig(t, t.TempDir(), 3, 0)
	cfg.Model.Weights = weights
	res, err := Run(context.Background(), cfg, Options{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	l, _, err := checkpoints.ReadLoRA(res.LoRAFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	want, err := checkpoints.FileSHA256(weights)
	if err != nil {
		t.Fatal(err)
	}
	if l.Meta[checkpoints.MetaBaseModelHash] != want {
		t.Errorf("LoRA records base hash %q, want %q", l.Meta[checkpoints.MetaBaseModelHash], want)
	}
}

// TestValidationLoss: a held-out split is measured at fixed timesteps every
// N steps and logged in the JSONL file; measuring it more often changes
// neither the training losses nor the final validation loss; a split that
// holds out nothing is refused.
func TestValidationLoss(t *testing.T) {
	plain := demoConfig(t, t.TempDir(), 6, 0)
	plain.Train.Validation.Split = 0.3
	plain.Train.Validation.Every = 1000 // only at the end
	resPlain, err := Run(context.Background(), plain, Options{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	cfg := demoConfig(t, t.TempDir(), 6, 0)
	cfg.Train.Validation.Split = 0.3
	cfg.Train.Validation.Every = 2
	res, err := Run(context.Background(), cfg, Options{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if res.ValLoss <= 0 || res.ValLoss != resPlain.ValLoss {
		t.Errorf("final validation loss %v, and %v when measured only at the end: want one positive value", res.ValLoss, resPlain.ValLoss)
	}
	a, b := losses(t, plain.Logging.LogFile), losses(t, cfg.Logging.LogFile)
	for step, v := range a {
		if b[step] != v {
			t.Errorf("step %d: training loss %v with validation every 2 steps, %v without", step, b[step], v)
		}
	}
	f, err := os.ReadFile(cfg.Logging.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(f), `"val_loss"`); n != 3 {
		t.Errorf("JSONL has %d validation records, want 3 (steps 2, 4, 6)", n)
	}
	// A split too small to pick an image by its rule still holds out one
	// (the shipped lora.yaml's 0.05 had failed below 20 images).
	small := demoConfig(t, t.TempDir(), 2, 0)
	small.Train.Validation.Split = 0.001
	var log strings.Builder
	if _, err := Run(context.Background(), small, Options{Log: &log}); err != nil || !strings.Contains(log.String(), "validation: 1 images held out, 7 for training") {
		t.Errorf("a split holding out no image by its rule: %v\n%s", err, log.String())
	}
}

// scrapeOnStep reads the metrics endpoint the run announces when it logs
// its first step.
type scrapeOnStep struct {
	url  string
	body string
	err  error
}

func (s *scrapeOnStep) Write(p []byte) (int, error) {
	line := string(p)
	if i := strings.Index(line, "metrics: http://"); i >= 0 {
		s.url = strings.TrimSpace(line[i+len("metrics: "):])
	}
	if strings.HasPrefix(line, "step 1/") && s.url != "" {
		resp, err := http.Get(s.url)
		if err != nil {
			s.err = err
			return len(p), nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.body, s.err = string(b), err
	}
	return len(p), nil
}

func TestPrometheusMetrics(t *testing.T) {
	cfg := demoConfig(t, t.TempDir(), 2, 0)
	cfg.Logging.MetricsAddr = "127.0.0.1:0"
	s := &scrapeOnStep{}
	if _, err := Run(context.Background(), cfg, Options{Log: s}); err != nil {
		t.Fatal(err)
	}
	if s.err != nil || !strings.Contains(s.body, "newbie_train_step 1") || !strings.Contains(s.body, "newbie_train_loss ") {
		t.Errorf("metrics scrape at step 1 (%s): %v\n%s", s.url, s.err, s.body)
	}
}

// TestDeviceChoice: without a GPU, device auto falls back to the CPU backend
// and says why; device cuda refuses with the reason.
func TestDeviceChoice(t *testing.T) {
	if _, err := kernels.Open("cuda", 0); err == nil {
		t.Skip("a GPU is present: the fallback cannot be seen here")
	}
	var log strings.Builder
	b, _, err := OpenBackend("auto", 0, &log)
	if err != nil || b.Name() != "cpu" || !strings.Contains(log.String(), "falls back to the CPU backend") {
		t.Errorf("auto without a GPU: backend %v, err %v, log %q", b, err, log.String())
	}
	if _, _, err := OpenBackend("cuda", 0, io.Discard); err == nil || !strings.Contains(err.Error(), "libcuda") {
		t.Errorf("cuda without a GPU: %v, want an error naming libcuda", err)
	}
}

// TestResumeRefusesOtherBase: a state written on one base model is refused
// on another, naming the base model.
func TestResumeRefusesOtherBase(t *testing.T) {
	weights, err := filepath.Abs(goldentest.Path(t, "nextdit", "tiny.weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := demoConfig(t, t.TempDir(), 4, 2)
	if _, err := Run(context.Background(), cfg, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	cfg.Model.Weights = weights // same config hash (paths do not count), other base
	cfg.Train.MaxSteps = 4
	_, err = Run(context.Background(), cfg, Options{Resume: "latest", Log: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "base model") {
		t.Fatalf("resume on another base: %v, want a refusal naming the base model", err)
	}
}

// TestFP16StoresF16: with fp16 precision the default bf16 storage becomes
// f16 (no per-step fp16 copy of every weight); an explicit bf16 is kept
// with a warning.
func TestFP16StoresF16(t *testing.T) {
	for _, c := range []struct {
		name, dtypeLine, want string
	}{
		{"default", "", "stored in f16"},
		{"explicit bf16", "  dtype: bf16\n", "keeps an fp16 copy of every weight"},
		{"fp8", "  dtype: fp8\n", "in fp8 E4M3 with a scale per row (model.dtype fp8), the rest in F16"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			raw, err := configs.Example("demo.yaml")
			if err != nil {
				t.Fatal(err)
			}
			text := strings.Replace(string(raw), "  dtype: f32\n", c.dtypeLine, 1)
			text = strings.Replace(text, "precision: fp32", "precision: fp16", 1)
			if err := os.WriteFile(filepath.Join(dir, "demo.yaml"), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := configs.Load(filepath.Join(dir, "demo.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if err := data.WriteDemoDataset(cfg.Data.Folders[0].Path, 4, cfg.Data.Resolution); err != nil {
				t.Fatal(err)
			}
			if _, err := newbie.WriteDemoModel(cfg.Model.Path); err != nil {
				t.Fatal(err)
			}
			cfg.Train.MaxSteps, cfg.Train.WarmupSteps = 1, 0
			var log strings.Builder
			if _, err := Run(context.Background(), cfg, Options{Log: &log}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(log.String(), c.want) {
				t.Errorf("log lacks %q:\n%s", c.want, log.String())
			}
		})
	}
}

// TestPreviews: sample.prompts renders one PNG per prompt and a grid at
// each preview step, and rendering them leaves the training losses exactly as they were.
func TestPreviews(t *testing.T) {
	plain := demoConfig(t, t.TempDir(), 4, 0)
	if _, err := Run(context.Background(), plain, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	cfg := demoConfig(t, t.TempDir(), 4, 0)
	cfg.Sample.Prompts = []string{"<character_1><n>demo_girl</n></character_1>", "blue background"}
	cfg.Sample.NegativePrompt = "blurry"
	cfg.Sample.Every = 2
	cfg.Sample.Steps = 3
	if _, err := Run(context.Background(), cfg, Options{Log: io.Discard}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(cfg.Save.Output, "demo_lora-previews", "*.png"))
	if len(files) != 6 {
		t.Errorf("previews %v, want 2 prompts and a grid × steps 2 and 4", files)
	}
	a, b := losses(t, plain.Logging.LogFile), losses(t, cfg.Logging.LogFile)
	for step, v := range a {
		if b[step] != v {
			t.Errorf("step %d: loss %v with previews, %v without", step, b[step], v)
		}
	}
}

// TestLogRecordNonFinite: a skipped step's infinite gradient norm is
// written as null, so every JSONL line stays valid JSON.
func TestLogRecordNonFinite(t *testing.T) {
	line, err := json.Marshal(logRecord{Step: 3, Loss: 1.5, GradNorm: jsonFloat(math.Inf(1))})
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(line, &back); err != nil || back["grad_norm"] != nil || back["loss"] != 1.5 {
		t.Errorf("record %s: %v, %v", line, back, err)
	}
}

// TestCheckpointBlocksAuto: train.checkpoint_blocks auto checkpoints the
// fewest blocks the memory plan fits in the budget (here one between the
// plans of none and of every block), says how many, and trains to the bits
// of checkpointing every block.
func TestCheckpointBlocksAuto(t *testing.T) {
	run := func(blocks string, budgetGiB float64) (string, map[int]float64) {
		cfg := demoConfig(t, t.TempDir(), 3, 0)
		cfg.Precision, cfg.Model.DType = "bf16", "bf16"
		cfg.Sample.Prompts = nil
		cfg.Train.ActivationCheckpointing, cfg.Train.CheckpointBlocks = true, blocks
		cfg.MemoryBudgetGiB = budgetGiB
		var log strings.Builder
		if _, err := Run(context.Background(), cfg, Options{Log: &log}); err != nil {
			t.Fatalf("checkpoint_blocks %s: %v\n%s", blocks, err, log.String())
		}
		return log.String(), losses(t, cfg.Logging.LogFile)
	}
	mc, _ := nextdit.Preset("tiny")
	cfg := demoConfig(t, t.TempDir(), 1, 0)
	shape := newbie.TrainShape{Batch: cfg.Train.BatchSize, LatentH: cfg.Data.Resolution / 8, LatentW: cfg.Data.Resolution / 8,
		CaptionTokens: 512, Rank: cfg.LoRA.Rank, Targets: cfg.LoRA.Targets, DType: kernels.BF16, Autocast: kernels.BF16}
	none, err := newbie.EstimateTrain(mc, shape, nil)
	if err != nil {
		t.Fatal(err)
	}
	shape.RecomputeNorms = true
	lean, err := newbie.EstimateTrain(mc, shape, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lean.Total >= none.Total {
		t.Fatalf("recomputing the norms is estimated at %d B against %d B keeping them", lean.Total, none.Total)
	}
	_, allLosses := run("all", 0)
	// Between keeping every block's tape and dropping the norms from it:
	// the norms recomputed, no block checkpointed.
	leanLog, leanLosses := run("auto", float64(lean.Total+none.Total)/2/(1<<30))
	if !strings.Contains(leanLog, "activation checkpointing: 0 of ") || !strings.Contains(leanLog, "the norms recomputed") ||
		strings.Contains(leanLog, "feed-forward") {
		t.Errorf("auto under a budget between the norms recomputed (%d B) and kept (%d B): want no block checkpointed and the norms recomputed, log says:\n%s",
			lean.Total, none.Total, leanLog)
	}
	for step, l := range allLosses {
		if leanLosses[step] != l {
			t.Errorf("step %d: loss %v with the norms recomputed, %v with every block checkpointed", step, leanLosses[step], l)
		}
	}
	// Between that and every feed-forward's inputs recomputed too: some of
	// them recomputed, still no block checkpointed.
	shape.RecomputeFFNBlocks = mc.Blocks()
	leaner, err := newbie.EstimateTrain(mc, shape, nil)
	if err != nil {
		t.Fatal(err)
	}
	ffnLog, ffnLosses := run("auto", float64(leaner.Total+lean.Total)/2/(1<<30))
	if !strings.Contains(ffnLog, "activation checkpointing: 0 of ") || !strings.Contains(ffnLog, "the feed-forward inputs of ") {
		t.Errorf("auto under a budget between the feed-forwards recomputed (%d B) and not (%d B): want some of them recomputed, no block checkpointed, log says:\n%s",
			leaner.Total, lean.Total, ffnLog)
	}
	for step, l := range allLosses {
		if ffnLosses[step] != l {
			t.Errorf("step %d: loss %v with feed-forward inputs recomputed, %v with every block checkpointed", step, ffnLosses[step], l)
		}
	}
	// Below every lever short of checkpointing, at the smallest estimate of
	// some blocks checkpointed (with the levers on for the rest): some.
	shape.Checkpoint = true
	var some int64
	for k := 1; k < mc.Blocks(); k++ {
		shape.CheckpointBlocks = k
		est, err := newbie.EstimateTrain(mc, shape, nil)
		if err != nil {
			t.Fatal(err)
		}
		if some == 0 || est.Total < some {
			some = est.Total
		}
	}
	if some >= leaner.Total {
		t.Fatalf("checkpointing some blocks is estimated at %d B at best, against %d B with the norms and feed-forwards recomputed alone", some, leaner.Total)
	}
	budget := float64(some) / (1 << 30)
	autoLog, autoLosses := run("auto", budget)
	n := mc.Blocks()
	var k int
	if _, err := fmt.Sscanf(autoLog[strings.Index(autoLog, "activation checkpointing: "):], "activation checkpointing: %d of", &k); err != nil || k <= 0 || k >= n {
		t.Fatalf("auto under a budget of %d B, below the levers short of checkpointing (%d B): want some of the %d blocks checkpointed, log says:\n%s", some, leaner.Total, n, autoLog)
	}
	t.Logf("auto: %d of %d blocks checkpointed under %.6f GiB", k, n, budget)
	if len(autoLosses) != 3 {
		t.Fatalf("logged %d losses, want 3", len(autoLosses))
	}
	for step, l := range allLosses {
		if autoLosses[step] != l {
			t.Errorf("step %d: loss %v with %d blocks checkpointed, %v with all", step, autoLosses[step], k, l)
		}
	}
}
