package pipeline

import (
	"context"
	"fmt"
	"sync"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/vae"
)

// Decoder turns the sampler's latents (shifted and scaled, as the DiT
// trains on them) into [3, H, W] images in [−1, 1].
type Decoder interface {
	// Name says what decodes, for the output and the PNG's parameters.
	Name() string
	// DecodeLatents decodes a batch of same-sized latents.
	DecodeLatents(ctx context.Context, ls []data.Latent) ([]data.RGB, error)
}

// VAEDecoder decodes with the FLUX autoencoder: z = latent/scale + shift
// through the decoder, as upstream's demo does before to_pil_image.
type VAEDecoder struct {
	vae      *vae.VAE
	autocast kernels.DType
	mu       sync.Mutex
}

// NewVAEDecoder wraps m; autocast is the dtype its convolutions run in
// (BF16, F16) or 0 for the weights' own.
func NewVAEDecoder(m *vae.VAE, autocast kernels.DType) *VAEDecoder {
	return &VAEDecoder{vae: m, autocast: autocast}
}

// LoadVAEDecoder loads the FLUX VAE file at path (in float32, as FLUX
// ships it) on e as a Decoder whose convolutions run in autocast; Release
// frees it.
func LoadVAEDecoder(e *ag.Engine, path string, autocast kernels.DType) (*VAEDecoder, error) {
	m, err := vae.Load(e, path, vae.Options{})
	if err != nil {
		return nil, err
	}
	return NewVAEDecoder(m, autocast), nil
}

// Release frees the VAE's weights.
func (d *VAEDecoder) Release() { d.vae.Release() }

// Name implements Decoder.
func (d *VAEDecoder) Name() string {
	return "FLUX VAE " + d.vae.WeightsHash()[:min(10, len(d.vae.WeightsHash()))]
}

// DecodeLatents implements Decoder.
func (d *VAEDecoder) DecodeLatents(ctx context.Context, ls []data.Latent) ([]data.RGB, error) {
	if len(ls) == 0 {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, h, w := ls[0].C, ls[0].H, ls[0].W
	n := c * h * w
	host := make([]float64, 0, len(ls)*n)
	for i, l := range ls {
		if l.C != c || l.H != h || l.W != w || len(l.Data) != n {
			return nil, fmt.Errorf("pipeline: latent %d is %d×%d×%d, latent 0 %d×%d×%d: a batch must share one size", i, l.C, l.H, l.W, c, h, w)
		}
		for _, v := range l.Data {
			host = append(host, float64(v))
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.vae.Engine()
	in := kernels.F32
	if d.vae.Options().DType == kernels.F64 {
		in = kernels.F64
	}
	var vals []float64
	var err error
	prev := e.SetAutocast(d.autocast)
	e.NoGrad(func() {
		x := e.FromFloat64(in, []int{len(ls), c, h, w}, host)
		z := d.vae.Denormalize(x)
		x.Release()
		img, derr := d.vae.Decode(z)
		z.Release()
		if derr != nil {
			err = derr
			return
		}
		vals, err = img.Values()
		img.Release()
	})
	e.SetAutocast(prev)
	if err != nil {
		return nil, fmt.Errorf("pipeline: VAE decode of %d latents %d×%d: %w", len(ls), h, w, err)
	}
	f := d.vae.Config().Downsample()
	return splitImages(vals, len(ls), f*h, f*w), nil
}

// splitImages cuts [B, 3, H, W] values into B images.
func splitImages(vals []float64, b, h, w int) []data.RGB {
	out := make([]data.RGB, b)
	per := 3 * h * w
	for i := range out {
		px := make([]float32, per)
		for j := range px {
			px[j] = float32(vals[i*per+j])
		}
		out[i] = data.RGB{Pix: px, W: w, H: h}
	}
	return out
}

// StandInDecoder is the inverse of data.StandInVAE, the stand-in image
// encoder the tiny demo model trains on: blocks of colour, a view of what a
// latent says, NOT a picture.
type StandInDecoder struct{}

// Name implements Decoder.
func (StandInDecoder) Name() string { return "stand-in decoder (not the FLUX VAE)" }

// DecodeLatents implements Decoder.
func (StandInDecoder) DecodeLatents(ctx context.Context, ls []data.Latent) ([]data.RGB, error) {
	out := make([]data.RGB, len(ls))
	for i, l := range ls {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		img, err := (&data.StandInVAE{}).DecodeLatent(l)
		if err != nil {
			return nil, fmt.Errorf("pipeline: %w", err)
		}
		out[i] = img
	}
	return out, nil
}
