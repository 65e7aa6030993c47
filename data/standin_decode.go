package data

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// DecodeLatent inverts StandInVAE's encoding as far as it can be inverted:
// each latent cell's 16 channels are a known linear mix of its 8×8 block's
// mean colour, so a least-squares solve gives the block colour back. The
// result is a blocky [3, 8·H, 8·W] image in [−1, 1] — a preview of what the
// colours of the latent say, NOT a real decoder.
func (*StandInVAE) DecodeLatent(l Latent) (RGB, error) {
	if l.C != 16 || len(l.Data) != l.C*l.H*l.W {
		return RGB{}, fmt.Errorf("standin-vae: latent %d×%d×%d with %d values", l.C, l.H, l.W, len(l.Data))
	}
	// M[c][k] and bias[c] as EncodeImages draws them; solve (MᵀM) m = Mᵀ(z − bias).
	var m [16][3]float64
	var bias [16]float64
	var ata [3][3]float64
	for c := range 16 {
		bias[c] = kernels.NormalAt(0x5eed, uint64(4*c+3), 0, 0.1)
		for k := range 3 {
			m[c][k] = kernels.NormalAt(0x5eed, uint64(4*c+k), 0, 1)
		}
		for a := range 3 {
			for b := range 3 {
				ata[a][b] += m[c][a] * m[c][b]
			}
		}
	}
	inv, ok := invert3(ata)
	if !ok {
		return RGB{}, fmt.Errorf("standin-vae: mixing matrix is singular")
	}
	img := RGB{W: 8 * l.W, H: 8 * l.H, Pix: make([]float32, 3*64*l.W*l.H)}
	plane := img.W * img.H
	for i := range l.H {
		for j := range l.W {
			var atz [3]float64
			for c := range 16 {
				z := float64(l.Data[(c*l.H+i)*l.W+j])/LatentScale + LatentShift - bias[c]
				for k := range 3 {
					atz[k] += m[c][k] * z
				}
			}
			for k := range 3 {
				v := inv[k][0]*atz[0] + inv[k][1]*atz[1] + inv[k][2]*atz[2]
				v = max(-1, min(1, v))
				for y := 8 * i; y < 8*i+8; y++ {
					for x := 8 * j; x < 8*j+8; x++ {
						img.Pix[k*plane+y*img.W+x] = float32(v)
					}
				}
			}
		}
	}
	return img, nil
}

// invert3 inverts a 3×3 matrix by its adjugate.
func invert3(a [3][3]float64) ([3][3]float64, bool) {
	var inv [3][3]float64
	det := a[0][0]*(a[1][1]*a[2][2]-a[1][2]*a[2][1]) -
		a[0][1]*(a[1][0]*a[2][2]-a[1][2]*a[2][0]) +
		a[0][2]*(a[1][0]*a[2][1]-a[1][1]*a[2][0])
	if det == 0 {
		return inv, false
	}
	for r := range 3 {
		for c := range 3 {
			// cofactor of (c, r) over det: the transpose of the cofactors.
			r1, r2 := (c+1)%3, (c+2)%3
			c1, c2 := (r+1)%3, (r+2)%3
			inv[r][c] = (a[r1][c1]*a[r2][c2] - a[r1][c2]*a[r2][c1]) / det
		}
	}
	return inv, true
}
