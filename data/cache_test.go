package data

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// cacheFixture writes a small dataset: a PNG, an EXIF-rotated JPEG and a
// WebP with captions in the three formats.
func cacheFixture(t *testing.T) (string, Options) {
	t.Helper()
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(20, 21))
	writeFile(t, filepath.Join(dir, "a.png"), pngBytes(t, smoothImage(r, 70, 50)))
	writeFile(t, filepath.Join(dir, "a.txt"), []byte(goodXML))
	writeFile(t, filepath.Join(dir, "b.jpg"), jpegBytes(t, smoothImage(r, 60, 45), 8, true))
	writeFile(t, filepath.Join(dir, "b.txt"), []byte("1girl, solo, smile"))
	writeFile(t, filepath.Join(dir, "c.webp"), webpLossless(t, twoToneImage(r, 41, 41)))
	writeFile(t, filepath.Join(dir, "c.txt"), []byte("a girl standing in a field of flowers, looking at the viewer"))
	o := testOptions(dir)
	o.Caption.CaptionDropout = 0.25
	return dir, o
}

type encoders struct {
	vae  *StandInVAE
	text *StandInTextEncoder
	clip *StandInTextEncoder
	b    CacheBuilder
	warn []string
}

func newEncoders() *encoders {
	e := &encoders{vae: &StandInVAE{}, text: NewStandInTextEncoder(12, 5, 64), clip: NewStandInTextEncoder(3, 7, 77)}
	e.b = CacheBuilder{VAE: e.vae, Text: TextEncoders{Features: e.text, Pooled: e.clip}, Warn: func(s string) { e.warn = append(e.warn, s) }}
	return e
}

