package checkpoints

import (
	"fmt"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// Key forms of the two single-file formats.
//
// What ComfyUI accepts, read from comfyanonymous/ComfyUI at its current
// master (comfy/lora.py: model_lora_keys_unet and load_lora; comfy/
// weight_adapter/lora.py: LoRAAdapter.load; comfy/utils.py:
// z_image_to_diffusers; comfy/lora_convert.py):
//
//   - model_lora_keys_unet first maps, for every model, each state-dict key
//     `diffusion_model.<path>.weight` from the generic key
//     `diffusion_model.<path>` ("generic lora format without any weird key
//     names") and from `lora_unet_<path with . → _>` (kohya). ComfyUI holds
//     the Next-DiT (its Lumina2 model class, which NewBie's ComfyUI nodes
//     extend) under `diffusion_model.` with the upstream module names, so
//     `diffusion_model.layers.0.attention.qkv` and
//     `lora_unet_layers_0_attention_qkv` both reach
//     `diffusion_model.layers.0.attention.qkv.weight`.
//   - Its Lumina2 branch adds diffusers-style names built by
//     z_image_to_diffusers (`layers.N.attention.to_q` … sliced into qkv,
//     with or without `diffusion_model.`/`transformer.` prefixes); those are
//     for LoRAs trained on split q/k/v and are not what we write.
//   - LoRAAdapter.load looks, for each mapped key x, for `x.lora_up.weight`
//     with `x.lora_down.weight` (kohya) or `x.lora_B.weight` with `x.lora_A.weight`
//     (the "diffusers2" form diffusion-pipe writes), and for `x.alpha`, read
//     with `.item()` (so a 0-d or [1] tensor of any float dtype); the scale
//     is alpha / rank with rank = the down matrix's first dimension, and a
//     missing alpha means scale 1.
//   - lora_convert.py only rewrites BFL-control and a few video formats; it
//     leaves these keys alone.
//
// So the ComfyUI file is `diffusion_model.<path>.lora_A.weight`,
// `.lora_B.weight` and a 0-d F32 `.alpha`; kohya is `lora_unet_<path>`
// with `.lora_down.weight`, `.lora_up.weight` and `.alpha`.
const (
	comfyPrefix = "diffusion_model."
	kohyaPrefix = "lora_unet_"
)

// kohyaName is the kohya key stem of a module path.
func kohyaName(path string) string {
	return kohyaPrefix + strings.ReplaceAll(path, ".", "_")
}

// kohyaWords are the Next-DiT module names that contain an underscore. A
// kohya key replaces every dot with an underscore, so reading one back
// needs to know which underscores were there to begin with; any name not
// listed here is split at every underscore.
var kohyaWords = [][]string{
	{"adaLN", "modulation"},
	{"feed", "forward"},
	{"noise", "refiner"},
	{"context", "refiner"},
	{"final", "layer"},
	{"x", "embedder"},
	{"cap", "embedder"},
	{"t", "embedder"},
	{"clip", "text", "pooled", "proj"},
	{"time", "text", "embed"},
	{"attention", "norm1"},
	{"attention", "norm2"},
	{"ffn", "norm1"},
	{"ffn", "norm2"},
	{"q", "norm"},
	{"k", "norm"},
	{"norm", "final"},
	{"x", "pad", "token"},
	{"cap", "pad", "token"},
}

// kohyaPath recovers the module path from a kohya key stem (without the
// lora_unet_ prefix) by joining the tokens of known underscore names and
// putting dots everywhere else.
func kohyaPath(stem string) string {
	toks := strings.Split(stem, "_")
	var parts []string
	for i := 0; i < len(toks); {
		n := 1
		for _, w := range kohyaWords {
			if len(w) > n && i+len(w) <= len(toks) && equalStrings(toks[i:i+len(w)], w) {
				n = len(w)
			}
		}
		parts = append(parts, strings.Join(toks[i:i+n], "_"))
		i += n
	}
	return strings.Join(parts, ".")
}

func equalStrings(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// singleKeys gives the A, B and alpha keys of a layer in a single-file
// format.
func singleKeys(f Format, path string) (a, b, alpha string) {
	if f == FormatKohya {
		s := kohyaName(path)
		return s + ".lora_down.weight", s + ".lora_up.weight", s + ".alpha"
	}
	s := comfyPrefix + path
	return s + ".lora_A.weight", s + ".lora_B.weight", s + ".alpha"
}

// WriteComfyUI writes l as a ComfyUI / diffusion-pipe single file.
func WriteComfyUI(path string, l *LoRA, opt ExportOptions) error {
	return writeSingle(path, l, FormatComfyUI, opt)
}

// WriteKohya writes l as a kohya single file. Its header also carries
// kohya's ss_network_dim / ss_network_alpha / ss_network_module so tools
// that show kohya metadata see the rank and alpha, and sshs_model_hash (the
// SHA-256 of the tensor data) by which LoRA browsers identify a file.
func WriteKohya(path string, l *LoRA, opt ExportOptions) error {
	return writeSingle(path, l, FormatKohya, opt)
}

func writeSingle(path string, l *LoRA, format Format, opt ExportOptions) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("checkpoints: writing %s LoRA %s: %w", format, path, err)
	}
	dt, err := opt.dtype()
	if err != nil {
		return fmt.Errorf("checkpoints: writing %s LoRA %s: %w", format, path, err)
	}
	var ts []safetensors.Tensor
	for _, name := range l.LayerNames() {
		ly := l.Layers[name]
		if format == FormatKohya {
			// kohya keys lose the dots; refuse a name that would not read
			// back as itself rather than write a file that maps elsewhere.
			if back := kohyaPath(strings.TrimPrefix(kohyaName(name), kohyaPrefix)); back != name {
				return fmt.Errorf("checkpoints: writing kohya LoRA %s: layer %q becomes key %q, which reads back as %q", path, name, kohyaName(name), back)
			}
		}
		a, b, al := singleKeys(format, name)
		ts = append(ts,
			floatTensor(a, []int{ly.Rank, ly.In}, ly.A, dt),
			floatTensor(b, []int{ly.Out, ly.Rank}, ly.B, dt),
			alphaTensor(al, ly.Alpha))
	}
	meta := l.baseMeta()
	if format == FormatKohya {
		meta["ss_network_dim"] = meta[MetaRank]
		meta["ss_network_alpha"] = meta[MetaAlpha]
		meta["ss_network_module"] = "networks.lora"
		h, err := safetensors.DataSHA256(ts)
		if err != nil {
			return fmt.Errorf("checkpoints: writing %s LoRA %s: %w", format, path, err)
		}
		meta[MetaKohyaHash] = h
	}
	if err := safetensors.Write(path, ts, meta); err != nil {
		return fmt.Errorf("checkpoints: writing %s LoRA: %w", format, err)
	}
	return nil
}

