package safetensors

import (
	"bytes"
	"encoding/binary"
	"math"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

// openInEachDType writes vals as x_F32, x_BF16 and x_F16 into a file and
// opens it; the file is closed when the test ends.
func openInEachDType(t *testing.T, vals []float32) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "e.safetensors")
	var ts []Tensor
	for _, dt := range []DType{F32, BF16, F16} {
		ts = append(ts, FloatTensor("x_"+string(dt), dt, []int{len(vals)}, vals))
	}
	if err := Write(path, ts, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestEncoded: a tensor already in the wanted dtype comes back as its
// bytes; other dtypes are converted as BF16 and Float32 convert them.
func TestEncoded(t *testing.T) {
	vals := []float32{0, 1, -2.5, 3.1415927, 65504, 1e-8}
	f := openInEachDType(t, vals)
	for _, src := range []DType{F32, BF16, F16} {
		name := "x_" + string(src)
		for _, want := range []DType{F32, BF16, F16} {
			got, err := f.Encoded(name, want)
			if err != nil {
				t.Fatalf("%s as %s: %v", name, want, err)
			}
			ref := make([]byte, want.Size()*len(vals))
			v, _ := f.Float32(name)
			for i, x := range v {
				switch want {
				case F32:
					binary.LittleEndian.PutUint32(ref[4*i:], math.Float32bits(x))
				case BF16:
					binary.LittleEndian.PutUint16(ref[2*i:], kernels.BF16FromF32(x))
				case F16:
					binary.LittleEndian.PutUint16(ref[2*i:], kernels.F16FromF32(x))
				}
			}
			if !bytes.Equal(got, ref) {
				t.Errorf("%s as %s: % x, want % x", name, want, got, ref)
			}
			if src == want {
				raw, _ := f.Bytes(name)
				if &raw[0] != &got[0] {
					t.Errorf("%s as its own dtype was copied, not the file's bytes", name)
				}
			}
		}
	}
	if _, err := f.Encoded("x_F32", I32); err == nil {
		t.Error("I32 was accepted")
	}
}

// TestEncodedLarge converts tensors long enough to be cut into one range
// per core (three at least: GOMAXPROCS is raised for the test), from F32,
// BF16 and F16 to F16 and F32, against the value-by-value reference
// through Float32.
func TestEncodedLarge(t *testing.T) {
	prev := runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 3))
	defer runtime.GOMAXPROCS(prev)
	const n = 3<<16 + 7 // not a multiple of the range count
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(math.Sin(float64(i))*70000) / float32(1+i%97)
	}
	f := openInEachDType(t, vals)
	for _, src := range []DType{F32, BF16, F16} {
		name := "x_" + string(src)
		v, err := f.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []DType{F16, F32} {
			got, err := f.Encoded(name, want)
			if err != nil {
				t.Fatalf("%s as %s: %v", name, want, err)
			}
			if src == want {
				continue
			}
			for i, x := range v {
				var ok bool
				if want == F16 {
					ok = binary.LittleEndian.Uint16(got[2*i:]) == kernels.F16FromF32(x)
				} else {
					ok = binary.LittleEndian.Uint32(got[4*i:]) == math.Float32bits(x)
				}
				if !ok {
					t.Fatalf("%s as %s: element %d of %d differs from the reference", name, want, i, n)
				}
			}
		}
	}
}

// BenchmarkEncodedBF16 reads a 64 MiB bf16 tensor as bf16 bytes: the
// file's own bytes, against BF16's decode and a re-encode (what the
// loaders did before).
func BenchmarkEncodedBF16(b *testing.B) {
	n := 32 << 20
	path := filepath.Join(b.TempDir(), "big.safetensors")
	if err := Write(path, []Tensor{FloatTensor("w", BF16, []int{n}, make([]float32, n))}, nil); err != nil {
		b.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sink := make([]byte, 2*n) // the upload's one copy
	b.Run("encoded", func(b *testing.B) {
		b.SetBytes(int64(2 * n))
		for range b.N {
			raw, _ := f.Encoded("w", BF16)
			copy(sink, raw)
		}
	})
	b.Run("as-f16", func(b *testing.B) { // an fp16 model from a bf16 file
		b.SetBytes(int64(2 * n))
		for range b.N {
			raw, _ := f.Encoded("w", F16)
			copy(sink, raw)
		}
	})
	b.Run("decode-reencode", func(b *testing.B) {
		b.SetBytes(int64(2 * n))
		for range b.N {
			v, _ := f.BF16("w")
			raw := make([]byte, 2*len(v))
			for i, x := range v {
				binary.LittleEndian.PutUint16(raw[2*i:], x)
			}
			copy(sink, raw)
		}
	})
}
