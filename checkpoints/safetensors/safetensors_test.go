package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// encodeValues writes float64 reference values as dtype dt, returning the
// bytes and the values the bytes actually hold (after rounding).
func encodeValues(t *testing.T, dt DType, v []float64) ([]byte, []float64) {
	t.Helper()
	if kd, ok := dt.Kernel(); ok {
		b := kernels.EncodeF64(kd, v)
		return b, kernels.DecodeF64(kd, b)
	}
	b := make([]byte, len(v)*dt.Size())
	held := make([]float64, len(v))
	le := binary.LittleEndian
	for i, x := range v {
		switch dt {
		case I64:
			le.PutUint64(b[8*i:], uint64(int64(x)))
			held[i] = float64(int64(x))
		case U64:
			le.PutUint64(b[8*i:], uint64(math.Abs(x)))
			held[i] = float64(uint64(math.Abs(x)))
		case U32:
			le.PutUint32(b[4*i:], uint32(math.Abs(x)))
			held[i] = float64(uint32(math.Abs(x)))
		case I16:
			le.PutUint16(b[2*i:], uint16(int16(x)))
			held[i] = float64(int16(x))
		case U16:
			le.PutUint16(b[2*i:], uint16(math.Abs(x)))
			held[i] = float64(uint16(math.Abs(x)))
		case I8:
			b[i] = byte(int8(x))
			held[i] = float64(int8(x))
		case U8:
			b[i] = byte(math.Abs(x))
			held[i] = float64(byte(math.Abs(x)))
		case BOOL:
			if x > 0 {
				b[i], held[i] = 1, 1
			}
		default:
			t.Fatalf("no encoder for %s", dt)
		}
	}
	return b, held
}

func TestRoundTripEveryDType(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(7, 11))
	cases := []struct {
		dt    DType
		shape []int
		scale float64
	}{
		{F64, []int{7, 3}, 1}, {F32, []int{13}, 1}, {F16, []int{5, 7}, 1}, {BF16, []int{3, 3, 3}, 1},
		{I64, []int{11}, 1e9}, {I32, []int{2, 7}, 1e6}, {I16, []int{9}, 1e3}, {I8, []int{13}, 60},
		{U8, []int{37}, 200}, {BOOL, []int{7}, 1}, {U16, []int{5}, 6e4}, {U32, []int{3}, 1e9}, {U64, []int{4}, 1e12},
		{F32, []int{}, 1}, // a scalar
	}
	var ts []Tensor
	want := map[string][]float64{}
	for i, c := range cases {
		n := 1
		for _, s := range c.shape {
			n *= s
		}
		v := make([]float64, n)
		for j := range v {
			v[j] = r.NormFloat64() * c.scale
			if v[j] == 0 {
				v[j] = 0.5
			}
		}
		data, held := encodeValues(t, c.dt, v)
		name := string(c.dt) + "." + string(rune('a'+i))
		ts = append(ts, Tensor{Name: name, DType: c.dt, Shape: c.shape, Data: data})
		want[name] = held
	}
	meta := map[string]string{"config": `{"dim": 96}`, "format": "pt", "note": "ünïcode ✓"}
	path := filepath.Join(dir, "all.safetensors")
	if err := Write(path, ts, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Mapped() {
		t.Errorf("file was not memory-mapped")
	}
	got := f.Metadata()
	for k, v := range meta {
		if got[k] != v {
			t.Errorf("metadata %q = %q, want %q", k, got[k], v)
		}
	}
	if len(f.Names()) != len(ts) {
		t.Fatalf("%d tensors read, %d written", len(f.Names()), len(ts))
	}
	for _, tw := range ts {
		info, ok := f.Info(tw.Name)
		if !ok {
			t.Fatalf("tensor %q missing", tw.Name)
		}
		if info.DType != tw.DType || len(info.Shape) != len(tw.Shape) {
			t.Errorf("%s: read %s%v, wrote %s%v", tw.Name, info.DType, info.Shape, tw.DType, tw.Shape)
		}
		raw, err := f.Bytes(tw.Name)
		if err != nil {
			t.Fatal(err)
		}
		if string(raw) != string(tw.Data) {
			t.Errorf("%s: raw bytes differ", tw.Name)
		}
		// Alignment: every tensor starts at a multiple of its element size
		// in the file, so it can be viewed in place.
		if (f.dataStart+info.Begin)%int64(info.DType.Size()) != 0 {
			t.Errorf("%s starts at file offset %d, not aligned to %d", tw.Name, f.dataStart+info.Begin, info.DType.Size())
		}
		f64, err := f.Float64(tw.Name)
		if err != nil {
			t.Fatal(err)
		}
		kerneltest.Check(t, tw.Name+" Float64", f64, want[tw.Name], 0)
		f32, err := f.Float32(tw.Name)
		if err != nil {
			t.Fatal(err)
		}
		w32 := make([]float64, len(f32))
		g32 := make([]float64, len(f32))
		for i := range f32 {
			w32[i] = float64(float32(want[tw.Name][i]))
			g32[i] = float64(f32[i])
		}
		kerneltest.Check(t, tw.Name+" Float32", g32, w32, 0)
		bf, err := f.BF16(tw.Name)
		isFloat := tw.DType == F64 || tw.DType == F32 || tw.DType == F16 || tw.DType == BF16
		if isFloat != (err == nil) {
			t.Errorf("%s: BF16 conversion error %v, float dtype %v", tw.Name, err, isFloat)
		}
		if err == nil {
			gb := make([]float64, len(bf))
			wb := make([]float64, len(bf))
			for i := range bf {
				gb[i] = float64(kernels.F32FromBF16(bf[i]))
				wb[i] = float64(kernels.RoundBF16(float32(want[tw.Name][i])))
			}
			kerneltest.Check(t, tw.Name+" BF16", gb, wb, 0)
		}
	}
	if (f.dataStart)%8 != 0 {
		t.Errorf("data section starts at %d, not 8-byte aligned", f.dataStart)
	}
}