// readSingle reads a ComfyUI or kohya file. ComfyUI files may also carry
// kohya-style lora_up/lora_down suffixes under diffusion_model. (ComfyUI
// accepts both), so both suffix pairs are taken in either format.
func readSingle(f *safetensors.File, format Format) (*LoRA, error) {
	pairs := map[string]*layerPair{}
	get := func(p string) *layerPair {
		if pairs[p] == nil {
			pairs[p] = &layerPair{}
		}
		return pairs[p]
	}
	for _, t := range f.Tensors() {
		stem := strings.TrimPrefix(t.Name, comfyPrefix)
		if format == FormatKohya {
			stem = t.Name[len(kohyaPrefix):]
		}
		var which string
		for _, suf := range []string{".lora_A.weight", ".lora_down.weight", ".lora_B.weight", ".lora_up.weight", ".alpha"} {
			if strings.HasSuffix(stem, suf) {
				which, stem = suf, strings.TrimSuffix(stem, suf)
				break
			}
		}
		if which == "" {
			return nil, fmt.Errorf("%s: key %q is not a LoRA matrix or alpha (want .lora_A/.lora_B/.lora_down/.lora_up.weight or .alpha)", f.Path(), t.Name)
		}
		path := stem
		if format == FormatKohya {
			path = kohyaPath(stem)
		}
		p := get(path)
		var slot *string
		switch which {
		case ".lora_A.weight", ".lora_down.weight":
			slot = &p.aKey
			p.aShape = t.Shape
		case ".lora_B.weight", ".lora_up.weight":
			slot = &p.bKey
			p.bShape = t.Shape
		default:
			slot = &p.alphaKey
		}
		if *slot != "" {
			return nil, fmt.Errorf("%s: keys %q and %q are the same matrix of layer %q", f.Path(), *slot, t.Name, path)
		}
		*slot = t.Name
	}
	l := &LoRA{Layers: map[string]LoRALayer{}}
	names := make([]string, 0, len(pairs))
	for n := range pairs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		p := pairs[name]
		if p.aKey == "" && p.bKey == "" {
			return nil, fmt.Errorf("%s: %q has no matrices beside it", f.Path(), p.alphaKey)
		}
		ly, err := loadPair(f, name, p)
		if err != nil {
			return nil, err
		}
		// No alpha means scale 1 in ComfyUI and kohya, i.e. alpha = rank.
		ly.Alpha = float64(ly.Rank)
		if p.alphaKey != "" {
			if ly.Alpha, err = scalar(f, p.alphaKey); err != nil {
				return nil, err
			}
		}
		l.Layers[name] = ly
	}
	meta, rank, alpha, targets, err := splitMeta(f.Path(), f.Metadata())
	if err != nil {
		return nil, err
	}
	mr, ma := modeRank(l.Layers)
	if rank == 0 {
		rank = mr
	}
	if alpha == 0 {
		alpha = ma
	}
	if len(targets) == 0 {
		targets = DeriveTargets(l.LayerNames())
	}
	l.Rank, l.Alpha, l.Targets, l.Meta = rank, alpha, targets, meta
	return l, nil
}
