package lora

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// PEFT file names inside an adapter folder (checkpoints reads and writes
// the folder; the names are repeated here for callers of this package).
const (
	PEFTConfigFile  = checkpoints.PEFTConfigFile
	PEFTWeightsFile = checkpoints.PEFTWeightsFile
	// PEFTPrefix is what PEFT puts before a module path in saved keys.
	PEFTPrefix = "base_model.model."
)

// PEFTConfig is the part of PEFT's adapter_config.json that defines a LoRA.
type PEFTConfig struct {
	PeftType      string             `json:"peft_type"`
	R             int                `json:"r"`
	LoraAlpha     float64            `json:"lora_alpha"`
	LoraDropout   float64            `json:"lora_dropout"`
	TargetModules []string           `json:"-"`
	Bias          string             `json:"bias"`
	UseDoRA       bool               `json:"use_dora"`
	UseRSLoRA     bool               `json:"use_rslora"`
	RankPattern   map[string]float64 `json:"rank_pattern"`
	AlphaPattern  map[string]float64 `json:"alpha_pattern"`
}

// PEFTKey is the key PEFT saves an adapter matrix under: which is "A" or "B".
func PEFTKey(layer, which string) string {
	return PEFTPrefix + layer + ".lora_" + which + ".weight"
}

// ReadPEFTConfig reads and checks an adapter folder's adapter_config.json:
// only plain LoRA (no DoRA, rsLoRA, per-layer ranks or biases) is accepted,
// since those change the arithmetic.
func ReadPEFTConfig(dir string) (PEFTConfig, error) {
	p := filepath.Join(dir, PEFTConfigFile)
	raw, err := os.ReadFile(p)
	if err != nil {
		return PEFTConfig{}, fmt.Errorf("lora: %w", err)
	}
	var c PEFTConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return PEFTConfig{}, fmt.Errorf("lora: parsing %s: %w", p, err)
	}
	// target_modules is a list of suffixes, or a single string that PEFT
	// treats as a full-match regular expression.
	var tm struct {
		T json.RawMessage `json:"target_modules"`
	}
	if err := json.Unmarshal(raw, &tm); err != nil {
		return PEFTConfig{}, fmt.Errorf("lora: parsing %s: %w", p, err)
	}
	if len(tm.T) > 0 && tm.T[0] == '"' {
		return c, fmt.Errorf("lora: %s: target_modules is a regular expression (%s); only a list of module names is supported", p, tm.T)
	}
	if len(tm.T) > 0 && string(tm.T) != "null" {
		if err := json.Unmarshal(tm.T, &c.TargetModules); err != nil {
			return c, fmt.Errorf("lora: %s: target_modules: %w", p, err)
		}
	}
	switch {
	case c.PeftType != "" && c.PeftType != "LORA":
		return c, fmt.Errorf("lora: %s: peft_type %q is not LORA", p, c.PeftType)
	case c.R <= 0:
		return c, fmt.Errorf("lora: %s: r must be positive, got %d", p, c.R)
	case c.UseDoRA:
		return c, fmt.Errorf("lora: %s: DoRA adapters are not supported", p)
	case c.UseRSLoRA:
		return c, fmt.Errorf("lora: %s: rsLoRA scaling is not supported", p)
	case len(c.RankPattern) > 0 || len(c.AlphaPattern) > 0:
		return c, fmt.Errorf("lora: %s: per-layer rank_pattern/alpha_pattern are not supported", p)
	case c.Bias != "" && c.Bias != "none":
		return c, fmt.Errorf("lora: %s: bias %q is not supported (only \"none\")", p, c.Bias)
	case len(c.TargetModules) == 0:
		return c, fmt.Errorf("lora: %s: target_modules is empty", p)
	}
	return c, nil
}

// LoadPEFT reads a PEFT adapter folder (adapter_config.json +
// adapter_model.safetensors) through checkpoints.ReadPEFT, attaches
// adapters with its rank, alpha, dropout and targets to m, and fills them
// with the file's values (masters in dtype master, 0 for F32). The config
// is first held to ReadPEFTConfig's stricter rules (plain LoRA only), which
// also give the dropout the canonical form does not carry. Keys the model
// has no adapter for, adapters the file lacks and mis-shaped matrices are
// reported together.
func LoadPEFT(m *nextdit.Model, dir string, master kernels.DType) (*Set, error) {
	pc, err := ReadPEFTConfig(dir)
	if err != nil {
		return nil, err
	}
	if pc.LoraDropout < 0 || pc.LoraDropout >= 1 {
		return nil, fmt.Errorf("lora: %s: lora_dropout %g is outside [0, 1)", dir, pc.LoraDropout)
	}
	l, err := checkpoints.ReadPEFT(dir)
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	s, err := Import(m, l, master)
	if err != nil {
		return nil, fmt.Errorf("%w (PEFT folder %s)", err, dir)
	}
	s.cfg.Dropout = pc.LoraDropout
	return s, nil
}