func TestWriteOrderIsStable(t *testing.T) {
	dir := t.TempDir()
	a := Tensor{Name: "b", DType: F32, Shape: []int{1}, Data: make([]byte, 4)}
	b := Tensor{Name: "a", DType: F16, Shape: []int{3}, Data: make([]byte, 6)}
	c := Tensor{Name: "c", DType: F64, Shape: []int{1}, Data: make([]byte, 8)}
	p1, p2 := filepath.Join(dir, "1.safetensors"), filepath.Join(dir, "2.safetensors")
	if err := Write(p1, []Tensor{a, b, c}, nil); err != nil {
		t.Fatal(err)
	}
	if err := Write(p2, []Tensor{c, b, a}, nil); err != nil {
		t.Fatal(err)
	}
	x, _ := os.ReadFile(p1)
	y, _ := os.ReadFile(p2)
	if string(x) != string(y) {
		t.Errorf("files differ with the input order")
	}
	f, err := Open(p1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := strings.Join(f.Names(), ","); got != "c,b,a" {
		t.Errorf("file order %s, want c,b,a (widest first, then by name)", got)
	}
}

func TestStreamedWriteAndFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.safetensors")
	want := kernels.EncodeF64(kernels.F32, []float64{1.5, -2, 3.25})
	ok := Tensor{Name: "x", DType: F32, Shape: []int{3}, Source: func(w io.Writer) error {
		for i := 0; i < len(want); i += 4 { // chunked, as a device download would be
			if _, err := w.Write(want[i : i+4]); err != nil {
				return err
			}
		}
		return nil
	}}
	if err := Write(path, []Tensor{ok}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := f.Bytes("x")
	if string(got) != string(want) {
		t.Errorf("streamed bytes differ")
	}
	f.Close()

	fresh := filepath.Join(dir, "fail.safetensors")
	cases := []struct {
		name string
		t    Tensor
		msg  string
	}{
		{"source error", Tensor{Name: "y", DType: F32, Shape: []int{2}, Source: func(w io.Writer) error {
			w.Write(make([]byte, 4))
			return errors.New("device lost")
		}}, "device lost"},
		{"short source", Tensor{Name: "y", DType: F32, Shape: []int{2}, Source: func(w io.Writer) error {
			_, err := w.Write(make([]byte, 4))
			return err
		}}, "wrote 4 bytes, want 8"},
		{"data size", Tensor{Name: "y", DType: F32, Shape: []int{2}, Data: make([]byte, 7)}, "7 bytes of data"},
		{"bad dtype", Tensor{Name: "y", DType: "F7", Shape: []int{2}, Data: make([]byte, 7)}, `unsupported dtype "F7"`},
		{"reserved", Tensor{Name: "__metadata__", DType: F32, Shape: []int{1}, Data: make([]byte, 4)}, "reserved"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Write(fresh, []Tensor{c.t}, nil)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %v, want one containing %q", err, c.msg)
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.Name() != "s.safetensors" {
					t.Errorf("failed write left %s behind", e.Name())
				}
			}
		})
	}
	// A failed rewrite leaves the old complete file untouched.
	if err := Write(path, []Tensor{cases[0].t}, nil); err == nil {
		t.Fatal("expected failure")
	}
	if f, err := Open(path); err != nil {
		t.Errorf("old file damaged by a failed rewrite: %v", err)
	} else {
		f.Close()
	}
}

