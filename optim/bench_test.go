package optim

import (
	"fmt"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// benchParams allocates count tensors of n elements each with F32 masters
// and gradients filled with a constant (the values do not change the cost).
func benchParams(b *testing.B, be kernels.Backend, count, n int) []Param {
	b.Helper()
	var ps []Param
	for i := range count {
		m, err := be.Alloc(kernels.F32, n)
		if err != nil {
			b.Fatal(err)
		}
		g, err := be.Alloc(kernels.F32, n)
		if err != nil {
			b.Fatal(err)
		}
		be.Fill(m, 0.5)
		be.Fill(g, 1e-3)
		ps = append(ps, Param{Name: fmt.Sprintf("p%d", i), Master: m, Grad: g})
	}
	return ps
}

// BenchmarkStep times a whole optimizer step on the CPU backend (non-finite
// check, sum of squares, fused AdamW) for one large tensor and for many
// LoRA-sized ones. Bytes/s counts AdamW's 28 bytes per element (p, m and v
// read and written, g read), so the figure compares directly with
// BenchmarkAdamWKernel; the gap is the cost of the two checks.
func BenchmarkStep(b *testing.B) {
	for _, c := range []struct{ count, n int }{{1, 16 << 20}, {1000, 16384}} {
		b.Run(fmt.Sprintf("%dx%d", c.count, c.n), func(b *testing.B) {
			be := cpu.New()
			ps := benchParams(b, be, c.count, c.n)
			o, err := New(be, []Group{{Name: "all", Params: ps, Hyper: DefaultHyper()}}, Config{Precision: FP32, MaxGradNorm: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer o.Close()
			b.SetBytes(int64(c.count * c.n * 28))
			b.ResetTimer()
			for range b.N {
				if _, err := o.Step(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAdamWKernel times the fused AdamW op alone (28 bytes moved per
// element: p, m, v read and written, an F32 gradient read).
func BenchmarkAdamWKernel(b *testing.B) {
	be := cpu.New()
	ps := benchParams(b, be, 1, 16<<20)
	o, err := New(be, []Group{{Name: "all", Params: ps, Hyper: DefaultHyper()}}, Config{Precision: FP32})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	a := kernels.AdamWArgs{Params: []kernels.Buffer{ps[0].Master}, Grads: []kernels.Buffer{ps[0].Grad},
		M: o.m, V: o.v, LR: []float64{1e-4}, WeightDecay: []float64{0.01}, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
	b.SetBytes(int64(ps[0].Master.Len() * 28))
	b.ResetTimer()
	for i := range b.N {
		a.Step = i + 1
		be.AdamW(a)
	}
	if err := be.Sync(); err != nil {
		b.Fatal(err)
	}
}
