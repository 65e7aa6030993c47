package newbie

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// tinyPipeline discovers the tiny model and opens a pipeline on a fresh
// CPU engine.
func tinyPipeline(t *testing.T, o Options) (*Pipeline, *cpu.Backend) {
	t.Helper()
	m, err := Discover(tinyModel(t, LayoutHF), Sources{})
	if err != nil {
		t.Fatal(err)
	}
	be := cpu.New()
	p, err := NewPipeline(ag.New(be), m, o)
	if err != nil {
		t.Fatal(err)
	}
	return p, be
}

// images are n generated images of side×side pixels.
func images(n, side int) []data.RGB {
	out := make([]data.RGB, n)
	for i := range out {
		out[i] = SampleImage(i, side, side)
	}
	return out
}

// TestPipelinePhases: each phase loads one encoder, encodes, and frees it
// (the device back to what it held before); its measured peak is within
// the plan's estimate, made before it started; the encoders' identities
// are the adapters' own, known before anything was loaded; an encoder
// asked to work after another ends the other's phase first.
func TestPipelinePhases(t *testing.T) {
	p, be := tinyPipeline(t, Options{MaxImagePixels: 64 * 64, TextBatch: 4, ImageBatch: 2})
	ctx := context.Background()
	var lat []data.Latent
	if err := p.WithVAE(func(enc data.ImageEncoder) error {
		var err error
		lat, err = enc.EncodeImages(ctx, images(3, 64))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(lat) != 3 || lat[0].C != 16 || lat[0].H != 8 || lat[0].W != 8 || len(lat[0].Data) != 16*64 {
		t.Fatalf("latents %d of %d×%d×%d", len(lat), lat[0].C, lat[0].H, lat[0].W)
	}
	texts := captions()
	var feats, pooled []data.TextEncoding
	var gemmaID string
	if err := p.WithGemma(func(enc data.TextEncoder) error {
		gemmaID = p.gemmaEnc.Identity() // the loaded adapter's own
		var err error
		feats, err = enc.EncodeTexts(ctx, texts)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if gemmaID != p.Identity(PartGemma) || !strings.HasPrefix(gemmaID, "gemma3-penultimate/") || !strings.Contains(gemmaID, digestPrefix) {
		t.Errorf("the Gemma adapter's identity %q, the pipeline's %q", gemmaID, p.Identity(PartGemma))
	}
	// The lazy encoders: Jina loads when asked.
	text := p.TextEncoders()
	pooled, err := text.Pooled.EncodeTexts(ctx, texts)
	if err != nil {
		t.Fatal(err)
	}
	if text.Pooled.Identity() != p.jinaEnc.Identity() {
		t.Errorf("Jina identities differ: %q, %q", text.Pooled.Identity(), p.jinaEnc.Identity())
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if len(feats) != len(texts) || feats[0].Dim != 64 || len(pooled) != len(texts) || len(pooled[0].Pooled) != 32 {
		t.Fatalf("features %d × %d, pooled %d × %d", len(feats), feats[0].Dim, len(pooled), len(pooled[0].Pooled))
	}
	phases := p.Phases()
	if len(phases) != 3 || phases[0].Part != PartVAE || phases[1].Part != PartGemma || phases[2].Part != PartJina {
		t.Fatalf("phases %+v", phases)
	}
	for _, ph := range phases {
		used := ph.Peak - ph.Base
		t.Logf("%s: %d items, %d batches, load %v, run %v, peak %d above %d, estimate %s", ph.Estimate.Phase, ph.Items, ph.Batches, ph.Load, ph.Run, used, ph.Base, ph.Estimate)
		if ph.Base != 0 || used <= 0 || used > ph.Estimate.Total {
			t.Errorf("%s: peak %d above %d, planned %d", ph.Estimate.Phase, used, ph.Base, ph.Estimate.Total)
		}
		if l := ph.Largest.Total; l < used || float64(l) > (1+estimateTolerance)*float64(used) {
			t.Errorf("%s: peak %d, the estimate for the largest batch run %d", ph.Estimate.Phase, used, l)
		}
	}
	if phases[0].Items != 3 || phases[0].Batches != 1 || phases[1].Items != len(texts) {
		t.Errorf("items %d (batches %d), %d", phases[0].Items, phases[0].Batches, phases[1].Items)
	}
	if a := be.MemStats().Allocated; a != 0 {
		t.Errorf("%d bytes held after the last phase", a)
	}
	if tr := p.Truncations(); len(tr) != 2 || tr[0].Texts != len(texts) || tr[1].Texts != len(texts) {
		t.Errorf("truncations %+v", tr)
	}
}

// TestPipelineRefuses: a phase whose estimate exceeds the budget is
// refused before anything is loaded, saying which phase and by how much; a
// batch of images larger than the plan assumed is checked again.
func TestPipelineRefuses(t *testing.T) {
	p, be := tinyPipeline(t, Options{Budget: 256 << 10})
	err := p.WithGemma(func(data.TextEncoder) error { t.Error("the phase ran"); return nil })
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Estimate.Phase != "encode-gemma" || pe.Short != pe.Estimate.Total-256<<10 {
		t.Fatalf("error %v", err)
	}
	for _, w := range []string{"phase encode-gemma would need about", "the budget of 256 KiB", "short"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
	if be.MemStats().Allocated != 0 || len(p.Phases()) != 0 {
		t.Errorf("a refused phase left %d bytes, %d phases", be.MemStats().Allocated, len(p.Phases()))
	}
	p, _ = tinyPipeline(t, Options{Budget: 8 << 20, MaxImagePixels: 32 * 32})
	if _, err := p.ImageEncoder().EncodeImages(context.Background(), images(1, 512)); !errors.As(err, &pe) {
		t.Errorf("a 512² image against a plan for 32²: %v", err)
	}
	// A text batch longer than the plan's is checked before it runs.
	p, _ = tinyPipeline(t, Options{MaxTextTokens: 16})
	p.o.Budget = p.Plan(PartGemma).Total + 1<<10
	text := p.TextEncoders().Features
	if _, err := text.EncodeTexts(context.Background(), []string{"1girl"}); err != nil {
		t.Fatalf("a text within the plan: %v", err)
	}
	if _, err := text.EncodeTexts(context.Background(), []string{strings.Repeat("masterpiece, ", 100)}); !errors.As(err, &pe) || pe.Estimate.Phase != "encode-gemma" {
		t.Errorf("a 300-token text against a plan for 16: %v", err)
	}
	p.Close()
}

// TestPipelineCache: the pipeline's encoders fill the data package's encode
// cache; a second build finds everything cached and never loads an
// encoder (the keys come from the identities, which need no weights).
func TestPipelineCache(t *testing.T) {
	dir := t.TempDir()
	if err := data.WriteDemoDataset(dir, 3, 64); err != nil {
		t.Fatal(err)
	}
	o := data.Options{Folders: []data.Folder{{Path: dir}}, MinSide: 16, Seed: 1, CacheDir: filepath.Join(dir, ".cache"),
		Buckets: data.BucketOptions{TargetArea: 64 * 64, Step: 16, MinSide: 32, MaxSide: 128}}
	build := func() (*Pipeline, data.CacheStats) {
		p, _ := tinyPipeline(t, Options{MaxImagePixels: 128 * 128})
		ds, _, err := data.Scan(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		b := data.CacheBuilder{VAE: p.ImageEncoder(), Text: p.TextEncoders()}
		_, st, err := b.Build(context.Background(), ds)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		return p, st
	}
	p, st := build()
	if st.LatentsEncoded != 3 || st.FeaturesEncoded != 3 || len(p.Phases()) != 3 {
		t.Fatalf("first build: %+v, %d phases", st, len(p.Phases()))
	}
	p, st = build()
	if st.LatentsEncoded != 0 || st.FeaturesEncoded != 0 || st.LatentsReused != 3 || len(p.Phases()) != 0 {
		t.Fatalf("second build: %+v, %d phases (want everything reused and nothing loaded)", st, len(p.Phases()))
	}
}

// fakeDevice is a CPU backend that reports device memory.
type fakeDevice struct {
	*cpu.Backend
	free, total int64
}

func (f fakeDevice) DeviceMemory() (int64, int64, error) { return f.free, f.total, nil }

// TestCheck: with no budget, a phase must fit the device's free memory
// plus what the allocator caches; a backend that reports nothing limits
// nothing.
func TestCheck(t *testing.T) {
	est := Estimate{Phase: "encode-vae", Weights: 3 << 20, Activations: 5 << 20, Total: 8 << 20, Basis: "test"}
	be := cpu.New()
	if err := Check(be, 0, est); err != nil {
		t.Errorf("a backend without device memory: %v", err)
	}
	dev := fakeDevice{Backend: be, free: 6 << 20, total: 80 << 20}
	err := Check(dev, 0, est)
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Short != 2<<20 || !strings.Contains(err.Error(), "6.0 MiB of 80.0 MiB free") {
		t.Errorf("device check: %v", err)
	}
	if err := Check(dev, 0, Estimate{Phase: "x", Total: 6 << 20}); err != nil {
		t.Errorf("a phase that fits: %v", err)
	}
	var _ kernels.DeviceMemory = dev
}
