package textenc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// Options choose how a Gemma stores its weights.
type Options struct {
	// DType is the storage and compute dtype of the weights and hidden
	// states: BF16 (the default when zero), F32, or F64 for float64 parity
	// checks. Norm weights are kept as 1+w in F32 (F64 for an F64 model),
	// as transformers computes them.
	DType kernels.DType
	// Config, when set, is the architecture to use instead of the file's
	// __metadata__["config"] (Hugging Face checkpoints carry none: parse
	// their config.json with ParseConfig).
	Config *Config
}

// ParamShape is one weight the architecture expects, under the text
// model's own key names (embed_tokens.weight, layers.N.…, norm.weight).
type ParamShape struct {
	Name  string
	Shape []int
}

// Params lists every weight of the architecture in a fixed order.
func (c Config) Params() []ParamShape {
	h, q, kv := c.HiddenSize, c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	ps := []ParamShape{{"embed_tokens.weight", []int{c.VocabSize, h}}}
	for i := range c.NumLayers {
		p := fmt.Sprintf("layers.%d.", i)
		ps = append(ps,
			ParamShape{p + "input_layernorm.weight", []int{h}},
			ParamShape{p + "self_attn.q_proj.weight", []int{q, h}},
			ParamShape{p + "self_attn.k_proj.weight", []int{kv, h}},
			ParamShape{p + "self_attn.v_proj.weight", []int{kv, h}},
			ParamShape{p + "self_attn.o_proj.weight", []int{h, q}},
			ParamShape{p + "self_attn.q_norm.weight", []int{c.HeadDim}},
			ParamShape{p + "self_attn.k_norm.weight", []int{c.HeadDim}},
			ParamShape{p + "post_attention_layernorm.weight", []int{h}},
			ParamShape{p + "pre_feedforward_layernorm.weight", []int{h}},
			ParamShape{p + "mlp.gate_proj.weight", []int{c.IntermediateSize, h}},
			ParamShape{p + "mlp.up_proj.weight", []int{c.IntermediateSize, h}},
			ParamShape{p + "mlp.down_proj.weight", []int{h, c.IntermediateSize}},
			ParamShape{p + "post_feedforward_layernorm.weight", []int{h}},
		)
	}
	return append(ps, ParamShape{"norm.weight", []int{h}})
}

// isNorm reports whether a parameter is a Gemma RMSNorm weight (stored as
// 1+w).
func isNorm(name string) bool { return strings.HasSuffix(name, "norm.weight") }

// KeyError is everything wrong with a weight file's keys, reported together.
type KeyError struct {
	Path       string
	Prefix     string       // the prefix the text model's keys carry in the file
	Missing    []ParamShape // expected but absent
	Unexpected []string     // under the prefix but not part of the architecture
	Misshaped  []Misshaped  // present with the wrong shape or a non-float dtype
}

// Misshaped is a weight whose shape in the file differs from the config's.
type Misshaped struct {
	Name      string
	Got, Want []int
}

// Error lists every problem by name.
func (k *KeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "textenc: %s does not fit the Gemma 3 config (key prefix %q): %d missing, %d unexpected, %d mis-shaped",
		k.Path, k.Prefix, len(k.Missing), len(k.Unexpected), len(k.Misshaped))
	for _, m := range k.Missing {
		fmt.Fprintf(&b, "\n  missing    %s (expected shape %v)", m.Name, m.Shape)
	}
	for _, u := range k.Unexpected {
		fmt.Fprintf(&b, "\n  unexpected %s", u)
	}
	for _, m := range k.Misshaped {
		fmt.Fprintf(&b, "\n  mis-shaped %s: file has %v, expected %v", m.Name, m.Got, m.Want)
	}
	return b.String()
}

// IsKeyError reports whether err carries a *KeyError and returns it.
func IsKeyError(err error) (*KeyError, bool) {
	var ke *KeyError
	ok := errors.As(err, &ke)
	return ke, ok
}

// source is a set of safetensors files read as one (a sharded checkpoint's
// shards, or a single file).
type source struct {
	path  string
	files []*safetensors.File
	owner map[string]*safetensors.File
}

// openSource opens a single .safetensors file, a sharded checkpoint's
// *.index.json, or a folder holding model.safetensors.index.json or
// model.safetensors.
func openSource(path string) (*source, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("textenc: %w", err)
	}
	if st.IsDir() {
		idx := filepath.Join(path, "model.safetensors.index.json")
		if _, err := os.Stat(idx); err == nil {
			return openIndex(idx)
		}
		one := filepath.Join(path, "model.safetensors")
		if _, err := os.Stat(one); err != nil {
			return nil, fmt.Errorf("textenc: folder %s holds neither model.safetensors.index.json nor model.safetensors", path)
		}
		path = one
	} else if strings.HasSuffix(path, ".json") {
		return openIndex(path)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("textenc: %w", err)
	}
	s := &source{path: path, files: []*safetensors.File{f}, owner: map[string]*safetensors.File{}}
	for _, n := range f.Names() {
		s.owner[n] = f
	}
	return s, nil
}

