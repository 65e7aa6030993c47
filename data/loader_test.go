package data

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loaderFixture: 9 images in three aspect groups over two folders with
// different repeats, tag captions with shuffling and dropout, caption
// dropout, two random crops per image.
func loaderFixture(t *testing.T) (*Encoded, *encoders) {
	t.Helper()
	root := t.TempDir()
	r := rand.New(rand.NewPCG(30, 31))
	sizes := [][2]int{{64, 64}, {70, 66}, {96, 48}, {100, 52}, {48, 96}, {60, 60}, {99, 50}, {50, 100}, {65, 63}}
	for i, s := range sizes {
		folder := "2_alice"
		if i%3 == 0 {
			folder = "1_bob"
		}
		name := filepath.Join(root, folder, fmt.Sprintf("img%d", i))
		writeFile(t, name+".png", pngBytes(t, smoothImage(r, s[0], s[1])))
		writeFile(t, name+".txt", []byte(fmt.Sprintf("tag%d, 1girl, solo, smile, hat, outdoors, sky, tree", i)))
	}
	o := testOptions(root)
	o.Caption.ShuffleTags = true
	o.Caption.TagDropout = 0.2
	o.Caption.Variants = 3
	o.Caption.KeepTokens = 1
	o.Caption.CaptionDropout = 0.3
	o.Buckets.RandomCrop = true
	o.Buckets.CropVariants = 2
	o.Loader.BatchSize = 2
	e := newEncoders()
	enc, _ := build(t, o, e)
	return enc, e
}

// batchDigest fingerprints everything a trainer sees in a batch.
func batchDigest(b *Batch) string {
	h := sha256.New()
	fmt.Fprintf(h, "%+v|%+v|%s|%d,%d,%d|%d,%d,%d|", b.Cursor, b.Next, b.Bucket, b.C, b.LH, b.LW, b.Tokens, b.Dim, b.PooledDim)
	for _, s := range b.Samples {
		fmt.Fprintf(h, "%+v|", s)
	}
	for _, v := range [][]float32{b.Latents, b.Features, b.Pooled} {
		for _, x := range v {
			binary.Write(h, binary.LittleEndian, math.Float32bits(x))
		}
	}
	binary.Write(h, binary.LittleEndian, b.Mask)
	return hex.EncodeToString(h.Sum(nil))
}

func runLoader(t *testing.T, enc *Encoded, from Cursor, n int) ([]string, []*Batch) {
	t.Helper()
	l, err := NewLoader(enc, from)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var ds []string
	var bs []*Batch
	for range n {
		want := l.Cursor()
		b, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		if b.Cursor != want {
			t.Fatalf("batch cursor %+v, loader said %+v", b.Cursor, want)
		}
		ds = append(ds, batchDigest(b))
		bs = append(bs, b)
	}
	return ds, bs
}

