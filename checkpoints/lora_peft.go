package checkpoints

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/internal/atomicfile"
)

// PEFT folder contents.
const (
	// PEFTConfigFile is the adapter configuration inside a PEFT folder.
	PEFTConfigFile = "adapter_config.json"
	// PEFTWeightsFile holds the adapter's tensors inside a PEFT folder.
	PEFTWeightsFile = "adapter_model.safetensors"
	// peftPrefix is what PEFT puts before a module path in saved keys.
	peftPrefix = "base_model.model."
)

// peftConfig is adapter_config.json as we write it: the fields PEFT 0.21
// writes for a plain LoRA (compare ../shared/golden/nextdit/tiny.peft_lora),
// with the ones that have no meaning here left at PEFT's defaults. Field
// order does not matter: encoding/json sorts map keys, as PEFT does.
func peftConfig(l *LoRA, rankPat, alphaPat map[string]any) map[string]any {
	var base any // null unless the caller named the base model
	if s := l.Meta[MetaBaseModel]; s != "" {
		base = s
	}
	return map[string]any{
		"alpha_pattern":           alphaPat,
		"auto_mapping":            nil,
		"base_model_name_or_path": base,
		"bias":                    "none",
		"exclude_modules":         nil,
		"fan_in_fan_out":          false,
		"inference_mode":          true,
		// The trainer starts from PEFT's default initialisation (Kaiming A,
		// zero B); the value matters only when PEFT builds a fresh adapter.
		"init_lora_weights":   true,
		"layer_replication":   nil,
		"layers_pattern":      nil,
		"layers_to_transform": nil,
		"loftq_config":        map[string]any{},
		"lora_alpha":          l.Alpha,
		"lora_bias":           false,
		"lora_dropout":        0.0,
		"megatron_config":     nil,
		"megatron_core":       "megatron.core",
		"modules_to_save":     nil,
		"peft_type":           "LORA",
		"r":                   l.Rank,
		"rank_pattern":        rankPat,
		"revision":            nil,
		"target_modules":      l.targets(),
		"task_type":           nil,
		"use_dora":            false,
		"use_rslora":          false,
	}
}

// patternKey is the rank_pattern / alpha_pattern key for one module path.
// PEFT (peft/utils/other.py, get_pattern_key) matches a key as a regular
// expression with `re.match(rf"(.*\.)?({key})$", module_path)`, first match
// in file order wins; escaping the dots makes the full path match that
// module alone.
func patternKey(path string) string { return regexp.QuoteMeta(path) }

// WritePEFT writes l as a PEFT folder at dir: adapter_model.safetensors and
// adapter_config.json are written into a temporary sibling folder that is
// renamed into place when both are complete. An existing dir is replaced
// (moved aside first, removed after the rename).
func WritePEFT(dir string, l *LoRA, opt ExportOptions) (err error) {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("checkpoints: writing PEFT LoRA %s: %w", dir, err)
	}
	dt, err := opt.dtype()
	if err != nil {
		return fmt.Errorf("checkpoints: writing PEFT LoRA %s: %w", dir, err)
	}
	rankPat, alphaPat := map[string]any{}, map[string]any{}
	var ts []safetensors.Tensor
	for _, name := range l.LayerNames() {
		ly := l.Layers[name]
		if ly.Rank != l.Rank {
			rankPat[patternKey(name)] = ly.Rank
		}
		if ly.Alpha != l.Alpha {
			alphaPat[patternKey(name)] = ly.Alpha
		}
		ts = append(ts,
			floatTensor(peftPrefix+name+".lora_A.weight", []int{ly.Rank, ly.In}, ly.A, dt),
			floatTensor(peftPrefix+name+".lora_B.weight", []int{ly.Out, ly.Rank}, ly.B, dt))
	}
	cfg, err := json.MarshalIndent(peftConfig(l, rankPat, alphaPat), "", "  ")
	if err != nil {
		return fmt.Errorf("checkpoints: writing PEFT LoRA %s: %w", dir, err)
	}
	return writeFolderAtomic(dir, func(tmp string) error {
		if err := safetensors.Write(filepath.Join(tmp, PEFTWeightsFile), ts, l.baseMeta()); err != nil {
			return err
		}
		return writeFileSync(filepath.Join(tmp, PEFTConfigFile), append(cfg, '\n'))
	})
}

