package kerneltest

import (
	"fmt"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Conv2D", testConv2D)
	register("Conv2DReferenceGradients", testConv2DReferenceGradients)
}

// convIn returns x[n, c, i, j], or 0 outside the image (zero padding).
func convIn(x []float64, a kernels.ConvArgs, n, c, i, j int) float64 {
	if i < 0 || i >= a.H || j < 0 || j >= a.W {
		return 0
	}
	return x[((n*a.Cin+c)*a.H+i)*a.W+j]
}

// convRef is the textbook cross-correlation: y[n,o,p,q] = bias[o] +
// Σ_{c,u,v} w[o,c,u,v]·x[n, c, p·stride+u−pad, q·stride+v−pad].
func convRef(x, w, bias []float64, a kernels.ConvArgs) []float64 {
	ho, wo := a.OutH(), a.OutW()
	y := make([]float64, a.N*a.Cout*ho*wo)
	for n := 0; n < a.N; n++ {
		for o := 0; o < a.Cout; o++ {
			for p := 0; p < ho; p++ {
				for q := 0; q < wo; q++ {
					var s float64
					if bias != nil {
						s = bias[o]
					}
					for c := 0; c < a.Cin; c++ {
						for u := 0; u < a.KH; u++ {
							for v := 0; v < a.KW; v++ {
								s += w[((o*a.Cin+c)*a.KH+u)*a.KW+v] * convIn(x, a, n, c, p*a.Stride+u-a.Pad, q*a.Stride+v-a.Pad)
							}
						}
					}
					y[((n*a.Cout+o)*ho+p)*wo+q] = s
				}
			}
		}
	}
	return y
}

// convGradRef differentiates convRef term by term: each product
// w[o,c,u,v]·x[n,c,i,j] that reached y[n,o,p,q] sends dy·x to dw and dy·w
// to dx (unless (i, j) is padding); dbias[o] sums dy.
func convGradRef(dy, x, w []float64, a kernels.ConvArgs) (dx, dw, db []float64) {
	ho, wo := a.OutH(), a.OutW()
	dx = make([]float64, len(x))
	dw = make([]float64, len(w))
	db = make([]float64, a.Cout)
	for n := 0; n < a.N; n++ {
		for o := 0; o < a.Cout; o++ {
			for p := 0; p < ho; p++ {
				for q := 0; q < wo; q++ {
					g := dy[((n*a.Cout+o)*ho+p)*wo+q]
					db[o] += g
					for c := 0; c < a.Cin; c++ {
						for u := 0; u < a.KH; u++ {
							for v := 0; v < a.KW; v++ {
								i, j := p*a.Stride+u-a.Pad, q*a.Stride+v-a.Pad
								if i < 0 || i >= a.H || j < 0 || j >= a.W {
									continue
								}
								wi := ((o*a.Cin+c)*a.KH+u)*a.KW + v
								xi := ((n*a.Cin+c)*a.H+i)*a.W + j
								dw[wi] += g * x[xi]
								dx[xi] += g * w[wi]
							}
						}
					}
				}
			}
		}
	}
	return dx, dw, db
}

// convCases are the shapes every dtype runs: 3×3 same-padding, stride 2
// downsampling (VAE encoder style, odd sides), 1×1, a 4×4 stride-2 kernel,
// a non-square kernel with padding larger than half of it, and a 64-channel
// layer big enough that the backend splits it over cores.
var convCases = []struct {
	a          kernels.ConvArgs
	bias       bool
	dx, dw, db bool
}{
	{kernels.ConvArgs{N: 2, Cin: 3, H: 7, W: 9, Cout: 5, KH: 3, KW: 3, Stride: 1, Pad: 1}, true, true, true, true},
	{kernels.ConvArgs{N: 1, Cin: 4, H: 13, W: 10, Cout: 3, KH: 3, KW: 3, Stride: 2, Pad: 1}, false, true, true, false},
	{kernels.ConvArgs{N: 2, Cin: 5, H: 6, W: 7, Cout: 4, KH: 1, KW: 1, Stride: 1, Pad: 0}, true, false, true, true},
	{kernels.ConvArgs{N: 1, Cin: 2, H: 9, W: 11, Cout: 3, KH: 4, KW: 4, Stride: 2, Pad: 1}, true, true, false, true},
	{kernels.ConvArgs{N: 2, Cin: 3, H: 5, W: 6, Cout: 2, KH: 2, KW: 3, Stride: 2, Pad: 2}, true, true, true, true},
	{kernels.ConvArgs{N: 1, Cin: 3, H: 7, W: 7, Cout: 2, KH: 3, KW: 3, Stride: 1, Pad: 0}, false, true, true, false},
	{kernels.ConvArgs{N: 1, Cin: 64, H: 13, W: 11, Cout: 37, KH: 3, KW: 3, Stride: 1, Pad: 1}, true, true, true, true},
	// The FLUX VAE's layer kinds at small sides (the CUDA backend's bf16
	// implicit GEMM serves them, with its 128-wide channel tile): a 3×3
	// resnet convolution, the stride-2 downsampler on its zero-extended odd
	// side, and a 1×1 shortcut that widens the channels.
	{kernels.ConvArgs{N: 1, Cin: 64, H: 12, W: 12, Cout: 128, KH: 3, KW: 3, Stride: 1, Pad: 1}, true, false, false, false},
	{kernels.ConvArgs{N: 1, Cin: 32, H: 17, W: 17, Cout: 32, KH: 3, KW: 3, Stride: 2, Pad: 0}, true, false, true, false},
	{kernels.ConvArgs{N: 2, Cin: 32, H: 8, W: 8, Cout: 96, KH: 1, KW: 1, Stride: 1, Pad: 0}, true, true, false, false},
}

