package nextdit

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/autograd"
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

// Error lists every problem by name.
func (k *KeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nextdit: %s does not fit the config: %d missing, %d unexpected, %d mis-shaped",
		k.Path, len(k.Missing), len(k.Unexpected), len(k.Misshaped))
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

// ConfigFromFile reads the architecture from a weight file's
// __metadata__["config"].
func ConfigFromFile(f *safetensors.File) (Config, error) {
	js, ok := f.Metadata()["config"]
	if !ok {
		return Config{}, fmt.Errorf("nextdit: %s has no __metadata__[\"config\"]; pass the config (or a preset) explicitly", f.Path())
	}
	c, err := ParseConfig(js)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", f.Path(), err)
	}
	return c, nil
}

// Load opens a safetensors weight file with upstream key names and builds a
// model from it, reading the architecture from the file's metadata.
func Load(e *autograd.Engine, path string, opts Options) (*Model, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("nextdit: %w", err)
	}
	defer f.Close()
	cfg, err := ConfigFromFile(f)
	if err != nil {
		return nil, err
	}
	return LoadFile(e, f, cfg, opts)
}

// LoadFile builds a model of architecture cfg from an open weight file.
// Every key is checked before anything is allocated; missing, unexpected
// and mis-shaped keys come back together as a *KeyError. Tensors are then
// converted one at a time to the storage dtype, so host memory beyond the
// mapped file never exceeds one tensor's conversion. norm_final.weight,
// which upstream defines but never uses, may be absent.
func LoadFile(e *autograd.Engine, f *safetensors.File, cfg Config, opts Options) (*Model, error) {
	m, err := newModel(e, cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := CheckKeys(f, cfg); err != nil {
		return nil, err
	}
	for _, p := range cfg.Params() {
		if _, ok := f.Info(p.Name); !ok { // only norm_final.weight may be skipped
			continue
		}
		v, err := f.Float64(p.Name)
		if err != nil {
			m.Release()
			return nil, fmt.Errorf("nextdit: reading %s: %w", p.Name, err)
		}
		m.weights[p.Name] = e.Constant(p.Name, m.opts.DType, p.Shape, v)
		if err := e.Err(); err != nil {
			m.Release()
			return nil, fmt.Errorf("nextdit: uploading %s: %w", p.Name, err)
		}
	}
	return m, nil
}

// CheckKeys compares a file's tensors with the architecture's and returns a
// *KeyError listing every difference, or nil.
func CheckKeys(f *safetensors.File, cfg Config) error {
	ke := &KeyError{Path: f.Path()}
	want := map[string]bool{}
	for _, p := range cfg.Params() {
		want[p.Name] = true
		info, ok := f.Info(p.Name)
		switch {
		case !ok && p.Name == "norm_final.weight":
		case !ok:
			ke.Missing = append(ke.Missing, p)
		case !sameInts(info.Shape, p.Shape):
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
	sort.Strings(ke.Unexpected)
	if len(ke.Missing)+len(ke.Unexpected)+len(ke.Misshaped) == 0 {
		return nil
	}
	return ke
}

// floatKind maps a file dtype to the kernel dtype when it is a float.
func floatKind(d safetensors.DType) (kernels.DType, bool) {
	k, ok := d.Kernel()
	return k, ok && k.IsFloat()
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// IsKeyError reports whether err carries a *KeyError and returns it.
func IsKeyError(err error) (*KeyError, bool) {
	var ke *KeyError
	ok := errors.As(err, &ke)
	return ke, ok
}
