package data

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"

	"github.com/newbie-train/newbie-train/internal/atomicfile"
)

// demoColours are the named colours the demo dataset draws with.
var demoColours = []struct {
	name string
	c    color.RGBA
}{
	{"red", color.RGBA{220, 40, 40, 255}},
	{"blue", color.RGBA{40, 80, 220, 255}},
	{"green", color.RGBA{40, 170, 70, 255}},
	{"yellow", color.RGBA{230, 200, 40, 255}},
	{"purple", color.RGBA{140, 60, 180, 255}},
	{"white", color.RGBA{245, 245, 245, 255}},
}

// WriteDemoDataset writes n small images (side×side PNGs of a figure on a
// coloured background) with NewBie XML captions into dir: the dataset of
// the demo, generated deterministically so the demo needs no download. A
// file that already exists with the same content is left alone; others are
// written atomically.
func WriteDemoDataset(dir string, n, side int) error {
	if err := os.MkdirAll(dir, atomicfile.DirMode); err != nil {
		return fmt.Errorf("demo dataset: %w", err)
	}
	// The folder is the demo's own: what a killed demo was writing goes.
	if _, _, err := atomicfile.RemoveStale(dir); err != nil {
		return fmt.Errorf("demo dataset: %w", err)
	}
	for i := range n {
		hair := demoColours[i%len(demoColours)]
		bg := demoColours[(i/len(demoColours)+i+2)%len(demoColours)]
		if bg.name == hair.name {
			bg = demoColours[(i+3)%len(demoColours)]
		}
		img := image.NewRGBA(image.Rect(0, 0, side, side))
		cx, cy := side/2+(i%5)-2, side/2+(i%3)-1
		for y := range side {
			for x := range side {
				c := bg.c
				dx, dy := x-cx, y-cy
				switch {
				case dx*dx+(dy+side/6)*(dy+side/6) < (side/5)*(side/5): // head
					c = color.RGBA{250, 220, 190, 255}
				case dy < -side/8 && dx*dx+(dy+side/5)*(dy+side/5) < (side/4)*(side/4): // hair
					c = hair.c
				case dy > 0 && dy < side/2 && abs(dx) < side/6+dy/3: // dress
					c = hair.c
				}
				img.SetRGBA(x, y, c)
			}
		}
		name := fmt.Sprintf("demo_%03d", i)
		caption := fmt.Sprintf("<character_1><n>demo_girl</n><gender>1girl</gender><appearance>%s hair, %s dress</appearance></character_1><general_tags>simple background, %s background, upper body</general_tags>",
			hair.name, hair.name, bg.name)
		if err := writeIfChanged(filepath.Join(dir, name+".txt"), []byte(caption)); err != nil {
			return err
		}
		var b bytes.Buffer
		if err := png.Encode(&b, img); err != nil {
			return fmt.Errorf("demo dataset %s: %w", name, err)
		}
		if err := writeIfChanged(filepath.Join(dir, name+".png"), b.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

// writeIfChanged writes b to path atomically unless the file already
// holds it: a rerun of the demo leaves its dataset untouched.
func writeIfChanged(path string, b []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return nil
	}
	if err := atomicfile.WriteBytes(path, b); err != nil {
		return fmt.Errorf("demo dataset: %w", err)
	}
	return nil
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