func testConv2D(t *testing.T, b kernels.Backend) {
	for ci, tc := range convCases {
		for _, d := range pbDTypesFor(ci) {
			a := tc.a
			name := fmt.Sprintf("%v/n%d_c%d-%d_%dx%d_k%dx%d_s%d_p%d", d, a.N, a.Cin, a.Cout, a.H, a.W, a.KH, a.KW, a.Stride, a.Pad)
			t.Run(name, func(t *testing.T) {
				r := Rng(t)
				nx, nw, ny := a.N*a.Cin*a.H*a.W, a.Cout*a.Cin*a.KH*a.KW, a.N*a.Cout*a.OutH()*a.OutW()
				xb, x := Put(t, b, d, Randn(r, nx, 1))
				wb, w := Put(t, b, d, Randn(r, nw, 0.3))
				bb, bias := pbPutOpt(t, b, d, tc.bias, Randn(r, a.Cout, 1))
				yb := Poisoned(t, b, d, ny)
				b.Conv2D(yb, xb, wb, bb, a)
				Check(t, "y", Get(t, b, yb), convRef(x, w, bias, a), Tol(d, d))

				dyb, dy := Put(t, b, d, Randn(r, ny, 1))
				dxb := pbPoisonOpt(t, b, d, nx, tc.dx)
				dwb := pbPoisonOpt(t, b, d, nw, tc.dw)
				dbb := pbPoisonOpt(t, b, d, a.Cout, tc.db)
				b.Conv2DGrad(dxb, dwb, dbb, dyb, xb, wb, a)
				dx, dw, db := convGradRef(dy, x, w, a)
				if tc.dx {
					Check(t, "dx", Get(t, b, dxb), dx, Tol(d, d))
				}
				if tc.dw {
					Check(t, "dw", Get(t, b, dwb), dw, Tol(d, d))
				}
				if tc.db {
					Check(t, "dbias", Get(t, b, dbb), db, Tol(d, d))
				}
			})
		}
	}
}

// testConv2DReferenceGradients checks convGradRef against central
// differences of convRef on tiny shapes, strides 1 and 2 with padding.
func testConv2DReferenceGradients(t *testing.T, _ kernels.Backend) {
	for _, a := range []kernels.ConvArgs{
		{N: 2, Cin: 2, H: 4, W: 5, Cout: 3, KH: 3, KW: 3, Stride: 1, Pad: 1},
		{N: 1, Cin: 2, H: 5, W: 4, Cout: 2, KH: 2, KW: 3, Stride: 2, Pad: 2},
	} {
		t.Run(fmt.Sprintf("%dx%d_k%dx%d_s%d_p%d", a.H, a.W, a.KH, a.KW, a.Stride, a.Pad), func(t *testing.T) {
			r := Rng(t)
			ny := a.N * a.Cout * a.OutH() * a.OutW()
			x, w, bias := Randn(r, a.N*a.Cin*a.H*a.W, 1), Randn(r, a.Cout*a.Cin*a.KH*a.KW, 1), Randn(r, a.Cout, 1)
			g := Randn(r, ny, 1)
			loss := func() float64 { return pbDot(convRef(x, w, bias, a), g) }
			dx, dw, db := convGradRef(g, x, w, a)
			const h, tol = 1e-6, 1e-8
			Check(t, "dx", dx, pbNumGrad(loss, x, h), tol)
			Check(t, "dw", dw, pbNumGrad(loss, w, h), tol)
			Check(t, "dbias", db, pbNumGrad(loss, bias, h), tol)
		})
	}
}