func build(t *testing.T, o Options, e *encoders) (*Encoded, CacheStats) {
	t.Helper()
	ds, _, err := Scan(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	enc, st, err := e.b.Build(context.Background(), ds)
	if err != nil {
		t.Fatal(err)
	}
	return enc, st
}

func TestCacheReuseAndInvalidation(t *testing.T) {
	dir, o := cacheFixture(t)
	e := newEncoders()
	var last Progress
	e.b.Progress = func(p Progress) { last = p }
	enc, st := build(t, o, e)
	if st.LatentsEncoded != 3 || st.FeaturesEncoded != 4 || st.PooledEncoded != 3 || st.LatentsReused+st.FeaturesReused+st.PooledReused != 0 {
		t.Fatalf("first build: %+v (want 3 latents, features of 3 captions + the empty one, 3 pooled)", st)
	}
	if last.Phase != PhasePooled || last.Done != 3 || last.Total != 3 || !strings.Contains(last.String(), "pooled [") || !strings.Contains(last.String(), "3/3") || !strings.Contains(last.String(), "ETA") {
		t.Errorf("final progress %+v %q", last, last.String())
	}
	if e.text.Calls.Load() != 4 || e.clip.Calls.Load() != 3 {
		t.Errorf("text encoders called %d/%d times", e.text.Calls.Load(), e.clip.Calls.Load())
	}

	// Unchanged: everything reused, no encoder call.
	_, st = build(t, o, e)
	if st.LatentsEncoded+st.FeaturesEncoded+st.PooledEncoded != 0 || st.LatentsReused != 3 || st.FeaturesReused != 4 || st.PooledReused != 3 {
		t.Errorf("second build: %+v", st)
	}
	if e.vae.Calls.Load() != 3 {
		t.Errorf("vae called %d times over two builds", e.vae.Calls.Load())
	}

	// One caption edited: exactly one text entry re-encoded.
	writeFile(t, filepath.Join(dir, "b.txt"), []byte("1girl, solo, smile, hat"))
	_, st = build(t, o, e)
	if st.FeaturesEncoded != 1 || st.PooledEncoded != 1 || st.LatentsEncoded != 0 || st.FeaturesReused != 3 || st.PooledReused != 2 {
		t.Errorf("after one caption edit: %+v", st)
	}

	// A setting that changes latents (random crop) re-encodes latents only.
	o2 := o
	o2.Buckets.RandomCrop = true
	_, st = build(t, o2, e)
	if st.FeaturesEncoded+st.PooledEncoded != 0 || st.LatentsEncoded == 0 {
		t.Errorf("after enabling random crop: %+v", st)
	}

	// Damage: a flipped bit in a latent, a truncated text file, and a valid
	// file copied over another entry's name.
	lat := enc.Items[0].Latents[0]
	raw, _ := os.ReadFile(lat)
	raw[len(raw)-3] ^= 0x10
	writeFile(t, lat, raw)
	txt := enc.Items[2].Features[0] // b's old caption entry is no longer used
	raw, _ = os.ReadFile(filepath.Join(txt))
	writeFile(t, txt, raw[:len(raw)-9])
	other, _ := os.ReadFile(enc.Items[2].Latents[0])
	writeFile(t, enc.Items[1].Latents[0], other)
	for _, p := range []string{lat, txt, enc.Items[1].Latents[0]} {
		if _, err := LoadLatent(p); err == nil {
			if _, err := LoadFeatures(p); err == nil {
				t.Errorf("damaged %s loads", p)
			}
		}
	}
	e.warn = nil
	_, st = build(t, o, e)
	if len(st.Damaged) != 3 || len(e.warn) != 3 || st.LatentsEncoded != 2 || st.FeaturesEncoded != 1 || st.PooledEncoded != 0 {
		t.Fatalf("after damage: %+v warnings %q", st, e.warn)
	}
	joined := strings.Join(st.Damaged, "\n")
	for _, want := range []string{"checksum", "truncated", "holds \"latent\" entry"} {
		if !strings.Contains(joined, want) {
			t.Errorf("damage messages lack %q:\n%s", want, joined)
		}
	}
	enc, st = build(t, o, e)
	if st.LatentsEncoded+st.FeaturesEncoded+st.PooledEncoded+len(st.Damaged) != 0 {
		t.Errorf("after repair: %+v", st)
	}
	// Prune drops the entries of b's old caption and of the random-crop
	// build, plus a stray temporary file; what is in use stays.
	writeFile(t, filepath.Join(o.CacheDir, "text", "x.safetensors.tmp-123"), []byte("partial"))
	n, err := Prune(enc)
	if err != nil {
		t.Fatal(err)
	}
	// Old caption's features and pooled 2, random crops 2 (c.webp is
	// square in a square bucket, so its random crop is the centre crop and
	// shares the entry), temp 1.
	if n != 2+2+1 {
		t.Errorf("pruned %d files, want 5", n)
	}
	if _, st = build(t, o, e); st.LatentsEncoded+st.FeaturesEncoded+st.PooledEncoded != 0 || st.LatentsReused != 3 || st.FeaturesReused != 4 || st.PooledReused != 3 {
		t.Errorf("after prune: %+v", st)
	}
}

// TestCachedValues checks what the cache stores against the encoders run
// directly, in f32 and bf16.
func TestCachedValues(t *testing.T) {
	for _, bf16 := range []bool{false, true} {
		_, o := cacheFixture(t)
		o.CacheBF16 = bf16
		e := newEncoders()
		enc, _ := build(t, o, e)
		tol := 0.0
		if bf16 {
			tol = 4e-3 // one bf16 rounding
		}
		for _, ei := range enc.Items {
			got, err := LoadLatent(ei.Latents[0])
			if err != nil {
				t.Fatal(err)
			}
			crop := cropWindow(ei.Item.Width, ei.Item.Height, ei.Item.Bucket, false, o.Seed, ei.Item.Hash, 0)
			img, err := prepareImage(ei.Item, crop, false, enc.Options, nil)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := (&StandInVAE{}).EncodeImages(context.Background(), []RGB{img})
			if got.C != 16 || got.H != ei.Item.Bucket.H/8 || got.W != ei.Item.Bucket.W/8 {
				t.Errorf("latent %dx%dx%d for bucket %s", got.C, got.H, got.W, ei.Item.Bucket)
			}
			kerneltest.Check(t, "cached latent", f32to64(got.Data), f32to64(want[0].Data), tol)

			te, err := LoadFeatures(ei.Features[0])
			if err != nil {
				t.Fatal(err)
			}
			if te.Pooled, err = LoadPooled(ei.Pooled[0]); err != nil {
				t.Fatal(err)
			}
			wf, _ := e.text.EncodeTexts(context.Background(), []string{FeatureText(GemmaSystemPrompt, ei.Captions[0])})
			wp, _ := e.clip.EncodeTexts(context.Background(), []string{ei.Captions[0]})
			kerneltest.Check(t, "cached features", f32to64(te.Features), f32to64(wf[0].Features), tol)
			kerneltest.Check(t, "cached pooled", f32to64(te.Pooled), f32to64(wp[0].Pooled), 0)
			if te.Tokens != wf[0].Tokens || te.Dim != 12 || len(te.Mask) != te.Tokens {
				t.Errorf("text shape %d×%d mask %d", te.Tokens, te.Dim, len(te.Mask))
			}
		}
	}
}

func f32to64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func TestStandInEncoders(t *testing.T) {
	ctx := context.Background()
	s := NewStandInTextEncoder(2560, 1024, 512)
	long := strings.Repeat("tag, ", 600)
	out, err := s.EncodeTexts(ctx, []string{"1girl, solo", "1girl, solo", "1boy", long})
	if err != nil {
		t.Fatal(err)
	}
	if out[3].Tokens != 512 || out[0].Dim != 2560 || len(out[0].Pooled) != 1024 {
		t.Errorf("shapes: %d tokens, dim %d, pooled %d", out[3].Tokens, out[0].Dim, len(out[0].Pooled))
	}
	if kernels.RelErr(f32to64(out[0].Features), f32to64(out[1].Features)) != 0 {
		t.Errorf("equal texts encode differently")
	}
	if kernels.RelErr(f32to64(out[0].Pooled), f32to64(out[2].Pooled)) < 0.1 {
		t.Errorf("different texts encode alike")
	}
	v := &StandInVAE{}
	if _, err := v.EncodeImages(ctx, []RGB{{W: 12, H: 16, Pix: make([]float32, 3*12*16)}}); err == nil {
		t.Errorf("stand-in VAE accepted a width not divisible by 8")
	}
	img := RGB{W: 16, H: 24, Pix: make([]float32, 3*16*24)}
	for i := range img.Pix {
		img.Pix[i] = float32(kernels.UniformAt(3, uint64(i), -1, 1))
	}
	l, err := v.EncodeImages(ctx, []RGB{img})
	if err != nil || l[0].C != 16 || l[0].H != 3 || l[0].W != 2 {
		t.Fatalf("latent %+v %v", l, err)
	}
	// The stand-in's documented formula, in float64.
	want := make([]float64, 16*3*2)
	for c := 0; c < 16; c++ {
		for i := 0; i < 3; i++ {
			for j := 0; j < 2; j++ {
				z := kernels.NormalAt(0x5eed, uint64(4*c+3), 0, 0.1)
				for k := 0; k < 3; k++ {
					var m float64
					for y := 8 * i; y < 8*i+8; y++ {
						for x := 8 * j; x < 8*j+8; x++ {
							m += float64(img.Pix[k*16*24+y*16+x]) / 64
						}
					}
					z += m * kernels.NormalAt(0x5eed, uint64(4*c+k), 0, 1)
				}
				want[(c*3+i)*2+j] = (z - LatentShift) * LatentScale
			}
		}
	}
	kerneltest.Check(t, "stand-in latent", f32to64(l[0].Data), want, 1e-6)
}

// TestShallowValidationThenEncodeFailure: with the full decode skipped, a
// JPEG damaged in the middle passes the scan (its end marker is intact) and
// is caught when the cache decodes it: skipped with its reason, or fatal in
// strict mode.
func TestShallowValidationThenEncodeFailure(t *testing.T) {
	dir, o := cacheFixture(t)
	r := rand.New(rand.NewPCG(22, 23))
	b := jpegBytes(t, smoothImage(r, 256, 192), 0, false)
	cut := append(append([]byte(nil), b[:len(b)*3/5]...), b[len(b)-2:]...) // keep FFD9
	writeFile(t, filepath.Join(dir, "d.jpg"), cut)
	writeFile(t, filepath.Join(dir, "d.txt"), []byte("1girl"))
	o.SkipDeepValidate = true
	ds, rep, err := Scan(context.Background(), o)
	if err != nil || len(ds.Items) != 4 {
		t.Fatalf("shallow scan: %v\n%s", err, rep.Table())
	}
	e := newEncoders()
	enc, st, err := e.b.Build(context.Background(), ds)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Skipped) != 1 || !strings.Contains(st.Skipped[0].Reason, "truncated or corrupt JPEG") || len(enc.Items) != 3 {
		t.Errorf("skipped %v, %d items encoded", st.Skipped, len(enc.Items))
	}
	ds.Options.Strict = true
	if _, _, err := e.b.Build(context.Background(), ds); err == nil || !strings.Contains(err.Error(), "d.jpg") {
		t.Errorf("strict build: %v", err)
	}
	// The deep scan finds it up front.
	o.SkipDeepValidate = false
	_, rep, _ = Scan(context.Background(), o)
	if len(rep.Skipped) != 1 || !strings.Contains(rep.Skipped[0].Reason, "truncated or corrupt JPEG") {
		t.Errorf("deep scan: %v", rep.Skipped)
	}
}

