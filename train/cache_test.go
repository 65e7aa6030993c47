package train

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
)

// TestCacheStepOnTheRealEncoders fills the cache of the demo dataset with
// the tiny model folder's real encoders: each encoder is loaded once (the
// preview prompts ride along), a second build encodes nothing, and a
// changed caption, image or encoder file re-encodes exactly what depends
// on it.
func TestCacheStepOnTheRealEncoders(t *testing.T) {
	dir := t.TempDir()
	cfg := demoConfig(t, dir, 2, 0)
	cfg.Sample.Prompts = []string{"<character_1><n>demo</n></character_1>"}
	ctx := context.Background()
	build := func() *cacheResult {
		t.Helper()
		found, err := findModel(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := scanDataset(ctx, cfg, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		step := cacheStep{cfg: cfg, ds: ds, mc: found.DiT.Arch, found: found, e: ag.New(cpu.New()), log: io.Discard}
		step.previews, step.system = previewImages(t, cfg), "system "
		res, err := step.run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.previewText.Features == nil {
			t.Fatal("the preview prompts were not prepared")
		}
		return res
	}
	type counts struct{ latents, features, pooled int }
	encoded := func(res *cacheResult) counts {
		return counts{res.stats.LatentsEncoded, res.stats.FeaturesEncoded, res.stats.PooledEncoded}
	}

	first := build()
	var names []string
	for _, p := range first.phases {
		names = append(names, p.Estimate.Phase)
	}
	if want := []string{"encode-vae", "encode-gemma", "encode-jina"}; len(names) != len(want) || names[0] != want[0] || names[1] != want[1] || names[2] != want[2] {
		t.Errorf("phases %v, want each encoder loaded once: %v", names, want)
	}
	if got := encoded(first); got != (counts{8, 8, 8}) {
		t.Errorf("first build encoded %+v, want 8 of each", got)
	}

	again := build()
	if got := encoded(again); got != (counts{}) {
		t.Errorf("second build encoded %+v, want nothing", got)
	}

	images := cfg.Data.Folders[0].Path
	caption := filepath.Join(images, "demo_000.txt")
	if err := os.WriteFile(caption, []byte("<character_1><n>demo_girl</n><gender>1girl</gender><appearance>a new look</appearance></character_1>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := encoded(build()); got != (counts{0, 1, 1}) {
		t.Errorf("after a caption edit: encoded %+v, want that caption's features and pooled vector", got)
	}

	more := t.TempDir()
	if err := data.WriteDemoDataset(more, 12, cfg.Data.Resolution); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(filepath.Join(more, "demo_011.png")) // a picture the dataset lacks
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(images, "demo_001.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := encoded(build()); got != (counts{1, 0, 0}) {
		t.Errorf("after an image edit: encoded %+v, want that image's latent", got)
	}

	other := filepath.Join(t.TempDir(), "other")
	if _, err := newbie.WriteRandom(other, newbie.RandomOptions{Layout: newbie.LayoutHF, Size: newbie.SizeTiny, Seed: newbie.DemoModelSeed + 1, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	const gemma = "text_encoder/gemma3-4b-it.safetensors"
	raw, err := os.ReadFile(filepath.Join(other, gemma))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Model.Path, gemma), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := encoded(build()); got != (counts{0, 8, 0}) {
		t.Errorf("after a new Gemma file: encoded %+v, want every caption's features and no pooled vector", got)
	}
}

// previewImages are the config's preview images.
func previewImages(t *testing.T, cfg *configs.Config) []pipeline.Image {
	t.Helper()
	imgs, err := pipeline.ConfigImages(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

// TestMemoryPlanRefusesBeforeEncoding: a budget the training step cannot
// fit stops the run before anything is encoded, naming the phase and the
// shortfall, as a config error.
func TestMemoryPlanRefusesBeforeEncoding(t *testing.T) {
	cfg := demoConfig(t, t.TempDir(), 2, 0)
	cfg.Precision = "bf16"
	cfg.MemoryBudgetGiB = 0.001 // 1 MiB
	var log strings.Builder
	_, err := Run(context.Background(), cfg, Options{Log: &log})
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a ConfigError", err)
	}
	for _, want := range []string{"phase train would need", "short", "memory_budget_gib is 0.001"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(log.String(), "phase encode-vae") {
		t.Error("the encoders ran before the plan refused the run")
	}
	if _, err := os.Stat(cfg.Data.Cache); err == nil {
		entries, _ := os.ReadDir(filepath.Join(cfg.Data.Cache, "latents"))
		if len(entries) > 0 {
			t.Errorf("%d latents were cached", len(entries))
		}
	}
}
