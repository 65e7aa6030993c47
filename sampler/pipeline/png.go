package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"

	"github.com/newbie-train/newbie-train/data"
)

// ParametersKey is the PNG text keyword A1111, Forge and the image sites
// read generation settings from.
const ParametersKey = "parameters"

// pngSignature opens every PNG file.
var pngSignature = []byte{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}

// EncodePNG encodes a [3, H, W] image in [−1, 1] as an 8-bit RGB PNG
// ((v+1)/2 clamped to [0, 1], ×255 rounded, as diffusers' NewbiePipeline
// does) with params in a text chunk keyed "parameters" right after the
// header: tEXt when params is Latin-1 (the PNG text encoding), else iTXt
// with UTF-8, as PIL's PngInfo.add_text writes it for A1111.
func EncodePNG(img data.RGB, params string) ([]byte, error) {
	if img.W <= 0 || img.H <= 0 || len(img.Pix) != 3*img.W*img.H {
		return nil, fmt.Errorf("pipeline: image %dx%d with %d values", img.W, img.H, len(img.Pix))
	}
	out := image.NewNRGBA(image.Rect(0, 0, img.W, img.H))
	plane := img.W * img.H
	to8 := func(v float32) uint8 {
		f := (float64(v) + 1) / 2
		if !(f > 0) { // NaN too
			return 0
		}
		return uint8(math.Round(min(f, 1) * 255))
	}
	for y := range img.H {
		for x := range img.W {
			i := y*img.W + x
			out.SetNRGBA(x, y, color.NRGBA{to8(img.Pix[i]), to8(img.Pix[plane+i]), to8(img.Pix[2*plane+i]), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, out); err != nil {
		return nil, fmt.Errorf("pipeline: encoding PNG: %w", err)
	}
	b := buf.Bytes()
	const afterIHDR = 8 + 4 + 4 + 13 + 4 // signature, then IHDR's length, type, data, CRC
	if len(b) < afterIHDR || string(b[12:16]) != "IHDR" {
		return nil, errors.New("pipeline: the PNG encoder wrote no header first")
	}
	chunk := textChunk(ParametersKey, params)
	res := make([]byte, 0, len(b)+len(chunk))
	res = append(res, b[:afterIHDR]...)
	res = append(res, chunk...)
	return append(res, b[afterIHDR:]...), nil
}

// textChunk is a whole tEXt (Latin-1 text) or iTXt (UTF-8) chunk: length,
// type, data, and the CRC-32 of type and data.
func textChunk(key, text string) []byte {
	typ := "tEXt"
	data := []byte(key)
	data = append(data, 0)
	if latin1, ok := toLatin1(text); ok {
		data = append(data, latin1...)
	} else {
		typ = "iTXt"
		// no compression, method 0, empty language tag and translated keyword
		data = append(data, 0, 0, 0, 0)
		data = append(data, text...)
	}
	out := make([]byte, 4, 12+len(data))
	binary.BigEndian.PutUint32(out, uint32(len(data)))
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[4:]))
}

// toLatin1 encodes s in ISO 8859-1 when every rune fits.
func toLatin1(s string) ([]byte, bool) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff {
			return nil, false
		}
		out = append(out, byte(r))
	}
	return out, true
}

// TextChunks reads the tEXt and iTXt (uncompressed) chunks of a PNG file,
// checking every chunk's CRC on the way.
func TextChunks(b []byte) (map[string]string, error) {
	if !bytes.HasPrefix(b, pngSignature) {
		return nil, errors.New("pipeline: not a PNG file")
	}
	out := map[string]string{}
	for p := len(pngSignature); p < len(b); {
		if p+12 > len(b) {
			return nil, fmt.Errorf("pipeline: PNG chunk at byte %d is cut short", p)
		}
		n := int(binary.BigEndian.Uint32(b[p:]))
		if n < 0 || p+12+n > len(b) {
			return nil, fmt.Errorf("pipeline: PNG chunk at byte %d claims %d bytes", p, n)
		}
		typ, body := string(b[p+4:p+8]), b[p+8:p+8+n]
		if got, want := crc32.ChecksumIEEE(b[p+4:p+8+n]), binary.BigEndian.Uint32(b[p+8+n:]); got != want {
			return nil, fmt.Errorf("pipeline: PNG chunk %s at byte %d has CRC %08x, its data gives %08x", typ, p, want, got)
		}
		key, rest, found := bytes.Cut(body, []byte{0})
		switch {
		case typ == "tEXt" && found:
			r := make([]rune, len(rest))
			for i, c := range rest {
				r[i] = rune(c)
			}
			out[string(key)] = string(r)
		case typ == "iTXt" && found && len(rest) >= 2 && rest[0] == 0:
			// compression flag, method, language tag\0, translated keyword\0, text
			parts := bytes.SplitN(rest[2:], []byte{0}, 3)
			if len(parts) == 3 {
				out[string(key)] = string(parts[2])
			}
		}
		if typ == "IEND" {
			break
		}
		p += 12 + n
	}
	return out, nil
}

// WritePNG encodes img with params (EncodePNG) and writes it to path
// through a temporary file in the same folder, renamed into place when
// whole, so an interrupted run never leaves half a PNG.
func WritePNG(path string, img data.RGB, params string) error {
	b, err := EncodePNG(img, params)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	_, werr := tmp.Write(b)
	if err := errors.Join(werr, tmp.Chmod(0o644), tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pipeline: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pipeline: %w", err)
	}
	return nil
}

// Grid tiles images into one, in rows of cols (0: as square as the count
// allows), each cell the size of the largest image, gaps white.
func Grid(imgs []data.RGB, cols int) data.RGB {
	if len(imgs) == 0 {
		return data.RGB{}
	}
	if cols <= 0 {
		cols = int(math.Ceil(math.Sqrt(float64(len(imgs)))))
	}
	rows := (len(imgs) + cols - 1) / cols
	cw, ch := 0, 0
	for _, im := range imgs {
		cw, ch = max(cw, im.W), max(ch, im.H)
	}
	g := data.RGB{W: cols * cw, H: rows * ch}
	g.Pix = make([]float32, 3*g.W*g.H)
	for i := range g.Pix {
		g.Pix[i] = 1
	}
	for n, im := range imgs {
		x0, y0 := (n%cols)*cw, (n/cols)*ch
		for c := range 3 {
			for y := range im.H {
				src := im.Pix[c*im.W*im.H+y*im.W:][:im.W]
				copy(g.Pix[c*g.W*g.H+(y0+y)*g.W+x0:], src)
			}
		}
	}
	return g
}
