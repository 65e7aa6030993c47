package train

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
)

// writeLossCurve draws the per-step loss (grey) and its running mean over
// about 5% of the run (blue) as a PNG, written atomically.
func writeLossCurve(path string, losses []float64) error {
	const w, h, pad = 640, 320, 20
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	var finite []float64
	for _, v := range losses {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			finite = append(finite, v)
		}
	}
	if len(finite) > 0 {
		lo, hi := finite[0], finite[0]
		for _, v := range finite {
			lo, hi = min(lo, v), max(hi, v)
		}
		if hi == lo {
			hi = lo + 1
		}
		axis := color.RGBA{0, 0, 0, 255}
		for x := pad; x < w-pad; x++ {
			img.Set(x, h-pad, axis)
		}
		for y := pad; y < h-pad; y++ {
			img.Set(pad, y, axis)
		}
		point := func(i int, v float64) (int, int) {
			x := pad + int(float64(i)/float64(max(len(finite)-1, 1))*float64(w-2*pad-1))
			y := h - pad - 1 - int((v-lo)/(hi-lo)*float64(h-2*pad-2))
			return x, y
		}
		line(img, finite, point, color.RGBA{170, 170, 170, 255})
		win := max(len(finite)/20, 1)
		smooth := make([]float64, len(finite))
		sum := 0.0
		for i, v := range finite {
			sum += v
			if i >= win {
				sum -= finite[i-win]
			}
			smooth[i] = sum / float64(min(i+1, win))
		}
		line(img, smooth, point, color.RGBA{30, 80, 200, 255})
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".loss-*.png")
	if err != nil {
		return fmt.Errorf("loss curve: %w", err)
	}
	if err := png.Encode(tmp, img); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("loss curve: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("loss curve: %w", err)
	}
	return os.Rename(tmp.Name(), path)
}

// line joins consecutive points with straight segments.
func line(img *image.RGBA, vs []float64, point func(int, float64) (int, int), c color.RGBA) {
	px, py := point(0, vs[0])
	for i := 1; i < len(vs); i++ {
		x, y := point(i, vs[i])
		steps := max(abs(x-px), abs(y-py), 1)
		for s := 0; s <= steps; s++ {
			img.Set(px+(x-px)*s/steps, py+(y-py)*s/steps, c)
		}
		px, py = x, y
	}
	if len(vs) == 1 {
		img.Set(px, py, c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