// batchSpy records the batch sizes an image encoder receives.
type batchSpy struct {
	StandInVAE
	sizes []int
}

func (s *batchSpy) EncodeImages(ctx context.Context, imgs []RGB) ([]Latent, error) {
	for _, im := range imgs[1:] {
		if im.W != imgs[0].W || im.H != imgs[0].H {
			return nil, fmt.Errorf("mixed sizes in one batch")
		}
	}
	s.sizes = append(s.sizes, len(imgs))
	return s.StandInVAE.EncodeImages(ctx, imgs)
}

func TestBatchedImageEncoding(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(24, 25))
	for i, s := range [][2]int{{64, 64}, {66, 64}, {96, 48}, {64, 63}, {100, 50}} {
		name := filepath.Join(dir, fmt.Sprintf("i%d", i))
		writeFile(t, name+".png", pngBytes(t, smoothImage(r, s[0], s[1])))
		writeFile(t, name+".txt", []byte("1girl"))
	}
	o := testOptions(dir)
	ds, _, err := Scan(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	spy := &batchSpy{}
	e := newEncoders()
	e.b.VAE, e.b.ImageBatch = spy, 2
	enc, st, err := e.b.Build(context.Background(), ds)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range spy.sizes {
		total += n
		if n > 2 {
			t.Errorf("batch of %d > ImageBatch 2", n)
		}
	}
	if total != 5 || st.LatentsEncoded != 5 || len(spy.sizes) >= 5 {
		t.Errorf("batches %v, %d encoded", spy.sizes, st.LatentsEncoded)
	}
	// Batched and one-by-one encoding store the same latents.
	for _, ei := range enc.Items {
		got, err := LoadLatent(ei.Latents[0])
		if err != nil {
			t.Fatal(err)
		}
		img, _ := prepareImage(ei.Item, cropWindow(ei.Item.Width, ei.Item.Height, ei.Item.Bucket, false, o.Seed, ei.Item.Hash, 0), false, enc.Options, nil)
		want, _ := (&StandInVAE{}).EncodeImages(context.Background(), []RGB{img})
		kerneltest.Check(t, "batched latent", f32to64(got.Data), f32to64(want[0].Data), 0)
	}
}
