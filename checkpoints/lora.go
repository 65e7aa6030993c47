package checkpoints

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// LoRALayer is one adapted Linear layer: the update is ΔW = (Alpha/Rank)·B·A.
type LoRALayer struct {
	// A is the down projection, row-major [Rank, In] (PEFT lora_A, kohya
	// lora_down).
	A []float32
	// B is the up projection, row-major [Out, Rank] (PEFT lora_B, kohya
	// lora_up).
	B []float32
	// In and Out are the base Linear's input and output widths.
	In, Out int
	// Rank is the inner width r.
	Rank int
	// Alpha is the layer's alpha; the applied scale is Alpha/Rank.
	Alpha float64
}

// LoRA is a whole adapter in the canonical form that models/lora converts
// to and from. Layer keys are upstream module paths without ".weight"
// (`layers.0.attention.qkv`, `final_layer.adaLN_modulation.1`,
// `context_refiner.1.feed_forward.w2`).
type LoRA struct {
	// Rank and Alpha are the adapter's defaults; a layer may differ (PEFT
	// rank_pattern / alpha_pattern, per-key .alpha in single files).
	Rank  int
	Alpha float64
	// Targets are the module-name suffixes the adapter was built for, in
	// PEFT's target_modules sense (`attention.qkv`, `feed_forward.w1`, …).
	Targets []string
	// Layers maps a module path to its matrices.
	Layers map[string]LoRALayer
	// Meta is free-form string metadata written into every format's
	// safetensors header (see the Meta* keys) and read back unchanged.
	Meta map[string]string
}

// Well-known Meta keys. The caller fills them; the exporters add the rank,
// alpha and targets themselves from the struct (MetaRank, MetaAlpha,
// MetaTargets), so those never need to be set in Meta.
const (
	// MetaBaseModelHash identifies the base weights the adapter was trained
	// on (a hex SHA-256 of the weights file, or of its shards' index).
	MetaBaseModelHash = "base_model_hash"
	// MetaBaseModel is a human-readable name or path of the base model; the
	// PEFT exporter also puts it in base_model_name_or_path.
	MetaBaseModel = "base_model"
	// MetaSteps is the number of optimizer steps the adapter has seen.
	MetaSteps = "steps"
	// MetaConfig is the training configuration as text (the YAML).
	MetaConfig = "config"

	// MetaRank, MetaAlpha and MetaTargets are written by every exporter so a
	// single-file adapter keeps the values it had (a single file has no
	// config file beside it); they are consumed on import and never appear
	// in LoRA.Meta.
	MetaRank    = "lora_rank"
	MetaAlpha   = "lora_alpha"
	MetaTargets = "lora_targets"

	// MetaKohyaHash is kohya's sshs_model_hash: the SHA-256 of the file's
	// tensor data (safetensors.DataSHA256). The kohya writer computes it;
	// importers consume it (and kohya's older sshs_legacy_hash, which
	// depends on the header bytes and so goes stale on any rewrite).
	MetaKohyaHash = "sshs_model_hash"
)

// derivedMeta lists the header entries that exporters compute from the
// struct; importers consume them rather than returning them in Meta, so an
// export→import round trip gives back exactly the Meta that went in.
var derivedMeta = map[string]bool{
	"format": true, MetaRank: true, MetaAlpha: true, MetaTargets: true,
	"ss_network_dim": true, "ss_network_alpha": true, "ss_network_module": true,
	MetaKohyaHash: true, "sshs_legacy_hash": true,
}

// Format names a LoRA file format.
type Format string

// The LoRA formats of DESIGN.md.
const (
	// FormatPEFT is a folder with adapter_model.safetensors (keys
	// `base_model.model.<path>.lora_A.weight` / `.lora_B.weight`) and
	// adapter_config.json.
	FormatPEFT Format = "peft"
	// FormatComfyUI is a single file with `diffusion_model.<path>.lora_A.weight`,
	// `.lora_B.weight` and `.alpha` (the diffusion-pipe layout).
	FormatComfyUI Format = "comfyui"
	// FormatKohya is a single file with `lora_unet_<path_with_underscores>`
	// `.lora_down.weight`, `.lora_up.weight` and `.alpha`.
	FormatKohya Format = "kohya"
)

// ParseFormat accepts a format name as a config or flag spells it.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "peft", "diffusers":
		return FormatPEFT, nil
	case "comfyui", "comfy", "diffusion-pipe", "diffusion_pipe":
		return FormatComfyUI, nil
	case "kohya", "sd-scripts":
		return FormatKohya, nil
	}
	return "", fmt.Errorf("checkpoints: unknown LoRA format %q (want peft, comfyui or kohya)", s)
}