// openIndex opens every shard a Hugging Face index names.
func openIndex(path string) (*source, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("textenc: %w", err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("textenc: index %s: %w", path, err)
	}
	s := &source{path: path, owner: map[string]*safetensors.File{}}
	shards := map[string]*safetensors.File{}
	names := make([]string, 0, len(idx.WeightMap))
	for n := range idx.WeightMap {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		shard := idx.WeightMap[n]
		f, ok := shards[shard]
		if !ok {
			f, err = safetensors.Open(filepath.Join(filepath.Dir(path), shard))
			if err != nil {
				s.Close()
				return nil, fmt.Errorf("textenc: shard of %s: %w", path, err)
			}
			shards[shard] = f
			s.files = append(s.files, f)
		}
		if _, ok := f.Info(n); !ok {
			s.Close()
			return nil, fmt.Errorf("textenc: index %s puts %s in %s, which does not hold it", path, n, shard)
		}
		s.owner[n] = f
	}
	return s, nil
}

// Close closes every file.
func (s *source) Close() {
	for _, f := range s.files {
		f.Close()
	}
}

// names lists every tensor, sorted.
func (s *source) names() []string {
	out := make([]string, 0, len(s.owner))
	for n := range s.owner {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// metadata returns the first file's __metadata__.
func (s *source) metadata() map[string]string {
	if len(s.files) == 0 {
		return nil
	}
	return s.files[0].Metadata()
}

// prefixes are where checkpoints keep the text model's keys: a bare
// Gemma3TextModel, Gemma3ForCausalLM, and the multimodal
// Gemma3ForConditionalGeneration in its transformers 4.x and 5 layouts.
var prefixes = []string{"", "model.", "language_model.model.", "model.language_model.", "language_model."}

// prefix finds the one under which the file holds embed_tokens.weight.
func (s *source) prefix() (string, error) {
	for _, p := range prefixes {
		if _, ok := s.owner[p+"embed_tokens.weight"]; ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("textenc: %s holds no embed_tokens.weight under any of the prefixes %q: not a Gemma 3 text model", s.path, prefixes)
}

// checkKeys compares the file with the architecture. With a non-empty
// prefix, keys outside it (a vision tower, a tied lm_head) are other
// modules' and are skipped; keys under it must all be the text model's.
func (s *source) checkKeys(cfg Config, prefix string) error {
	ke := &KeyError{Path: s.path, Prefix: prefix}
	want := map[string]bool{}
	for _, p := range cfg.Params() {
		want[prefix+p.Name] = true
		f, ok := s.owner[prefix+p.Name]
		if !ok {
			ke.Missing = append(ke.Missing, p)
			continue
		}
		info, _ := f.Info(prefix + p.Name)
		kd, isKernel := info.DType.Kernel()
		switch {
		case !slices.Equal(info.Shape, p.Shape):
			ke.Misshaped = append(ke.Misshaped, Misshaped{Name: p.Name, Got: info.Shape, Want: p.Shape})
		case !isKernel || !kd.IsFloat():
			ke.Misshaped = append(ke.Misshaped, Misshaped{Name: p.Name + " (dtype " + string(info.DType) + ", not a float)", Got: info.Shape, Want: p.Shape})
		}
	}
	for _, n := range s.names() {
		if strings.HasPrefix(n, prefix) && !want[n] {
			ke.Unexpected = append(ke.Unexpected, n)
		}
	}
	if len(ke.Missing)+len(ke.Unexpected)+len(ke.Misshaped) == 0 {
		return nil
	}
	return ke
}

// Load opens Gemma 3 text weights — a .safetensors file, a sharded
// checkpoint's index.json, or a folder holding either — and uploads them to
// e's backend. The architecture is opts.Config when given, else the file's
// __metadata__["config"]. Every key is checked before anything is uploaded;
// missing, unexpected and mis-shaped keys come back together as a
// *KeyError.
func Load(e *autograd.Engine, path string, opts Options) (*Gemma, error) {
	if opts.DType == 0 {
		opts.DType = kernels.BF16
	}
	switch opts.DType {
	case kernels.BF16, kernels.F32, kernels.F64:
	default:
		return nil, fmt.Errorf("textenc: storage dtype %v is not BF16, F32 or F64", opts.DType)
	}
	src, err := openSource(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	var cfg Config
	if opts.Config != nil {
		cfg = *opts.Config
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
	} else {
		js, ok := src.metadata()["config"]
		if !ok {
			return nil, fmt.Errorf("textenc: %s has no __metadata__[\"config\"]; parse the model's config.json with ParseConfig and pass it in Options.Config", path)
		}
		if cfg, err = ParseConfig(js); err != nil {
			return nil, fmt.Errorf("%w (config of %s)", err, path)
		}
	}
	prefix, err := src.prefix()
	if err != nil {
		return nil, err
	}
	if err := src.checkKeys(cfg, prefix); err != nil {
		return nil, err
	}
	g := &Gemma{e: e, cfg: cfg, opts: opts, w: map[string]*autograd.Tensor{}}
	normDType := kernels.F32
	if opts.DType == kernels.F64 {
		normDType = kernels.F64
	}
	for _, p := range cfg.Params() {
		name := prefix + p.Name
		v, err := src.owner[name].Float64(name)
		if err != nil {
			g.Release()
			return nil, fmt.Errorf("textenc: reading %s from %s: %w", name, path, err)
		}
		d := opts.DType
		if isNorm(p.Name) {
			// Gemma's RMSNorm multiplies by (1 + w) computed in float32;
			// adding once here (in float64, then rounded to the norm dtype)
			// gives those values without an elementwise pass per forward.
			for i := range v {
				v[i]++
			}
			d = normDType
		}
		g.w[p.Name] = e.Constant(p.Name, d, p.Shape, v)
		if err := e.Err(); err != nil {
			g.Release()
			return nil, fmt.Errorf("textenc: uploading %s: %w", p.Name, err)
		}
	}
	return g, nil
}
