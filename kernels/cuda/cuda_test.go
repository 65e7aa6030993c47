package cuda

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// openGPU opens the backend or skips the test, saying why no GPU is used.
func openGPU(t testing.TB) *Backend {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no GPU here: %v", err)
	}
	b, err := New(0)
	if err != nil {
		t.Fatalf("open cuda backend: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// TestConformance runs the shared suite on the GPU.
func TestConformance(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("no GPU here: %v", err)
	}
	kerneltest.Run(t, func(t *testing.T) kernels.Backend { return openGPU(t) })
}

// env gives a cross-backend case the same random inputs on both backends.
type env struct {
	t   *testing.T
	b   kernels.Backend
	rng *rand.Rand
}

func (e *env) put(d kernels.DType, v []float64) kernels.Buffer {
	buf, err := e.b.Alloc(d, len(v))
	if err != nil {
		e.t.Fatalf("alloc: %v", err)
	}
	e.b.Upload(buf, 0, kernels.EncodeF64(d, v))
	return buf
}

func (e *env) randn(d kernels.DType, n int) kernels.Buffer {
	return e.put(d, kerneltest.Randn(e.rng, n, 1))
}

// pos draws values in [0.5, 2), for ops defined on positive inputs.
func (e *env) pos(d kernels.DType, n int) kernels.Buffer {
	v := make([]float64, n)
	for i := range v {
		v[i] = 0.5 + 1.5*e.rng.Float64()
	}
	return e.put(d, v)
}

func (e *env) poison(d kernels.DType, n int) kernels.Buffer {
	buf, err := e.b.Alloc(d, n)
	if err != nil {
		e.t.Fatalf("alloc: %v", err)
	}
	if d == kernels.I32 {
		e.b.Fill(buf, -1)
	} else {
		e.b.Fill(buf, math.NaN())
	}
	return buf
}

func (e *env) get(buf kernels.Buffer) []float64 {
	raw := make([]byte, buf.Len()*buf.DType().Size())
	if err := e.b.Download(raw, buf, 0); err != nil {
		panic(errSkip{err})
	}
	return kernels.DecodeF64(buf.DType(), raw)
}

// errSkip carries a backend failure out of a case body.
type errSkip struct{ err error }

type xcase struct {
	name string
	tol  float64
	run  func(e *env) [][]float64
}

const (
	f32  = kernels.F32
	bf16 = kernels.BF16
	f16  = kernels.F16
	f64  = kernels.F64
)

// runCase runs body on a backend with inputs drawn from a fixed seed.
func runCase(t *testing.T, b kernels.Backend, seed uint64, body func(e *env) [][]float64) (out [][]float64, err error) {
	defer func() {
		if r := recover(); r != nil {
			if s, ok := r.(errSkip); ok {
				err = s.err
				return
			}
			panic(r)
		}
	}()
	e := &env{t: t, b: b, rng: rand.New(rand.NewPCG(seed, 7))}
	out = body(e)
	return out, b.Sync()
}

// TestAgainstCPU runs every op on the GPU and on the CPU backend with the
// same random inputs and compares by relative norm (fp32 < 1e-5, bf16
// < 1e-2, fp16 attention < 1.25e-3). A case the CPU backend cannot run yet
// is skipped, not passed.
func TestAgainstCPU(t *testing.T) {
	g := openGPU(t)
	for i, tc := range crossCases() {
		t.Run(tc.name, func(t *testing.T) {
			want, err := runCase(t, cpu.New(), uint64(i+1), tc.run)
			if err != nil {
				if strings.Contains(err.Error(), "not implemented") {
					t.Skipf("cpu backend: %v", err)
				}
				t.Fatalf("cpu backend: %v", err)
			}
			got, err := runCase(t, g, uint64(i+1), tc.run)
			if err != nil {
				t.Fatalf("cuda backend: %v", err)
			}
			for k := range want {
				g, w := sameInfinities(got[k], want[k])
				kerneltest.Check(t, tc.name+" output "+itoa(k), g, w, tc.tol)
			}
		})
	}
}

// sameInfinities zeroes the positions where both sides hold the same
// infinity (an LSE of −Inf for a row that sees no key): kerneltest.RelErr
// computes Inf−Inf = NaN there and reports a mismatch.
func sameInfinities(got, want []float64) ([]float64, []float64) {
	g, w := append([]float64(nil), got...), append([]float64(nil), want...)
	for i := range g {
		if i < len(w) && math.IsInf(w[i], 0) && g[i] == w[i] {
			g[i], w[i] = 0, 0
		}
	}
	return g, w
}

func crossCases() []xcase {
	var cs []xcase
	add := func(name string, tol float64, run func(e *env) [][]float64) {
		cs = append(cs, xcase{name, tol, run})
	}
	for _, d := range []kernels.DType{f32, bf16, f64} {
		tol := kerneltest.Tol(d, d)
		dn := d.String()
		add("Fill/"+dn, 0, func(e *env) [][]float64 {
			b := e.poison(d, 37)
			e.b.Fill(b, 1.25)
			return [][]float64{e.get(b)}
		})
		add("Copy2D/"+dn, 0, func(e *env) [][]float64 {
			src := e.randn(f32, 7*13)
			dst := e.randn(d, 9*11)
			e.b.Copy2D(dst, 3, 11, src, 2, 13, 7, 9)
			// A row broadcast (source stride 0) into a dense block: the
			// 16-byte kernel where rows and offsets are whole chunks (32
			// elements at offset 8, in every dtype), the generic one
			// otherwise (9 elements at offset 1).
			row := e.randn(d, 40)
			wide, narrow := e.poison(d, 8+5*32), e.poison(d, 4*9)
			e.b.Copy2D(wide, 8, 32, row, 8, 0, 5, 32)
			e.b.Copy2D(narrow, 0, 9, row, 1, 0, 4, 9)
			return [][]float64{e.get(dst), e.get(wide)[8:], e.get(narrow)}
		})
		add("Permute/"+dn, 0, func(e *env) [][]float64 {
			src := e.randn(d, 2*3*5*7)
			dst := e.poison(d, 2*3*5*7)
			e.b.Permute(dst, src, []int{2, 3, 5, 7}, []int{2, 0, 3, 1})
			return [][]float64{e.get(dst)}
		})
		for op := kernels.Identity; op <= kernels.LastUnary; op++ {
			add("Unary/"+itoa(int(op))+"/"+dn, tol, func(e *env) [][]float64 {
				var x kernels.Buffer
				if op == kernels.DropoutMask {
					x = e.pos(d, 101)
				} else if op == kernels.Log || op == kernels.Sqrt || op == kernels.Rsqrt || op == kernels.PowScalar || op == kernels.Recip {
					x = e.pos(d, 101)
				} else {
					x = e.randn(d, 101)
				}
				dx := e.randn(d, 101)
				y := e.poison(d, 101)
				gx := e.poison(d, 101)
				p := kernels.UnaryParams{A: 1.3, B: -0.7}
				e.b.Unary(op, y, x, p)
				e.b.UnaryGrad(op, gx, x, dx, p)
				return [][]float64{e.get(y), e.get(gx)}
			})
		}
		add("UnaryVec/"+dn, tol, func(e *env) [][]float64 {
			x, dy := e.randn(d, 8*13), e.randn(d, 8*13)
			y, dx := e.poison(d, 8*13), e.poison(d, 8*13)
			e.b.Unary(kernels.SiLU, y, x, kernels.UnaryParams{})
			e.b.UnaryGrad(kernels.GELUTanh, dx, x, dy, kernels.UnaryParams{})
			return [][]float64{e.get(y), e.get(dx)}
		})
		for op := kernels.Add; op <= kernels.Minimum; op++ {
			add("Binary/"+itoa(int(op))+"/"+dn, tol, func(e *env) [][]float64 {
				a := e.randn(d, 3*1*7)
				var b kernels.Buffer
				if op == kernels.Div {
					b = e.pos(f32, 1*5*7)
				} else {
					b = e.randn(f32, 1*5*7)
				}
				y := e.poison(d, 3*5*7)
				e.b.Binary(op, y, []int{3, 5, 7}, a, []int{3, 1, 7}, b, []int{1, 5, 7})
				full := e.poison(d, 3*5*7)
				a2 := e.randn(d, 3*5*7)
				e.b.Binary(op, full, []int{3, 5, 7}, a2, []int{3, 5, 7}, y, []int{3, 5, 7})
				return [][]float64{e.get(y), e.get(full)}
			})
		}
		for op := kernels.Sum; op <= kernels.Max; op++ {
			add("Reduce/"+itoa(int(op))+"/"+dn, tol, func(e *env) [][]float64 {
				x := e.randn(d, 5*13*7)
				y1, y2 := e.poison(d, 5*7), e.poison(d, 1)
				e.b.Reduce(op, y1, x, 5, 13, 7)
				e.b.Reduce(op, y2, x, 1, 5*13*7, 1)
				return [][]float64{e.get(y1), e.get(y2)}
			})
		}
		add("Softmax/"+dn, tol, func(e *env) [][]float64 {
			x, g := e.randn(d, 7*37), e.randn(d, 7*37)
			y, dx := e.poison(d, 7*37), e.poison(d, 7*37)
			e.b.Softmax(y, x, 7, 37)
			e.b.SoftmaxGrad(dx, y, g, 7, 37)
			return [][]float64{e.get(y), e.get(dx)}
		})
		st := f32
		if d == f64 {
			st = f64
		}
		for _, cols := range []int{37, 96} {
			add("RMSNorm/"+dn+"/"+itoa(cols), tol, func(e *env) [][]float64 {
				rows := 13
				x, w, g := e.randn(d, rows*cols), e.randn(d, cols), e.randn(d, rows*cols)
				y, r := e.poison(d, rows*cols), e.poison(st, rows)
				dx, dw := e.poison(d, rows*cols), e.poison(st, cols)
				e.b.RMSNorm(y, r, x, w, rows, cols, 1e-6)
				e.b.RMSNormGrad(dx, dw, g, x, w, r, rows, cols)
				y2, r2 := e.poison(d, rows*cols), e.poison(st, rows)
				e.b.RMSNorm(y2, r2, x, nil, rows, cols, 1e-6)
				return [][]float64{e.get(y), e.get(r), e.get(dx), e.get(dw), e.get(y2)}
			})
		}
		if d == bf16 {
			// The lane-group bf16 kernels (rownorm_vec.cu) at widths that
			// give 1, 8, 16 and 32 lanes, and each kind of kernel: _h1 (8,
			// 40 and 96 columns), _h2 (264 = 33 chunks on 32 lanes: lanes
			// own 2 or 1; 512: every lane owns 2) and the plain re-reading
			// one (2312 = 289 chunks: lanes walk 10 or 9). Row counts leave
			// row slots of a block, and groups of a warp, past the last row.
			// Each case runs the weighted forward and three gradients: dw
			// asked for, dw nil with a weight (the LoRA case: a frozen norm
			// weight), and no weight at all.
			for _, sh := range []struct{ rows, cols int }{{13, 8}, {37, 40}, {1, 96}, {300, 96}, {13, 264}, {37, 512},
				{1, 2312}, {13, 2312}} {
				add("RMSNormRows/"+itoa(sh.rows)+"x"+itoa(sh.cols), tol, func(e *env) [][]float64 {
					rows, cols := sh.rows, sh.cols
					n := rows * cols
					x, w, g := e.randn(bf16, n), e.randn(bf16, cols), e.randn(bf16, n)
					y, r := e.poison(bf16, n), e.poison(f32, rows)
					e.b.RMSNorm(y, r, x, w, rows, cols, 1e-6)
					dx, dw := e.poison(bf16, n), e.poison(f32, cols)
					e.b.RMSNormGrad(dx, dw, g, x, w, r, rows, cols)
					dxFrozen := e.poison(bf16, n)
					e.b.RMSNormGrad(dxFrozen, nil, g, x, w, r, rows, cols)
					y2, r2 := e.poison(bf16, n), e.poison(f32, rows)
					e.b.RMSNorm(y2, r2, x, nil, rows, cols, 1e-6)
					dx2, dw2 := e.poison(bf16, n), e.poison(f32, cols)
					e.b.RMSNormGrad(dx2, dw2, g, x, nil, r2, rows, cols)
					return [][]float64{e.get(y), e.get(r), e.get(dx), e.get(dw), e.get(dxFrozen), e.get(y2), e.get(r2), e.get(dx2), e.get(dw2)}
				})
			}
			// A float32 weight on bf16 rows (Gemma 3's norms through
			// autograd.RMSNormAs: rmsnorm_bf16_rows_wf*), each kind of
			// kernel: 256 (the q/k norms, _h1), 512 (_h2), 2560 (the
			// hidden size, re-reading); the gradient takes the generic path.
			for _, sh := range []struct{ rows, cols int }{{37, 256}, {13, 512}, {9, 2560}} {
				add("RMSNormRows/f32-weight/"+itoa(sh.rows)+"x"+itoa(sh.cols), tol, func(e *env) [][]float64 {
					rows, cols := sh.rows, sh.cols
					n := rows * cols
					x, w, g := e.randn(bf16, n), e.randn(f32, cols), e.randn(bf16, n)
					y, r := e.poison(bf16, n), e.poison(f32, rows)
					e.b.RMSNorm(y, r, x, w, rows, cols, 1e-6)
					dx, dw := e.poison(bf16, n), e.poison(f32, cols)
					e.b.RMSNormGrad(dx, dw, g, x, w, r, rows, cols)
					return [][]float64{e.get(y), e.get(r), e.get(dx), e.get(dw)}
				})
			}
		}
		if d == bf16 {
			// The lane-group LayerNorm (layernorm_bf16_rows*): _h4 at 8, 40
			// and 1024 columns (1, 8 and 32 lanes; Jina's rows), the
			// re-reading kernel at 1032 (129 chunks) and 2312; with weight
			// and bias, and with neither.
			for _, sh := range []struct{ rows, cols int }{{13, 8}, {37, 40}, {300, 1024}, {5, 1032}, {3, 2312}} {
				add("LayerNormRows/"+itoa(sh.rows)+"x"+itoa(sh.cols), tol, func(e *env) [][]float64 {
					rows, cols := sh.rows, sh.cols
					n := rows * cols
					// Rows far from zero mean: the variance must not cancel.
					off, x := e.poison(bf16, 1), e.poison(bf16, n)
					e.b.Fill(off, 3)
					e.b.Binary(kernels.Add, x, []int{n}, e.randn(bf16, n), []int{n}, off, []int{1})
					w, bb := e.randn(bf16, cols), e.randn(bf16, cols)
					y, m, r := e.poison(bf16, n), e.poison(f32, rows), e.poison(f32, rows)
					e.b.LayerNorm(y, m, r, x, w, bb, rows, cols, 1e-5)
					y2, m2, r2 := e.poison(bf16, n), e.poison(f32, rows), e.poison(f32, rows)
					e.b.LayerNorm(y2, m2, r2, x, nil, nil, rows, cols, 1e-5)
					return [][]float64{e.get(y), e.get(m), e.get(r), e.get(y2), e.get(m2), e.get(r2)}
				})
			}
		}
		add("LayerNorm/"+dn, tol, func(e *env) [][]float64 {
			rows, cols := 11, 37
			x, w, bb, g := e.randn(d, rows*cols), e.randn(d, cols), e.randn(d, cols), e.randn(d, rows*cols)
			y, m, r := e.poison(d, rows*cols), e.poison(st, rows), e.poison(st, rows)
			dx, dw, db := e.poison(d, rows*cols), e.poison(st, cols), e.poison(st, cols)
			e.b.LayerNorm(y, m, r, x, w, bb, rows, cols, 1e-5)
			e.b.LayerNormGrad(dx, dw, db, g, x, w, m, r, rows, cols)
			return [][]float64{e.get(y), e.get(m), e.get(r), e.get(dx), e.get(dw), e.get(db)}
		})
		add("GroupNorm/"+dn, tol, func(e *env) [][]float64 {
			n, ch, hw, gr := 2, 6, 13, 3
			x, w, bb, g := e.randn(d, n*ch*hw), e.randn(d, ch), e.randn(d, ch), e.randn(d, n*ch*hw)
			y, m, r := e.poison(d, n*ch*hw), e.poison(st, n*gr), e.poison(st, n*gr)
			dx, dw, db := e.poison(d, n*ch*hw), e.poison(st, ch), e.poison(st, ch)
			e.b.GroupNorm(y, m, r, x, w, bb, n, ch, hw, gr, 1e-5)
			e.b.GroupNormGrad(dx, dw, db, g, x, w, m, r, n, ch, hw, gr)
			return [][]float64{e.get(y), e.get(m), e.get(r), e.get(dx), e.get(dw), e.get(db)}
		})
		for _, il := range []bool{false, true} {
			add("Rope/"+dn+"/"+map[bool]string{true: "interleaved", false: "half"}[il], tol, func(e *env) [][]float64 {
				b, s, h, dd := 2, 7, 3, 32
				x := e.randn(d, b*s*h*dd)
				cs, sn := e.randn(f32, b*s*dd/2), e.randn(f32, b*s*dd/2)
				y, z := e.poison(d, b*s*h*dd), e.poison(d, b*s*h*dd)
				e.b.Rope(y, x, cs, sn, b, s, h, dd, il, false)
				e.b.Rope(z, y, cs, sn, b, s, h, dd, il, true)
				// Tables in the activations' dtype, as Jina keeps them.
				ct, stb := e.poison(d, b*s*dd/2), e.poison(d, b*s*dd/2)
				e.b.Cast(ct, cs)
				e.b.Cast(stb, sn)
				yt := e.poison(d, b*s*h*dd)
				e.b.Rope(yt, x, ct, stb, b, s, h, dd, il, false)
				return [][]float64{e.get(y), e.get(z), e.get(yt)}
			})
		}
		add("Conv2D/"+dn, tol, func(e *env) [][]float64 {
			a := kernels.ConvArgs{N: 2, Cin: 3, H: 7, W: 9, Cout: 5, KH: 3, KW: 3, Stride: 2, Pad: 1}
			x, w, bias := e.randn(d, 2*3*7*9), e.randn(d, 5*3*9), e.randn(d, 5)
			ny := 2 * 5 * a.OutH() * a.OutW()
			y, g := e.poison(d, ny), e.randn(d, ny)
			dx, dw, db := e.poison(d, 2*3*7*9), e.poison(d, 5*3*9), e.poison(d, 5)
			e.b.Conv2D(y, x, w, bias, a)
			e.b.Conv2DGrad(dx, dw, db, g, x, w, a)
			return [][]float64{e.get(y), e.get(dx), e.get(dw), e.get(db)}
		})
		add("Upsample2x/"+dn, tol, func(e *env) [][]float64 {
			x, g := e.randn(d, 2*3*5*7), e.randn(d, 2*3*10*14)
			y, dx := e.poison(d, 2*3*10*14), e.poison(d, 2*3*5*7)
			e.b.Upsample2x(y, x, 2, 3, 5, 7)
			e.b.Upsample2xGrad(dx, g, 2, 3, 5, 7)
			return [][]float64{e.get(y), e.get(dx)}
		})
		add("GatherScatter/"+dn, tol, func(e *env) [][]float64 {
			tab := e.randn(d, 11*13)
			ids := e.put(kernels.I32, []float64{3, 0, 10, 3, 7})
			y := e.poison(d, 5*13)
			e.b.Gather(y, tab, ids, 13)
			acc := e.randn(f32, 11*13)
			e.b.ScatterAdd(acc, y, ids, 13)
			return [][]float64{e.get(y), e.get(acc)}
		})
		add("Random/"+dn, kerneltest.Tol(d, d)*1e-3, func(e *env) [][]float64 {
			n, u := e.poison(d, 1001), e.poison(d, 1001)
			e.b.RandNormal(n, 42, 1<<33+5, 0.5, 2)
			e.b.RandUniform(u, 43, 17, -1, 3)
			return [][]float64{e.get(n), e.get(u)}
		})
		add("SumSquaresNonFinite/"+dn, tol, func(e *env) [][]float64 {
			a, b, c := e.randn(d, 5000), e.randn(bf16, 37), e.randn(f32, 9000)
			s, nf, nf2 := e.poison(st, 1), e.poison(f32, 1), e.poison(f32, 1)
			e.b.SumSquares(s, []kernels.Buffer{a, b, c})
			e.b.NonFinite(nf, []kernels.Buffer{a, b, c})
			e.b.Upload(c, 4500, kernels.EncodeF64(f32, []float64{math.Inf(1)}))
			e.b.NonFinite(nf2, []kernels.Buffer{a, b, c})
			return [][]float64{e.get(s), e.get(nf), e.get(nf2)}
		})
	}
	// The FLUX VAE's convolutions on the bf16 implicit GEMM (conv_tc.cu)
	// and, in fp32 and fp16, on the im2col products (conv_gemm.cu): each
	// channel tile, odd planes, two images in a pixel tile; the last case
	// reruns with the fast path off, checking the direct kernel.
	for _, cc := range []struct {
		name string
		a    kernels.ConvArgs
		off  bool
	}{
		{"resnet-3x3", kernels.ConvArgs{N: 1, Cin: 128, H: 32, W: 32, Cout: 128, KH: 3, KW: 3, Stride: 1, Pad: 1}, false},
		{"resnet-3x3-widen", kernels.ConvArgs{N: 1, Cin: 128, H: 16, W: 16, Cout: 256, KH: 3, KW: 3, Stride: 1, Pad: 1}, false},
		{"downsample", kernels.ConvArgs{N: 1, Cin: 128, H: 33, W: 33, Cout: 128, KH: 3, KW: 3, Stride: 2, Pad: 0}, false},
		{"shortcut-1x1", kernels.ConvArgs{N: 2, Cin: 128, H: 16, W: 16, Cout: 256, KH: 1, KW: 1, Stride: 1, Pad: 0}, false},
		{"conv_in", kernels.ConvArgs{N: 1, Cin: 3, H: 64, W: 64, Cout: 128, KH: 3, KW: 3, Stride: 1, Pad: 1}, false},
		{"encoder-conv_out", kernels.ConvArgs{N: 1, Cin: 512, H: 8, W: 8, Cout: 32, KH: 3, KW: 3, Stride: 1, Pad: 1}, false},
		{"decoder-conv_out", kernels.ConvArgs{N: 1, Cin: 128, H: 32, W: 32, Cout: 3, KH: 3, KW: 3, Stride: 1, Pad: 1}, false},
		{"odd-plane-cout64", kernels.ConvArgs{N: 2, Cin: 40, H: 9, W: 11, Cout: 64, KH: 3, KW: 3, Stride: 1, Pad: 1}, false},
		{"odd-plane-direct", kernels.ConvArgs{N: 2, Cin: 40, H: 9, W: 11, Cout: 70, KH: 3, KW: 3, Stride: 1, Pad: 1}, true},
	} {
		for _, d := range []kernels.DType{bf16, f32, f16} {
			fast := map[kernels.DType]string{bf16: fastConv, f32: fastConvGEMM, f16: fastConvGEMM}[d]
			add("Conv2D/vae/"+d.String()+"/"+cc.name, kerneltest.Tol(d, d), func(e *env) [][]float64 {
				if cc.off {
					defer fastPathOff(e, fast)()
				}
				a := cc.a
				x := e.randn(d, a.N*a.Cin*a.H*a.W)
				w := e.put(d, kerneltest.Randn(e.rng, a.Cout*a.Cin*a.KH*a.KW, 1/math.Sqrt(float64(a.Cin*a.KH*a.KW))))
				bias := e.randn(d, a.Cout)
				y := e.poison(d, a.N*a.Cout*a.OutH()*a.OutW())
				e.b.Conv2D(y, x, w, bias, a)
				y2 := e.poison(d, a.N*a.Cout*a.OutH()*a.OutW())
				e.b.Conv2D(y2, x, w, nil, a)
				return [][]float64{e.get(y), e.get(y2)}
			})
		}
	}
	// GroupNorm on the multi-block kernels (groupnorm_fast.cu), bf16 and
	// fp32, and GroupNormSiLU against the CPU's GroupNorm then SiLU; groups
	// of 65536 elements are split over 8 blocks.
	for _, gc := range []struct {
		name        string
		x, y        kernels.DType
		n, ch, hw   int
		groups      int
		off, affine bool
	}{
		{"bf16/vae-128ch", bf16, bf16, 1, 128, 32 * 32, 32, false, true},
		{"bf16/split", bf16, bf16, 1, 128, 128 * 128, 32, false, true},
		{"f32/split", f32, f32, 2, 64, 64 * 64, 8, false, true},
		{"bf16-f32/no-affine", bf16, f32, 2, 64, 256, 32, false, false},
		{"bf16/general", bf16, bf16, 1, 128, 32 * 32, 32, true, true},
	} {
		add("GroupNorm/fast/"+gc.name, kerneltest.Tol(gc.x, gc.y), func(e *env) [][]float64 {
			if gc.off {
				defer fastPathOff(e, fastGroupNorm)()
			}
			n := gc.n * gc.ch * gc.hw
			x := e.put(gc.x, kerneltest.Randn(e.rng, n, 2))
			var w, bb kernels.Buffer
			if gc.affine {
				w, bb = e.randn(f32, gc.ch), e.randn(bf16, gc.ch)
			}
			y, m, r := e.poison(gc.y, n), e.poison(f32, gc.n*gc.groups), e.poison(f32, gc.n*gc.groups)
			e.b.GroupNorm(y, m, r, x, w, bb, gc.n, gc.ch, gc.hw, gc.groups, 1e-6)
			ys, ms, rs := e.poison(gc.y, n), e.poison(f32, gc.n*gc.groups), e.poison(f32, gc.n*gc.groups)
			if fb, ok := e.b.(kernels.GroupNormSiLUBackend); ok {
				fb.GroupNormSiLU(ys, ms, rs, x, w, bb, gc.n, gc.ch, gc.hw, gc.groups, 1e-6)
			} else {
				e.b.GroupNorm(ys, ms, rs, x, w, bb, gc.n, gc.ch, gc.hw, gc.groups, 1e-6)
				e.b.Unary(kernels.SiLU, ys, ys, kernels.UnaryParams{})
			}
			return [][]float64{e.get(y), e.get(m), e.get(r), e.get(ys), e.get(ms), e.get(rs)}
		})
	}
	add("Cast", 0, func(e *env) [][]float64 {
		x := e.put(f32, []float64{1.5, -2.7, 3.999, 3e4, -0.4, 65504, 1e-3})
		b, h, i, back := e.poison(bf16, 7), e.poison(kernels.F16, 7), e.poison(kernels.I32, 7), e.poison(f64, 7)
		e.b.Cast(b, x)
		e.b.Cast(h, x)
		e.b.Cast(i, x)
		e.b.Cast(back, b)
		return [][]float64{e.get(b), e.get(h), e.get(i), e.get(back)}
	})
	gemm := func(name string, in, out kernels.DType, ta, tb bool, batch int) {
		add("Gemm/"+name, kerneltest.Tol(in, out), func(e *env) [][]float64 {
			m, n, k := 13, 37, 29
			lda, ldb, ldc := k+3, n+1, n+2
			if ta {
				lda = m + 3
			}
			if tb {
				ldb = k + 1
			}
			ar, br := m, k
			if ta {
				ar = k
			}
			if tb {
				br = n
			}
			sa, sb, sc := ar*lda+5, br*ldb+3, m*ldc+1
			a, b := e.randn(in, 2+sa*batch), e.randn(in, 1+sb*batch)
			c := e.randn(out, sc*batch)
			e.b.Gemm(kernels.GemmArgs{TransA: ta, TransB: tb, M: m, N: n, K: k, Batch: batch, Alpha: 0.75, Beta: 0.5,
				A: a, OffA: 2, LDA: lda, StrideA: sa, B: b, OffB: 1, LDB: ldb, StrideB: sb, C: c, LDC: ldc, StrideC: sc})
			return [][]float64{e.get(c)}
		})
	}
	gemm("f32", f32, f32, false, false, 1)
	gemm("f32/TA", f32, f32, true, false, 1)
	gemm("f32/TB", f32, f32, false, true, 1)
	gemm("f32/TATB/batch3", f32, f32, true, true, 3)
	gemm("bf16-f32", bf16, f32, false, true, 1)
	gemm("bf16-bf16/batch2", bf16, bf16, false, false, 2)
	gemm("f16-f16", kernels.F16, kernels.F16, true, false, 1)
	gemm("f64", f64, f64, false, true, 2)
	add("AdamW", 1e-5, func(e *env) [][]float64 {
		var ps, gs, ms, vs []kernels.Buffer
		var outs [][]float64
		for i, n := range []int{37, 5000, 13} {
			p := e.randn(f32, n)
			var g kernels.Buffer
			if i == 1 {
				g = e.randn(bf16, n)
			} else {
				g = e.randn(f32, n)
			}
			ps, gs, ms, vs = append(ps, p), append(gs, g), append(ms, e.randn(f32, n)), append(vs, e.pos(f32, n))
		}
		scale := e.put(f32, []float64{0.5})
		skip := e.put(f32, []float64{0})
		a := kernels.AdamWArgs{Params: ps, Grads: gs, M: ms, V: vs, LR: []float64{1e-3, 2e-3, 0}, WeightDecay: []float64{0.01, 0, 0.1},
			Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 3, GradScale: scale, Skip: skip}
		e.b.AdamW(a)
		for i := range ps {
			outs = append(outs, e.get(ps[i]), e.get(ms[i]), e.get(vs[i]))
		}
		e.b.Upload(skip, 0, kernels.EncodeF64(f32, []float64{1}))
		e.b.AdamW(a)
		return append(outs, e.get(ps[0]))
	})
	type attnCfg struct {
		name       string
		d          kernels.DType
		B, Sq, Sk  int
		Hq, Hkv, D int
		causal     bool
		window     int
		keyLens    []int32
	}
	for _, ac := range []attnCfg{
		{"f32/gqa", f32, 2, 37, 37, 6, 2, 16, false, 0, nil},
		{"f32/keylens", f32, 2, 29, 41, 4, 4, 40, false, 0, []int32{41, 0}},
		{"f32/causal-window", f32, 1, 45, 45, 3, 1, 8, true, 7, nil},
		{"f32/d256", f32, 1, 19, 23, 2, 1, 256, true, 0, []int32{17}},
		// The tiled fp32 forward (attention_simt.cu) at its three head
		// sizes: the DiT's fp32 sampling (96, padded captions), GQA with a
		// window shorter than its key tile, cross attention with a sample
		// that sees no key, and a short sample whose later rows see none
		// beside rows of the same block that do.
		{"f32/d96/simt-keylens", f32, 2, 130, 130, 6, 6, 96, false, 0, []int32{130, 61}},
		{"f32/d64/simt-gqa-causal-window", f32, 1, 150, 150, 4, 2, 64, true, 40, nil},
		{"f32/d128/simt-cross", f32, 2, 37, 150, 2, 2, 128, false, 0, []int32{150, 0}},
		{"f32/d96/simt-causal-window-keylens", f32, 2, 80, 80, 2, 1, 96, true, 10, []int32{5, 80}},
		{"bf16/d96", bf16, 1, 100, 100, 6, 2, 96, false, 0, nil},
		{"bf16/d96/causal", bf16, 2, 70, 70, 3, 1, 96, true, 0, []int32{70, 33}},
		{"bf16/d64", bf16, 1, 77, 77, 2, 2, 64, false, 0, nil},
		{"bf16/d128/window", bf16, 1, 130, 130, 4, 2, 128, true, 20, nil},
		{"f64", f64, 1, 13, 17, 2, 1, 12, true, 0, nil},
		{"bf16/d96/long", bf16, 1, 300, 300, 6, 2, 96, false, 0, []int32{250}},
		{"bf16/d96/cross", bf16, 2, 77, 150, 3, 3, 96, false, 0, []int32{150, 90}},
		{"bf16/d96/causal-window", bf16, 1, 200, 200, 2, 1, 96, true, 50, nil},
		// The encoders' heads: Jina CLIP (64, bidirectional, right padding)
		// and Gemma 3 (256, 8 query / 4 kv heads, causal, a sliding window
		// on most layers, right padding); 256 runs attn_fwd_tc256 forward
		// and the portable backward.
		{"bf16/d64/jina-keylens", bf16, 2, 100, 100, 4, 4, 64, false, 0, []int32{100, 57}},
		{"bf16/d256/gemma-sliding", bf16, 2, 150, 150, 4, 2, 256, true, 40, []int32{150, 97}},
		{"bf16/d256/gemma-global", bf16, 2, 130, 130, 8, 4, 256, true, 0, []int32{130, 70}},
		{"bf16/d256/bidirectional", bf16, 1, 70, 90, 2, 1, 256, false, 0, []int32{85}},
		// fp16 (GPUs without bf16): the tensor-core forward's _f16 kernels,
		// the portable backward.
		{"f16/d96", f16, 1, 100, 100, 6, 2, 96, false, 0, nil},
		{"f16/d96/causal", f16, 2, 70, 70, 3, 1, 96, true, 0, []int32{70, 33}},
		{"f16/d128/window", f16, 1, 130, 130, 4, 2, 128, true, 20, nil},
		{"f16/d64/jina-keylens", f16, 2, 100, 100, 4, 4, 64, false, 0, []int32{100, 57}},
		{"f16/d256/gemma-sliding", f16, 2, 150, 150, 4, 2, 256, true, 40, []int32{150, 97}},
		// Cases for the SIMT forward's 16-bit kernels (the pre-sm80
		// variants below; the tensor cores serve them otherwise): cross
		// attention with a sample that sees no key, GQA under a causal
		// window shorter than a key tile, rows that see no key beside rows
		// of the same block that do.
		{"f16/d96/cross-empty", f16, 2, 37, 150, 2, 2, 96, false, 0, []int32{150, 0}},
		{"bf16/d128/cross-empty", bf16, 2, 37, 150, 2, 2, 128, false, 0, []int32{150, 0}},
		{"f16/d64/gqa-causal-window", f16, 1, 150, 150, 4, 2, 64, true, 40, nil},
		{"f16/d128/causal-window-keylens", f16, 2, 80, 80, 2, 1, 128, true, 10, []int32{5, 80}},
		{"bf16/d64/causal-window-keylens", bf16, 2, 80, 80, 2, 1, 64, true, 10, []int32{5, 80}},
	} {
		run := func(e *env) [][]float64 {
			nq, nk := ac.B*ac.Sq*ac.Hq*ac.D, ac.B*ac.Sk*ac.Hkv*ac.D
			st := f32
			if ac.d == f64 {
				st = f64
			}
			a := kernels.AttentionArgs{Q: e.randn(ac.d, nq), K: e.randn(ac.d, nk), V: e.randn(ac.d, nk), B: ac.B, Sq: ac.Sq, Sk: ac.Sk,
				Hq: ac.Hq, Hkv: ac.Hkv, D: ac.D, Scale: 1 / math.Sqrt(float64(ac.D)), KeyLens: ac.keyLens, Causal: ac.causal, Window: ac.window}
			o, lse := e.poison(ac.d, nq), e.poison(st, ac.B*ac.Hq*ac.Sq)
			e.b.Attention(a, o, lse)
			dO := e.randn(ac.d, nq)
			dq, dk, dv := e.poison(ac.d, nq), e.poison(ac.d, nk), e.poison(ac.d, nk)
			e.b.AttentionGrad(a, o, lse, dO, dq, dk, dv)
			return [][]float64{e.get(o), e.get(lse), e.get(dq), e.get(dk), e.get(dv)}
		}
		tol := kerneltest.Tol(ac.d, ac.d)
		if ac.d == f16 {
			// kerneltest.Tol gives fp16 bf16's bound, but fp16 rounds 8
			// times finer (2⁻¹¹ against 2⁻⁸) and so do the errors: against
			// float64, 2.1e-4 for the CPU backend's outputs and gradients,
			// 2.6e-4 for the emulated tensor-core forward, so near 3.5e-4
			// between the two. An eighth of the bf16 bound keeps bf16's
			// margin and fails a forward that rounds P to bf16 precision
			// (2e-3 in the emulator).
			tol /= 8
		}
		add("Attention/"+ac.name, tol, run)
		if ac.d == f32 && (ac.D == 64 || ac.D == 96 || ac.D == 128) {
			// attn_fwd_f, which the tiled forward stands in for.
			add("Attention/portable/"+ac.name, tol, func(e *env) [][]float64 {
				defer fastPathOff(e, fastAttnSIMT)()
				return run(e)
			})
		}
		if ac.d == bf16 || ac.d == f16 {
			// The mma.sync kernels other GPUs run, checked on Hopper too.
			add("Attention/mma.sync/"+ac.name, tol, func(e *env) [][]float64 {
				attentionWithoutWGMMA = true
				defer func() { attentionWithoutWGMMA = false }()
				return run(e)
			})
			// What a GPU before sm_80 (a T4) runs: the SIMT forward's
			// _bf16 and _f16 kernels at 64, 96 and 128, the portable
			// forward at 256 and the portable backward.
			add("Attention/pre-sm80/"+ac.name, tol, func(e *env) [][]float64 {
				attentionWithoutTensorCores = true
				defer func() { attentionWithoutTensorCores = false }()
				return run(e)
			})
		}
	}
	return append(cs, fusedCrossCases()...)
}

// fastPathOff turns fast path name off on e's backend when it is this
// package's (the CPU backend has none) and returns what turns it back on.
func fastPathOff(e *env, name string) func() {
	g, ok := e.b.(*Backend)
	if !ok {
		return func() {}
	}
	was := g.off
	g.off = map[string]bool{name: true}
	for k, v := range was {
		g.off[k] = g.off[k] || v
	}
	return func() { g.off = was }
}

// TestFaults checks that bad arguments and device-detected faults surface
// from Sync, naming the op, and leave the backend usable.
func TestFaults(t *testing.T) {
	g := openGPU(t)
	tab, _ := g.Alloc(f32, 4*3)
	ids, _ := g.Alloc(kernels.I32, 2)
	dst, _ := g.Alloc(f32, 2*3)
	g.Upload(ids, 0, kernels.EncodeI32([]int32{1, 9}))
	g.Gather(dst, tab, ids, 3)
	if err := g.Sync(); err == nil || !strings.Contains(err.Error(), "Gather") {
		t.Errorf("Gather with id 9 of 4 rows: Sync = %v, want an id-out-of-range failure", err)
	}
	g.Cast(dst, tab)
	if err := g.Sync(); err == nil || !strings.Contains(err.Error(), "Cast") {
		t.Errorf("Cast of mismatched lengths: Sync = %v", err)
	}
	g.Free(tab)
	g.Fill(tab, 1)
	if err := g.Sync(); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Errorf("Fill of a freed buffer: Sync = %v", err)
	}
	g.Fill(dst, 2)
	if err := g.Sync(); err != nil {
		t.Errorf("backend unusable after faults: %v", err)
	}
}

// TestMemorySteady runs a 1000-iteration allocate/compute/free loop and
// checks that device memory stays flat: buffers are freed explicitly and
// blocks come back from the cache, with no help from Go's collector.
func TestMemorySteady(t *testing.T) {
	g := openGPU(t)
	x, _ := g.Alloc(f32, 4099)
	g.Fill(x, 0.5)
	var reserved int64
	for i := 0; i < 1000; i++ {
		y, err := g.Alloc(bf16, 4099)
		if err != nil {
			t.Fatal(err)
		}
		z, err := g.Alloc(f32, 1)
		if err != nil {
			t.Fatal(err)
		}
		g.Unary(kernels.SiLU, y, x, kernels.UnaryParams{})
		g.SumSquares(z, []kernels.Buffer{x, y})
		g.Free(y)
		g.Free(z)
		if i == 10 {
			reserved = g.MemStats().Reserved
		}
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	st := g.MemStats()
	if st.Reserved != reserved {
		t.Errorf("reserved memory grew from %d to %d bytes over the loop", reserved, st.Reserved)
	}
	if st.Allocated != 4099*4+smallAlign-(4099*4)%smallAlign {
		t.Errorf("allocated %d bytes after the loop, want only x's block", st.Allocated)
	}
}
