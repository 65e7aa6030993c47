package pipeline

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// LoRAFile is a LoRA to apply and its strength.
type LoRAFile struct {
	// Path is a PEFT folder (ours or NewbieLoraTrainer's save_pretrained
	// output), a ComfyUI / diffusion-pipe / ai-toolkit single file, or a
	// kohya file: whatever checkpoints.ReadLoRA reads.
	Path     string
	Strength float64
}

// ParseLoRAFlag reads FILE[:STRENGTH] (strength 1 when omitted). The
// strength is what follows the last colon when it parses as a number, so
// paths with colons still work.
func ParseLoRAFlag(s string) (LoRAFile, error) {
	if i := strings.LastIndex(s, ":"); i > 0 {
		if f, err := strconv.ParseFloat(s[i+1:], 64); err == nil {
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return LoRAFile{}, fmt.Errorf("--lora %s: strength %s is not a finite number", s, s[i+1:])
			}
			return LoRAFile{Path: s[:i], Strength: f}, nil
		}
	}
	if s == "" {
		return LoRAFile{}, fmt.Errorf("--lora needs a file")
	}
	return LoRAFile{Path: s, Strength: 1}, nil
}

// ModelSpec says which base model and LoRAs to sample with.
type ModelSpec struct {
	// Weights is the base in any layout checkpoints.OpenWeights reads
	// (upstream, ComfyUI, diffusers folder, shards). Empty with Preset
	// "tiny" makes the tiny model's random weights from RandomSeed, as the
	// demo's training does.
	Weights string
	// Preset is the architecture of a file without config metadata
	// (newbie-exp0.1, lumina2, tiny); empty finds the preset whose every
	// tensor the file fits.
	Preset string
	// Arch, when set, is the architecture (a model folder's config.json,
	// as newbie.Discover read and checked it), used instead of Preset.
	Arch       *nextdit.Config
	RandomSeed uint64
	LoRAs      []LoRAFile
}

// DTypes are the storage and autocast dtypes of a sampling precision: bf16
// and fp16 store the weights in that dtype and run products in it, fp32
// runs everything in float32.
func DTypes(p optim.Precision) (storage, autocast kernels.DType, err error) {
	switch p {
	case optim.BF16:
		return kernels.BF16, kernels.BF16, nil
	case optim.FP16:
		return kernels.F16, kernels.F16, nil
	case optim.FP32:
		return kernels.F32, 0, nil
	}
	return 0, 0, fmt.Errorf("pipeline: precision %q: want bf16, fp16 or fp32", p)
}

// Load builds the base model with weights stored in storage and applies
// the LoRAs as adapters on the frozen base (not merged into it: a bf16
// weight plus a small update rounds back to bf16 and loses what is below
// half its last bit, while the adapter path computes the update at the
// products' precision, as the trainer did; several LoRAs become one
// stacked adapter, StackLoRAs). It returns the model, its LoRA set (nil
// without LoRAs) and the model's part of the parameters text.
func Load(e *ag.Engine, spec ModelSpec, storage kernels.DType) (*nextdit.Model, *lora.Set, ModelInfo, error) {
	var info ModelInfo
	m, err := loadBase(e, spec, storage)
	if err != nil {
		return nil, nil, info, err
	}
	info.Name = modelName(spec)
	if len(spec.LoRAs) == 0 {
		return m, nil, info, nil
	}
	ws := make([]WeightedLoRA, len(spec.LoRAs))
	for i, lf := range spec.LoRAs {
		l, _, err := checkpoints.ReadLoRA(lf.Path)
		if err != nil {
			m.Release()
			return nil, nil, info, err
		}
		ws[i] = WeightedLoRA{LoRA: l, Strength: lf.Strength}
		info.LoRAs = append(info.LoRAs, LoRAInfo{Name: loraName(lf.Path), Strength: lf.Strength})
	}
	stacked, err := StackLoRAs(ws)
	if err != nil {
		m.Release()
		return nil, nil, info, err
	}
	set, err := lora.Import(m, stacked, kernels.F32)
	if err != nil {
		m.Release()
		return nil, nil, info, fmt.Errorf("pipeline: LoRAs %v: %w", spec.LoRAs, err)
	}
	set.SetTraining(false)
	return m, set, info, nil
}

// loadBase loads or makes the base model.
func loadBase(e *ag.Engine, spec ModelSpec, storage kernels.DType) (*nextdit.Model, error) {
	opts := nextdit.Options{DType: storage}
	if spec.Weights == "" {
		if spec.Preset != "tiny" {
			return nil, fmt.Errorf("pipeline: no base weights given (only the tiny preset can start from random weights)")
		}
		cfg, _ := nextdit.Preset("tiny")
		return nextdit.NewRandom(e, cfg, opts, spec.RandomSeed)
	}
	w, err := checkpoints.OpenWeights(spec.Weights)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	cfg, err := configFor(w, spec)
	if err != nil {
		return nil, err
	}
	m, err := nextdit.LoadFile(e, w, cfg, opts)
	if ke, ok := nextdit.IsKeyError(err); ok {
		ke.Path = spec.Weights
	}
	return m, err
}

// ModelConfig is the architecture Load would build for spec, read from the
// weights' metadata and shapes without loading them.
func ModelConfig(spec ModelSpec) (nextdit.Config, error) {
	if spec.Weights == "" {
		return nextdit.Preset(spec.Preset)
	}
	w, err := checkpoints.OpenWeights(spec.Weights)
	if err != nil {
		return nextdit.Config{}, err
	}
	defer w.Close()
	return configFor(w, spec)
}

// configFor is spec's architecture: Arch when given, else what the weights'
// metadata or shapes say (nextdit.ConfigFor).
func configFor(w nextdit.Source, spec ModelSpec) (nextdit.Config, error) {
	if spec.Arch != nil {
		return *spec.Arch, nil
	}
	return nextdit.ConfigFor(w, spec.Preset)
}

// modelName is the base's name for the parameters text.
func modelName(spec ModelSpec) string {
	if spec.Weights == "" {
		return fmt.Sprintf("tiny-random-seed-%d", spec.RandomSeed)
	}
	return strings.TrimSuffix(filepath.Base(filepath.Clean(spec.Weights)), ".safetensors")
}

// loraName is a LoRA's name for the parameters text: its file or folder
// name without the extension.
func loraName(path string) string {
	p := filepath.Clean(path)
	if b := filepath.Base(p); b == checkpoints.PEFTWeightsFile || b == checkpoints.PEFTConfigFile {
		p = filepath.Dir(p)
	}
	return strings.TrimSuffix(filepath.Base(p), ".safetensors")
}

// ShortHash is A1111's "AutoV2" hash of a file: the first 10 hex digits of
// its SHA-256; for a PEFT folder, of its adapter_model.safetensors. A
// folder of weights (diffusers, shards) has none: "".
func ShortHash(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("pipeline: %w", err)
	}
	if st.IsDir() {
		p := filepath.Join(path, checkpoints.PEFTWeightsFile)
		if _, err := os.Stat(p); err != nil {
			return "", nil
		}
		path = p
	}
	sum, err := checkpoints.FileSHA256(path)
	if err != nil {
		return "", err
	}
	return sum[:10], nil
}
