package vae

import (
	"fmt"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// FLUX's autoencoder ships in two key layouts: diffusers'
// (vae/diffusion_pytorch_model.safetensors, the names this package uses)
// and Black Forest Labs' original ae.safetensors, which ComfyUI loads
// (encoder.down.0.block.0.norm1.weight, encoder.mid.attn_1.q.weight, …).
// The two hold the same numbers: the attention's q/k/v/proj_out are 1×1
// convolutions [C, C, 1, 1] in BFL's file and linears [C, C] in diffusers',
// and the decoder's up blocks are numbered in the opposite order. bflSource
// presents a BFL file under diffusers names so that one loader and one key
// check serve both.

// The key layouts of a FLUX autoencoder file, as Check and DetectLayout
// name them.
const (
	LayoutDiffusers = "diffusers"
	LayoutBFL       = "bfl"
)

// bflProbe is a key only BFL's layout has, diffusersProbe one only
// diffusers' has.
const (
	bflProbe       = "encoder.down.0.block.0.norm1.weight"
	diffusersProbe = "encoder.down_blocks.0.resnets.0.norm1.weight"
)

// DetectLayout tells from a file's tensor names whether it holds a FLUX
// autoencoder and in which key layout (LayoutDiffusers or LayoutBFL); ok
// is false for the names of anything else. It reads names only: Check
// tells whether the shapes fit too.
func DetectLayout(names []string) (layout string, ok bool) {
	for _, n := range names {
		switch n {
		case bflProbe:
			return LayoutBFL, true
		case diffusersProbe:
			return LayoutDiffusers, true
		}
	}
	return "", false
}

// bflName maps a diffusers parameter name of cfg to its BFL name, and
// reports whether the weight is an attention linear stored as a 1×1 conv.
func bflName(name string, cfg Config) (string, bool) {
	n := len(cfg.BlockOutChannels)
	parts := strings.Split(name, ".")
	var out []string
	conv1x1 := false
	for i := 0; i < len(parts); i++ {
		p := parts[i]
		switch {
		case p == "down_blocks":
			out = append(out, "down")
		case p == "up_blocks" && i+1 < len(parts):
			var idx int
			fmt.Sscanf(parts[i+1], "%d", &idx)
			out = append(out, "up", fmt.Sprint(n-1-idx))
			i++
		case p == "resnets" && i > 0 && parts[i-1] == "mid_block" && i+1 < len(parts):
			out = append(out, map[string]string{"0": "block_1", "1": "block_2"}[parts[i+1]])
			i++
		case p == "resnets":
			out = append(out, "block")
		case p == "mid_block":
			out = append(out, "mid")
		case p == "attentions" && i+1 < len(parts): // attentions.0 → attn_1
			out = append(out, "attn_1")
			i++
		case p == "downsamplers" && i+1 < len(parts): // downsamplers.0 → downsample
			out = append(out, "downsample")
			i++
		case p == "upsamplers" && i+1 < len(parts):
			out = append(out, "upsample")
			i++
		case p == "conv_shortcut":
			out = append(out, "nin_shortcut")
		case p == "conv_norm_out":
			out = append(out, "norm_out")
		case p == "group_norm":
			out = append(out, "norm")
		case p == "to_q" || p == "to_k" || p == "to_v":
			out = append(out, p[3:])
			conv1x1 = true
		case p == "to_out" && i+1 < len(parts): // to_out.0 → proj_out
			out = append(out, "proj_out")
			conv1x1 = true
			i++
		default:
			out = append(out, p)
		}
	}
	return strings.Join(out, "."), conv1x1 && parts[len(parts)-1] == "weight"
}

// bflSource is a BFL-layout file seen under diffusers names.
type bflSource struct {
	f        *safetensors.File
	toFile   map[string]string // diffusers name → BFL name
	fromFile map[string]string // BFL name → diffusers name
	squeeze  map[string]bool   // diffusers names stored as [C, C, 1, 1]
}

// newBFLSource maps every parameter of cfg onto f's BFL names.
func newBFLSource(f *safetensors.File, cfg Config) *bflSource {
	s := &bflSource{f: f, toFile: map[string]string{}, fromFile: map[string]string{}, squeeze: map[string]bool{}}
	for _, p := range cfg.Params() {
		b, sq := bflName(p.Name, cfg)
		s.toFile[p.Name], s.fromFile[b] = b, p.Name
		s.squeeze[p.Name] = sq
	}
	return s
}

// Names lists the file's tensors, each under its diffusers name when it
// has one (others keep their file name and show up as unexpected).
func (s *bflSource) Names() []string {
	var out []string
	for _, n := range s.f.Names() {
		if d, ok := s.fromFile[n]; ok {
			n = d
		}
		out = append(out, n)
	}
	return out
}

func (s *bflSource) file(name string) string {
	if b, ok := s.toFile[name]; ok {
		return b
	}
	return name
}

// Info describes a tensor by its diffusers name; an attention weight stored
// as a 1×1 conv reports its [C, C] linear shape (the bytes are the same).
func (s *bflSource) Info(name string) (safetensors.TensorInfo, bool) {
	info, ok := s.f.Info(s.file(name))
	if !ok {
		return info, false
	}
	info.Name = name
	if sh := info.Shape; s.squeeze[name] && len(sh) == 4 && sh[2] == 1 && sh[3] == 1 {
		info.Shape = []int{sh[0], sh[1]}
	}
	return info, true
}

// Metadata is the file's.
func (s *bflSource) Metadata() map[string]string { return s.f.Metadata() }

// Float64 reads a tensor by its diffusers name.
func (s *bflSource) Float64(name string) ([]float64, error) { return s.f.Float64(s.file(name)) }

// Bytes reads a tensor's raw bytes by its diffusers name.
func (s *bflSource) Bytes(name string) ([]byte, error) { return s.f.Bytes(s.file(name)) }
