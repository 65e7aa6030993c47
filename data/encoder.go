package data

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"strings"
	"sync/atomic"
	"unicode"

	"github.com/newbie-train/newbie-train/kernels"
)

// FLUX.1 VAE latent normalisation (DESIGN.md): the DiT trains on
// (z − LatentShift) × LatentScale where z is the encoder's mean.
const (
	LatentShift = 0.1159
	LatentScale = 0.3611
)

// Latent is an encoded image: C×H×W float32, row-major, already shifted and
// scaled for the DiT.
type Latent struct {
	Data    []float32
	C, H, W int
}

// ImageEncoder turns images into latents: the FLUX VAE's encoder in
// training, StandInVAE in tests and the demo.
type ImageEncoder interface {
	// Identity names the model and everything that changes its output
	// (weights hash, dtype); it is part of every cache key, so a different
	// VAE never reuses another's latents.
	Identity() string
	// LatentChannels (16 for FLUX) and Downsample (8) fix the latent shape.
	LatentChannels() int
	Downsample() int
	// EncodeImages encodes a batch of same-sized [3,H,W] images with values
	// in [−1, 1] to [C, H/8, W/8] latents, shifted and scaled.
	EncodeImages(ctx context.Context, imgs []RGB) ([]Latent, error)
}

// TextEncoding is one encoded text.
type TextEncoding struct {
	// Features are the per-token hidden states, Tokens×Dim row-major (for
	// Gemma 3 4B: the penultimate layer, Dim 2560, at most 512 tokens).
	Features    []float32
	Tokens, Dim int
	// Mask marks real tokens with 1 (an encoder that pads returns 0s).
	Mask []int32
	// Pooled is the text's single embedding (Jina CLIP v2: 1024 values).
	Pooled []float32
}

// TextEncoder encodes caption texts. Gemma fills Features and Mask; Jina
// CLIP fills Pooled; a stand-in may fill both.
type TextEncoder interface {
	// Identity: see ImageEncoder.Identity.
	Identity() string
	EncodeTexts(ctx context.Context, texts []string) ([]TextEncoding, error)
}

// TextEncoders is the pair of text encoders NewBie conditions on.
type TextEncoders struct {
	// Features gives the token features and mask; it reads
	// SystemPrompt + caption.
	Features TextEncoder
	// Pooled gives the pooled vector; it reads the caption alone.
	Pooled TextEncoder
}

// StandInVAE is a deterministic stand-in for the FLUX VAE encoder, NOT the
// real model: each latent cell is a fixed random linear mix of its 8×8
// block's mean colour, shifted and scaled like a real latent. It has the
// real encoder's shapes and determinism, so the cache and loader can be
// tested and demonstrated without weights.
type StandInVAE struct {
	// Calls counts encoded images (tests use it to see what was re-encoded).
	Calls atomic.Int64
}

// Identity implements ImageEncoder.
func (*StandInVAE) Identity() string { return "standin-vae-v1" }

// LatentChannels implements ImageEncoder.
func (*StandInVAE) LatentChannels() int { return 16 }

// Downsample implements ImageEncoder.
func (*StandInVAE) Downsample() int { return 8 }

// EncodeImages implements ImageEncoder.
func (v *StandInVAE) EncodeImages(ctx context.Context, imgs []RGB) ([]Latent, error) {
	out := make([]Latent, len(imgs))
	for n, img := range imgs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if img.W%8 != 0 || img.H%8 != 0 || len(img.Pix) != 3*img.W*img.H {
			return nil, fmt.Errorf("standin-vae: image %dx%d with %d values: want sides divisible by 8 and 3·W·H values", img.W, img.H, len(img.Pix))
		}
		h, w := img.H/8, img.W/8
		l := Latent{Data: make([]float32, 16*h*w), C: 16, H: h, W: w}
		plane := img.W * img.H
		for i := 0; i < h; i++ {
			for j := 0; j < w; j++ {
				var m [3]float64
				for k := 0; k < 3; k++ {
					for y := 8 * i; y < 8*i+8; y++ {
						for x := 8 * j; x < 8*j+8; x++ {
							m[k] += float64(img.Pix[k*plane+y*img.W+x])
						}
					}
					m[k] /= 64
				}
				for c := 0; c < 16; c++ {
					z := kernels.NormalAt(0x5eed, uint64(4*c+3), 0, 0.1)
					for k := 0; k < 3; k++ {
						z += m[k] * kernels.NormalAt(0x5eed, uint64(4*c+k), 0, 1)
					}
					l.Data[(c*h+i)*w+j] = float32((z - LatentShift) * LatentScale)
				}
			}
		}
		out[n] = l
		v.Calls.Add(1)
	}
	return out, nil
}

