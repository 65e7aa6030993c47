package data

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// smoothImage is a random smooth colour field (sums of a few random
// sinusoids per channel), so that JPEG compression is gentle and every pixel
// differs from its neighbours.
func smoothImage(r *rand.Rand, w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	var fx, fy, ph [3][2]float64
	for c := range 3 {
		for k := range 2 {
			fx[c][k] = (r.Float64() + 0.2) * 0.8 / float64(w)
			fy[c][k] = (r.Float64() + 0.2) * 0.8 / float64(h)
			ph[c][k] = r.Float64() * 6
		}
	}
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var px [3]uint8
			for c := range 3 {
				v := 0.5
				for k := range 2 {
					v += 0.2 * math.Sin(2*math.Pi*(fx[c][k]*float64(x)+fy[c][k]*float64(y))+ph[c][k])
				}
				px[c] = uint8(math.Round(255 * math.Min(math.Max(v, 0), 1)))
			}
			img.SetNRGBA(x, y, color.NRGBA{px[0], px[1], px[2], 255})
		}
	}
	return img
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func pngBytes(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// jpegBytes encodes img; with orientation > 0 an EXIF APP1 segment carrying
// the orientation tag is inserted after SOI, in big- or little-endian TIFF.
func jpegBytes(t testing.TB, img image.Image, orientation int, bigEndian bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if orientation == 0 {
		return b
	}
	var bo interface {
		binary.ByteOrder
		binary.AppendByteOrder
	} = binary.LittleEndian
	tiff := []byte("II")
	if bigEndian {
		bo, tiff = binary.BigEndian, []byte("MM")
	}
	tiff = bo.AppendUint16(tiff, 42)
	tiff = bo.AppendUint32(tiff, 8)
	tiff = bo.AppendUint16(tiff, 2) // two entries: an unrelated one first
	tiff = bo.AppendUint16(tiff, 0x010f)
	tiff = bo.AppendUint16(tiff, 2) // ASCII "Make", value elsewhere
	tiff = bo.AppendUint32(tiff, 4)
	tiff = bo.AppendUint32(tiff, 0)
	tiff = bo.AppendUint16(tiff, 0x0112)
	tiff = bo.AppendUint16(tiff, 3)
	tiff = bo.AppendUint32(tiff, 1)
	tiff = bo.AppendUint16(tiff, uint16(orientation))
	tiff = bo.AppendUint16(tiff, 0)
	tiff = bo.AppendUint32(tiff, 0)
	seg := append([]byte("Exif\x00\x00"), tiff...)
	app1 := []byte{0xff, 0xe1}
	app1 = binary.BigEndian.AppendUint16(app1, uint16(len(seg)+2))
	app1 = append(app1, seg...)
	out := append([]byte{}, b[:2]...)
	out = append(out, app1...)
	return append(out, b[2:]...)
}

// bitWriter packs bits least-significant first, as VP8L reads them.
type bitWriter struct {
	out  []byte
	acc  uint64
	bits uint
}

func (w *bitWriter) put(v uint64, n uint) {
	w.acc |= v << w.bits
	w.bits += n
	for w.bits >= 8 {
		w.out = append(w.out, byte(w.acc))
		w.acc >>= 8
		w.bits -= 8
	}
}

func (w *bitWriter) bytes() []byte {
	if w.bits > 0 {
		w.out = append(w.out, byte(w.acc))
	}
	return w.out
}

// webpLossless encodes img as a lossless WebP (VP8L, RFC 9649) written here
// from the format description, because Go has no WebP encoder. It supports
// images whose every channel takes at most two values: each channel then
// has a "simple" prefix code of one or two 1-bit symbols, no transforms, no
// colour cache, no backward references, so each pixel is ≤4 bits.
func webpLossless(t testing.TB, img *image.NRGBA) []byte {
	t.Helper()
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	var vals [4][]uint8 // distinct values per channel, ascending
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := img.NRGBAAt(x, y)
			for ch, v := range []uint8{c.G, c.R, c.B, c.A} {
				seen := false
				for _, u := range vals[ch] {
					seen = seen || u == v
				}
				if !seen {
					vals[ch] = append(vals[ch], v)
				}
			}
		}
	}
	for ch := range vals {
		if len(vals[ch]) > 2 {
			t.Fatalf("webpLossless: channel %d has %d values, at most 2 supported", ch, len(vals[ch]))
		}
		if len(vals[ch]) == 2 && vals[ch][0] > vals[ch][1] {
			vals[ch][0], vals[ch][1] = vals[ch][1], vals[ch][0]
		}
	}
	bw := &bitWriter{}
	bw.put(0x2f, 8)
	bw.put(uint64(w-1), 14)
	bw.put(uint64(h-1), 14)
	alphaUsed := uint64(0)
	if len(vals[3]) > 1 || vals[3][0] != 255 {
		alphaUsed = 1
	}
	bw.put(alphaUsed, 1)
	bw.put(0, 3) // version
	bw.put(0, 1) // no transform
	bw.put(0, 1) // no colour cache
	bw.put(0, 1) // no meta prefix codes
	simple := func(syms []uint8) {
		bw.put(1, 1) // simple code
		bw.put(uint64(len(syms)-1), 1)
		bw.put(1, 1) // 8-bit first symbol
		bw.put(uint64(syms[0]), 8)
		if len(syms) == 2 {
			bw.put(uint64(syms[1]), 8)
		}
	}
	for ch := range 4 { // green, red, blue, alpha
		simple(vals[ch])
	}
	simple([]uint8{0}) // distance code, unused
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := img.NRGBAAt(x, y)
			for ch, v := range []uint8{c.G, c.R, c.B, c.A} {
				if len(vals[ch]) == 2 { // canonical code: smaller symbol is 0
					if v == vals[ch][1] {
						bw.put(1, 1)
					} else {
						bw.put(0, 1)
					}
				}
			}
		}
	}
	payload := bw.bytes()
	out := []byte("RIFF")
	size := 4 + 8 + len(payload) + len(payload)%2
	out = binary.LittleEndian.AppendUint32(out, uint32(size))
	out = append(out, "WEBPVP8L"...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(payload)))
	out = append(out, payload...)
	if len(payload)%2 == 1 {
		out = append(out, 0)
	}
	return out
}

// twoToneImage has two values per channel, arranged so every orientation of
// the pattern is distinguishable.
func twoToneImage(r *rand.Rand, w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.NRGBA{40, 200, 10, 255}
			if r.IntN(2) == 0 {
				c.R = 230
			}
			if r.IntN(3) == 0 {
				c.G = 17
			}
			if (x+2*y)%5 == 0 {
				c.B = 250
			}
			img.SetNRGBA(x, y, c)
		}
	}
	return img
}

// testOptions are small settings so tests run on tiny images.
func testOptions(dir string) Options {
	return Options{
		Folders:  []Folder{{Path: dir}},
		MinSide:  16,
		Seed:     42,
		CacheDir: filepath.Join(dir, ".cache"),
		Buckets:  BucketOptions{TargetArea: 64 * 64, Step: 16, MinSide: 32, MaxSide: 128},
		Caption:  CaptionOptions{},
	}
}

func rgbToF64(img RGB) []float64 {
	out := make([]float64, len(img.Pix))
	for i, v := range img.Pix {
		out[i] = float64(v)
	}
	return out
}
