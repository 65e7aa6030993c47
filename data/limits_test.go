package data

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/internal/fixtures"
)

// TestDeclaredHugeImageRefusedFromHeader: a PNG that declares 30000×30000
// (3.6 GB of pixels) in a few kilobytes is refused by name from its header,
// without being decoded, and the rest of the dataset trains; LoadRGB
// refuses it too.
func TestDeclaredHugeImageRefusedFromHeader(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	writeFile(t, filepath.Join(dir, "huge.png"), fixtures.DeclaredPNG(30000, 30000))
	writeFile(t, filepath.Join(dir, "huge.txt"), []byte("1girl"))
	writeFile(t, filepath.Join(dir, "ok.png"), pngBytes(t, smoothImage(r, 40, 40)))
	writeFile(t, filepath.Join(dir, "ok.txt"), []byte("1girl"))
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	ds, rep, err := Scan(context.Background(), testOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if len(ds.Items) != 1 || len(rep.Skipped) != 1 || filepath.Base(rep.Skipped[0].Path) != "huge.png" ||
		!strings.Contains(rep.Skipped[0].Reason, "30000x30000 is 900.0 megapixels, more than max_pixels") {
		t.Fatalf("kept %d, skipped %v", len(ds.Items), rep.Skipped)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 200<<20 {
		t.Errorf("the scan allocated %d MB: the huge image was decoded", grew>>20)
	}
	o := testOptions(dir).Defaults()
	if _, err := LoadRGB(&Item{Path: filepath.Join(dir, "huge.png"), Format: PNG}, o); err == nil || !strings.Contains(err.Error(), "huge.png: too large") {
		t.Errorf("LoadRGB: %v", err)
	}
	// A lower limit refuses the ordinary image as well.
	o.MaxPixels = 39 * 40
	if _, _, err := Scan(context.Background(), o); err == nil || !strings.Contains(err.Error(), "no usable images") {
		t.Errorf("max_pixels below every image: %v", err)
	}
}

// TestPixelBudgetBoundsDecoding: however many workers decode at once, the
// pixels they hold never exceed the budget, and none waits forever.
func TestPixelBudgetBoundsDecoding(t *testing.T) {
	b := newPixelBudget(1000)
	var held, peak atomic.Int64
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 100 + 150*(i%7) // 100 … 1000, and one asks for more than all
			if i == 5 {
				n = 5000
			}
			got := b.acquire(n)
			now := held.Add(got)
			for {
				p := peak.Load()
				if now <= p || peak.CompareAndSwap(p, now) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			held.Add(-got)
			b.release(got)
		}()
	}
	wg.Wait()
	if peak.Load() > 1000 || peak.Load() < 250 {
		t.Errorf("peak %d pixels held at once, budget 1000", peak.Load())
	}
}

// TestScanStopsOnCancel: a cancelled scan returns at once with the
// cancellation, not a dataset.
func TestScanStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []string{"a", "b", "c"} {
		writeFile(t, filepath.Join(dir, n+".png"), pngBytes(t, smoothImage(r, 40, 40)))
		writeFile(t, filepath.Join(dir, n+".txt"), []byte("x"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Scan(ctx, testOptions(dir)); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("cancelled scan: %v", err)
	}
}
