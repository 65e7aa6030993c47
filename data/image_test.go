package data

import (
	"image"
	"image/color"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// Reference geometric ops on planar float64 images, written independently
// of toRGB's index mapping: the EXIF table defines 5 and 7 as a mirror
// followed by a rotation, which is how they are built here.
type refImg struct {
	w, h int
	pix  []float64 // [3][h][w]
}

func (r refImg) at(c, x, y int) float64 { return r.pix[(c*r.h+y)*r.w+x] }

func flipH(r refImg) refImg {
	o := refImg{r.w, r.h, make([]float64, len(r.pix))}
	for c := range 3 {
		for y := 0; y < r.h; y++ {
			for x := 0; x < r.w; x++ {
				o.pix[(c*o.h+y)*o.w+x] = r.at(c, r.w-1-x, y)
			}
		}
	}
	return o
}

// rotCW turns the picture 90° clockwise: the left column becomes the top row.
func rotCW(r refImg) refImg {
	o := refImg{r.h, r.w, make([]float64, len(r.pix))}
	for c := range 3 {
		for y := 0; y < o.h; y++ {
			for x := 0; x < o.w; x++ {
				o.pix[(c*o.h+y)*o.w+x] = r.at(c, y, r.h-1-x)
			}
		}
	}
	return o
}

func orientRef(r refImg, o int) refImg {
	times := func(r refImg, n int) refImg {
		for range n {
			r = rotCW(r)
		}
		return r
	}
	switch o {
	case 2:
		return flipH(r)
	case 3:
		return times(r, 2)
	case 4:
		return flipH(times(r, 2))
	case 5:
		return times(flipH(r), 3)
	case 6:
		return rotCW(r)
	case 7:
		return rotCW(flipH(r))
	case 8:
		return times(r, 3)
	}
	return r
}

func TestJPEGOrientation(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	src := smoothImage(r, 48, 32)
	for o := 1; o <= 8; o++ {
		for _, big := range []bool{false, true} {
			b := jpegBytes(t, src, o, big)
			if got := jpegOrientation(b); got != o {
				t.Fatalf("orientation %d (big-endian %v) read as %d", o, big, got)
			}
			path := filepath.Join(dir, "o.jpg")
			writeFile(t, path, b)
			img, err := decodeImage(JPEG, b)
			if err != nil {
				t.Fatal(err)
			}
			plain := toRGB(img, 1, 1)
			want := orientRef(refImg{plain.W, plain.H, rgbToF64(plain)}, o)
			got, err := LoadRGB(&Item{Path: path, Format: JPEG, Orientation: o}, Options{Alpha: White})
			if err != nil {
				t.Fatal(err)
			}
			if got.W != want.w || got.H != want.h {
				t.Fatalf("orientation %d: %dx%d, want %dx%d", o, got.W, got.H, want.w, want.h)
			}
			kerneltest.Check(t, "oriented pixels", rgbToF64(got), want.pix, 0)
		}
	}
	// And against the picture that was encoded (JPEG is lossy): an image
	// stored sideways with orientation 6 shows upright.
	stored := orientRef(refImg{48, 32, rgbToF64(toRGB(src, 1, 1))}, 8) // sideways on disk
	var sideways = image.NewNRGBA(image.Rect(0, 0, stored.w, stored.h))
	for y := 0; y < stored.h; y++ {
		for x := 0; x < stored.w; x++ {
			sideways.SetNRGBA(x, y, color.NRGBA{uint8(255*stored.at(0, x, y) + 0.5), uint8(255*stored.at(1, x, y) + 0.5), uint8(255*stored.at(2, x, y) + 0.5), 255})
		}
	}
	path := filepath.Join(dir, "side.jpg")
	writeFile(t, path, jpegBytes(t, sideways, 6, false))
	got, err := LoadRGB(&Item{Path: path, Format: JPEG, Orientation: 6}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Go's encoder subsamples chroma 2×2, so even an unrotated round trip of
	// this picture is ~3% off; the wrong rotation is far further.
	upright := rgbToF64(toRGB(src, 1, 1))
	kerneltest.Check(t, "upright after EXIF 6", rgbToF64(got), upright, 0.05)
	wrong, err := LoadRGB(&Item{Path: path, Format: JPEG, Orientation: 8}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e := kernels.RelErr(rgbToF64(wrong), upright); e < 0.15 {
		t.Errorf("rotating the wrong way is only %.3g off: the check cannot tell orientations apart", e)
	}
}

func TestWebPLosslessDecode(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(3, 4))
	src := twoToneImage(r, 37, 21)
	path := filepath.Join(dir, "a.webp")
	writeFile(t, path, webpLossless(t, src))
	got, err := LoadRGB(&Item{Path: path, Format: WebP, Orientation: 1}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := toRGB(src, 1, 1)
	if got.W != 37 || got.H != 21 {
		t.Fatalf("decoded %dx%d", got.W, got.H)
	}
	kerneltest.Check(t, "webp pixels", rgbToF64(got), rgbToF64(want), 0)
}

// TestColourConversions checks toRGB for every colour model a decoder can
// hand back against colours computed here in float64 from the model's own
// definition.
func TestColourConversions(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const w, h = 7, 5
	type tc struct {
		name string
		img  image.Image
		bg   float32
		want func(x, y int) [3]float64
	}
	cmyk := image.NewCMYK(image.Rect(0, 0, w, h))
	deep := image.NewNRGBA64(image.Rect(0, 0, w, h))
	alpha := image.NewNRGBA(image.Rect(0, 0, w, h))
	gray16 := image.NewGray16(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			cmyk.SetCMYK(x, y, color.CMYK{uint8(r.IntN(256)), uint8(r.IntN(256)), uint8(r.IntN(256)), uint8(r.IntN(200))})
			deep.SetNRGBA64(x, y, color.NRGBA64{uint16(r.IntN(65536)), uint16(r.IntN(65536)), uint16(r.IntN(65536)), 65535})
			alpha.SetNRGBA(x, y, color.NRGBA{uint8(r.IntN(256)), uint8(r.IntN(256)), uint8(r.IntN(256)), uint8(1 + r.IntN(255))})
			gray16.SetGray16(x, y, color.Gray16{uint16(1 + r.IntN(65535))})
		}
	}
	cases := []tc{
		{"cmyk", cmyk, 1, func(x, y int) [3]float64 {
			c := cmyk.CMYKAt(x, y)
			k := 1 - float64(c.K)/255
			return [3]float64{(1 - float64(c.C)/255) * k, (1 - float64(c.M)/255) * k, (1 - float64(c.Y)/255) * k}
		}},
		{"16-bit", deep, 1, func(x, y int) [3]float64 {
			c := deep.NRGBA64At(x, y)
			return [3]float64{float64(c.R) / 65535, float64(c.G) / 65535, float64(c.B) / 65535}
		}},
		{"gray16", gray16, 1, func(x, y int) [3]float64 {
			v := float64(gray16.Gray16At(x, y).Y) / 65535
			return [3]float64{v, v, v}
		}},
		{"alpha over white", alpha, 1, func(x, y int) [3]float64 {
			c := alpha.NRGBAAt(x, y)
			a := float64(c.A) / 255
			return [3]float64{float64(c.R)/255*a + 1 - a, float64(c.G)/255*a + 1 - a, float64(c.B)/255*a + 1 - a}
		}},
		{"alpha over black", alpha, 0, func(x, y int) [3]float64 {
			c := alpha.NRGBAAt(x, y)
			a := float64(c.A) / 255
			return [3]float64{float64(c.R) / 255 * a, float64(c.G) / 255 * a, float64(c.B) / 255 * a}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := toRGB(c.img, 1, c.bg)
			want := make([]float64, 3*w*h)
			for y := 0; y < h; y++ {
				for x := 0; x < w; x++ {
					v := c.want(x, y)
					for ch := range 3 {
						want[(ch*h+y)*w+x] = v[ch]
					}
				}
			}
			// CMYK goes through Go's 8-bit conversion: allow its rounding.
			kerneltest.Check(t, c.name, rgbToF64(got), want, 5e-3)
		})
	}
}

func TestMalformedEXIF(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 15))
	good := jpegBytes(t, smoothImage(r, 16, 16), 6, false)
	// The APP1 segment starts at byte 2; its TIFF payload at 2+4+6.
	tiff := 12
	cases := []struct {
		name string
		edit func(b []byte) []byte
		want int
	}{
		{"intact", func(b []byte) []byte { return b }, 6},
		{"bad byte order", func(b []byte) []byte { b[tiff] = 'X'; return b }, 1},
		{"bad magic", func(b []byte) []byte { b[tiff+2] = 0; return b }, 1},
		{"IFD past end", func(b []byte) []byte { b[tiff+4] = 0xff; b[tiff+5] = 0xff; return b }, 1},
		{"orientation out of range", func(b []byte) []byte { b[tiff+10+12+8] = 9; return b }, 1},
		{"segment length past end", func(b []byte) []byte { b[4], b[5] = 0xff, 0xff; return b }, 1},
		{"cut inside EXIF", func(b []byte) []byte { return b[:20] }, 1},
		{"not a JPEG", func(b []byte) []byte { return []byte("GIF89a") }, 1},
	}
	for _, c := range cases {
		b := c.edit(append([]byte(nil), good...))
		if got := jpegOrientation(b); got != c.want {
			t.Errorf("%s: orientation %d, want %d", c.name, got, c.want)
		}
	}
}

func TestLooksComplete(t *testing.T) {
	r := rand.New(rand.NewPCG(16, 17))
	img := smoothImage(r, 20, 20)
	files := map[Format][]byte{PNG: pngBytes(t, img), JPEG: jpegBytes(t, img, 0, false), WebP: webpLossless(t, twoToneImage(r, 20, 20))}
	for f, b := range files {
		if !looksComplete(f, b) {
			t.Errorf("%s: complete file reported truncated", f)
		}
		if looksComplete(f, b[:len(b)*3/4]) {
			t.Errorf("%s: truncated file reported complete", f)
		}
	}
}
