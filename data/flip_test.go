package data

import (
	"context"
	"testing"

	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestFlipAugmentation: with flip on, the cache holds each crop's mirrored
// image encoded as its own entry (not a mirrored latent), the loader trains
// about half the samples on it, chosen deterministically, and every other
// choice of the loader is the one it makes with flip off.
func TestFlipAugmentation(t *testing.T) {
	enc, _ := loaderFixture(t)
	_, o := cacheFixture(t)
	o.Flip = true
	e := newEncoders()
	flipped, st := build(t, o, e)
	if st.LatentsEncoded != 2*len(flipped.Items) {
		t.Errorf("%d latents encoded for %d images, want one plain and one mirrored each", st.LatentsEncoded, len(flipped.Items))
	}
	for _, ei := range flipped.Items {
		if len(ei.Flipped) != len(ei.Latents) || ei.Flipped[0] == ei.Latents[0] {
			t.Fatalf("%s: latents %v, mirrored %v", ei.Item.Path, ei.Latents, ei.Flipped)
		}
		got, err := LoadLatent(ei.Flipped[0])
		if err != nil {
			t.Fatal(err)
		}
		crop := cropWindow(ei.Item.Width, ei.Item.Height, ei.Item.Bucket, false, o.Seed, ei.Item.Hash, 0)
		img, err := prepareImage(ei.Item, crop, false, flipped.Options, nil)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := (&StandInVAE{}).EncodeImages(context.Background(), []RGB{mirror(img)})
		kerneltest.Check(t, "mirrored latent", f32to64(got.Data), f32to64(want[0].Data), 0)
	}

	// The loader fixture again with flip on: same sequence of choices,
	// with a mirrored crop for about half the samples.
	o2 := enc.Options
	o2.Flip = true
	var ds Dataset
	ds.Options = o2
	for _, ei := range enc.Items {
		ds.Items = append(ds.Items, ei.Item)
	}
	encFlip, _, err := newEncoders().b.Build(context.Background(), &ds)
	if err != nil {
		t.Fatal(err)
	}
	if encFlip.Fingerprint == enc.Fingerprint {
		t.Error("turning flip on kept the dataset fingerprint: a cursor would resume into another sequence")
	}
	_, plain := runLoader(t, enc, Cursor{}, 40)
	_, mirrored := runLoader(t, encFlip, Cursor{}, 40)
	_, again := runLoader(t, encFlip, Cursor{}, 40)
	n, flips := 0, 0
	for i := range plain {
		for j, s := range mirrored[i].Samples {
			p := plain[i].Samples[j]
			if s.Image != p.Image || s.CaptionVariant != p.CaptionVariant || s.CropVariant != p.CropVariant || s.Dropped != p.Dropped {
				t.Fatalf("batch %d sample %d: %+v with flip, %+v without", i, j, s, p)
			}
			if s.Flipped != again[i].Samples[j].Flipped {
				t.Fatalf("batch %d sample %d: flip choice not deterministic", i, j)
			}
			n++
			if s.Flipped {
				flips++
			}
		}
	}
	if flips < n/4 || flips > 3*n/4 {
		t.Errorf("%d of %d samples mirrored, want about half", flips, n)
	}
}
