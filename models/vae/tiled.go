package vae

import (
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
)

// Decoding in tiles bounds the decoder's activations, which grow with the
// image (a 2048² image needs four times a 1024² one's): the latent is cut
// into overlapping square tiles, each decoded alone, and each decoded tile
// blended linearly into the ones above and to its left over the overlap
// before the overlap is cropped away. This is diffusers'
// AutoencoderKL.tiled_decode with its defaults for FLUX: tiles of
// tile_latent_min_size = sample_size / 8 = 1024 / 8 = 128 latent pixels,
// tile_overlap_factor 0.25, so tiles start every 96 latent pixels, blend over
// 256 image pixels and keep 768. The group norms and the mid-block attention
// see one tile at a time, so a tiled decode differs slightly from a whole
// one; a latent that fits in one tile is decoded whole, bit for bit the same.
const (
	// DefaultDecodeTile is the latent side of a decode tile, and the side
	// above which Decode tiles by default.
	DefaultDecodeTile = 128
	// tileOverlap is the fraction of a tile shared with its neighbour.
	tileOverlap = 0.25
)

// decodeTile is the latent side above which Decode tiles (0 when it never
// does).
func (m *VAE) decodeTile() int {
	switch t := m.opts.DecodeTile; {
	case t < 0:
		return 0
	case t == 0:
		return DefaultDecodeTile
	default:
		return t
	}
}

// DecodeTiled decodes z [B, 16, h, w] like Decode, in overlapping tiles of
// tile × tile latent pixels (see DefaultDecodeTile); a latent no larger than
// one tile is decoded whole.
func (m *VAE) DecodeTiled(z *ag.Tensor, tile int) (*ag.Tensor, error) {
	if err := m.checkInput("DecodeTiled", z, m.cfg.LatentChannels, 1); err != nil {
		return nil, err
	}
	if err := checkTile(tile); err != nil {
		return nil, fmt.Errorf("vae.DecodeTiled: %w", err)
	}
	return m.decodeTiled(z, tile), nil
}

// checkTile refuses tile sides that are not positive multiples of 4: only
// then do the tile stride (¾ of the side) and the blend (¼ of it, in image
// pixels) add up to the image — diffusers' int() roundings of other sides
// would drop or repeat rows.
func checkTile(tile int) error {
	if tile < 4 || tile%4 != 0 {
		return fmt.Errorf("tile side %d is not a positive multiple of 4 latent pixels", tile)
	}
	return nil
}

// decodeTiled decodes z in tiles of tile (a multiple of 4) latent pixels.
func (m *VAE) decodeTiled(z *ag.Tensor, tile int) *ag.Tensor {
	s := z.Shape()
	h, w := s[2], s[3]
	if h <= tile && w <= tile {
		return m.decoder(z)
	}
	f := m.cfg.Downsample()
	stride := int(float64(tile) * (1 - tileOverlap))
	blend := int(float64(tile*f) * tileOverlap)
	keep := tile*f - blend // = stride·f
	var above, rowsOut []*ag.Tensor
	for i := 0; i < h; i += stride {
		var row, cropped []*ag.Tensor
		for j := 0; j < w; j += stride {
			zr := ag.Slice(z, 2, i, min(i+tile, h))
			zt := ag.Slice(zr, 3, j, min(j+tile, w))
			zr.Release()
			d := m.decoder(zt)
			zt.Release()
			if above != nil {
				then(&d, func(t *ag.Tensor) *ag.Tensor { return blendEdge(above[len(row)], t, 2, blend) })
			}
			if len(row) > 0 {
				then(&d, func(t *ag.Tensor) *ag.Tensor { return blendEdge(row[len(row)-1], t, 3, blend) })
			}
			row = append(row, d)
			ds := d.Shape()
			cr := ag.Slice(d, 2, 0, min(keep, ds[2]))
			c := ag.Slice(cr, 3, 0, min(keep, ds[3]))
			cr.Release()
			cropped = append(cropped, c)
		}
		rowsOut = append(rowsOut, concatReleasing(3, cropped))
		for _, t := range above {
			t.Release()
		}
		above = row
	}
	for _, t := range above {
		t.Release()
	}
	return concatReleasing(2, rowsOut)
}

// blendEdge returns b with its first n rows (axis 2) or columns (axis 3)
// replaced by a linear blend from the last n of a, its neighbour before it
// on that axis: b[k] ← a[len−n+k]·(1 − k/n) + b[k]·k/n, n (≥ 1) at most
// either side. a is the neighbour as already blended with its own neighbours, as
// diffusers' in-place blend leaves it.
func blendEdge(a, b *ag.Tensor, axis, n int) *ag.Tensor {
	la, lb := a.Shape()[axis], b.Shape()[axis]
	n = min(n, la, lb)
	ramp, rest := make([]float64, n), make([]float64, n)
	for k := range n {
		ramp[k] = float64(k) / float64(n)
		rest[k] = 1 - ramp[k]
	}
	shape := []int{1, 1, 1, 1}
	shape[axis] = n
	e := b.Engine()
	wb, wa := e.FromFloat64(b.DType(), shape, ramp), e.FromFloat64(b.DType(), shape, rest)
	tail := ag.Slice(a, axis, la-n, la)
	head := ag.Slice(b, axis, 0, n)
	ta, tb := ag.Mul(tail, wa), ag.Mul(head, wb)
	for _, t := range []*ag.Tensor{tail, head, wa, wb} {
		t.Release()
	}
	mixed := ag.Add(ta, tb)
	ta.Release()
	tb.Release()
	if n == lb {
		return mixed
	}
	after := ag.Slice(b, axis, n, lb)
	out := ag.Concat(axis, mixed, after)
	mixed.Release()
	after.Release()
	return out
}

// concatReleasing concatenates parts along axis and releases them.
func concatReleasing(axis int, parts []*ag.Tensor) *ag.Tensor {
	if len(parts) == 1 {
		return parts[0]
	}
	out := ag.Concat(axis, parts...)
	for _, t := range parts {
		t.Release()
	}
	return out
}
