package vae

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// goldenRGB splits the golden image batch into host images.
func goldenRGB(t *testing.T, g goldenRun) []data.RGB {
	t.Helper()
	img, shape := g.get(t, "in.image")
	b, plane := shape[0], shape[1]*shape[2]*shape[3]
	out := make([]data.RGB, b)
	for i := range out {
		pix := make([]float32, plane)
		for j := range pix {
			pix[j] = float32(img[i*plane+j])
		}
		out[i] = data.RGB{Pix: pix, W: shape[3], H: shape[2]}
	}
	return out
}

// TestEncoderGolden: the data.ImageEncoder adapter turns the golden images,
// given as host arrays, into the golden latents, whole or one image per
// pass, in float32 and under bf16 autocast.
func TestEncoderGolden(t *testing.T) {
	g := openGolden(t)
	want, shape := g.get(t, "out.latent")
	imgs := goldenRGB(t, g)
	cases := []struct {
		name     string
		autocast kernels.DType
		maxBatch int
		tol      float64
	}{
		{"f32-whole-batch", 0, 0, 1e-5},
		{"f32-one-per-pass", 0, 1, 1e-5},
		{"bf16-autocast", kernels.BF16, 0, 5e-2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine()
			m, err := Load(e, g.weights, Options{DType: kernels.F32})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Release()
			enc, err := NewEncoder(m, c.autocast, c.maxBatch)
			if err != nil {
				t.Fatal(err)
			}
			if enc.LatentChannels() != 16 || enc.Downsample() != 8 {
				t.Fatalf("latent channels %d, downsample %d; want 16, 8", enc.LatentChannels(), enc.Downsample())
			}
			lat, err := enc.EncodeImages(context.Background(), imgs)
			if err != nil {
				t.Fatal(err)
			}
			if len(lat) != len(imgs) {
				t.Fatalf("%d latents for %d images", len(lat), len(imgs))
			}
			var got []float64
			for _, l := range lat {
				if l.C != shape[1] || l.H != shape[2] || l.W != shape[3] || len(l.Data) != l.C*l.H*l.W {
					t.Fatalf("latent %dx%dx%d with %d values; golden %v", l.C, l.H, l.W, len(l.Data), shape)
				}
				for _, v := range l.Data {
					got = append(got, float64(v))
				}
			}
			kerneltest.Check(t, "adapter latent", got, want, c.tol)
			if e.Autocast() != 0 {
				t.Errorf("the adapter left autocast %v on the engine", e.Autocast())
			}
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEncoderIdentity: the identity names the weights hash and changes with
// every setting that changes the latents.
func TestEncoderIdentity(t *testing.T) {
	g := openGolden(t)
	e := newEngine()
	ids := map[string]string{}
	for _, c := range []struct {
		name     string
		store    kernels.DType
		autocast kernels.DType
	}{
		{"f32", kernels.F32, 0},
		{"f32-bf16", kernels.F32, kernels.BF16},
		{"bf16", kernels.BF16, 0},
	} {
		m, err := Load(e, g.weights, Options{DType: c.store})
		if err != nil {
			t.Fatal(err)
		}
		enc, err := NewEncoder(m, c.autocast, 0)
		if err != nil {
			t.Fatal(err)
		}
		id := enc.Identity()
		if len(m.WeightsHash()) != 64 || !strings.Contains(id, m.WeightsHash()) {
			t.Errorf("%s: identity %q does not carry the weights hash %q", c.name, id, m.WeightsHash())
		}
		for other, oid := range ids {
			if oid == id {
				t.Errorf("%s and %s share identity %q", c.name, other, id)
			}
		}
		ids[c.name] = id
		m.Release()
	}
}

// TestEncoderRejects: bad batches are refused with an error naming the
// problem, before any work.
func TestEncoderRejects(t *testing.T) {
	g := openGolden(t)
	e := newEngine()
	m, err := Load(e, g.weights, Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	enc, err := NewEncoder(m, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	rgb := func(w, h, n int) data.RGB { return data.RGB{Pix: make([]float32, n), W: w, H: h} }
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name string
		ctx  context.Context
		imgs []data.RGB
		want string
	}{
		{"side not a multiple of 8", context.Background(), []data.RGB{rgb(20, 16, 3*20*16)}, "multiples of 8"},
		{"short pixels", context.Background(), []data.RGB{rgb(16, 16, 100)}, "3·W·H"},
		{"mixed sizes", context.Background(), []data.RGB{rgb(16, 16, 768), rgb(24, 16, 3*24*16)}, "share one size"},
		{"cancelled", cancelled, []data.RGB{rgb(16, 16, 768)}, context.Canceled.Error()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := enc.EncodeImages(c.ctx, c.imgs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if c.name == "cancelled" && !errors.Is(err, context.Canceled) {
				t.Errorf("error %v is not context.Canceled", err)
			}
		})
	}
	if _, err := NewEncoder(m, kernels.F32, 0); err == nil {
		t.Error("NewEncoder accepted F32 as an autocast dtype")
	}
	if lat, err := enc.EncodeImages(context.Background(), nil); err != nil || lat != nil {
		t.Errorf("empty batch: %v, %v", lat, err)
	}
}