// ExportOptions tunes WriteLoRA.
type ExportOptions struct {
	// DType of the written A/B tensors: safetensors.F32 (the default when
	// empty), BF16 or F16. Alpha scalars are always F32 so that a
	// non-representable alpha (0.3 in bf16) is never silently changed.
	DType safetensors.DType
}

func (o ExportOptions) dtype() (safetensors.DType, error) {
	switch o.DType {
	case "", safetensors.F32:
		return safetensors.F32, nil
	case safetensors.BF16, safetensors.F16:
		return o.DType, nil
	}
	return "", fmt.Errorf("LoRA tensors can be written as F32, BF16 or F16, not %s", o.DType)
}

// Validate checks that every layer's matrices have the lengths their
// dimensions imply and that the names are usable in every format.
func (l *LoRA) Validate() error {
	if l == nil {
		return errors.New("LoRA is nil")
	}
	if len(l.Layers) == 0 {
		return errors.New("LoRA has no layers")
	}
	if l.Rank <= 0 {
		return fmt.Errorf("LoRA rank %d must be positive", l.Rank)
	}
	if !(l.Alpha > 0) || math.IsInf(l.Alpha, 0) {
		return fmt.Errorf("LoRA alpha %v must be a positive finite number", l.Alpha)
	}
	for _, name := range l.LayerNames() {
		ly := l.Layers[name]
		switch {
		case name == "" || strings.HasPrefix(name, ".") || strings.HasSuffix(name, "."):
			return fmt.Errorf("layer name %q is not a module path", name)
		case strings.HasSuffix(name, ".weight"):
			return fmt.Errorf("layer %q: give the module path without .weight", name)
		case ly.Rank <= 0 || ly.In <= 0 || ly.Out <= 0:
			return fmt.Errorf("layer %q: rank %d, in %d, out %d must all be positive", name, ly.Rank, ly.In, ly.Out)
		case len(ly.A) != ly.Rank*ly.In:
			return fmt.Errorf("layer %q: A has %d values but [rank %d, in %d] needs %d", name, len(ly.A), ly.Rank, ly.In, ly.Rank*ly.In)
		case len(ly.B) != ly.Out*ly.Rank:
			return fmt.Errorf("layer %q: B has %d values but [out %d, rank %d] needs %d", name, len(ly.B), ly.Out, ly.Rank, ly.Out*ly.Rank)
		case !(ly.Alpha > 0) || math.IsInf(ly.Alpha, 0):
			return fmt.Errorf("layer %q: alpha %v must be a positive finite number", name, ly.Alpha)
		}
	}
	return nil
}