// ReadPEFT reads a PEFT adapter folder.
func ReadPEFT(dir string) (*LoRA, error) {
	cfgPath := filepath.Join(dir, PEFTConfigFile)
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: reading PEFT LoRA: %w", err)
	}
	cfg, err := parsePEFTConfig(cfgPath, raw)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: reading PEFT LoRA: %w", err)
	}
	wPath := filepath.Join(dir, PEFTWeightsFile)
	if _, err := os.Stat(wPath); err != nil {
		if _, berr := os.Stat(filepath.Join(dir, "adapter_model.bin")); berr == nil {
			return nil, fmt.Errorf("checkpoints: reading PEFT LoRA %s: it holds adapter_model.bin (a pickle), not %s; re-save it with safetensors", dir, PEFTWeightsFile)
		}
	}
	f, err := safetensors.Open(wPath)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: reading PEFT LoRA: %w", err)
	}
	defer f.Close()
	l, err := readPEFTWeights(f, cfg)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: reading PEFT LoRA: %w", err)
	}
	return l, nil
}

// pattern is one rank_pattern / alpha_pattern entry, kept in file order
// because PEFT takes the first that matches.
type pattern struct {
	key string
	re  *regexp.Regexp
	val float64
}

// peftConf is the part of adapter_config.json that defines the arithmetic.
type peftConf struct {
	r        int
	alpha    float64
	targets  []string
	rankPat  []pattern
	alphaPat []pattern
	base     string
}

