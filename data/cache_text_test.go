package data

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// recordingEncoder wraps a stand-in text encoder: it can change its
// identity (a different model file) and logs every call into a shared log.
type recordingEncoder struct {
	*StandInTextEncoder
	name, id string
	mu       *sync.Mutex
	log      *[]string
}

func (r *recordingEncoder) Identity() string { return r.StandInTextEncoder.Identity() + r.id }

func (r *recordingEncoder) EncodeTexts(ctx context.Context, texts []string) ([]TextEncoding, error) {
	r.mu.Lock()
	*r.log = append(*r.log, r.name)
	r.mu.Unlock()
	return r.StandInTextEncoder.EncodeTexts(ctx, texts)
}

// recordingEncoders makes encoders whose text encoders log their calls.
func recordingEncoders() (*encoders, *recordingEncoder, *recordingEncoder, *[]string) {
	e := newEncoders()
	log := &[]string{}
	mu := &sync.Mutex{}
	f := &recordingEncoder{StandInTextEncoder: e.text, name: "features", mu: mu, log: log}
	p := &recordingEncoder{StandInTextEncoder: e.clip, name: "pooled", mu: mu, log: log}
	e.b.Text = TextEncoders{Features: f, Pooled: p}
	return e, f, p, log
}

// TestCacheTextPhases: every Features call precedes every Pooled call, and
// changing one encoder re-encodes only its own entries.
func TestCacheTextPhases(t *testing.T) {
	_, o := cacheFixture(t)
	// More captions than one batch of textBatch: 12 shuffled variants of
	// each of the 3 captions (17 distinct texts with the empty one).
	o.Caption.ShuffleTags = true
	o.Caption.Variants = 12
	e, f, p, log := recordingEncoders()
	var phases []string
	e.b.Progress = func(pr Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != pr.Phase {
			phases = append(phases, pr.Phase)
		}
	}
	_, st := build(t, o, e)
	lastF, firstP := -1, len(*log)
	for i, name := range *log {
		if name == "features" {
			lastF = i
		} else if firstP == len(*log) {
			firstP = i
		}
	}
	if lastF < 0 || firstP == len(*log) || lastF > firstP {
		t.Errorf("encoder calls %v: a Pooled call comes before the last Features call", *log)
	}
	if nf := strings.Count(strings.Join(*log, ","), "features"); nf < 2 {
		t.Errorf("only %d features calls for %d entries: the test does not exercise several batches", nf, st.FeaturesEncoded)
	}
	if strings.Join(phases, ",") != "latents,features,pooled" {
		t.Errorf("progress phases %v", phases)
	}
	t.Logf("calls %v; stats %+v", *log, st)

	cases := []struct {
		name                     string
		change                   func()
		wantFeatures, wantPooled bool
	}{
		{"features encoder changed", func() { f.id = "-other" }, true, false},
		{"pooled encoder changed", func() { p.id = "-other" }, false, true},
	}
	for _, c := range cases {
		c.change()
		*log = nil
		_, st2 := build(t, o, e)
		if st2.LatentsEncoded != 0 {
			t.Errorf("%s: %d latents re-encoded", c.name, st2.LatentsEncoded)
		}
		if got := st2.FeaturesEncoded == st.FeaturesEncoded && st2.FeaturesReused == 0; got != c.wantFeatures || (!c.wantFeatures && st2.FeaturesEncoded != 0) {
			t.Errorf("%s: features %d encoded %d reused (first build encoded %d)", c.name, st2.FeaturesEncoded, st2.FeaturesReused, st.FeaturesEncoded)
		}
		if got := st2.PooledEncoded == st.PooledEncoded && st2.PooledReused == 0; got != c.wantPooled || (!c.wantPooled && st2.PooledEncoded != 0) {
			t.Errorf("%s: pooled %d encoded %d reused (first build encoded %d)", c.name, st2.PooledEncoded, st2.PooledReused, st.PooledEncoded)
		}
	}
}

// TestCacheChangedImage: a changed image re-encodes its latent only.
func TestCacheChangedImage(t *testing.T) {
	dir, o := cacheFixture(t)
	e := newEncoders()
	build(t, o, e)
	// c's image redrawn (same size, so the same bucket and crop).
	writeFile(t, filepath.Join(dir, "c.webp"), webpLossless(t, twoToneImage(rand.New(rand.NewPCG(5, 6)), 41, 41)))
	_, st := build(t, o, e)
	if st.LatentsEncoded != 1 || st.LatentsReused != 2 || st.FeaturesEncoded+st.PooledEncoded != 0 {
		t.Errorf("after changing one image: %+v", st)
	}
}

