package data

import (
	"context"
	"math"
	"testing"
)

// TestStandInDecodeInverts: decoding a stand-in latent gives back each 8×8
// block's mean colour.
func TestStandInDecodeInverts(t *testing.T) {
	img := RGB{W: 16, H: 8, Pix: make([]float32, 3*16*8)}
	cols := [2][3]float32{{0.8, -0.2, 0.1}, {-0.5, 0.4, 0.9}}
	for k := range 3 {
		for y := range 8 {
			for x := range 16 {
				img.Pix[k*128+y*16+x] = cols[x/8][k]
			}
		}
	}
	v := &StandInVAE{}
	ls, err := v.EncodeImages(context.Background(), []RGB{img})
	if err != nil {
		t.Fatal(err)
	}
	back, err := v.DecodeLatent(ls[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range img.Pix {
		if d := math.Abs(float64(back.Pix[i] - img.Pix[i])); d > 1e-5 {
			t.Fatalf("pixel %d: decoded %v, encoded %v", i, back.Pix[i], img.Pix[i])
		}
	}
}
