package data_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"

	"github.com/newbie-train/newbie-train/data"
)

// Example runs the whole pipeline on a two-image folder with the stand-in
// encoders: scan and validate, encode into the cache, then load batches.
func Example() {
	dir, _ := os.MkdirTemp("", "newbie-data-example")
	defer os.RemoveAll(dir)
	folder := filepath.Join(dir, "10_alice")
	os.MkdirAll(folder, 0o755)
	for i, size := range [][2]int{{96, 64}, {90, 60}} {
		img := image.NewNRGBA(image.Rect(0, 0, size[0], size[1]))
		for p := range img.Pix {
			img.Pix[p] = byte(p*(i+3)) | 0x80
			if p%4 == 3 {
				img.Pix[p] = 255 // opaque
			}
		}
		img.SetNRGBA(0, 0, color.NRGBA{byte(i), 0, 0, 255})
		var buf bytes.Buffer
		png.Encode(&buf, img)
		name := filepath.Join(folder, fmt.Sprintf("img%d", i))
		os.WriteFile(name+".png", buf.Bytes(), 0o644)
		os.WriteFile(name+".txt", []byte("<character_1><n>alice</n></character_1><general_tags><style>anime</style></general_tags>"), 0o644)
	}

	opts := data.Options{
		Folders:  []data.Folder{{Path: dir}},
		MinSide:  32,
		CacheDir: filepath.Join(dir, "cache"),
		Buckets:  data.BucketOptions{TargetArea: 64 * 64, MinSide: 32, MaxSide: 128},
		Caption:  data.CaptionOptions{TriggerWord: "alice_(newbie)"},
		Loader:   data.LoaderOptions{BatchSize: 2},
	}
	ds, report, err := data.Scan(context.Background(), opts)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(report.Table())

	builder := data.CacheBuilder{
		VAE:  &data.StandInVAE{},
		Text: data.TextEncoders{Features: data.NewStandInTextEncoder(16, 8, 512), Pooled: data.NewStandInTextEncoder(4, 8, 77)},
	}
	enc, stats, err := builder.Build(context.Background(), ds)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("encoded %d latents, %d texts\n", stats.LatentsEncoded, stats.FeaturesEncoded)

	loader, err := data.NewLoader(enc, data.Cursor{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer loader.Close()
	b, err := loader.Next()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("batch of %d in bucket %s: latents [%d,%d,%d,%d], features [%d,%d,%d], pooled [%d,%d]\n",
		len(b.Samples), b.Bucket, len(b.Samples), b.C, b.LH, b.LW, len(b.Samples), b.Tokens, b.Dim, len(b.Samples), b.PooledDim)
	fmt.Printf("%d batches per epoch; next cursor epoch %d batch %d\n", loader.BatchesPerEpoch(), b.Next.Epoch, b.Next.Batch)
	// Output:
	// bucket  images
	//    80x48       2
	//    total       2
	// 2 images kept (20 samples per epoch), 0 converted, 0 skipped
	// encoded 2 latents, 1 texts
	// batch of 2 in bucket 80x48: latents [2,16,6,10], features [2,67,16], pooled [2,8]
	// 10 batches per epoch; next cursor epoch 0 batch 1
}