// batchesPerEpoch is the loader's epoch length over enc.
func batchesPerEpoch(t *testing.T, enc *Encoded) int {
	t.Helper()
	l, err := NewLoader(enc, Cursor{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.BatchesPerEpoch()
}

func TestLoaderDeterministicAndResumable(t *testing.T) {
	enc, _ := loaderFixture(t)
	perEp := batchesPerEpoch(t, enc)
	n := 3*perEp + 1
	ref, batches := runLoader(t, enc, Cursor{}, n)

	again, _ := runLoader(t, enc, Cursor{}, n)
	for i := range ref {
		if ref[i] != again[i] {
			t.Fatalf("batch %d differs between two fresh runs", i)
		}
	}

	// Resume from the saved cursor after every step, through JSON as the
	// training state stores it.
	for k := 0; k < n; k++ {
		saved, err := json.Marshal(batches[k].Next)
		if err != nil {
			t.Fatal(err)
		}
		var c Cursor
		if err := json.Unmarshal(saved, &c); err != nil {
			t.Fatal(err)
		}
		got, _ := runLoader(t, enc, c, n-k-1)
		for i := range got {
			if got[i] != ref[k+1+i] {
				t.Fatalf("resumed after step %d: batch %d differs", k, k+1+i)
			}
		}
	}

	// Epoch structure: bucket-pure batches, every sample repeats× per epoch,
	// augmentation visibly at work.
	dropped, variants, crops := 0, map[int]bool{}, map[int]bool{}
	for ep := 0; ep < 3; ep++ {
		count := map[string]int{}
		for _, b := range batches[ep*perEp : (ep+1)*perEp] {
			if b.Cursor.Epoch != ep {
				t.Fatalf("batch %+v in epoch %d", b.Cursor, ep)
			}
			if len(b.Samples) > enc.Options.Loader.BatchSize || len(b.Samples) == 0 {
				t.Errorf("batch of %d", len(b.Samples))
			}
			for i, s := range b.Samples {
				count[s.Image]++
				var it *Item
				for _, ei := range enc.Items {
					if ei.Item.Path == s.Image {
						it = ei.Item
					}
				}
				if it.Bucket != b.Bucket {
					t.Errorf("sample %s of bucket %s in a %s batch", s.Image, it.Bucket, b.Bucket)
				}
				if s.Dropped {
					dropped++
					if s.Caption != "" {
						t.Errorf("dropped sample has caption %q", s.Caption)
					}
				}
				variants[s.CaptionVariant] = true
				crops[s.CropVariant] = true
				// The mask is 1 on the sample's own tokens, 0 on padding.
				row := b.Mask[i*b.Tokens : (i+1)*b.Tokens]
				ones := 0
				for _, m := range row {
					ones += int(m)
				}
				for j := ones; j < len(row); j++ {
					if row[j] != 0 {
						t.Errorf("mask not a prefix of ones: %v", row)
					}
					for d := 0; d < b.Dim; d++ {
						if b.Features[(i*b.Tokens+j)*b.Dim+d] != 0 {
							t.Fatalf("padding holds features")
						}
					}
				}
			}
			if len(b.Latents) != len(b.Samples)*b.C*b.LH*b.LW || b.LH != b.Bucket.H/8 || b.LW != b.Bucket.W/8 {
				t.Errorf("latents %d for %d samples of %dx%dx%d in %s", len(b.Latents), len(b.Samples), b.C, b.LH, b.LW, b.Bucket)
			}
		}
		for _, ei := range enc.Items {
			if count[ei.Item.Path] != ei.Item.Repeats {
				t.Errorf("epoch %d: %s seen %d times, repeats %d", ep, filepath.Base(ei.Item.Path), count[ei.Item.Path], ei.Item.Repeats)
			}
		}
	}
	if dropped == 0 || len(variants) < 2 || len(crops) < 2 {
		t.Errorf("augmentation idle: %d dropped, caption variants %v, crops %v", dropped, variants, crops)
	}
	// Another seed gives another order.
	enc2 := *enc
	other, _ := runLoader(t, &enc2, Cursor{Fingerprint: enc.Fingerprint, Seed: 99}, perEp)
	same := 0
	for i := range other {
		if other[i] == ref[i] {
			same++
		}
	}
	if same == perEp {
		t.Errorf("seed does not change the batch order")
	}
}

func TestLoaderErrors(t *testing.T) {
	enc, _ := loaderFixture(t)
	if _, err := NewLoader(enc, Cursor{Fingerprint: "0123456789abcdef"}); err == nil || !strings.Contains(err.Error(), "cannot be resumed") {
		t.Errorf("foreign cursor: %v", err)
	}
	// A cache file damaged after the build: the loader refuses to load it.
	l, err := NewLoader(enc, Cursor{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := l.Next()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	var victim string
	for _, ei := range enc.Items {
		if ei.Item.Path == first.Samples[0].Image {
			victim = ei.Latents[first.Samples[0].CropVariant]
		}
	}
	raw, _ := os.ReadFile(victim)
	raw[len(raw)-1] ^= 1
	writeFile(t, victim, raw)
	l, err = NewLoader(enc, Cursor{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Next(); err == nil || !strings.Contains(err.Error(), victim) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("damaged file at load: %v", err)
	}
	if _, err := l.Next(); err == nil {
		t.Errorf("loader continues after an error")
	}
	// Drop-last with batches larger than any bucket leaves nothing.
	o := enc.Options
	o.Loader.BatchSize, o.Loader.DropLast = 50, true
	big := *enc
	big.Options = o
	if _, err := NewLoader(&big, Cursor{}); err == nil || !strings.Contains(err.Error(), "no full batch") {
		t.Errorf("drop-last with no full batch: %v", err)
	}
}

// TestEpochBatches: the count made from the scanned items alone is the
// loader's, with and without drop_last, and the sizes add up to the epoch.
func TestEpochBatches(t *testing.T) {
	enc, _ := loaderFixture(t)
	var items []*Item
	samples := 0
	for _, ei := range enc.Items {
		items = append(items, ei.Item)
		samples += ei.Item.Repeats
	}
	for _, dropLast := range []bool{false, true} {
		o := enc.Options
		o.Loader.DropLast = dropLast
		e := *enc
		e.Options = o
		n, sizes := EpochBatches(items, o.Loader)
		if got := len(epochPlan(&e, 7, 0)); got != n {
			t.Errorf("drop_last %v: EpochBatches %d, the loader's plan %d", dropLast, n, got)
		}
		total := 0
		for size, c := range sizes {
			total += size * c
		}
		if !dropLast && total != samples {
			t.Errorf("batch sizes %v hold %d samples, the epoch has %d", sizes, total, samples)
		}
	}
}

// TestShardLoaderSplitsTheSequence: the ranks of a data-parallel job, each
// taking its micro-batches of every step, together see the single loader's
// sequence — each batch once, identical — from a fresh start and from a
// resumed cursor; After names the position a step leaves the run at; and a
// rank never reads the files of the batches it skips.
func TestShardLoaderSplitsTheSequence(t *testing.T) {
	enc, _ := loaderFixture(t)
	perEp := batchesPerEpoch(t, enc)
	n := 2*perEp + 3
	ref, refBatches := runLoader(t, enc, Cursor{}, n+perEp)
	for _, c := range []struct{ world, accum, start int }{{2, 1, 0}, {3, 2, 0}, {2, 2, perEp + 1}} {
		from := Cursor{}
		if c.start > 0 {
			from = refBatches[c.start-1].Next
		}
		steps := n / (c.world * c.accum)
		for rank := range c.world {
			take := func(i int64) bool { return int(i%int64(c.world*c.accum))/c.accum == rank }
			sl, err := NewShardLoader(enc, from, take)
			if err != nil {
				t.Fatal(err)
			}
			for s := range steps {
				for k := range c.accum {
					b, err := sl.Next()
					if err != nil {
						t.Fatal(err)
					}
					pos := c.start + s*c.world*c.accum + rank*c.accum + k
					if got := batchDigest(b); got != ref[pos] {
						t.Fatalf("%+v rank %d step %d micro-batch %d: not batch %d of the single loader's sequence", c, rank, s, k, pos)
					}
				}
				if got, want := sl.After(int64((s+1)*c.world*c.accum)), refBatches[c.start+(s+1)*c.world*c.accum-1].Next; got != want {
					t.Fatalf("%+v: After step %d is %+v, the single loader is at %+v", c, s, got, want)
				}
			}
			sl.Close()
		}
	}

	// A rank skips other ranks' batches unread: delete every latent file
	// only rank 1 of 2 uses in the first epoch, and rank 0 still loads its
	// batches.
	owner := map[string]map[int]bool{}
	for i, b := range refBatches[:perEp] {
		for _, s := range b.Samples {
			for _, ei := range enc.Items {
				if ei.Item.Path == s.Image {
					f := ei.Latents[s.CropVariant]
					if owner[f] == nil {
						owner[f] = map[int]bool{}
					}
					owner[f][i%2] = true
				}
			}
		}
	}
	deleted := 0
	for f, ranks := range owner {
		if ranks[1] && !ranks[0] {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
			deleted++
		}
	}
	if deleted == 0 {
		t.Fatal("the fixture has no latent only rank 1 reads in the first epoch")
	}
	sl, err := NewShardLoader(enc, Cursor{}, func(i int64) bool { return i%2 == 0 })
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	for i := 0; i < perEp; i += 2 {
		b, err := sl.Next()
		if err != nil {
			t.Fatalf("rank 0, batch %d, with %d of rank 1's latents deleted: %v", i, deleted, err)
		}
		if batchDigest(b) != ref[i] {
			t.Fatalf("rank 0's batch %d differs", i)
		}
	}
}
