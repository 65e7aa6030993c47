package nextdit

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/internal/keylist"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// KeyError is everything wrong with a weight file's keys, reported together
// so one run shows the whole mismatch.
type KeyError struct {
	Path       string
	Missing    []ParamShape // expected but absent, with the expected shape
	Unexpected []string     // present but not part of the architecture
	Misshaped  []Misshaped  // present with the wrong shape
}

// Misshaped is a weight whose shape in the file differs from the config's.
type Misshaped struct {
	Name      string
	Got, Want []int
}

// Error lists the problems, a few of each kind (the struct holds them all).
func (k *KeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nextdit: %s does not fit the config: %d missing, %d unexpected, %d mis-shaped",
		k.Path, len(k.Missing), len(k.Unexpected), len(k.Misshaped))
	keylist.Write(&b, len(k.Missing), func(i int) string {
		return fmt.Sprintf("missing    %s (expected shape %v)", k.Missing[i].Name, k.Missing[i].Shape)
	})
	keylist.Write(&b, len(k.Unexpected), func(i int) string { return "unexpected " + k.Unexpected[i] })
	keylist.Write(&b, len(k.Misshaped), func(i int) string {
		m := k.Misshaped[i]
		return fmt.Sprintf("mis-shaped %s: file has %v, expected %v", m.Name, m.Got, m.Want)
	})
	return b.String()
}

// Source is what the loader reads weights through: upstream tensor names,
// their shapes and dtypes, the file's __metadata__, and each tensor
// converted on demand. A *safetensors.File (a file in the upstream layout)
// and a *checkpoints.Weights (any layout: upstream, ComfyUI, diffusers
// with split q/k/v, sharded) both satisfy it, so one loader reads them all.
type Source interface {
	Names() []string
	Info(name string) (safetensors.TensorInfo, bool)
	Metadata() map[string]string
	Float64(name string) ([]float64, error)
	Float32(name string) ([]float32, error)
	BF16(name string) ([]uint16, error)
}

// sourceName is how errors name a source: its path when it has one.
func sourceName(src Source) string {
	if p, ok := src.(interface{ Path() string }); ok {
		return p.Path()
	}
	return "weights"
}

// ConfigFromFile reads the architecture from a weight source's
// __metadata__["config"].
func ConfigFromFile(src Source) (Config, error) {
	js, ok := src.Metadata()["config"]
	if !ok {
		return Config{}, fmt.Errorf("nextdit: %s has no __metadata__[\"config\"]; pass the config (or a preset) explicitly", sourceName(src))
	}
	c, err := ParseConfig(js)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", sourceName(src), err)
	}
	return c, nil
}

// ResolveConfig picks the architecture of a source: its metadata config
// when it carries one, else fallback (a preset the caller chose), else an
// error saying that neither exists. A fallback that disagrees with the
// file's own config is an error too, since loading would then check the
// file against the wrong shapes.
func ResolveConfig(src Source, fallback *Config) (Config, error) {
	if _, ok := src.Metadata()["config"]; ok {
		c, err := ConfigFromFile(src)
		if err != nil {
			return Config{}, err
		}
		if fallback != nil && fallback.JSON() != c.JSON() {
			return Config{}, fmt.Errorf("nextdit: %s carries config %s, which differs from the one asked for, %s", sourceName(src), c.JSON(), fallback.JSON())
		}
		return c, nil
	}
	if fallback == nil {
		return Config{}, fmt.Errorf("nextdit: %s has no __metadata__[\"config\"] and no config was given; name a preset (newbie-exp0.1, lumina2, tiny) or give the architecture", sourceName(src))
	}
	if err := fallback.Validate(); err != nil {
		return Config{}, err
	}
	return *fallback, nil
}

// ConfigFor is a source's architecture when the caller may name a preset:
// the source's metadata config; else the named preset; else, with no name,
// the preset whose every tensor the source fits. A named preset that
// disagrees with the metadata is an error (ResolveConfig).
func ConfigFor(src Source, preset string) (Config, error) {
	var fallback *Config
	if preset != "" {
		c, err := Preset(preset)
		if err != nil {
			return Config{}, err
		}
		fallback = &c
	} else if _, ok := src.Metadata()["config"]; !ok {
		if name := MatchPreset(src, nil); name != "custom" {
			c, _ := Preset(name)
			fallback = &c
		}
	}
	return ResolveConfig(src, fallback)
}

// Load opens a weights source in any layout checkpoints.OpenWeights reads —
// a safetensors file with upstream names, a ComfyUI single file
// (model.diffusion_model. prefix), a diffusers folder or its transformer/
// subfolder (split q/k/v), or a sharded checkpoint's index — and builds a
// model from it, reading the architecture from the file's metadata.
func Load(e *autograd.Engine, path string, opts Options) (*Model, error) {
	return LoadWithConfig(e, path, nil, opts)
}

// LoadWithConfig is Load for sources that may carry no config metadata
// (diffusers folders, most ComfyUI files): the architecture comes from the
// file's metadata when present, else from fallback (typically a preset);
// with neither it is an error.
func LoadWithConfig(e *autograd.Engine, path string, fallback *Config, opts Options) (*Model, error) {
	w, err := checkpoints.OpenWeights(path)
	if err != nil {
		return nil, fmt.Errorf("nextdit: %w", err)
	}
	defer w.Close()
	cfg, err := ResolveConfig(w, fallback)
	if err != nil {
		return nil, fmt.Errorf("%w (loading %s)", err, path)
	}
	m, err := LoadFile(e, w, cfg, opts)
	if ke, ok := IsKeyError(err); ok {
		ke.Path = path
	}
	return m, err
}

