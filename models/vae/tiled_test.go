package vae

import (
	"math/rand/v2"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// tiledRun loads the tiny golden VAE in dtype d with decodeTile, and decodes
// the latent z (shape [1, 16, h, w]) with Decode, or with DecodeTiled when
// tile > 0.
func tiledRun(t *testing.T, d kernels.DType, decodeTile, tile int, z []float64, h, w int) ([]float64, []int) {
	t.Helper()
	g := openGolden(t)
	e := newEngine()
	m, err := Load(e, g.weights, Options{DType: d, DecodeTile: decodeTile})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	var out []float64
	var shape []int
	e.NoGrad(func() {
		x := e.FromFloat64(d, []int{1, m.cfg.LatentChannels, h, w}, z)
		var y *ag.Tensor
		if tile > 0 {
			y, err = m.DecodeTiled(x, tile)
		} else {
			y, err = m.Decode(x)
		}
		if err != nil {
			t.Fatal(err)
		}
		out, shape = values(t, y), y.Shape()
	})
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	return out, shape
}

// TestDecodeTiledOneTile: a tile at least as large as the latent decodes
// it whole, bit for bit, and Decode tiles only above Options.DecodeTile.
func TestDecodeTiledOneTile(t *testing.T) {
	const h, w = 6, 8
	z := kerneltest.Randn(rand.New(rand.NewPCG(5, 6)), 16*h*w, 1)
	whole, _ := tiledRun(t, kernels.F32, -1, 0, z, h, w)
	for _, tc := range []struct {
		name             string
		decodeTile, tile int
	}{
		{"DecodeTiled tile = side", -1, 8},
		{"DecodeTiled tile > side", -1, 64},
		{"Decode by default", 0, 0},
		{"Decode with DecodeTile > side", 12, 0},
	} {
		got, _ := tiledRun(t, kernels.F32, tc.decodeTile, tc.tile, z, h, w)
		kerneltest.Check(t, tc.name, got, whole, 0)
	}
	tiled, _ := tiledRun(t, kernels.F32, 4, 0, z, h, w)
	if _, err := (Options{DecodeTile: 6}).withDefaults(); err == nil {
		t.Error("a decode tile of 6 (not a multiple of 4) was accepted")
	}
	if kernels.RelErr(tiled, whole) == 0 {
		t.Error("Decode with DecodeTile 4 on a 6×8 latent did not tile")
	}
}

// TestDecodeTiledBlend checks the tiling against diffusers' tiled_decode
// written out on the host in float64: each tile decoded whole by the same
// VAE, blended in place into the tiles above and to the left of it, cropped
// and joined. The latent's sides leave ragged last tiles, the last column
// no wider than the blend.
func TestDecodeTiledBlend(t *testing.T) {
	const h, w, tile = 9, 10, 4
	z := kerneltest.Randn(rand.New(rand.NewPCG(7, 8)), 16*h*w, 1)
	got, shape := tiledRun(t, kernels.F64, -1, tile, z, h, w)
	const f = 8
	stride, blend := tile*3/4, tile*f/4 // diffusers' int(0.75·tile), int(0.25·8·tile)
	keep := tile*f - blend
	if shape[2] != h*f || shape[3] != w*f {
		t.Fatalf("decoded shape %v, want [1 3 %d %d]", shape, h*f, w*f)
	}
	// img is one decoded tile: [3][rows][cols].
	type img struct {
		rows, cols int
		v          []float64
	}
	at := func(m img, c, y, x int) *float64 { return &m.v[(c*m.rows+y)*m.cols+x] }
	var rows [][]img
	for i := 0; i < h; i += stride {
		var row []img
		for j := 0; j < w; j += stride {
			th, tw := min(tile, h-i), min(tile, w-j)
			sub := make([]float64, 16*th*tw)
			for c := range 16 {
				for y := range th {
					for x := range tw {
						sub[(c*th+y)*tw+x] = z[(c*h+i+y)*w+j+x]
					}
				}
			}
			v, _ := tiledRun(t, kernels.F64, -1, 0, sub, th, tw)
			cur := img{th * f, tw * f, v}
			if len(rows) > 0 { // blend_v with the (already blended) tile above
				a := rows[len(rows)-1][len(row)]
				n := min(a.rows, cur.rows, blend)
				for c := range 3 {
					for y := range n {
						for x := range cur.cols {
							p := at(cur, c, y, x)
							*p = *at(a, c, a.rows-n+y, x)*(1-float64(y)/float64(n)) + *p*(float64(y)/float64(n))
						}
					}
				}
			}
			if len(row) > 0 { // blend_h with the tile to the left
				a := row[len(row)-1]
				n := min(a.cols, cur.cols, blend)
				for c := range 3 {
					for y := range cur.rows {
						for x := range n {
							p := at(cur, c, y, x)
							*p = *at(a, c, y, a.cols-n+x)*(1-float64(x)/float64(n)) + *p*(float64(x)/float64(n))
						}
					}
				}
			}
			row = append(row, cur)
		}
		rows = append(rows, row)
	}
	want := make([]float64, 3*h*f*w*f)
	for ti, row := range rows {
		for tj, m := range row {
			for c := range 3 {
				for y := range min(keep, m.rows) {
					for x := range min(keep, m.cols) {
						want[(c*h*f+ti*keep+y)*w*f+tj*keep+x] = *at(m, c, y, x)
					}
				}
			}
		}
	}
	kerneltest.Check(t, "tiled decode", got, want, 1e-12)
}

// TestDecodeTiledCloseToWhole states how far tiles of ¾ of the side move
// the tiny VAE's decode of a larger random latent from the whole decode:
// relative error 0.39 measured, tolerance 0.45. The group norms and the
// mid-block attention see one tile at a time, and with this VAE's random
// weights that alone moves the decode a lot: the first 12×12 tile decoded by
// itself differs from the whole decode by 0.17 over the 48×48 image pixels it
// alone produces. (TestDecodeTiledBlend shows the tiling arithmetic itself
// is diffusers' to 1e-12.)
func TestDecodeTiledCloseToWhole(t *testing.T) {
	const h, w, tile, tol = 16, 16, 12, 0.45
	z := kerneltest.Randn(rand.New(rand.NewPCG(9, 10)), 16*h*w, 1)
	whole, _ := tiledRun(t, kernels.F32, -1, 0, z, h, w)
	tiled, _ := tiledRun(t, kernels.F32, -1, tile, z, h, w)
	e := kernels.RelErr(tiled, whole)
	t.Logf("tiles of %d on a %d×%d latent: rel err %.3g against the whole decode (tolerance %g)", tile, h, w, e, tol)
	if !(e <= tol) {
		t.Errorf("rel err %.3g > %g", e, tol)
	}
}
