package data

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

func TestBuckets(t *testing.T) {
	for _, o := range []BucketOptions{
		{TargetArea: 1024 * 1024, Step: 16, MinSide: 512, MaxSide: 2048},
		{TargetArea: 768 * 768, Step: 64, MinSide: 256, MaxSide: 1536},
		{TargetArea: 64 * 64, Step: 16, MinSide: 32, MaxSide: 128},
	} {
		bs := Buckets(o)
		if len(bs) < 3 {
			t.Fatalf("%+v: only %d buckets", o, len(bs))
		}
		square := false
		for _, b := range bs {
			if b.W%o.Step != 0 || b.H%o.Step != 0 {
				t.Errorf("%+v: bucket %s not a multiple of %d", o, b, o.Step)
			}
			if b.W*b.H > o.TargetArea || b.W < o.MinSide || b.H < o.MinSide || b.W > o.MaxSide || b.H > o.MaxSide {
				t.Errorf("%+v: bucket %s out of bounds", o, b)
			}
			// Near the target: within one step of height.
			if b.W*(b.H+o.Step) <= o.TargetArea && b.H+o.Step <= o.MaxSide {
				t.Errorf("%+v: bucket %s could be taller", o, b)
			}
			square = square || b.W == b.H
		}
		if !square {
			t.Errorf("%+v: no square bucket", o)
		}
	}
	o := BucketOptions{TargetArea: 1024 * 1024, Step: 16, MinSide: 512, MaxSide: 2048}
	bs := Buckets(o)
	cases := []struct {
		w, h      int
		noUpscale bool
		want      Bucket
	}{
		{1000, 1000, false, Bucket{1024, 1024}},
		{3000, 2000, false, Bucket{1248, 832}},
		{832, 1216, false, Bucket{848, 1232}}, // SDXL-style portrait lands on the nearest shape
		{500, 500, true, Bucket{496, 496}},    // no upscale: same shape, floored to 16
		{500, 500, false, Bucket{1024, 1024}},
		{4000, 1000, false, Bucket{2048, 512}},
	}
	for _, c := range cases {
		o.NoUpscale = c.noUpscale
		got, err := assignBucket(bs, c.w, c.h, o)
		if err != nil {
			t.Fatal(err)
		}
		// The chosen bucket must be the nearest aspect among all buckets.
		ar := math.Log(float64(c.w) / float64(c.h))
		for _, b := range bs {
			if !c.noUpscale && math.Abs(math.Log(float64(b.W)/float64(b.H))-ar) < math.Abs(math.Log(float64(got.W)/float64(got.H))-ar)-1e-12 {
				t.Errorf("%dx%d → %s but %s is nearer in aspect", c.w, c.h, got, b)
			}
		}
		if got != c.want {
			t.Errorf("%dx%d (no upscale %v) → %s, want %s", c.w, c.h, c.noUpscale, got, c.want)
		}
	}
}

func TestCropWindow(t *testing.T) {
	b := Bucket{64, 32}
	c := cropWindow(100, 100, b, false, 1, "k", 0)
	if c != (CropWindow{0, 25, 100, 50}) {
		t.Errorf("centre crop %v", c)
	}
	seen := map[CropWindow]bool{}
	for v := range 8 {
		c := cropWindow(100, 100, b, true, 1, "k", v)
		if c.X != 0 || c.W != 100 || c.H != 50 || c.Y < 0 || c.Y > 50 {
			t.Errorf("random crop %v outside the image", c)
		}
		if c != cropWindow(100, 100, b, true, 1, "k", v) {
			t.Errorf("random crop not deterministic")
		}
		seen[c] = true
	}
	if len(seen) < 4 {
		t.Errorf("only %d distinct random crops of 8", len(seen))
	}
}

// refLanczos evaluates the resize directly in two dimensions in float64:
// every output pixel is Σ k(x)k(y)·src / Σ k(x)k(y) over the source window,
// with the kernel widened by the scale when shrinking.
func refLanczos(src RGB, x0, y0, cw, ch float64, w, h int) []float64 {
	kern := func(x float64) float64 {
		if x == 0 {
			return 1
		}
		if math.Abs(x) >= 3 {
			return 0
		}
		return 3 * math.Sin(math.Pi*x) * math.Sin(math.Pi*x/3) / (math.Pi * math.Pi * x * x)
	}
	sx, sy := cw/float64(w), ch/float64(h)
	fx, fy := math.Max(sx, 1), math.Max(sy, 1)
	out := make([]float64, 3*w*h)
	for c := range 3 {
		for y := range h {
			cy := y0 + (float64(y)+0.5)*sy - 0.5
			for x := range w {
				cx := x0 + (float64(x)+0.5)*sx - 0.5
				var num, den float64
				for j := int(math.Ceil(cy - 3*fy)); j <= int(math.Floor(cy+3*fy)); j++ {
					for i := int(math.Ceil(cx - 3*fx)); i <= int(math.Floor(cx+3*fx)); i++ {
						k := kern((float64(i)-cx)/fx) * kern((float64(j)-cy)/fy)
						ci := min(max(i, 0), src.W-1)
						cj := min(max(j, 0), src.H-1)
						num += k * float64(src.Pix[(c*src.H+cj)*src.W+ci])
						den += k
					}
				}
				out[(c*h+y)*w+x] = math.Min(math.Max(num/den, 0), 1)
			}
		}
	}
	return out
}

func TestCropResize(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 13))
	src := RGB{W: 37, H: 29, Pix: make([]float32, 3*37*29)}
	for i := range src.Pix {
		src.Pix[i] = float32(0.05 + 0.9*r.Float64())
	}
	cases := []struct {
		name           string
		x0, y0, cw, ch float64
		w, h           int
	}{
		{"shrink", 0, 0, 37, 29, 13, 7},
		{"shrink crop", 3, 2, 30, 20, 15, 10},
		{"enlarge", 1, 1, 11, 9, 23, 19},
		{"mixed", 0, 4, 37, 13, 13, 17},
		{"identity", 0, 0, 37, 29, 37, 29},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := cropResize(src, c.x0, c.y0, c.cw, c.ch, c.w, c.h)
			if got.W != c.w || got.H != c.h || len(got.Pix) != 3*c.w*c.h {
				t.Fatalf("output %dx%d with %d values", got.W, got.H, len(got.Pix))
			}
			want := refLanczos(src, c.x0, c.y0, c.cw, c.ch, c.w, c.h)
			kerneltest.Check(t, c.name, rgbToF64(got), want, 1e-5)
		})
	}
	if e := kernels.RelErr(rgbToF64(cropResize(src, 0, 0, 37, 29, 37, 29)), rgbToF64(src)); e > 1e-6 {
		t.Errorf("identity resize changes the image by %.3g", e)
	}
	flat := RGB{W: 31, H: 17, Pix: make([]float32, 3*31*17)}
	for i := range flat.Pix {
		flat.Pix[i] = 0.375
	}
	for _, v := range cropResize(flat, 2, 1, 25, 13, 11, 23).Pix {
		if math.Abs(float64(v)-0.375) > 1e-6 {
			t.Fatalf("constant image resized to %v", v)
		}
	}
}
