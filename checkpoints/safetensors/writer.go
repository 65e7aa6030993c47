package safetensors

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"

	"github.com/newbie-train/newbie-train/internal/atomicfile"
	"github.com/newbie-train/newbie-train/kernels"
)

// Tensor is one tensor to write. Exactly one of Data and Source gives its
// bytes (little-endian, len = elements × dtype size).
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	// Data holds the bytes when they are already in memory.
	Data []byte
	// Source streams the bytes to w when they are not: for instance a
	// device buffer downloaded in chunks, so a large checkpoint never sits
	// in host memory twice. It must write exactly the tensor's size.
	Source func(w io.Writer) error
}

func (t Tensor) size() int64 {
	n := int64(t.DType.Size())
	for _, s := range t.Shape {
		n *= int64(s)
	}
	return n
}

// countingWriter counts bytes so a Source that writes too few or too many
// is caught before the file is renamed into place.
type countingWriter struct {
	w io.Writer
	n int64
}

// Write passes p through and counts it.
func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Order returns the indices of ts in the order Write lays them out: widest
// element first, then by name. Grouping by element width keeps every tensor
// aligned to its element size (the header is padded to 8 bytes), so a mapped
// tensor can be viewed in place; sorting by name makes the file independent
// of the order the caller built its list in.
func Order(ts []Tensor) []int {
	idx := make([]int, len(ts))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ta, tb := ts[idx[a]], ts[idx[b]]
		if ta.DType.Size() != tb.DType.Size() {
			return ta.DType.Size() > tb.DType.Size()
		}
		return ta.Name < tb.Name
	})
	return idx
}

// header builds the JSON header for tensors laid out in order, padded with
// spaces so the data section starts on an 8-byte boundary.
func header(ts []Tensor, order []int, meta map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	first := true
	if len(meta) > 0 {
		m, err := json.Marshal(meta) // sorted keys: deterministic bytes
		if err != nil {
			return nil, err
		}
		buf.WriteString(`"` + metadataKey + `":`)
		buf.Write(m)
		first = false
	}
	var off int64
	for _, i := range order {
		t := ts[i]
		name, err := json.Marshal(t.Name)
		if err != nil {
			return nil, err
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		buf.Write(name)
		buf.WriteString(`:{"dtype":"` + string(t.DType) + `","shape":[`)
		for j, s := range t.Shape {
			if j > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(strconv.Itoa(s))
		}
		end := off + t.size()
		fmt.Fprintf(&buf, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
	}
	buf.WriteByte('}')
	for (8+buf.Len())%8 != 0 {
		buf.WriteByte(' ')
	}
	return buf.Bytes(), nil
}

func validate(ts []Tensor) error {
	seen := map[string]bool{}
	for _, t := range ts {
		switch {
		case t.Name == "":
			return fmt.Errorf("a tensor has an empty name")
		case t.Name == metadataKey:
			return fmt.Errorf("tensor name %q is reserved", t.Name)
		case seen[t.Name]:
			return fmt.Errorf("tensor %q listed twice", t.Name)
		case t.DType.Size() == 0:
			return fmt.Errorf("tensor %q: unsupported dtype %q", t.Name, t.DType)
		case t.Data != nil && t.Source != nil:
			return fmt.Errorf("tensor %q: give Data or Source, not both", t.Name)
		case t.Data == nil && t.Source == nil && t.size() != 0:
			return fmt.Errorf("tensor %q: no Data and no Source for %d bytes", t.Name, t.size())
		case t.Data != nil && int64(len(t.Data)) != t.size():
			return fmt.Errorf("tensor %q: %d bytes of data but %s%v needs %d", t.Name, len(t.Data), t.DType, t.Shape, t.size())
		}
		for _, s := range t.Shape {
			if s < 0 {
				return fmt.Errorf("tensor %q: negative dimension in shape %v", t.Name, t.Shape)
			}
		}
		seen[t.Name] = true
	}
	return nil
}

// Write writes tensors and metadata to path atomically
// (internal/atomicfile): the bytes go to a hidden temporary sibling, which
// is fsynced and then renamed over path. On any error the temporary file is
// removed and path is left as it was.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	if err := validate(tensors); err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}
	order := Order(tensors)
	hdr, err := header(tensors, order, metadata)
	if err != nil {
		return fmt.Errorf("safetensors: writing %s: header: %w", path, err)
	}
	err = atomicfile.WriteFile(path, func(f io.Writer) error {
		bw := bufio.NewWriterSize(f, 1<<20)
		var lenBuf [8]byte
		binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
		if _, err := bw.Write(lenBuf[:]); err != nil {
			return err
		}
		if _, err := bw.Write(hdr); err != nil {
			return err
		}
		if err := writeData(bw, tensors, order); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// writeData writes the tensors' bytes to w in order, checking that every
// Source writes exactly its tensor's size.
func writeData(w io.Writer, tensors []Tensor, order []int) error {
	for _, i := range order {
		t := tensors[i]
		cw := &countingWriter{w: w}
		var err error
		if t.Source != nil {
			err = t.Source(cw)
		} else {
			_, err = cw.Write(t.Data)
		}
		if err != nil {
			return fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if cw.n != t.size() {
			return fmt.Errorf("tensor %q: source wrote %d bytes, want %d", t.Name, cw.n, t.size())
		}
	}
	return nil
}

// DataSHA256 is the hex SHA-256 of the data section Write would lay out
// for tensors: every tensor's bytes in Order, without the header. It is the
// hash kohya's sd-scripts records as sshs_model_hash (and AUTOMATIC1111's
// additional-networks indexes LoRAs by), which metadata edits never change.
func DataSHA256(tensors []Tensor) (string, error) {
	if err := validate(tensors); err != nil {
		return "", fmt.Errorf("safetensors: hashing: %w", err)
	}
	h := sha256.New()
	if err := writeData(h, tensors, Order(tensors)); err != nil {
		return "", fmt.Errorf("safetensors: hashing: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// WriteFloats encodes v as dtype dt (F32, BF16 or F16, rounding to nearest
// even) into w, a chunk at a time, so no second full-size copy is built.
func WriteFloats(w io.Writer, v []float32, dt DType) error {
	if dt != F32 && dt != BF16 && dt != F16 {
		return fmt.Errorf("safetensors: float32 values cannot be written as %s", dt)
	}
	const chunk = 1 << 14
	buf := make([]byte, 0, chunk*dt.Size())
	for i := 0; i < len(v); i += chunk {
		buf = buf[:0]
		for _, x := range v[i:min(i+chunk, len(v))] {
			switch dt {
			case F32:
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(x))
			case BF16:
				buf = binary.LittleEndian.AppendUint16(buf, kernels.BF16FromF32(x))
			case F16:
				buf = binary.LittleEndian.AppendUint16(buf, kernels.F16FromF32(x))
			}
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// FloatTensor is a tensor of float32 values written as dtype dt, converted
// while it streams (see WriteFloats).
func FloatTensor(name string, dt DType, shape []int, v []float32) Tensor {
	return Tensor{Name: name, DType: dt, Shape: shape, Source: func(w io.Writer) error { return WriteFloats(w, v, dt) }}
}
