package train

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"github.com/newbie-train/newbie-train/internal/atomicfile"
)

// Loss-curve layout: the plot area sits inside margins that hold the tick
// labels (left, bottom), the title (top) and the axis names.
const (
	plotW, plotH                              = 720, 400
	marginL, marginR, marginTop, marginBottom = 64, 16, 28, 44
)

var (
	plotAxis   = color.RGBA{0, 0, 0, 255}
	plotGrid   = color.RGBA{228, 228, 228, 255}
	plotRaw    = color.RGBA{170, 170, 170, 255}
	plotMean   = color.RGBA{30, 80, 200, 255}
	plotLabel  = color.RGBA{40, 40, 40, 255}
	plotFace   = basicfont.Face7x13
	plotCharW  = 7
	plotAscent = 10
)

// writeLossCurve draws the per-step loss (grey) and its running mean over
// about 5% of the run (blue) as a PNG with axes, tick marks and values
// (step along x, loss along y), written atomically. Non-finite losses are
// left out of the lines (and counted in the title).
func writeLossCurve(path string, losses []float64) error {
	img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	var steps []int
	var finite []float64
	for i, v := range losses {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			steps = append(steps, i+1)
			finite = append(finite, v)
		}
	}
	title := fmt.Sprintf("training loss, %d steps", len(losses))
	if n := len(losses) - len(finite); n > 0 {
		title += fmt.Sprintf(" (%d non-finite left out)", n)
	}
	win := max(len(finite)/20, 1)
	if win > 1 {
		title += fmt.Sprintf("; blue: mean of %d steps", win)
	}
	drawText(img, marginL, marginTop-10, title, plotLabel)
	x0, x1, y0, y1 := marginL, plotW-marginR, marginTop, plotH-marginBottom // plot area
	if len(finite) > 0 {
		lo, hi := finite[0], finite[0]
		for _, v := range finite {
			lo, hi = min(lo, v), max(hi, v)
		}
		if hi == lo {
			lo, hi = lo-0.5, hi+0.5
		}
		yTicks := niceTicks(lo, hi, 6)
		lo, hi = min(lo, yTicks[0]), max(hi, yTicks[len(yTicks)-1])
		first, last := 1, max(len(losses), 2)
		xTicks := niceTicks(float64(first), float64(last), 8)
		px := func(step float64) int {
			return x0 + int(math.Round((step-float64(first))/float64(last-first)*float64(x1-x0)))
		}
		py := func(v float64) int { return y1 - int(math.Round((v-lo)/(hi-lo)*float64(y1-y0))) }
		for _, t := range yTicks {
			y := py(t)
			hline(img, x0, x1, y, plotGrid)
			hline(img, x0-4, x0, y, plotAxis)
			label := formatTick(t, yTicks)
			drawText(img, x0-6-plotCharW*len(label), y+plotAscent/2, label, plotLabel)
		}
		for _, t := range xTicks {
			if t < float64(first) || t > float64(last) {
				continue
			}
			x := px(t)
			vline(img, x, y0, y1, plotGrid)
			vline(img, x, y1, y1+4, plotAxis)
			label := strconv.FormatFloat(t, 'f', -1, 64)
			drawText(img, x-plotCharW*len(label)/2, y1+6+plotAscent, label, plotLabel)
		}
		point := func(i int, v float64) (int, int) { return px(float64(steps[i])), py(v) }
		line(img, finite, point, plotRaw)
		smooth := make([]float64, len(finite))
		sum := 0.0
		for i, v := range finite {
			sum += v
			if i >= win {
				sum -= finite[i-win]
			}
			smooth[i] = sum / float64(min(i+1, win))
		}
		line(img, smooth, point, plotMean)
	} else {
		drawText(img, x0+20, (y0+y1)/2, "no finite loss yet", plotLabel)
	}
	hline(img, x0, x1, y1, plotAxis)
	vline(img, x0, y0, y1, plotAxis)
	drawText(img, (x0+x1)/2-2*plotCharW, plotH-6, "step", plotLabel)
	drawText(img, 4, marginTop-10, "loss", plotLabel)
	return atomicfile.WriteFile(path, func(w io.Writer) error { return png.Encode(w, img) })
}

// niceTicks returns about n round tick values (1, 2 or 5 times a power of
// ten apart) covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	span := hi - lo
	raw := span / float64(max(n-1, 1))
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	start := math.Floor(lo/step) * step
	var out []float64
	for v := start; v <= hi+step*1e-9; v += step {
		out = append(out, math.Round(v/step)*step)
	}
	if len(out) == 0 || out[len(out)-1] < hi {
		out = append(out, math.Round((start+float64(len(out))*step)/step)*step)
	}
	return out
}

// formatTick prints a tick with as many decimals as its spacing needs.
func formatTick(v float64, ticks []float64) string {
	dec := 0
	if len(ticks) > 1 {
		step := ticks[1] - ticks[0]
		dec = max(0, int(math.Ceil(-math.Log10(step)-1e-9)))
	}
	return strconv.FormatFloat(v, 'f', dec, 64)
}

// drawText writes s with its baseline at y.
func drawText(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: plotFace, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
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