// rawFile builds a file from a header string and data bytes, bypassing the
// writer so that malformed headers can be expressed.
func rawFile(t *testing.T, dir, name, hdr string, data []byte) string {
	t.Helper()
	b := make([]byte, 8, 8+len(hdr)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(hdr)))
	b = append(b, hdr...)
	b = append(b, data...)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := Write(good, []Tensor{{Name: "w", DType: F32, Shape: []int{4, 3}, Data: make([]byte, 48)}}, map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	whole, _ := os.ReadFile(good)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	hdrLen := make([]byte, 8)
	binary.LittleEndian.PutUint64(hdrLen, 5000)
	cases := []struct {
		name, path, msg string
	}{
		{"truncated data", write("trunc.safetensors", whole[:len(whole)-5]), "file truncated"},
		{"truncated header", write("trunch.safetensors", whole[:20]), "longer than the 12 bytes after it"},
		{"tiny", write("tiny.safetensors", whole[:5]), "shorter than the 8-byte header length"},
		{"png", write("img.safetensors", append([]byte("\x89PNG\r\n\x1a\n"), make([]byte, 64)...)), "it is a PNG image"},
		{"pickle ckpt", write("model.ckpt", append([]byte{0x80, 0x02, 0x7d, 0x71}, make([]byte, 64)...)), "Python pickle"},
		{"zip ckpt", write("model.pt", append([]byte("PK\x03\x04"), make([]byte, 64)...)), "zip archive"},
		{"header longer than file", write("long.safetensors", append(hdrLen, []byte(`{"a":1}`)...)), "header length 5000 is longer than the 7 bytes"},
		{"bad json", rawFile(t, dir, "json.safetensors", `{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]`, make([]byte, 4)), "not valid JSON"},
		{"not object", rawFile(t, dir, "arr.safetensors", `[1,2]   `, nil), "does not start with '{'"},
		{"unknown dtype", rawFile(t, dir, "dt.safetensors", `{"w":{"dtype":"F8_E9","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1)), `dtype "F8_E9"`},
		{"size mismatch", rawFile(t, dir, "sz.safetensors", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)), "span 4 bytes but F32[2] needs 8"},
		{"overlap", rawFile(t, dir, "ov.safetensors", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), "overlaps"},
		{"hole", rawFile(t, dir, "hole.safetensors", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), "hole of 4 bytes"},
		{"offsets past end", rawFile(t, dir, "end.safetensors", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, make([]byte, 8)), "file truncated"},
		{"duplicate", rawFile(t, dir, "dup.safetensors", `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2)), `lists tensor "a" twice`},
		{"metadata not strings", rawFile(t, dir, "meta.safetensors", `{"__metadata__":{"a":1}}`, nil), "not a map of strings"},
		{"missing", filepath.Join(dir, "nope.safetensors"), "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Open(c.path)
			if err == nil {
				f.Close()
				t.Fatalf("opened a bad file")
			}
			if !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), filepath.Base(c.path)) {
				t.Errorf("error %q should name the file and contain %q", err, c.msg)
			}
		})
	}
}

