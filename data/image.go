package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"

	"golang.org/x/image/webp"
)

// Format is an image container this package reads.
type Format string

// Supported image formats.
const (
	PNG  Format = "PNG"
	JPEG Format = "JPEG"
	WebP Format = "WebP"
)

// imageExts maps the file extensions Scan picks up to their format.
var imageExts = map[string]Format{".png": PNG, ".jpg": JPEG, ".jpeg": JPEG, ".webp": WebP}

// sniff identifies the container from its magic bytes; the extension is not
// trusted because renamed files are common in scraped datasets.
func sniff(b []byte) (Format, bool) {
	switch {
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return PNG, true
	case bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}):
		return JPEG, true
	case len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		return WebP, true
	}
	return "", false
}

// decodeConfig reads only the header: dimensions and colour model.
func decodeConfig(f Format, b []byte) (image.Config, error) {
	r := bytes.NewReader(b)
	switch f {
	case PNG:
		return png.DecodeConfig(r)
	case JPEG:
		return jpeg.DecodeConfig(r)
	case WebP:
		return webp.DecodeConfig(r)
	}
	return image.Config{}, fmt.Errorf("unsupported format %q", f)
}

// decodeImage decodes the pixels.
func decodeImage(f Format, b []byte) (image.Image, error) {
	r := bytes.NewReader(b)
	switch f {
	case PNG:
		return png.Decode(r)
	case JPEG:
		return jpeg.Decode(r)
	case WebP:
		return webp.Decode(r)
	}
	return nil, fmt.Errorf("unsupported format %q", f)
}

// looksComplete is the cheap end-of-file check used when the full decode is
// skipped: a JPEG ends with its EOI marker (some cameras append a few bytes
// of padding, so the last 32 bytes are searched), a PNG's last chunk is
// IEND, and a WebP's RIFF size matches the file.
func looksComplete(f Format, b []byte) bool {
	switch f {
	case JPEG:
		tail := b[max(0, len(b)-32):]
		return bytes.Contains(tail, []byte{0xff, 0xd9})
	case PNG:
		return len(b) >= 12 && string(b[len(b)-8:len(b)-4]) == "IEND"
	case WebP:
		return len(b) >= 8 && int(binary.LittleEndian.Uint32(b[4:8]))+8 <= len(b)
	}
	return false
}

// jpegOrientation returns the EXIF orientation (1–8) of a JPEG, or 1 when it
// has none. Only the APP1 "Exif" segment's first IFD is read: that is where
// cameras and phones put tag 0x0112. Malformed EXIF is ignored (orientation
// 1) rather than rejected, since the pixels themselves are fine.
func jpegOrientation(b []byte) int {
	if len(b) < 4 || b[0] != 0xff || b[1] != 0xd8 {
		return 1
	}
	p := 2
	for p+4 <= len(b) {
		if b[p] != 0xff {
			return 1
		}
		marker := b[p+1]
		if marker == 0xff { // fill byte
			p++
			continue
		}
		if marker == 0xda || marker == 0xd9 { // start of scan / end: no more headers
			return 1
		}
		if marker >= 0xd0 && marker <= 0xd7 || marker == 0x01 {
			p += 2
			continue
		}
		n := int(binary.BigEndian.Uint16(b[p+2:]))
		if n < 2 || p+2+n > len(b) {
			return 1
		}
		seg := b[p+4 : p+2+n]
		if marker == 0xe1 && bytes.HasPrefix(seg, []byte("Exif\x00\x00")) {
			if o := tiffOrientation(seg[6:]); o != 0 {
				return o
			}
		}
		p += 2 + n
	}
	return 1
}

