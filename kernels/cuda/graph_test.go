package cuda

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

// graphStep is one iteration of a small training-like loop on b: uploads
// of fresh data, products, fused and elementwise kernels, a reduction read
// back in the middle (a host read closes a segment), an update of a
// long-lived weight and a Fill whose argument changes every iteration (so
// one segment never repeats), all inside a graph region. It returns what
// the host read.
func graphStep(t *testing.T, b *Backend, it int, w, w32 kernels.Buffer) [][]float64 {
	t.Helper()
	const rows, in, out = 96, 64, 80
	r := rand.New(rand.NewPCG(uint64(it), 3))
	alloc := func(d kernels.DType, n int) kernels.Buffer {
		buf, err := b.Alloc(d, n)
		if err != nil {
			t.Fatal(err)
		}
		return buf
	}
	b.BeginGraph("graph test")
	x := alloc(bf16, rows*in)
	b.Upload(x, 0, kernels.EncodeF64(bf16, randn(r, rows*in)))
	y := alloc(bf16, rows*out)
	b.Gemm(kernels.GemmArgs{TransB: true, M: rows, N: out, K: in, Batch: 1, Alpha: 1, A: x, LDA: in, B: w, LDB: in, C: y, LDC: out})
	s := alloc(bf16, 2*4*out)
	b.Upload(s, 0, kernels.EncodeF64(bf16, randn(r, 2*4*out)))
	z, rs := alloc(bf16, rows*out), alloc(f32, rows)
	a := kernels.NormScaleArgs{Rows: rows, Cols: out, Eps: 1e-5, S: s, Seq: rows / 2, SOff: out, SStride: 4 * out, Mode: kernels.ScaleTanh, Res: y}
	b.NormScale(z, rs, y, nil, a)
	g := alloc(bf16, rows*out)
	b.Unary(kernels.SiLU, g, z, kernels.UnaryParams{})
	loss := alloc(f32, 1)
	b.Reduce(kernels.Sum, loss, g, 1, rows*out, 1)
	raw := make([]byte, 4)
	if err := b.Download(raw, loss, 0); err != nil {
		t.Fatal(err)
	}
	got := [][]float64{kernels.DecodeF64(f32, raw)}
	dx, ds := alloc(bf16, rows*out), alloc(bf16, 2*4*out)
	b.NormScaleGrad(dx, ds, g, y, nil, rs, a)
	dw := alloc(f32, out*in)
	b.Gemm(kernels.GemmArgs{TransA: true, M: out, N: in, K: rows, Batch: 1, Alpha: 1e-3, A: dx, LDA: out, B: x, LDB: in, C: dw, LDC: in})
	b.Binary(kernels.Sub, w32, []int{out * in}, w32, []int{out * in}, dw, []int{out * in})
	b.Cast(w, w32)
	marker := alloc(f32, 3)
	b.Fill(marker, float64(it))
	for _, buf := range []kernels.Buffer{x, y, s, z, rs, g, loss, dx, ds, dw} {
		b.Free(buf)
	}
	b.EndGraph()
	for _, buf := range []kernels.Buffer{marker, w32} {
		v := make([]byte, buf.Len()*4)
		if err := b.Download(v, buf, 0); err != nil {
			t.Fatal(err)
		}
		got = append(got, kernels.DecodeF64(f32, v))
	}
	b.Free(marker)
	return got
}

func randn(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64()
	}
	return v
}

// TestGraphsMatchPlain runs the loop above with graphs and without, on two
// backends, and requires the same bits every iteration, and that graphs
// were really captured and replayed (which needs the allocator to hand out
// the same addresses every iteration).
func TestGraphsMatchPlain(t *testing.T) {
	on := openGPU(t)
	if on.plan.off != "" {
		t.Skipf("graphs are off: %s", on.plan.off)
	}
	off := openGPU(t)
	off.plan = newGraphPlanner("off for the comparison")
	weights := func(b *Backend) (kernels.Buffer, kernels.Buffer) {
		w, _ := b.Alloc(bf16, 80*64)
		w32, _ := b.Alloc(f32, 80*64)
		v := randn(rand.New(rand.NewPCG(1, 1)), 80*64)
		b.Upload(w32, 0, kernels.EncodeF64(f32, v))
		b.Cast(w, w32)
		return w, w32
	}
	wOn, w32On := weights(on)
	wOff, w32Off := weights(off)
	for it := range 8 {
		got, want := graphStep(t, on, it, wOn, w32On), graphStep(t, off, it, wOff, w32Off)
		for k := range want {
			for i := range want[k] {
				if math.Float64bits(got[k][i]) != math.Float64bits(want[k][i]) {
					t.Fatalf("iteration %d, output %d[%d]: %v with graphs, %v without", it, k, i, got[k][i], want[k][i])
				}
			}
		}
	}
	st := on.GraphStats()
	t.Log(st)
	if st.Captured == 0 || st.Replayed == 0 || st.Failed != 0 {
		t.Errorf("graphs: %+v; want captures and replays and no failures", st)
	}
	// The Fill's argument changes every iteration: its segment differs.
	if st.Mismatched < 6 {
		t.Errorf("%d segments differed; the changing Fill should make one differ every iteration", st.Mismatched)
	}
	if err := on.Sync(); err != nil {
		t.Fatal(err)
	}
	if st.Runs != 8 {
		t.Errorf("%d regions ran, want 8", st.Runs)
	}
}