// LoadFile builds a model of architecture cfg from an open weight source.
// Every key is checked before anything is allocated; missing, unexpected
// and mis-shaped keys come back together as a *KeyError. Tensors are then
// converted one at a time to the storage dtype, so host memory beyond the
// mapped file never exceeds one tensor's conversion. norm_final.weight,
// which upstream defines but never uses (and diffusers drops), may be
// absent.
func LoadFile(e *autograd.Engine, f Source, cfg Config, opts Options) (*Model, error) {
	m, err := newModel(e, cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := CheckKeys(f, cfg); err != nil {
		return nil, err
	}
	m.reserve(func(p ParamShape) bool { _, ok := f.Info(p.Name); return ok })
	for _, p := range cfg.Params() {
		if _, ok := f.Info(p.Name); !ok { // only norm_final.weight may be skipped
			continue
		}
		raw, from, err := storageBytes(f, p.Name, m.opts.DType)
		if err != nil {
			m.Release()
			return nil, fmt.Errorf("nextdit: reading %s: %w", p.Name, err)
		}
		if err := m.store(p.Name, e.ConstantConverted(p.Name, m.opts.DType, p.Shape, raw, from)); err != nil {
			m.Release()
			return nil, err
		}
		if err := e.Err(); err != nil {
			m.Release()
			return nil, fmt.Errorf("nextdit: uploading %s: %w", p.Name, err)
		}
	}
	return m, nil
}

// CheckKeys compares a source's tensors with the architecture's and returns
// a *KeyError listing every difference, or nil. For a *checkpoints.Weights,
// file keys that map to no upstream name count as unexpected too (tensors
// of other models in a ComfyUI all-in-one file are skipped on purpose).
func CheckKeys(f Source, cfg Config) error {
	ke := &KeyError{Path: sourceName(f)}
	want := map[string]bool{}
	for _, p := range cfg.Params() {
		want[p.Name] = true
		info, ok := f.Info(p.Name)
		switch {
		case !ok && p.Name == "norm_final.weight":
		case !ok:
			ke.Missing = append(ke.Missing, p)
		case !slices.Equal(info.Shape, p.Shape):
			ke.Misshaped = append(ke.Misshaped, Misshaped{Name: p.Name, Got: info.Shape, Want: p.Shape})
		default:
			if _, isFloat := floatKind(info.DType); !isFloat {
				ke.Misshaped = append(ke.Misshaped, Misshaped{Name: p.Name + " (dtype " + string(info.DType) + ", not a float)", Got: info.Shape, Want: p.Shape})
			}
		}
	}
	for _, n := range f.Names() {
		if !want[n] {
			ke.Unexpected = append(ke.Unexpected, n)
		}
	}
	if w, ok := f.(*checkpoints.Weights); ok && w.Map != nil {
		ke.Unexpected = append(ke.Unexpected, w.Map.Unmapped...)
	}
	sort.Strings(ke.Unexpected)
	if len(ke.Missing)+len(ke.Unexpected)+len(ke.Misshaped) == 0 {
		return nil
	}
	return ke
}

// MatchPreset names the preset a source's architecture is: the one equal
// to cfg when cfg is given (the source's metadata config), else the one
// whose every tensor name and shape the source fits; "custom" when none.
func MatchPreset(src Source, cfg *Config) string {
	names := make([]string, 0, len(Presets))
	for n := range Presets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p, _ := Preset(n)
		if cfg != nil {
			if p.JSON() == cfg.JSON() {
				return n
			}
			continue
		}
		if CheckKeys(src, p) == nil {
			return n
		}
	}
	return "custom"
}

// floatKind maps a file dtype to the kernel dtype when it is a float.
func floatKind(d safetensors.DType) (kernels.DType, bool) {
	k, ok := d.Kernel()
	return k, ok && k.IsFloat()
}

// IsKeyError reports whether err carries a *KeyError and returns it.
func IsKeyError(err error) (*KeyError, bool) {
	var ke *KeyError
	ok := errors.As(err, &ke)
	return ke, ok
}

// encodedSource is a Source that gives a tensor's bytes in a storage dtype
// (safetensors.File and checkpoints.Weights do).
type encodedSource interface {
	Encoded(name string, d safetensors.DType) ([]byte, error)
}

// storageBytes reads one tensor for storage in dtype d: its little-endian
// bytes and the dtype they are in, which the upload converts to d
// (autograd.ConstantConverted). Where the tensor is BF16, F16 or F32 in the
// file and d is one of those, they are the file's own bytes: no per-value
// decode and re-encode on the host, and the conversion, if any, runs on the
// backend. Otherwise the host converts to d (F64 checks, other sources),
// holding this tensor twice at most, never a float64 copy of a
// half-precision file.
func storageBytes(f Source, name string, d kernels.DType) ([]byte, kernels.DType, error) {
	stored := func(d kernels.DType) bool { return d == kernels.BF16 || d == kernels.F16 || d == kernels.F32 }
	if enc, ok := f.(encodedSource); ok && stored(d) {
		info, _ := f.Info(name)
		if from, ok := info.DType.Kernel(); ok && stored(from) {
			raw, err := enc.Encoded(name, info.DType)
			return raw, from, err
		}
	}
	if d == kernels.BF16 {
		v, err := f.BF16(name)
		if err != nil {
			return nil, 0, err
		}
		return safetensors.EncodeU16(v), d, nil
	}
	v, err := f.Float64(name) // F64 checks, and F16/F32 from other sources
	if err != nil {
		return nil, 0, err
	}
	return kernels.EncodeF64(d, v), d, nil
}
