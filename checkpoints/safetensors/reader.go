package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/newbie-train/newbie-train/kernels"
)

// MaxHeaderSize bounds the JSON header. The reference implementation uses
// 100 MB; a larger value in the first 8 bytes means the file is not
// safetensors (or is damaged), and refusing it early avoids a huge
// allocation on garbage.
const MaxHeaderSize = 100 << 20

// metadataKey is the reserved header entry holding free-form string metadata.
const metadataKey = "__metadata__"

// TensorInfo describes one tensor of a file.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
	// Begin and End are byte offsets into the data section (the bytes after
	// the header), as the header's data_offsets give them.
	Begin, End int64
}

// NumElements is the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int {
	n := 1
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

// File is an open safetensors file. Its tensors' bytes are slices of a
// read-only memory mapping: they must not be written to, and they are
// invalid after Close.
type File struct {
	path      string
	data      []byte // the whole file: a mapping, or a heap copy when mmap failed
	mapped    bool
	dataStart int64
	tensors   []TensorInfo
	index     map[string]int
	meta      map[string]string
}

// Open maps path and validates its header. Every problem is an error naming
// the file and what is wrong with it.
func Open(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("safetensors: %s is a directory, not a safetensors file", path)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("safetensors: %s: file is %d bytes, shorter than the 8-byte header length (truncated or not safetensors)", path, size)
	}
	f := &File{path: path}
	if size <= math.MaxInt {
		if b, err := mapFile(fh, size); err == nil {
			f.data, f.mapped = b, true
		}
	}
	if !f.mapped {
		// Some file systems (FUSE mounts, /proc-like files) refuse mmap;
		// reading costs memory but still works.
		b, err := io.ReadAll(fh)
		if err != nil {
			return nil, fmt.Errorf("safetensors: reading %s: %w", path, err)
		}
		f.data = b
	}
	if err := f.parse(); err != nil {
		f.Close()
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	return f, nil
}

// foreignFormat recognises files people commonly pass by mistake, so the
// error says what the file is instead of only that its header is wrong.
func foreignFormat(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return "a PNG image"
	case bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}):
		return "a JPEG image"
	case bytes.HasPrefix(b, []byte("RIFF")) && len(b) >= 12 && string(b[8:12]) == "WEBP":
		return "a WebP image"
	case bytes.HasPrefix(b, []byte("PK\x03\x04")):
		return "a zip archive (a PyTorch .pt/.ckpt checkpoint is one)"
	case len(b) > 0 && b[0] == 0x80:
		return "a Python pickle (a legacy PyTorch .ckpt/.bin checkpoint)"
	case bytes.HasPrefix(b, []byte("GGUF")):
		return "a GGUF file"
	}
	return ""
}

func (f *File) parse() error {
	b := f.data
	n := binary.LittleEndian.Uint64(b[:8])
	if n > MaxHeaderSize || n > uint64(len(b)-8) {
		if what := foreignFormat(b); what != "" {
			return fmt.Errorf("not a safetensors file: it is %s", what)
		}
		if n > uint64(len(b)-8) && n <= MaxHeaderSize {
			return fmt.Errorf("header length %d is longer than the %d bytes after it (file truncated or not safetensors)", n, len(b)-8)
		}
		return fmt.Errorf("not a safetensors file: header length field is %d (limit %d, file %d bytes)", n, MaxHeaderSize, len(b))
	}
	if n < 2 {
		return fmt.Errorf("header length %d is too short for a JSON object", n)
	}
	hdr := b[8 : 8+n]
	if hdr[0] != '{' {
		if what := foreignFormat(b); what != "" {
			return fmt.Errorf("not a safetensors file: it is %s", what)
		}
		return fmt.Errorf("header does not start with '{' (byte 0x%02x): not a safetensors file", hdr[0])
	}
	f.dataStart = int64(8 + n)
	if err := f.parseHeader(hdr); err != nil {
		return err
	}
	return f.checkLayout(int64(len(b)) - f.dataStart)
}

