package vae

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
)

// Encoder adapts a VAE to data.ImageEncoder: host RGB images in [−1, 1]
// go in, shifted and scaled float32 latents come out. It runs without a
// tape and releases every tensor it makes, so it can share an engine with
// a trainer between steps; calls are serialised because an engine is not
// safe for concurrent use. Under autocast the engine keeps one
// low-precision cast of each weight until its next EndStep (its per-step
// cast cache), so repeated batches cast the weights once.
type Encoder struct {
	vae      *VAE
	autocast kernels.DType
	maxBatch int
	mu       sync.Mutex
}

// NewEncoder wraps m. autocast is the low-precision dtype the convolutions
// and attention run in (kernels.BF16 or F16), or 0 to run in the weights'
// dtype; maxBatch bounds the images per forward pass (0: all of a call's
// images at once), which bounds activation memory on big images.
func NewEncoder(m *VAE, autocast kernels.DType, maxBatch int) (*Encoder, error) {
	if m == nil {
		return nil, fmt.Errorf("vae: NewEncoder of a nil VAE")
	}
	if autocast != 0 && autocast != kernels.BF16 && autocast != kernels.F16 {
		return nil, fmt.Errorf("vae: encoder autocast must be BF16, F16 or 0, got %v", autocast)
	}
	if maxBatch < 0 {
		return nil, fmt.Errorf("vae: encoder batch limit %d is negative", maxBatch)
	}
	return &Encoder{vae: m, autocast: autocast, maxBatch: maxBatch}, nil
}

// Identity names everything that changes the latents: the architecture
// (including shift and scale), the weights' hash, the storage dtype and
// the autocast dtype. It is part of every cache key, so latents of another
// VAE or precision are never reused.
func (c *Encoder) Identity() string {
	m := c.vae
	cfg := sha256.Sum256([]byte(m.cfg.JSON()))
	ac := "off"
	if c.autocast != 0 {
		ac = c.autocast.String()
	}
	return fmt.Sprintf("flux-vae/config=%s/weights=%s/dtype=%v/autocast=%s",
		hex.EncodeToString(cfg[:8]), m.hash, m.opts.DType, ac)
}

// LatentChannels implements data.ImageEncoder.
func (c *Encoder) LatentChannels() int { return c.vae.cfg.LatentChannels }

// Downsample implements data.ImageEncoder.
func (c *Encoder) Downsample() int { return c.vae.cfg.Downsample() }

// EncodeImages implements data.ImageEncoder: every image must have the same
// size, sides divisible by Downsample, and 3·W·H values.
func (c *Encoder) EncodeImages(ctx context.Context, imgs []data.RGB) ([]data.Latent, error) {
	if len(imgs) == 0 {
		return nil, nil
	}
	w, h, div := imgs[0].W, imgs[0].H, c.Downsample()
	for i, img := range imgs {
		if img.W != w || img.H != h {
			return nil, fmt.Errorf("vae: image %d is %dx%d, image 0 is %dx%d: a batch must share one size", i, img.W, img.H, w, h)
		}
		if w < div || h < div || w%div != 0 || h%div != 0 || len(img.Pix) != 3*w*h {
			return nil, fmt.Errorf("vae: image %d is %dx%d with %d values: want sides that are positive multiples of %d and 3·W·H values", i, w, h, len(img.Pix), div)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	step := c.maxBatch
	if step == 0 {
		step = len(imgs)
	}
	out := make([]data.Latent, 0, len(imgs))
	for start := 0; start < len(imgs); start += step {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		lat, err := c.encode(imgs[start:min(start+step, len(imgs))])
		if err != nil {
			return nil, err
		}
		out = append(out, lat...)
	}
	return out, nil
}

// encode runs one forward pass over same-sized, checked images.
func (c *Encoder) encode(imgs []data.RGB) ([]data.Latent, error) {
	m := c.vae
	e := m.e
	w, h := imgs[0].W, imgs[0].H
	plane := 3 * w * h
	host := make([]float64, len(imgs)*plane)
	for i, img := range imgs {
		for j, v := range img.Pix {
			host[i*plane+j] = float64(v)
		}
	}
	// Inputs are uploaded in float32 (float64 for an F64 VAE): under
	// autocast bf16/fp16 storage still reads float32 images, and autocast
	// lowers the operands of each product itself, as PyTorch would. Without
	// autocast a bf16/fp16 VAE reads images in its own dtype, so that it
	// runs in that dtype throughout like a PyTorch VAE cast to it (a float32
	// image would promote every op to float32).
	in := kernels.F32
	switch {
	case m.opts.DType == kernels.F64:
		in = kernels.F64
	case c.autocast == 0 && (m.opts.DType == kernels.BF16 || m.opts.DType == kernels.F16):
		in = m.opts.DType
	}
	var vals []float64
	var err error
	prevCast := e.SetAutocast(c.autocast)
	e.NoGrad(func() {
		x := e.FromFloat64(in, []int{len(imgs), m.cfg.InChannels, h, w}, host)
		defer x.Release()
		lat, lerr := m.Latent(x)
		if lerr != nil {
			err = lerr
			return
		}
		defer lat.Release()
		vals, err = lat.Values()
	})
	e.SetAutocast(prevCast)
	if err != nil {
		return nil, fmt.Errorf("vae: encoding %d images of %dx%d: %w", len(imgs), w, h, err)
	}
	lc, lh, lw := m.cfg.LatentChannels, h/c.Downsample(), w/c.Downsample()
	n := lc * lh * lw
	out := make([]data.Latent, len(imgs))
	for i := range imgs {
		d := make([]float32, n)
		for j := range d {
			d[j] = float32(vals[i*n+j])
		}
		out[i] = data.Latent{Data: d, C: lc, H: lh, W: lw}
	}
	return out, nil
}

// The adapter is what the trainer's encode cache takes.
var _ data.ImageEncoder = (*Encoder)(nil)
