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
	"github.com/newbie-train/newbie-train/internal/keylist"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// This file holds what both encoders' loaders share: the set of
// safetensors files a checkpoint is (one file, or a sharded index), where
// its config comes from, and the one report of everything wrong with its
// keys.

// ParamShape is one weight an architecture expects, under the model's own
// key names (the file's names without their prefix).
type ParamShape struct {
	Name  string
	Shape []int
}

// reserveWeights announces to the backend the frozen weights a loader is
// about to upload (dtype gives each parameter's storage dtype, and
// the zero DType leaves it out), so that they are packed into one
// allocation.
func reserveWeights(e *autograd.Engine, ps []ParamShape, dtype func(name string) kernels.DType) {
	var n int64
	count := 0
	for _, p := range ps {
		d := dtype(p.Name)
		if d.Size() == 0 {
			continue
		}
		elems := int64(1)
		for _, s := range p.Shape {
			elems *= int64(s)
		}
		n += elems * int64(d.Size())
		count++
	}
	e.ReserveConstants(n, count)
}

// KeyError is everything wrong with a weight file's keys, reported together.
type KeyError struct {
	Path       string
	Model      string       // the architecture the file was checked against, e.g. "Gemma 3"
	Config     string       // where that architecture came from
	Prefix     string       // the prefix the model's keys carry in the file
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
	fmt.Fprintf(&b, "textenc: %s does not fit the %s config (%s; key prefix %q): %d missing, %d unexpected, %d mis-shaped",
		k.Path, k.Model, k.Config, k.Prefix, len(k.Missing), len(k.Unexpected), len(k.Misshaped))
	list := func(n int, line func(int) string) { keylist.Write(&b, n, line) }
	list(len(k.Missing), func(i int) string {
		return fmt.Sprintf("missing    %s (expected shape %v)", k.Missing[i].Name, k.Missing[i].Shape)
	})
	list(len(k.Unexpected), func(i int) string { return "unexpected " + k.Unexpected[i] })
	list(len(k.Misshaped), func(i int) string {
		m := k.Misshaped[i]
		return fmt.Sprintf("mis-shaped %s: file has %v, expected %v", m.Name, m.Got, m.Want)
	})
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
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("textenc: index %s has no weight_map: not a sharded safetensors index", path)
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

// read returns a tensor's values as float64.
func (s *source) read(name string) ([]float64, error) {
	v, err := s.owner[name].Float64(name)
	if err != nil {
		return nil, fmt.Errorf("textenc: reading %s from %s: %w", name, s.path, err)
	}
	return v, nil
}

// findPrefix returns the first of prefixes under which the source holds
// the marker key, or an error naming what the file seems to hold instead.
func (s *source) findPrefix(model, marker string, prefixes []string) (string, error) {
	for _, p := range prefixes {
		if _, ok := s.owner[p+marker]; ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("textenc: %s holds no %s under any of the prefixes %q: not a %s checkpoint%s",
		s.path, marker, prefixes, model, s.describe())
}

// describe says what the keys look like, for an error about a file of
// another model: the kind of model when it is one this program knows,
// else a few of its names.
func (s *source) describe() string {
	names := s.names()
	if len(names) == 0 {
		return " (it holds no tensors)"
	}
	if l, err := checkpoints.DetectLayout(names); err == nil {
		return fmt.Sprintf(" (it is a Next-DiT checkpoint in the %v layout)", l)
	}
	for _, k := range []struct{ marker, what string }{
		{"self_attn.q_norm.weight", "a Gemma 3 text model"},
		{"mixer.Wqkv.parametrizations.weight.original", "a Jina XLM-RoBERTa text tower"},
		{"encoder.down_blocks.0.resnets.0.norm1.weight", "a VAE (diffusers layout)"},
	} {
		for _, n := range names {
			if strings.HasSuffix(n, k.marker) {
				return fmt.Sprintf(" (it looks like %s: it has %s)", k.what, n)
			}
		}
	}
	return fmt.Sprintf(" (its first keys: %s)", strings.Join(names[:min(3, len(names))], ", "))
}

// checkKeys compares the file with the architecture's parameters. With a
// non-empty prefix, keys outside it (a vision tower, a tied lm_head, a
// tokenizer blob) are other modules' and are skipped; keys under it must
// all be the model's.
func (s *source) checkKeys(want []ParamShape, prefix, model, config string) error {
	ke := &KeyError{Path: s.path, Model: model, Config: config, Prefix: prefix}
	wanted := map[string]bool{}
	for _, p := range want {
		wanted[prefix+p.Name] = true
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
		if strings.HasPrefix(n, prefix) && !wanted[n] {
			ke.Unexpected = append(ke.Unexpected, n)
		}
	}
	if len(ke.Missing)+len(ke.Unexpected)+len(ke.Misshaped) == 0 {
		return nil
	}
	return ke
}

// configJSON finds a checkpoint's architecture: the first file's
// __metadata__["config"], else a config.json in the checkpoint's folder (the
// folder itself, or the one holding the file or index). It returns the JSON
// and where it came from; ok is false when there is neither.
func (s *source) configJSON(path string) (js, from string, ok bool, err error) {
	if len(s.files) > 0 {
		if c, ok := s.files[0].Metadata()["config"]; ok {
			return c, "from the metadata of " + s.files[0].Path(), true, nil
		}
	}
	dir := path
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		dir = filepath.Dir(path)
	}
	p := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("textenc: %w", err)
	}
	return string(raw), "from " + p, true, nil
}

// resolveConfig is how both loaders find their architecture: the caller's
// (validated), else the JSON configJSON finds (parsed), else the real
// model's defaults; the string says which, for error messages.
func resolveConfig[C any](src *source, path string, given *C, validate func(C) error, parse func(string) (C, error), defaults func() C, model string) (C, string, error) {
	var zero C
	if given != nil {
		return *given, "given by the caller", validate(*given)
	}
	js, from, ok, err := src.configJSON(path)
	if err != nil {
		return zero, "", err
	}
	if !ok {
		return defaults(), model + " defaults: no config in the file's metadata and no config.json beside it", nil
	}
	cfg, err := parse(js)
	if err != nil {
		return zero, "", fmt.Errorf("%w (config %s)", err, from)
	}
	return cfg, from, nil
}

// openModel opens a checkpoint (openSource) and finds the prefix its
// model's keys carry (findPrefix).
func openModel(path, model, marker string, prefixes []string) (*source, string, error) {
	src, err := openSource(path)
	if err != nil {
		return nil, "", err
	}
	prefix, err := src.findPrefix(model, marker, prefixes)
	if err != nil {
		src.Close()
		return nil, "", err
	}
	return src, prefix, nil
}

// storageDType is a loader's storage dtype: BF16 when unset; BF16, F32 or
// F64.
func storageDType(d kernels.DType) (kernels.DType, error) {
	switch d {
	case 0:
		return kernels.BF16, nil
	case kernels.BF16, kernels.F32, kernels.F64:
		return d, nil
	}
	return 0, fmt.Errorf("textenc: storage dtype %v is not BF16, F32 or F64", d)
}