// LayerNames lists the layer keys in sorted order (the order files list
// them in, so output bytes do not depend on map iteration).
func (l *LoRA) LayerNames() []string {
	out := make([]string, 0, len(l.Layers))
	for k := range l.Layers {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// targets returns l.Targets, or the kinds derived from the layer names when
// the caller left them empty.
func (l *LoRA) targets() []string {
	if len(l.Targets) > 0 {
		return append([]string(nil), l.Targets...)
	}
	return DeriveTargets(l.LayerNames())
}

// blockPrefix matches the container part of a Next-DiT module path: a
// numbered block of one of the three stacks, or the final layer.
var blockPrefix = regexp.MustCompile(`^(?:(?:layers|noise_refiner|context_refiner)\.\d+\.|final_layer\.)`)

// DeriveTargets turns module paths into PEFT-style target suffixes by
// dropping the block they sit in (`layers.3.attention.qkv` →
// `attention.qkv`), sorted and without repeats. Paths outside the blocks
// (`x_embedder`) are kept whole.
func DeriveTargets(paths []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range paths {
		t := blockPrefix.ReplaceAllString(p, "")
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// baseMeta is the header every exporter writes: the caller's Meta plus the
// rank, alpha and targets.
func (l *LoRA) baseMeta() map[string]string {
	m := map[string]string{}
	for k, v := range l.Meta {
		m[k] = v
	}
	m["format"] = "pt" // what PyTorch-side loaders expect of a safetensors state dict
	m[MetaRank] = strconv.Itoa(l.Rank)
	m[MetaAlpha] = strconv.FormatFloat(l.Alpha, 'g', -1, 64)
	t, _ := json.Marshal(l.targets())
	m[MetaTargets] = string(t)
	return m
}

// splitMeta separates a file header into the caller's Meta and the values
// the exporters derived (rank, alpha, targets); bad derived values are
// reported rather than guessed around.
func splitMeta(path string, hdr map[string]string) (meta map[string]string, rank int, alpha float64, targets []string, err error) {
	meta = map[string]string{}
	for k, v := range hdr {
		if !derivedMeta[k] {
			meta[k] = v
		}
	}
	if s, ok := hdr[MetaRank]; ok {
		if rank, err = strconv.Atoi(s); err != nil || rank <= 0 {
			return nil, 0, 0, nil, fmt.Errorf("%s: metadata %s=%q is not a positive integer", path, MetaRank, s)
		}
	}
	if s, ok := hdr[MetaAlpha]; ok {
		if alpha, err = strconv.ParseFloat(s, 64); err != nil || !(alpha > 0) {
			return nil, 0, 0, nil, fmt.Errorf("%s: metadata %s=%q is not a positive number", path, MetaAlpha, s)
		}
	}
	if s, ok := hdr[MetaTargets]; ok {
		if err = json.Unmarshal([]byte(s), &targets); err != nil {
			return nil, 0, 0, nil, fmt.Errorf("%s: metadata %s is not a JSON list of strings: %w", path, MetaTargets, err)
		}
	}
	return meta, rank, alpha, targets, nil
}

// floatTensor makes a safetensors tensor of v in dtype dt, streaming the
// conversion so no second full-size copy is built.
func floatTensor(name string, shape []int, v []float32, dt safetensors.DType) safetensors.Tensor {
	return safetensors.FloatTensor(name, dt, shape, v)
}

// alphaTensor is a 0-d F32 scalar, the shape `torch.tensor(alpha)` saves and
// that ComfyUI reads with `.item()`.
func alphaTensor(name string, alpha float64) safetensors.Tensor {
	return safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: []int{},
		Data: binary.LittleEndian.AppendUint32(nil, math.Float32bits(float32(alpha)))}
}

// WriteLoRA writes l in format f at path (a folder for FormatPEFT, a file
// otherwise). Every write is atomic: a crash leaves the old output or none.
func WriteLoRA(path string, l *LoRA, f Format, opt ExportOptions) error {
	switch f {
	case FormatPEFT:
		return WritePEFT(path, l, opt)
	case FormatComfyUI:
		return WriteComfyUI(path, l, opt)
	case FormatKohya:
		return WriteKohya(path, l, opt)
	}
	return fmt.Errorf("checkpoints: writing LoRA %s: unknown format %q", path, f)
}

// ReadLoRA reads a LoRA in any of the three formats: a PEFT folder (or the
// adapter_config.json / adapter_model.safetensors inside one), or a single
// safetensors file whose keys say which format it is.
func ReadLoRA(path string) (*LoRA, Format, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, "", fmt.Errorf("checkpoints: reading LoRA: %w", err)
	}
	if st.IsDir() {
		l, err := ReadPEFT(path)
		return l, FormatPEFT, err
	}
	if filepath.Base(path) == PEFTConfigFile {
		l, err := ReadPEFT(filepath.Dir(path))
		return l, FormatPEFT, err
	}
	if filepath.Base(path) == PEFTWeightsFile {
		if _, err := os.Stat(filepath.Join(filepath.Dir(path), PEFTConfigFile)); err == nil {
			l, err := ReadPEFT(filepath.Dir(path))
			return l, FormatPEFT, err
		}
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("checkpoints: reading LoRA: %w", err)
	}
	defer f.Close()
	format, err := DetectLoRAFormat(f.Names())
	if err != nil {
		return nil, "", fmt.Errorf("checkpoints: reading LoRA %s: %w", path, err)
	}
	var l *LoRA
	switch format {
	case FormatPEFT:
		l, err = readPEFTWeights(f, nil)
	default:
		l, err = readSingle(f, format)
	}
	if err != nil {
		return nil, "", fmt.Errorf("checkpoints: reading LoRA: %w", err)
	}
	return l, format, nil
}

// DetectLoRAFormat tells the format of a LoRA file from its tensor names. A
// file that mixes formats, or has no LoRA tensors, is an error naming keys.
func DetectLoRAFormat(keys []string) (Format, error) {
	counts := map[Format]int{}
	var example = map[Format]string{}
	var other []string
	for _, k := range keys {
		var f Format
		switch {
		case strings.HasPrefix(k, peftPrefix):
			f = FormatPEFT
		case strings.HasPrefix(k, comfyPrefix):
			f = FormatComfyUI
		case strings.HasPrefix(k, kohyaPrefix):
			f = FormatKohya
		default:
			other = append(other, k)
			continue
		}
		counts[f]++
		if _, ok := example[f]; !ok {
			example[f] = k
		}
	}
	switch len(counts) {
	case 0:
		if len(other) == 0 {
			return "", errors.New("the file has no tensors")
		}
		hint := ""
		if strings.HasPrefix(other[0], "transformer.") {
			hint = " (diffusers-named LoRAs with `transformer.` keys are not supported; convert to PEFT, ComfyUI or kohya names)"
		}
		return "", fmt.Errorf("no LoRA keys of a known format (first key %q; want %q…, %q… or %q…)%s", other[0], peftPrefix, comfyPrefix, kohyaPrefix, hint)
	case 1:
		if len(other) > 0 {
			return "", fmt.Errorf("key %q does not belong to a LoRA of any known format", other[0])
		}
		for f := range counts {
			return f, nil
		}
	}
	var parts []string
	for _, f := range []Format{FormatPEFT, FormatComfyUI, FormatKohya} {
		if counts[f] > 0 {
			parts = append(parts, fmt.Sprintf("%s (%q)", f, example[f]))
		}
	}
	return "", fmt.Errorf("keys of several LoRA formats in one file: %s", strings.Join(parts, ", "))
}

// layerPair collects the two matrices (and optional alpha) of one layer
// while a file is read, so a missing half can be reported by name.
type layerPair struct {
	aKey, bKey, alphaKey string
	aShape, bShape       []int
}

// loadPair reads a layer's matrices as float32, checking the shapes agree.
func loadPair(f *safetensors.File, name string, p *layerPair) (LoRALayer, error) {
	if p.aKey == "" {
		return LoRALayer{}, fmt.Errorf("%s: layer %q has %q but no down/A matrix", f.Path(), name, p.bKey)
	}
	if p.bKey == "" {
		return LoRALayer{}, fmt.Errorf("%s: layer %q has %q but no up/B matrix", f.Path(), name, p.aKey)
	}
	if len(p.aShape) != 2 || len(p.bShape) != 2 {
		return LoRALayer{}, fmt.Errorf("%s: layer %q: %q is %v and %q is %v, want 2-d matrices (convolution LoRAs are not supported)", f.Path(), name, p.aKey, p.aShape, p.bKey, p.bShape)
	}
	r, in, out := p.aShape[0], p.aShape[1], p.bShape[0]
	if p.bShape[1] != r {
		return LoRALayer{}, fmt.Errorf("%s: layer %q: %q is %v but %q is %v: ranks differ", f.Path(), name, p.aKey, p.aShape, p.bKey, p.bShape)
	}
	if r <= 0 || in <= 0 || out <= 0 {
		return LoRALayer{}, fmt.Errorf("%s: layer %q has an empty matrix (%q %v, %q %v)", f.Path(), name, p.aKey, p.aShape, p.bKey, p.bShape)
	}
	a, err := floats(f, p.aKey)
	if err != nil {
		return LoRALayer{}, err
	}
	b, err := floats(f, p.bKey)
	if err != nil {
		return LoRALayer{}, err
	}
	return LoRALayer{A: a, B: b, In: in, Out: out, Rank: r}, nil
}

// floats reads a floating-point tensor as float32, refusing integer ones.
func floats(f *safetensors.File, key string) ([]float32, error) {
	info, _ := f.Info(key)
	switch info.DType {
	case safetensors.F32, safetensors.F16, safetensors.BF16, safetensors.F64:
	default:
		return nil, fmt.Errorf("%s: tensor %q is %s, not a floating-point type", f.Path(), key, info.DType)
	}
	return f.Float32(key)
}

// scalar reads a one-element tensor (0-d or [1]) such as a kohya .alpha.
func scalar(f *safetensors.File, key string) (float64, error) {
	info, _ := f.Info(key)
	if info.NumElements() != 1 {
		return 0, fmt.Errorf("%s: %q has shape %v, want a scalar", f.Path(), key, info.Shape)
	}
	v, err := f.Float64(key)
	if err != nil {
		return 0, err
	}
	if !(v[0] > 0) || math.IsInf(v[0], 0) {
		return 0, fmt.Errorf("%s: %q is %v, want a positive finite alpha", f.Path(), key, v[0])
	}
	return v[0], nil
}

// modeRank is the most common layer rank and, among the layers of that
// rank, the most common alpha: the defaults a single file implies when its
// metadata does not say. Ties go to the smaller value so the choice does
// not depend on map order.
func modeRank(layers map[string]LoRALayer) (int, float64) {
	rc := map[int]int{}
	for _, ly := range layers {
		rc[ly.Rank]++
	}
	best, bestN := 0, -1
	for r, n := range rc {
		if n > bestN || (n == bestN && r < best) {
			best, bestN = r, n
		}
	}
	ac := map[float64]int{}
	for _, ly := range layers {
		if ly.Rank == best {
			ac[ly.Alpha]++
		}
	}
	alpha, an := 0.0, -1
	for a, n := range ac {
		if n > an || (n == an && a < alpha) {
			alpha, an = a, n
		}
	}
	return best, alpha
}