// TestCacheDamagedTextEntries: a damaged features file and a damaged pooled
// file are each re-encoded with a warning.
func TestCacheDamagedTextEntries(t *testing.T) {
	_, o := cacheFixture(t)
	e := newEncoders()
	enc, _ := build(t, o, e)
	for _, p := range []string{enc.Items[0].Features[0], enc.Items[1].Pooled[0]} {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		raw[len(raw)-2] ^= 0x04
		writeFile(t, p, raw)
	}
	e.warn = nil
	_, st := build(t, o, e)
	if st.FeaturesEncoded != 1 || st.PooledEncoded != 1 || len(st.Damaged) != 2 || len(e.warn) != 2 {
		t.Fatalf("after damaging one features and one pooled file: %+v warnings %q", st, e.warn)
	}
	for i, sub := range []string{"/features/", "/pooled/"} {
		if !strings.Contains(e.warn[i], sub) || !strings.Contains(e.warn[i], "checksum") {
			t.Errorf("warning %d %q does not name the %s file's checksum", i, e.warn[i], sub)
		}
	}
}

// TestPruneOldTextEntries: entries of the v1 layout (text/) are removed.
func TestPruneOldTextEntries(t *testing.T) {
	_, o := cacheFixture(t)
	e := newEncoders()
	enc, _ := build(t, o, e)
	old := filepath.Join(o.CacheDir, "text", strings.Repeat("ab", 32)+".safetensors")
	writeFile(t, old, []byte("an old newbie-cache-v1 text entry"))
	n, err := Prune(enc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); n != 1 || !os.IsNotExist(err) {
		t.Errorf("pruned %d files; old text entry stat: %v", n, err)
	}
	if _, st := build(t, o, e); st.LatentsEncoded+st.FeaturesEncoded+st.PooledEncoded != 0 {
		t.Errorf("prune removed entries in use: %+v", st)
	}
}

// TestDropoutBlanks: a dropped sample's features are the empty caption's
// (FeatureText(system, "")), and its pooled vector its own caption's
// ("gemma") or the empty caption's ("both"); the empty caption is encoded
// once.
func TestDropoutBlanks(t *testing.T) {
	ctx := context.Background()
	fingerprints := map[string]string{}
	for _, mode := range []string{DropoutBlanksGemma, DropoutBlanksBoth} {
		_, o := cacheFixture(t)
		o.Caption.CaptionDropout = 0.6
		o.Caption.DropoutBlanks = mode
		o.Loader.BatchSize = 1
		e, _, _, _ := recordingEncoders()
		enc, st := build(t, o, e)
		fingerprints[mode] = enc.Fingerprint
		wantPooled := 3
		if mode == DropoutBlanksBoth {
			wantPooled = 4
		}
		if st.FeaturesEncoded != 4 || st.PooledEncoded != wantPooled {
			t.Errorf("%s: %+v, want the empty caption's features once and %d pooled", mode, st, wantPooled)
		}
		byPath := map[string]EncodedItem{}
		for _, ei := range enc.Items {
			byPath[ei.Item.Path] = ei
		}
		wf, _ := e.text.EncodeTexts(ctx, []string{FeatureText(o.Caption.SystemPrompt, "")})
		emptyPooled, _ := e.clip.EncodeTexts(ctx, []string{PooledText("")})
		l, err := NewLoader(enc, Cursor{})
		if err != nil {
			t.Fatal(err)
		}
		dropped := 0
		for range 3 * 4 {
			b, err := l.Next()
			if err != nil {
				t.Fatal(err)
			}
			s := b.Samples[0]
			if !s.Dropped {
				continue
			}
			dropped++
			kerneltest.Check(t, mode+" dropped features", f32to64(b.Features[:wf[0].Tokens*wf[0].Dim]), f32to64(wf[0].Features), 0)
			want := emptyPooled[0].Pooled
			if mode == DropoutBlanksGemma {
				own, _ := e.clip.EncodeTexts(ctx, []string{PooledText(byPath[s.Image].Captions[s.CaptionVariant])})
				want = own[0].Pooled
			}
			kerneltest.Check(t, mode+" dropped pooled", f32to64(b.Pooled), f32to64(want), 0)
		}
		l.Close()
		if dropped == 0 {
			t.Errorf("%s: no sample dropped in 12 batches at dropout 0.6", mode)
		}
		t.Logf("%s: %d of 12 samples dropped", mode, dropped)
	}
	if fingerprints[DropoutBlanksGemma] == fingerprints[DropoutBlanksBoth] {
		t.Error("the fingerprint does not change with the dropout mode")
	}
}