// StandInTextEncoder is a deterministic stand-in for Gemma 3 and Jina CLIP,
// NOT a real language model: it splits text into word and punctuation
// tokens (plus a leading BOS, as Gemma's tokenizer adds one) and gives each
// token a fixed pseudo-random vector depending on the token and its
// position; the pooled vector is the mean of per-token vectors. Equal texts
// give equal encodings; different texts differ.
type StandInTextEncoder struct {
	Dim, PooledDim, MaxTokens int
	// Calls counts encoded texts.
	Calls atomic.Int64
}

// NewStandInTextEncoder makes a stand-in with the given feature width,
// pooled width and token limit (2560, 1024 and 512 match the real models).
func NewStandInTextEncoder(dim, pooledDim, maxTokens int) *StandInTextEncoder {
	return &StandInTextEncoder{Dim: dim, PooledDim: pooledDim, MaxTokens: maxTokens}
}

// Identity implements TextEncoder.
func (s *StandInTextEncoder) Identity() string {
	return fmt.Sprintf("standin-text-v1/dim=%d/pooled=%d/max=%d", s.Dim, s.PooledDim, s.MaxTokens)
}

func standInTokens(text string, limit int) []string {
	toks := []string{"<bos>"}
	var cur strings.Builder
	flush := func() {
		if cur.Len() > 0 {
			toks = append(toks, cur.String())
			cur.Reset()
		}
	}
	for _, r := range text {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			cur.WriteRune(r)
		case unicode.IsSpace(r):
			flush()
		default:
			flush()
			toks = append(toks, string(r))
		}
	}
	flush()
	if len(toks) > limit {
		toks = toks[:limit]
	}
	return toks
}

func tokenSeed(tok string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(tok))
	return h.Sum64()
}

// EncodeTexts implements TextEncoder.
func (s *StandInTextEncoder) EncodeTexts(ctx context.Context, texts []string) ([]TextEncoding, error) {
	if s.Dim < 1 || s.PooledDim < 0 || s.MaxTokens < 1 {
		return nil, fmt.Errorf("standin-text: dims %d/%d and token limit %d must be positive", s.Dim, s.PooledDim, s.MaxTokens)
	}
	out := make([]TextEncoding, len(texts))
	for n, text := range texts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		toks := standInTokens(text, s.MaxTokens)
		e := TextEncoding{Tokens: len(toks), Dim: s.Dim, Features: make([]float32, len(toks)*s.Dim), Mask: make([]int32, len(toks)), Pooled: make([]float32, s.PooledDim)}
		for t, tok := range toks {
			seed := tokenSeed(tok)
			for d := 0; d < s.Dim; d++ {
				e.Features[t*s.Dim+d] = float32(kernels.NormalAt(seed, uint64(d), 0, 1) + 0.1*math.Sin(float64(t)*float64(d+1)/16))
			}
			e.Mask[t] = 1
			for p := 0; p < s.PooledDim; p++ {
				e.Pooled[p] += float32(kernels.NormalAt(seed, uint64(1<<32+p), 0, 1) / float64(len(toks)))
			}
		}
		out[n] = e
		s.Calls.Add(1)
	}
	return out, nil
}
