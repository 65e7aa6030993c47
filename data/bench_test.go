package data

import (
	"context"
	"fmt"
	"image"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// BenchmarkScan2000 generates 2000 images with captions (half PNG, half
// JPEG, in two "N_name" folders) and times one Scan of them: read, sniff,
// header, full decode (unless shallow), EXIF, hash, bucket, caption parse.
// Generation is outside the timer.
//
//	go test ./data -run '^$' -bench Scan2000 -benchtime 3x
func BenchmarkScan2000(b *testing.B) {
	for _, size := range []struct{ w, h int }{{128, 96}, {320, 240}} {
		root := b.TempDir()
		r := rand.New(rand.NewPCG(40, 41))
		bases := []*image.NRGBA{smoothImage(r, size.w, size.h), smoothImage(r, size.h, size.w)}
		for i := 0; i < 2000; i++ {
			folder := filepath.Join(root, "5_alice")
			if i%2 == 1 {
				folder = filepath.Join(root, "2_bob")
			}
			pic := bases[i%2]
			// The file number as a row of black and white 4×4 blocks, so no
			// two files are duplicates even after JPEG compression.
			for bit := 0; bit < 11; bit++ {
				v := byte(0)
				if i>>bit&1 == 1 {
					v = 255
				}
				for y := 0; y < 4; y++ {
					for x := 4 * bit; x < 4*bit+4; x++ {
						o := pic.PixOffset(x, y)
						pic.Pix[o], pic.Pix[o+1], pic.Pix[o+2] = v, v, v
					}
				}
			}
			name := filepath.Join(folder, fmt.Sprintf("%04d", i))
			if i%4 < 2 {
				writeFile(b, name+".png", pngBytes(b, pic))
			} else {
				writeFile(b, name+".jpg", jpegBytes(b, pic, 1+i%8, i%3 == 0))
			}
			writeFile(b, name+".txt", []byte(goodXML))
		}
		for _, shallow := range []bool{false, true} {
			mode := "deep"
			if shallow {
				mode = "shallow"
			}
			b.Run(fmt.Sprintf("%dx%d/%s", size.w, size.h, mode), func(b *testing.B) {
				o := testOptions(root)
				o.SkipDeepValidate = shallow
				for b.Loop() {
					ds, rep, err := Scan(context.Background(), o)
					if err != nil {
						b.Fatal(err)
					}
					if len(ds.Items) != 2000 {
						b.Fatalf("kept %d of 2000:\n%s", len(ds.Items), rep.Table())
					}
				}
			})
		}
	}
}

// BenchmarkPrepareImage times what the cache does per image before the VAE:
// decode a 2048×1536 JPEG, crop and Lanczos-resize it to its 1024²-area
// bucket (1184×880), map to [−1, 1].
//
//	go test ./data -run '^$' -bench PrepareImage
func BenchmarkPrepareImage(b *testing.B) {
	dir := b.TempDir()
	r := rand.New(rand.NewPCG(42, 43))
	path := filepath.Join(dir, "big.jpg")
	writeFile(b, path, jpegBytes(b, smoothImage(r, 2048, 1536), 0, false))
	o := Options{}.Defaults()
	bk, err := assignBucket(Buckets(o.Buckets), 2048, 1536, o.Buckets)
	if err != nil {
		b.Fatal(err)
	}
	it := &Item{Path: path, Format: JPEG, Orientation: 1, Width: 2048, Height: 1536, Bucket: bk}
	crop := cropWindow(2048, 1536, bk, false, 0, "", 0)
	b.Logf("bucket %s", bk)
	for b.Loop() {
		if _, err := prepareImage(it, crop, false, o, nil); err != nil {
			b.Fatal(err)
		}
	}
}