// rawEntry is one tensor's header entry.
type rawEntry struct {
	DType       string  `json:"dtype"`
	Shape       []int   `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// parseHeader walks the JSON object token by token so the tensors keep the
// order the file lists them in (a map would lose it) and duplicate names are
// caught rather than silently overwritten.
func (f *File) parseHeader(hdr []byte) error {
	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("header is not valid JSON: %w", err)
	}
	f.index = map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("header is not valid JSON: %w", err)
		}
		name, ok := tok.(string)
		if !ok {
			return fmt.Errorf("header is not valid JSON: key %v is not a string", tok)
		}
		if name == metadataKey {
			if f.meta != nil {
				return fmt.Errorf("header has %s twice", metadataKey)
			}
			var m map[string]string
			if err := dec.Decode(&m); err != nil {
				return fmt.Errorf("header %s is not a map of strings: %w", metadataKey, err)
			}
			if m == nil {
				m = map[string]string{}
			}
			f.meta = m
			continue
		}
		var e rawEntry
		if err := dec.Decode(&e); err != nil {
			var syn *json.SyntaxError
			if errors.As(err, &syn) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("header is not valid JSON (in entry %q): %w", name, err)
			}
			return fmt.Errorf("header entry %q is malformed: %w", name, err)
		}
		if _, dup := f.index[name]; dup {
			return fmt.Errorf("header lists tensor %q twice", name)
		}
		dt := DType(e.DType)
		if e.DType == "" {
			return fmt.Errorf("tensor %q has no dtype", name)
		}
		if dt.Size() == 0 {
			return fmt.Errorf("tensor %q has dtype %q, which this reader does not support", name, e.DType)
		}
		if e.Shape == nil {
			return fmt.Errorf("tensor %q has no shape", name)
		}
		for _, s := range e.Shape {
			if s < 0 {
				return fmt.Errorf("tensor %q has negative dimension in shape %v", name, e.Shape)
			}
		}
		if len(e.DataOffsets) != 2 {
			return fmt.Errorf("tensor %q: data_offsets must be [begin, end], got %v", name, e.DataOffsets)
		}
		ti := TensorInfo{Name: name, DType: dt, Shape: e.Shape, Begin: e.DataOffsets[0], End: e.DataOffsets[1]}
		f.index[name] = len(f.tensors)
		f.tensors = append(f.tensors, ti)
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("header is not valid JSON: %w", err)
	}
	// Only spaces may follow the object (writers pad with them to align).
	rest, _ := io.ReadAll(dec.Buffered())
	if len(bytes.Trim(rest, " \t\r\n\x00")) != 0 {
		return fmt.Errorf("header has %d unexpected bytes after the JSON object", len(rest))
	}
	if f.meta == nil {
		f.meta = map[string]string{}
	}
	return nil
}

// checkLayout verifies every tensor's byte range: inside the data section,
// of the size its shape and dtype imply, and not overlapping another. Holes
// are refused as the reference implementation refuses them: they mean the
// header and data disagree.
func (f *File) checkLayout(dataLen int64) error {
	order := make([]int, len(f.tensors))
	for i := range order {
		order[i] = i
	}
	for _, t := range f.tensors {
		if t.Begin < 0 || t.End < t.Begin {
			return fmt.Errorf("tensor %q has invalid data_offsets [%d, %d]", t.Name, t.Begin, t.End)
		}
		want := int64(t.NumElements()) * int64(t.DType.Size())
		if got := t.End - t.Begin; got != want {
			return fmt.Errorf("tensor %q: data_offsets span %d bytes but %s%v needs %d", t.Name, got, t.DType, t.Shape, want)
		}
		if t.End > dataLen {
			return fmt.Errorf("tensor %q ends at byte %d of the data section, but only %d bytes follow the header (file truncated)", t.Name, t.End, dataLen)
		}
	}
	sort.SliceStable(order, func(a, b int) bool { return f.tensors[order[a]].Begin < f.tensors[order[b]].Begin })
	var pos int64
	for _, i := range order {
		t := f.tensors[i]
		if t.Begin < pos {
			return fmt.Errorf("tensor %q (bytes %d–%d) overlaps the tensor before it, which ends at %d", t.Name, t.Begin, t.End, pos)
		}
		if t.Begin > pos {
			return fmt.Errorf("data section has a hole of %d bytes before tensor %q", t.Begin-pos, t.Name)
		}
		pos = t.End
	}
	if pos != dataLen {
		return fmt.Errorf("data section is %d bytes but the tensors cover %d (extra bytes at the end)", dataLen, pos)
	}
	return nil
}

// Path is the file's path as given to Open.
func (f *File) Path() string { return f.path }

// Mapped reports whether the data is memory-mapped (false after a fallback
// to reading the file into memory).
func (f *File) Mapped() bool { return f.mapped }

// Names lists the tensors in the order the header gives them.
func (f *File) Names() []string {
	out := make([]string, len(f.tensors))
	for i, t := range f.tensors {
		out[i] = t.Name
	}
	return out
}

// Tensors describes every tensor, in header order. The slice is a copy.
func (f *File) Tensors() []TensorInfo {
	out := make([]TensorInfo, len(f.tensors))
	for i, t := range f.tensors {
		t.Shape = append([]int(nil), t.Shape...)
		out[i] = t
	}
	return out
}

// Info describes one tensor; ok is false when the file has no such name.
func (f *File) Info(name string) (TensorInfo, bool) {
	i, ok := f.index[name]
	if !ok {
		return TensorInfo{}, false
	}
	t := f.tensors[i]
	t.Shape = append([]int(nil), t.Shape...)
	return t, true
}

// Metadata returns a copy of the header's __metadata__ map (empty if none).
func (f *File) Metadata() map[string]string {
	out := make(map[string]string, len(f.meta))
	for k, v := range f.meta {
		out[k] = v
	}
	return out
}

// errClosed is returned by accessors after Close.
var errClosed = errors.New("file is closed")

// Bytes returns a tensor's raw little-endian bytes: a slice of the mapping,
// read-only and valid until Close.
func (f *File) Bytes(name string) ([]byte, error) {
	if f.data == nil {
		return nil, fmt.Errorf("safetensors: %s: %w", f.path, errClosed)
	}
	i, ok := f.index[name]
	if !ok {
		return nil, fmt.Errorf("safetensors: %s: no tensor named %q", f.path, name)
	}
	t := f.tensors[i]
	return f.data[f.dataStart+t.Begin : f.dataStart+t.End : f.dataStart+t.End], nil
}

// Float64 converts a tensor of any numeric dtype to float64 (exactly, except
// I64/U64 values beyond 2^53). BOOL gives 0 or 1.
func (f *File) Float64(name string) ([]float64, error) {
	b, dt, err := f.raw(name)
	if err != nil {
		return nil, err
	}
	if kd, ok := dt.Kernel(); ok && kd.IsFloat() {
		// Floats through the kernels' decoder, over the cores: a model's
		// weights are hundreds of millions of values.
		return kernels.DecodeF64(kd, b), nil
	}
	out := make([]float64, len(b)/dt.Size())
	for i := range out {
		out[i] = decodeAt(dt, b, i)
	}
	return out, nil
}

// Float32 converts a tensor of any numeric dtype to float32 (F64 rounds to
// nearest; 16-bit floats widen exactly).
func (f *File) Float32(name string) ([]float32, error) {
	b, dt, err := f.raw(name)
	if err != nil {
		return nil, err
	}
	out := make([]float32, len(b)/dt.Size())
	switch dt {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = kernels.F32FromBF16(binary.LittleEndian.Uint16(b[2*i:]))
		}
	default:
		for i := range out {
			out[i] = float32(decodeAt(dt, b, i))
		}
	}
	return out, nil
}

// BF16 converts a floating-point tensor to bfloat16 bit patterns: BF16 is
// copied as is, F32 and F16 are rounded to nearest even (F64 through
// float32, as the device would store a float32 result). Integer tensors are
// refused: rounding token ids to bf16 is never what a caller means.
func (f *File) BF16(name string) ([]uint16, error) {
	b, dt, err := f.raw(name)
	if err != nil {
		return nil, err
	}
	out := make([]uint16, len(b)/dt.Size())
	switch dt {
	case BF16:
		for i := range out {
			out[i] = binary.LittleEndian.Uint16(b[2*i:])
		}
	case F32:
		for i := range out {
			out[i] = kernels.BF16FromF32(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
		}
	case F16, F64:
		for i := range out {
			out[i] = kernels.BF16FromF32(float32(decodeAt(dt, b, i)))
		}
	default:
		return nil, fmt.Errorf("safetensors: %s: tensor %q is %s, not a floating-point type", f.path, name, dt)
	}
	return out, nil
}

// Encoded returns a tensor's values in dtype d (BF16, F16 or F32),
// little-endian, as a backend uploads them. A tensor stored in d comes back
// as the file's own bytes, not a copy (valid while the file is open), so a
// loader copies it once, to the device, instead of decoding and re-encoding
// every value; another dtype is converted (BF16 rounded to nearest even
// from F32, F16 or F64; F16 and F32 through float32).
func (f *File) Encoded(name string, d DType) ([]byte, error) {
	b, dt, err := f.raw(name)
	if err != nil {
		return nil, err
	}
	if dt == d {
		return b, nil
	}
	switch d {
	case BF16:
		v, err := f.BF16(name)
		if err != nil {
			return nil, err
		}
		return EncodeU16(v), nil
	case F16, F32:
		// Each value goes through float32, as Float32 reads it (exact
		// from bf16 and f16, rounded once from f64), then to d; a
		// 3.5B-parameter model converts 7 GB this way, so the work is
		// spread over the cores, without a float32 copy of the tensor.
		n := len(b) / dt.Size()
		out := make([]byte, d.Size()*n)
		kernels.ParallelFor(n, 1<<16, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				var x float32
				switch dt {
				case BF16:
					x = kernels.F32FromBF16(binary.LittleEndian.Uint16(b[2*i:]))
				case F32:
					x = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
				default:
					x = float32(decodeAt(dt, b, i))
				}
				if d == F16 {
					binary.LittleEndian.PutUint16(out[2*i:], kernels.F16FromF32(x))
				} else {
					binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
				}
			}
		})
		return out, nil
	}
	return nil, fmt.Errorf("safetensors: %s: tensor %q wanted as %s: only BF16, F16 and F32 are encoded", f.path, name, d)
}

// EncodeU16 is 16-bit values (bf16 or f16 bit patterns) as little-endian
// bytes.
func EncodeU16(v []uint16) []byte {
	out := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(out[2*i:], x)
	}
	return out
}

func (f *File) raw(name string) ([]byte, DType, error) {
	b, err := f.Bytes(name)
	if err != nil {
		return nil, "", err
	}
	return b, f.tensors[f.index[name]].DType, nil
}

// decodeAt reads element i of a little-endian buffer of dtype dt.
func decodeAt(dt DType, b []byte, i int) float64 {
	le := binary.LittleEndian
	switch dt {
	case F64:
		return math.Float64frombits(le.Uint64(b[8*i:]))
	case F32:
		return float64(math.Float32frombits(le.Uint32(b[4*i:])))
	case F16:
		return float64(kernels.F32FromF16(le.Uint16(b[2*i:])))
	case BF16:
		return float64(kernels.F32FromBF16(le.Uint16(b[2*i:])))
	case I64:
		return float64(int64(le.Uint64(b[8*i:])))
	case U64:
		return float64(le.Uint64(b[8*i:]))
	case I32:
		return float64(int32(le.Uint32(b[4*i:])))
	case U32:
		return float64(le.Uint32(b[4*i:]))
	case I16:
		return float64(int16(le.Uint16(b[2*i:])))
	case U16:
		return float64(le.Uint16(b[2*i:]))
	case I8:
		return float64(int8(b[i]))
	case U8:
		return float64(b[i])
	case BOOL:
		if b[i] != 0 {
			return 1
		}
		return 0
	}
	return math.NaN()
}

// Close releases the mapping. Slices returned by Bytes are invalid after it.
// Closing twice is harmless.
func (f *File) Close() error {
	if f.data == nil {
		return nil
	}
	var err error
	if f.mapped {
		err = unmapFile(f.data)
	}
	f.data = nil
	if err != nil {
		return fmt.Errorf("safetensors: unmapping %s: %w", f.path, err)
	}
	return nil
}