// tiffOrientation reads tag 0x0112 from IFD0 of a TIFF structure (the EXIF
// payload): byte order mark, 42, offset of IFD0, then 12-byte entries.
func tiffOrientation(t []byte) int {
	if len(t) < 8 {
		return 0
	}
	var bo binary.ByteOrder
	switch string(t[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 0
	}
	if bo.Uint16(t[2:]) != 42 {
		return 0
	}
	ifd := int(bo.Uint32(t[4:]))
	if ifd < 8 || ifd+2 > len(t) {
		return 0
	}
	n := int(bo.Uint16(t[ifd:]))
	for i := 0; i < n; i++ {
		e := ifd + 2 + 12*i
		if e+12 > len(t) {
			return 0
		}
		if bo.Uint16(t[e:]) != 0x0112 {
			continue
		}
		typ, count := bo.Uint16(t[e+2:]), bo.Uint32(t[e+4:])
		if typ != 3 || count != 1 { // SHORT, one value, stored in place
			return 0
		}
		if o := int(bo.Uint16(t[e+8:])); o >= 1 && o <= 8 {
			return o
		}
		return 0
	}
	return 0
}

// orientedSize is the displayed size: orientations 5–8 swap the sides.
func orientedSize(w, h, orientation int) (int, int) {
	if orientation >= 5 {
		return h, w
	}
	return w, h
}

// RGB is a planar float32 image: Pix holds 3 planes of H×W values (R, G, B),
// the [3,H,W] layout the VAE takes.
type RGB struct {
	Pix  []float32
	W, H int
}

// colourClass sums up what conversion rule a colour model needs.
type colourClass struct {
	cmyk, deep, alphaModel bool
}

func classify(m color.Model) colourClass {
	switch m {
	case color.CMYKModel:
		return colourClass{cmyk: true}
	case color.RGBA64Model, color.NRGBA64Model:
		return colourClass{deep: true, alphaModel: true}
	case color.Gray16Model:
		return colourClass{deep: true}
	case color.RGBAModel, color.NRGBAModel, color.AlphaModel, color.Alpha16Model:
		return colourClass{alphaModel: true}
	}
	if _, ok := m.(color.Palette); ok {
		return colourClass{alphaModel: true}
	}
	return colourClass{}
}

// hasTransparency reports whether any pixel is not fully opaque. Images
// whose model can carry alpha often do not use it (many PNGs are saved as
// RGBA), and only real transparency needs the alpha rule.
func hasTransparency(img image.Image) bool {
	if o, ok := img.(interface{ Opaque() bool }); ok {
		return !o.Opaque()
	}
	return false
}

// toRGB converts a decoded image to planar float RGB in [0, 1], applying
// the EXIF orientation and compositing transparent pixels over bg (0 or 1).
func toRGB(img image.Image, orientation int, bg float32) RGB {
	bnd := img.Bounds()
	sw, sh := bnd.Dx(), bnd.Dy()
	w, h := orientedSize(sw, sh, orientation)
	out := RGB{Pix: make([]float32, 3*w*h), W: w, H: h}
	plane := w * h
	// src maps a destination pixel to its source pixel (see the EXIF
	// specification's orientation table: 6 is "rotate 90° clockwise to
	// display", 8 counter-clockwise, 5 and 7 the two diagonal mirrors).
	src := func(x, y int) (int, int) {
		switch orientation {
		case 2:
			return sw - 1 - x, y
		case 3:
			return sw - 1 - x, sh - 1 - y
		case 4:
			return x, sh - 1 - y
		case 5:
			return y, x
		case 6:
			return y, sh - 1 - x
		case 7:
			return sw - 1 - y, sh - 1 - x
		case 8:
			return sw - 1 - y, x
		}
		return x, y
	}
	const inv8 = 1.0 / 255
	const inv16 = 1.0 / 65535
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			sx, sy := src(x, y)
			sx += bnd.Min.X
			sy += bnd.Min.Y
			var r, g, b float32
			switch im := img.(type) {
			case *image.YCbCr:
				yi, ci := im.YOffset(sx, sy), im.COffset(sx, sy)
				r8, g8, b8 := color.YCbCrToRGB(im.Y[yi], im.Cb[ci], im.Cr[ci])
				r, g, b = float32(r8)*inv8, float32(g8)*inv8, float32(b8)*inv8
			case *image.Gray:
				v := float32(im.Pix[im.PixOffset(sx, sy)]) * inv8
				r, g, b = v, v, v
			case *image.NRGBA:
				i := im.PixOffset(sx, sy)
				a := float32(im.Pix[i+3]) * inv8
				r = float32(im.Pix[i])*inv8*a + bg*(1-a)
				g = float32(im.Pix[i+1])*inv8*a + bg*(1-a)
				b = float32(im.Pix[i+2])*inv8*a + bg*(1-a)
			default:
				// Premultiplied 16-bit from any model (RGBA, 16-bit, CMYK,
				// paletted): colour + (1−α)·background.
				cr, cg, cb, ca := im.At(sx, sy).RGBA()
				a := float32(ca) * inv16
				r = float32(cr)*inv16 + bg*(1-a)
				g = float32(cg)*inv16 + bg*(1-a)
				b = float32(cb)*inv16 + bg*(1-a)
			}
			i := y*w + x
			out.Pix[i], out.Pix[plane+i], out.Pix[2*plane+i] = r, g, b
		}
	}
	return out
}
