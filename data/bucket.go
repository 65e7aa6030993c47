package data

import (
	"fmt"
	"math"
	"sort"
)

// Bucket is a training resolution in pixels; both sides are multiples of the
// bucket step, so the latent (/8) splits into whole 2×2 patches.
type Bucket struct {
	W, H int
}

// String is "WxH", as the summary table and cache keys print a bucket.
func (b Bucket) String() string { return fmt.Sprintf("%dx%d", b.W, b.H) }

// Buckets lists the resolutions for o: for every width from MinSide to
// MaxSide in steps, the tallest height (a multiple of the step, within the
// side limits) whose area stays at or below TargetArea, plus the largest
// square. Sorted by aspect ratio, widest last.
func Buckets(o BucketOptions) []Bucket {
	seen := map[Bucket]bool{}
	var out []Bucket
	add := func(b Bucket) {
		if b.W < o.MinSide || b.H < o.MinSide || b.W > o.MaxSide || b.H > o.MaxSide || seen[b] {
			return
		}
		seen[b] = true
		out = append(out, b)
	}
	for w := o.MinSide / o.Step * o.Step; w <= o.MaxSide; w += o.Step {
		if w < o.MinSide {
			continue
		}
		// Every width is listed, from the tallest portrait to the widest
		// landscape, so no transposed copies are needed (a transposed
		// bucket would not be the tallest for its new width).
		add(Bucket{w, min(o.TargetArea/w/o.Step*o.Step, o.MaxSide)})
	}
	s := int(math.Sqrt(float64(o.TargetArea))) / o.Step * o.Step
	add(Bucket{s, s})
	sort.Slice(out, func(i, j int) bool {
		ai := float64(out[i].W) / float64(out[i].H)
		aj := float64(out[j].W) / float64(out[j].H)
		if ai != aj {
			return ai < aj
		}
		return out[i].W*out[i].H > out[j].W*out[j].H
	})
	return out
}

// assignBucket picks the bucket whose aspect ratio is nearest the image's
// (in log space, so 2:1 and 1:2 are equally far from 1:1), preferring the
// larger area on ties. With noUpscale, an image smaller than that bucket
// gets the same shape scaled down to fit inside it, sides floored to the
// step.
func assignBucket(buckets []Bucket, w, h int, o BucketOptions) (Bucket, error) {
	if len(buckets) == 0 {
		return Bucket{}, fmt.Errorf("no buckets for the bucket options")
	}
	ar := math.Log(float64(w) / float64(h))
	best, bestD := Bucket{}, math.Inf(1)
	for _, b := range buckets {
		d := math.Abs(math.Log(float64(b.W)/float64(b.H)) - ar)
		if d < bestD-1e-12 || (math.Abs(d-bestD) <= 1e-12 && b.W*b.H > best.W*best.H) {
			best, bestD = b, d
		}
	}
	if o.NoUpscale && (w < best.W || h < best.H) {
		f := math.Min(float64(w)/float64(best.W), float64(h)/float64(best.H))
		b := Bucket{int(float64(best.W)*f) / o.Step * o.Step, int(float64(best.H)*f) / o.Step * o.Step}
		if b.W < o.Step || b.H < o.Step {
			return Bucket{}, fmt.Errorf("image %dx%d is smaller than one %d-px bucket step", w, h, o.Step)
		}
		return b, nil
	}
	return best, nil
}

// CropWindow is the region of the (oriented) source image that is resized to
// the bucket: the largest window of the bucket's aspect ratio inside the
// image, centred or placed at a random position along the axis with slack.
type CropWindow struct {
	X, Y, W, H float64
}

// String gives the window to 3 decimals: part of the latent cache key.
func (c CropWindow) String() string {
	return fmt.Sprintf("%.3f,%.3f,%.3f,%.3f", c.X, c.Y, c.W, c.H)
}

// cropWindow computes the crop for variant v of an image. Variant draws are
// keyed by seed and the image's content hash, so they stay the same when
// files are added or renamed.
func cropWindow(w, h int, b Bucket, random bool, seed uint64, key string, v int) CropWindow {
	ba := float64(b.W) / float64(b.H)
	cw, ch := float64(w), float64(h)
	if cw/ch > ba {
		cw = ch * ba
	} else {
		ch = cw / ba
	}
	fx, fy := 0.5, 0.5
	if random {
		r := newRNG(seed, "crop", key, fmt.Sprint(v))
		fx, fy = r.float64(), r.float64()
	}
	// Whole-pixel offsets keep cache keys short and exact.
	return CropWindow{X: math.Floor((float64(w) - cw) * fx), Y: math.Floor((float64(h) - ch) * fy), W: cw, H: ch}
}
