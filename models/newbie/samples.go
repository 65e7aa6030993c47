package newbie

import (
	"fmt"
	"math"
	"strings"

	"github.com/newbie-train/newbie-train/data"
)

// Generated inputs for benchmarks, the device run and tests: captions in
// NewBie's XML format and images with structure at every scale (a smooth
// gradient, a few discs and stripes), both deterministic in their index.

// captionWords are the tags and words the corpus and SampleCaption draw
// from: danbooru-style tags as NewBie's XML captions hold them.
var captionWords = []string{
	"1girl", "1boy", "2girls", "solo", "long hair", "short hair", "twintails", "ponytail", "blue eyes", "red eyes",
	"green eyes", "blonde hair", "black hair", "silver hair", "pink hair", "smile", "open mouth", "blush",
	"looking at viewer", "upper body", "full body", "standing", "sitting", "school uniform", "serafuku", "dress",
	"hat", "ribbon", "hair ornament", "gloves", "thighhighs", "skirt", "jacket", "outdoors", "indoors", "sky",
	"cloud", "cherry blossoms", "night", "city", "simple background", "white background", "masterpiece",
	"best quality", "high resolution", "detailed", "anime style", "holding sword", "hands on hips", "wind",
}

// xmlTags are the elements of a NewBie XML caption.
var xmlTags = []string{"character_1", "character_2", "n", "gender", "appearance", "clothing", "expression", "action", "position", "general_tags", "style", "background"}

// SampleCaption is the i-th of a deterministic family of NewBie XML
// captions (one or two characters, a few tags each, general tags), for
// generated datasets and benchmarks.
func SampleCaption(i int) string {
	pick := func(k, n int) []string {
		out := make([]string, 0, n)
		for j := range n {
			out = append(out, captionWords[(i*7+k*13+j*31+j*j)%len(captionWords)])
		}
		return out
	}
	var b strings.Builder
	chars := 1 + i%2
	for c := range chars {
		tag := fmt.Sprintf("character_%d", c+1)
		fmt.Fprintf(&b, "<%s><n>girl_%d</n><gender>%s</gender><appearance>%s</appearance><expression>%s</expression></%s>",
			tag, (i+c)%17, []string{"1girl", "1boy"}[(i+c)%3/2], strings.Join(pick(c, 3+i%4), ", "), pick(c+5, 1)[0], tag)
	}
	fmt.Fprintf(&b, "<general_tags>%s</general_tags>", strings.Join(pick(9, 2+i%5), ", "))
	return b.String()
}

// SampleImage is the i-th of a deterministic family of w×h images, values
// in [−1, 1] as the VAE takes them: a colour gradient with a few discs and
// a band of stripes, placed by i.
func SampleImage(i, w, h int) data.RGB {
	img := data.RGB{W: w, H: h, Pix: make([]float32, 3*w*h)}
	plane := w * h
	cx := func(k int) float64 { return float64((i*37+k*53)%97) / 97 }
	for y := range h {
		fy := float64(y) / float64(h)
		for x := range w {
			fx := float64(x) / float64(w)
			for c := range 3 {
				v := 0.6*(fx*float64(c%2)+fy*float64((c+1)%2)) - 0.3
				for k := range 3 {
					dx, dy := fx-cx(k), fy-cx(k+3)
					if dx*dx+dy*dy < 0.01*float64(k+1) {
						v = 0.8*math.Cos(float64(k+c+i)) - 0.1
					}
				}
				if band := math.Abs(fy - cx(7)); band < 0.05 {
					v += 0.4 * math.Sin(fx*float64(40+i%11))
				}
				img.Pix[c*plane+y*w+x] = float32(max(-1, min(1, v)))
			}
		}
	}
	return img
}