func TestAccessAfterCloseAndUnknownName(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.safetensors")
	if err := Write(p, []Tensor{{Name: "w", DType: F32, Shape: []int{1}, Data: make([]byte, 4)}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Float32("nope"); err == nil || !strings.Contains(err.Error(), `no tensor named "nope"`) {
		t.Errorf("unknown name: %v", err)
	}
	f.Close()
	if _, err := f.Bytes("w"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("after close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestGoldenTinyWeights(t *testing.T) {
	path := filepath.Join("..", "..", "..", "shared", "golden", "nextdit", "tiny.weights.safetensors")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("golden file %s not present (CI provides ../shared beside the checkout): %v", path, err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := f.Names()
	if len(names) < 10 {
		t.Fatalf("only %d tensors", len(names))
	}
	var cfg struct {
		Dim        int `json:"dim"`
		CapFeatDim int `json:"cap_feat_dim"`
		InChannels int `json:"in_channels"`
	}
	if err := json.Unmarshal([]byte(f.Metadata()["config"]), &cfg); err != nil {
		t.Fatalf("config metadata: %v", err)
	}
	if cfg.Dim != 96 || cfg.CapFeatDim != 64 || cfg.InChannels != 16 {
		t.Errorf("config %+v", cfg)
	}
	info, ok := f.Info("cap_embedder.1.weight")
	if !ok || info.DType != F32 || len(info.Shape) != 2 || info.Shape[0] != cfg.Dim || info.Shape[1] != cfg.CapFeatDim {
		t.Errorf("cap_embedder.1.weight: %+v", info)
	}
	var params int
	for _, ti := range f.Tensors() {
		params += ti.NumElements()
		v, err := f.Float32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("%s holds a non-finite value", ti.Name)
			}
		}
	}
	t.Logf("%d tensors, %d parameters, config %s", len(names), params, f.Metadata()["config"])
}

// FuzzOpen feeds arbitrary bytes to Open: it must return a file or an error,
// never panic, and whatever it accepts must have consistent tensors.
// `go test` runs the seeds; `go test -fuzz FuzzOpen` explores further.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	good := filepath.Join(dir, "seed.safetensors")
	if err := Write(good, []Tensor{{Name: "a", DType: F16, Shape: []int{3}, Data: make([]byte, 6)}, {Name: "b", DType: I64, Shape: []int{1}, Data: make([]byte, 8)}}, map[string]string{"k": "v"}); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	f.Add(b)
	f.Add(b[:len(b)-1])
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "f.safetensors")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		file, err := Open(p)
		if err != nil {
			return
		}
		defer file.Close()
		for _, ti := range file.Tensors() {
			raw, err := file.Bytes(ti.Name)
			if err != nil || int64(len(raw)) != int64(ti.NumElements()*ti.DType.Size()) {
				t.Fatalf("%s: %d bytes, err %v", ti.Name, len(raw), err)
			}
			if _, err := file.Float64(ti.Name); err != nil {
				t.Fatal(err)
			}
		}
	})
}
