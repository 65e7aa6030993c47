package data

import "math"

// lanczosA is the Lanczos window's lobe count. Three lobes is the common
// choice for photographic resampling (PIL's LANCZOS, ImageMagick's default
// for downscaling): sharp, with ringing small enough to clamp away.
const lanczosA = 3

// resizeFilterID names the resampling for cache keys: a change to the filter
// must invalidate cached latents.
const resizeFilterID = "lanczos3-v1"

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	x *= math.Pi
	return math.Sin(x) / x
}

func lanczos(x float64) float64 {
	if x <= -lanczosA || x >= lanczosA {
		return 0
	}
	return sinc(x) * sinc(x/lanczosA)
}

// taps are the normalised filter weights of one output sample over the
// source samples first … first+len(w)−1, all inside the image: taps that
// fall outside are folded onto the edge sample (edge replication), so the
// inner loops need no bounds clamping.
type taps struct {
	first int
	w     []float32
}

// filterTaps computes the weights mapping the source span [off, off+span)
// (in source pixels, fractional) of an axis of n source samples onto out
// output samples. When shrinking, the kernel is widened by the scale so it
// also low-passes (anti-aliasing); when enlarging it is the plain
// interpolating kernel.
func filterTaps(off, span float64, out, n int) []taps {
	scale := span / float64(out)
	fs := math.Max(scale, 1)
	support := lanczosA * fs
	res := make([]taps, out)
	for i := range res {
		centre := off + (float64(i)+0.5)*scale - 0.5
		lo := int(math.Ceil(centre - support))
		hi := int(math.Floor(centre + support))
		first, last := clampIdx(lo, n), clampIdx(hi, n)
		ws := make([]float64, last-first+1)
		var sum float64
		for s := lo; s <= hi; s++ {
			v := lanczos((float64(s) - centre) / fs)
			ws[clampIdx(s, n)-first] += v
			sum += v
		}
		w := make([]float32, len(ws))
		for k, v := range ws {
			w[k] = float32(v / sum)
		}
		res[i] = taps{first: first, w: w}
	}
	return res
}

func clampIdx(i, n int) int {
	if i < 0 {
		return 0
	}
	if i >= n {
		return n - 1
	}
	return i
}

// cropResize resamples the window (x0, y0, cw, ch) of src (source pixels,
// fractional allowed) to w×h with a separable Lanczos-3 filter, edges
// replicated, results clamped to [0, 1] (Lanczos overshoots at sharp edges).
func cropResize(src RGB, x0, y0, cw, ch float64, w, h int) RGB {
	tx := filterTaps(x0, cw, w, src.W)
	ty := filterTaps(y0, ch, h, src.H)
	// Only the source rows some vertical tap reads are filtered
	// horizontally.
	rlo := ty[0].first
	last := ty[h-1]
	rhi := last.first + len(last.w) - 1
	rows := rhi - rlo + 1
	tmp := make([]float32, rows*w)
	acc := make([]float32, w)
	out := RGB{Pix: make([]float32, 3*w*h), W: w, H: h}
	for c := 0; c < 3; c++ {
		plane := src.Pix[c*src.W*src.H : (c+1)*src.W*src.H]
		for r := 0; r < rows; r++ {
			row := plane[(rlo+r)*src.W : (rlo+r+1)*src.W]
			dst := tmp[r*w : (r+1)*w]
			for x, t := range tx {
				seg := row[t.first : t.first+len(t.w)]
				var a float32
				for k, wt := range t.w {
					a += wt * seg[k]
				}
				dst[x] = a
			}
		}
		// Vertical pass as weighted sums of whole rows: contiguous reads.
		dst := out.Pix[c*w*h : (c+1)*w*h]
		for y, t := range ty {
			clear(acc)
			for k, wt := range t.w {
				src := tmp[(t.first+k-rlo)*w : (t.first+k-rlo+1)*w]
				for x, v := range src {
					acc[x] += wt * v
				}
			}
			row := dst[y*w : (y+1)*w]
			for x, v := range acc {
				row[x] = min(max(v, 0), 1)
			}
		}
	}
	return out
}
