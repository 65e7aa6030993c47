package checkpoints

import (
	"path/filepath"
	"testing"
)

// benchState is about the size of a rank-32 LoRA on NewBie's default
// targets with its two AdamW moments: 3 × 18M float32 ≈ 216 MB.
func benchState(b *testing.B) *State {
	const n = 18_000_003
	st := &State{Step: 1, ConfigHash: "c", BaseModelHash: "b", Tensors: map[string]Tensor{}}
	for _, name := range []string{"lora", "adam.m", "adam.v"} {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(i%977) * 1e-3
		}
		st.Tensors[name] = Tensor{Shape: []int{n}, Data: v}
	}
	b.SetBytes(3 * 4 * n)
	return st
}

// BenchmarkSaveState measures a full save: write, fsync, hash, rename.
func BenchmarkSaveState(b *testing.B) {
	st := benchState(b)
	dir := b.TempDir()
	for i := 0; b.Loop(); i++ {
		st.Step = int64(i)
		if _, err := SaveState(dir, st); err != nil {
			b.Fatal(err)
		}
		if _, err := KeepLast(dir, 1, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadState measures a verified load (checksums included).
func BenchmarkLoadState(b *testing.B) {
	st := benchState(b)
	p, err := SaveState(b.TempDir(), st)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := LoadState(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteComfyUI writes a 6M-parameter adapter as one file.
func BenchmarkWriteComfyUI(b *testing.B) {
	l := &LoRA{Rank: 32, Alpha: 32, Layers: map[string]LoRALayer{}}
	for i := range 36 {
		name := "layers." + string(rune('0'+i/10)) + string(rune('0'+i%10)) + ".feed_forward.w1"
		l.Layers[name] = LoRALayer{In: 2304, Out: 2304, Rank: 32, Alpha: 32, A: make([]float32, 32*2304), B: make([]float32, 2304*32)}
	}
	b.SetBytes(int64(36 * 2 * 32 * 2304 * 4))
	p := filepath.Join(b.TempDir(), "x.safetensors")
	for b.Loop() {
		if err := WriteComfyUI(p, l, ExportOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