func parsePEFTConfig(path string, raw []byte) (*peftConf, error) {
	var c struct {
		PeftType      string          `json:"peft_type"`
		R             int             `json:"r"`
		LoraAlpha     float64         `json:"lora_alpha"`
		TargetModules json.RawMessage `json:"target_modules"`
		Bias          string          `json:"bias"`
		UseDoRA       bool            `json:"use_dora"`
		UseRSLoRA     bool            `json:"use_rslora"`
		FanInFanOut   bool            `json:"fan_in_fan_out"`
		RankPattern   json.RawMessage `json:"rank_pattern"`
		AlphaPattern  json.RawMessage `json:"alpha_pattern"`
		Base          *string         `json:"base_model_name_or_path"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case c.PeftType != "LORA":
		return nil, fmt.Errorf("%s: peft_type is %q, only LORA is supported", path, c.PeftType)
	case c.R <= 0:
		return nil, fmt.Errorf("%s: r is %d, want a positive rank", path, c.R)
	case !(c.LoraAlpha > 0):
		return nil, fmt.Errorf("%s: lora_alpha is %v, want a positive number", path, c.LoraAlpha)
	case c.UseDoRA:
		return nil, fmt.Errorf("%s: use_dora is true; DoRA adapters are not supported", path)
	case c.UseRSLoRA:
		return nil, fmt.Errorf("%s: use_rslora is true; rank-stabilised scaling (alpha/√r) is not supported", path)
	case c.FanInFanOut:
		return nil, fmt.Errorf("%s: fan_in_fan_out is true; transposed (Conv1D) base layers are not supported", path)
	case c.Bias != "" && c.Bias != "none":
		return nil, fmt.Errorf("%s: bias is %q; adapters that train biases are not supported", path, c.Bias)
	}
	pc := &peftConf{r: c.R, alpha: c.LoraAlpha}
	if c.Base != nil {
		pc.base = *c.Base
	}
	// target_modules is a list of suffixes or one string PEFT treats as a
	// full-match regular expression; either way it is kept as written.
	if len(c.TargetModules) > 0 && string(c.TargetModules) != "null" {
		var list []string
		if err := json.Unmarshal(c.TargetModules, &list); err != nil {
			var one string
			if err2 := json.Unmarshal(c.TargetModules, &one); err2 != nil {
				return nil, fmt.Errorf("%s: target_modules is neither a list of names nor a string", path)
			}
			list = []string{one}
		}
		pc.targets = list
	}
	var err error
	if pc.rankPat, err = parsePatterns(path, "rank_pattern", c.RankPattern); err != nil {
		return nil, err
	}
	if pc.alphaPat, err = parsePatterns(path, "alpha_pattern", c.AlphaPattern); err != nil {
		return nil, err
	}
	return pc, nil
}

// parsePatterns reads a JSON object of pattern → number in file order.
func parsePatterns(path, field string, raw json.RawMessage) ([]pattern, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("%s: %s is not an object", path, field)
	}
	var out []pattern
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, field, err)
		}
		key, _ := t.(string)
		var v float64
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: %s[%q] is not a number: %w", path, field, key, err)
		}
		re, err := regexp.Compile(`^(?:.*\.)?(?:` + key + `)$`)
		if err != nil {
			return nil, fmt.Errorf("%s: %s key %q is not a regular expression this reader understands: %w", path, field, key, err)
		}
		out = append(out, pattern{key: key, re: re, val: v})
	}
	return out, nil
}

func matchPattern(ps []pattern, path string) (float64, bool) {
	for _, p := range ps {
		if p.re.MatchString(path) {
			return p.val, true
		}
	}
	return 0, false
}

// readPEFTWeights reads PEFT-named tensors; cfg is nil for a bare
// adapter_model.safetensors, whose rank and alpha then come from its
// metadata (ours) or default to alpha = rank.
func readPEFTWeights(f *safetensors.File, cfg *peftConf) (*LoRA, error) {
	pairs := map[string]*layerPair{}
	for _, t := range f.Tensors() {
		if !strings.HasPrefix(t.Name, peftPrefix) {
			return nil, fmt.Errorf("%s: key %q lacks PEFT's %q prefix", f.Path(), t.Name, peftPrefix)
		}
		stem := t.Name[len(peftPrefix):]
		var isA bool
		switch {
		case strings.HasSuffix(stem, ".lora_A.weight"):
			isA, stem = true, strings.TrimSuffix(stem, ".lora_A.weight")
		case strings.HasSuffix(stem, ".lora_B.weight"):
			stem = strings.TrimSuffix(stem, ".lora_B.weight")
		default:
			return nil, fmt.Errorf("%s: key %q is not a lora_A/lora_B weight (DoRA magnitudes, biases and embeddings are not supported)", f.Path(), t.Name)
		}
		p := pairs[stem]
		if p == nil {
			p = &layerPair{}
			pairs[stem] = p
		}
		if isA {
			p.aKey, p.aShape = t.Name, t.Shape
		} else {
			p.bKey, p.bShape = t.Name, t.Shape
		}
	}
	meta, mRank, mAlpha, mTargets, err := splitMeta(f.Path(), f.Metadata())
	if err != nil {
		return nil, err
	}
	l := &LoRA{Layers: map[string]LoRALayer{}, Meta: meta}
	if cfg != nil {
		l.Rank, l.Alpha, l.Targets = cfg.r, cfg.alpha, cfg.targets
		if cfg.base != "" && l.Meta[MetaBaseModel] == "" {
			l.Meta[MetaBaseModel] = cfg.base
		}
	} else {
		l.Rank, l.Alpha, l.Targets = mRank, mAlpha, mTargets
	}
	names := make([]string, 0, len(pairs))
	for n := range pairs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		ly, err := loadPair(f, name, pairs[name])
		if err != nil {
			return nil, err
		}
		switch {
		case cfg != nil:
			want := cfg.r
			if v, ok := matchPattern(cfg.rankPat, name); ok {
				want = int(v)
			}
			if ly.Rank != want {
				return nil, fmt.Errorf("%s: layer %q has rank %d but adapter_config.json gives it %d", f.Path(), name, ly.Rank, want)
			}
			ly.Alpha = cfg.alpha
			if v, ok := matchPattern(cfg.alphaPat, name); ok {
				ly.Alpha = v
			}
		case mAlpha > 0 && ly.Rank == mRank:
			ly.Alpha = mAlpha
		default:
			ly.Alpha = float64(ly.Rank)
		}
		l.Layers[name] = ly
	}
	if l.Rank == 0 {
		l.Rank, l.Alpha = modeRank(l.Layers)
	}
	if len(l.Targets) == 0 {
		l.Targets = DeriveTargets(names)
	}
	return l, nil
}

// writeFileSync writes b to path and fsyncs it, so a folder renamed into
// place afterwards never holds a file whose bytes are still in flight.
func writeFileSync(path string, b []byte) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// writeFolderAtomic builds a folder through fill in a temporary sibling of
// dir and renames it to dir (atomicfile.ReplaceDir): a crash leaves the old
// folder, the new one, or the old one under an aside name that the next
// run's cleanup puts back — never a half-written dir.
func writeFolderAtomic(dir string, fill func(tmp string) error) (err error) {
	dir = filepath.Clean(dir)
	if err := os.MkdirAll(filepath.Dir(dir), atomicfile.DirMode); err != nil {
		return fmt.Errorf("checkpoints: writing %s: %w", dir, err)
	}
	tmp, err := atomicfile.TempDir(dir)
	if err != nil {
		return fmt.Errorf("checkpoints: writing %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := fill(tmp); err != nil {
		return fmt.Errorf("checkpoints: writing %s: %w", dir, err)
	}
	if err := atomicfile.ReplaceDir(tmp, dir); err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	return nil
}
