package vae

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/newbie-train/newbie-train/internal/keylist"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// Options choose how a VAE stores and runs its weights.
type Options struct {
	// DType is the storage dtype of the weights: F32 (the default: the VAE
	// is small next to the DiT and its latents are what training learns
	// from), BF16, or F64 for parity checks.
	DType kernels.DType
	// Checkpoint runs every resnet block under autograd.Checkpoint, so a
	// backward through the VAE (not needed for training the DiT, but for
	// losses on decoded images) keeps only block inputs of big images.
	Checkpoint bool
	// Config, when set, is the architecture to use for a file without
	// config metadata (instead of a config.json beside it or FLUX's).
	Config *Config
	// DecodeTile is the latent side above which Decode works in blended
	// tiles of that side, a multiple of 4 (0: DefaultDecodeTile, diffusers'
	// for FLUX, so images up to 1024² decode whole; negative: never tile).
	DecodeTile int
}

func (o Options) withDefaults() (Options, error) {
	if o.DType == 0 {
		o.DType = kernels.F32
	}
	if o.DecodeTile > 0 {
		if err := checkTile(o.DecodeTile); err != nil {
			return o, fmt.Errorf("vae: Options.DecodeTile: %w", err)
		}
	}
	switch o.DType {
	case kernels.F32, kernels.BF16, kernels.F64, kernels.F16:
		return o, nil
	}
	return o, fmt.Errorf("vae: storage dtype %v is not a float dtype", o.DType)
}

// VAE is a loaded autoencoder on an engine.
type VAE struct {
	e       *autograd.Engine
	cfg     Config
	opts    Options
	weights map[string]*autograd.Tensor
	hash    string

	// testHeadLimit and testChunkRows, when set, override the widest head
	// sent to the fused attention op and the query rows per chunk of the
	// explicit path, so tests run both paths on the tiny model.
	testHeadLimit *int
	testChunkRows int
}

// Engine returns the engine the VAE's weights live on.
func (m *VAE) Engine() *autograd.Engine { return m.e }

// Config returns the architecture.
func (m *VAE) Config() Config { return m.cfg }

// Options returns the options the VAE was built with.
func (m *VAE) Options() Options { return m.opts }

// SetCheckpoint turns per-resnet-block activation checkpointing on or off.
func (m *VAE) SetCheckpoint(on bool) { m.opts.Checkpoint = on }

// WeightsHash is the SHA-256 of every weight's name, shape and file bytes,
// in name order: it changes whenever the numbers do, whatever the file's
// name or tensor order.
func (m *VAE) WeightsHash() string { return m.hash }

// Weight returns the named parameter (nil when the architecture has none).
func (m *VAE) Weight(name string) *autograd.Tensor { return m.weights[name] }

// Release frees every weight.
func (m *VAE) Release() {
	for k, w := range m.weights {
		w.Release()
		delete(m.weights, k)
	}
}

// KeyError is everything wrong with a weight file's keys, reported together
// so one run shows the whole mismatch.
type KeyError struct {
	Path       string
	Missing    []Param    // expected but absent, with the expected shape
	Unexpected []string   // present but not part of the architecture
	Misshaped  []Misshape // present with the wrong shape or a non-float dtype
}

// Misshape is a weight whose shape (or dtype) in the file is not the
// architecture's.
type Misshape struct {
	Name      string
	Got, Want []int
	DType     string
}

// Error lists the problems, a few of each kind (the struct holds them all).
func (k *KeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vae: %s does not fit the config: %d missing, %d unexpected, %d mis-shaped",
		k.Path, len(k.Missing), len(k.Unexpected), len(k.Misshaped))
	keylist.Write(&b, len(k.Missing), func(i int) string {
		return fmt.Sprintf("missing    %s (expected shape %v)", k.Missing[i].Name, k.Missing[i].Shape)
	})
	keylist.Write(&b, len(k.Unexpected), func(i int) string { return "unexpected " + k.Unexpected[i] })
	keylist.Write(&b, len(k.Misshaped), func(i int) string {
		m := k.Misshaped[i]
		return fmt.Sprintf("mis-shaped %s: file has %v %s, expected %v", m.Name, m.Got, m.DType, m.Want)
	})
	return b.String()
}

// IsKeyError reports whether err carries a *KeyError and returns it.
func IsKeyError(err error) (*KeyError, bool) {
	var ke *KeyError
	ok := errors.As(err, &ke)
	return ke, ok
}

// Source is what the loader reads: tensor names, shapes and dtypes, the
// metadata, and each tensor as float64. *safetensors.File satisfies it.
type Source interface {
	Names() []string
	Info(name string) (safetensors.TensorInfo, bool)
	Metadata() map[string]string
	Float64(name string) ([]float64, error)
	Bytes(name string) ([]byte, error)
}

// CheckKeys compares a source's tensors with the architecture's and returns
// a *KeyError listing every difference, or nil.
func CheckKeys(f Source, cfg Config, path string) error {
	ke := &KeyError{Path: path}
	want := map[string]bool{}
	for _, p := range cfg.Params() {
		want[p.Name] = true
		info, ok := f.Info(p.Name)
		if !ok {
			ke.Missing = append(ke.Missing, p)
			continue
		}
		k, known := info.DType.Kernel()
		if !slices.Equal(info.Shape, p.Shape) || !known || !k.IsFloat() {
			ke.Misshaped = append(ke.Misshaped, Misshape{Name: p.Name, Got: info.Shape, Want: p.Shape, DType: string(info.DType)})
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

// ResolveConfig picks the architecture of a weight file: its
// __metadata__["config"] (an opts.Config that differs from it is an
// error: the file would be checked against the wrong shapes), else
// opts.Config, else a config.json in the
// file's folder (the diffusers vae/ layout), else FLUX.1's.
func ResolveConfig(f Source, path string, opts Options) (Config, error) {
	if js, ok := f.Metadata()["config"]; ok {
		c, err := ParseConfig(js)
		if err != nil {
			return Config{}, fmt.Errorf("%s metadata: %w", path, err)
		}
		if opts.Config != nil && opts.Config.JSON() != c.JSON() {
			return Config{}, fmt.Errorf("vae: %s carries config %s, which differs from the one asked for, %s", path, c.JSON(), opts.Config.JSON())
		}
		return c, nil
	}
	if opts.Config != nil {
		return *opts.Config, opts.Config.Validate()
	}
	cj := filepath.Join(filepath.Dir(path), "config.json")
	if b, err := os.ReadFile(cj); err == nil {
		c, err := ParseConfig(string(b))
		if err != nil {
			return Config{}, fmt.Errorf("%s: %w", cj, err)
		}
		return c, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("vae: reading %s: %w", cj, err)
	}
	return FLUX(), nil
}

// Load reads a safetensors file with diffusers key names, or FLUX's
// original ae.safetensors with Black Forest Labs' names, and builds the
// VAE on e. Every key is checked before anything is uploaded; missing,
// unexpected and mis-shaped keys come back together as a *KeyError.
func Load(e *autograd.Engine, path string, opts Options) (*VAE, error) {
	f, src, name, cfg, err := openFile(path, opts)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return LoadSource(e, src, name, cfg, opts)
}

// Check reads a weight file as Load would — its architecture and key
// layout — and checks every key against the architecture, without
// building anything: a nil error means Load accepts the file. It returns
// the architecture and the layout (LayoutDiffusers or LayoutBFL).
func Check(path string, opts Options) (Config, string, error) {
	f, src, name, cfg, err := openFile(path, opts)
	if err != nil {
		return Config{}, "", err
	}
	defer f.Close()
	layout := LayoutDiffusers
	if _, bfl := src.(*bflSource); bfl {
		layout = LayoutBFL
	}
	return cfg, layout, CheckKeys(src, cfg, name)
}

// openFile opens a weight file, resolves its architecture and presents it
// under diffusers names; name is how errors call it. The caller closes f.
func openFile(path string, opts Options) (f *safetensors.File, src Source, name string, cfg Config, err error) {
	f, err = safetensors.Open(path)
	if err != nil {
		return nil, nil, "", Config{}, fmt.Errorf("vae: %w", err)
	}
	cfg, err = ResolveConfig(f, path, opts)
	if err != nil {
		f.Close()
		return nil, nil, "", Config{}, err
	}
	if _, bfl := f.Info(bflProbe); bfl {
		return f, newBFLSource(f, cfg), path + " (Black Forest Labs ae.safetensors layout, keys shown under diffusers names)", cfg, nil
	}
	return f, f, path, cfg, nil
}

// LoadSource builds a VAE of architecture cfg from an open source; path
// names it in errors. Tensors are converted one at a time, so host memory
// beyond the mapped file never exceeds one tensor's conversion.
func LoadSource(e *autograd.Engine, f Source, path string, cfg Config, opts Options) (*VAE, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := CheckKeys(f, cfg, path); err != nil {
		return nil, err
	}
	m := &VAE{e: e, cfg: cfg, opts: opts, weights: map[string]*autograd.Tensor{}}
	params := cfg.Params()
	sort.Slice(params, func(i, j int) bool { return params[i].Name < params[j].Name })
	m.reserve(params)
	h := sha256.New()
	for _, p := range params {
		raw, err := f.Bytes(p.Name)
		if err != nil {
			m.Release()
			return nil, fmt.Errorf("vae: reading %s from %s: %w", p.Name, path, err)
		}
		info, _ := f.Info(p.Name)
		h.Write([]byte(p.Name))
		h.Write([]byte(info.DType))
		for _, d := range p.Shape {
			h.Write(binary.LittleEndian.AppendUint64(nil, uint64(d)))
		}
		h.Write(raw)
		v, err := f.Float64(p.Name)
		if err != nil {
			m.Release()
			return nil, fmt.Errorf("vae: reading %s from %s: %w", p.Name, path, err)
		}
		m.weights[p.Name] = e.Constant(p.Name, opts.DType, p.Shape, v)
		if err := e.Err(); err != nil {
			m.Release()
			return nil, fmt.Errorf("vae: uploading %s: %w", p.Name, err)
		}
	}
	m.hash = hex.EncodeToString(h.Sum(nil))
	return m, nil
}

// NewRandom builds a VAE of architecture cfg with seeded random weights
// (convolution and linear weights N(0, 1/fan_in), biases N(0, 0.02²),
// norm scales 1 + N(0, 0.1²)) for benchmarks and demos without a weight
// file. Its WeightsHash names the seed and config, so its latents are
// never confused with a real VAE's in a cache.
func NewRandom(e *autograd.Engine, cfg Config, opts Options, seed uint64) (*VAE, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &VAE{e: e, cfg: cfg, opts: opts, weights: map[string]*autograd.Tensor{}}
	m.reserve(cfg.Params())
	for k, p := range cfg.Params() {
		n, fanIn := 1, 1
		for i, s := range p.Shape {
			n *= s
			if i > 0 {
				fanIn *= s
			}
		}
		v := make([]float64, n)
		stream := seed ^ uint64(k+1)*0x9e3779b97f4a7c15
		// Each value depends on its index only, so the draw splits over
		// the cores (the full FLUX VAE has 84 M of them).
		parts := max(1, min(runtime.GOMAXPROCS(0), n>>16))
		var wg sync.WaitGroup
		for part := range parts {
			wg.Add(1)
			go func(lo, hi int) {
				defer wg.Done()
				for i := lo; i < hi; i++ {
					z := kernels.NormalAt(stream, uint64(i), 0, 1)
					switch {
					case len(p.Shape) > 1:
						v[i] = z / math.Sqrt(float64(fanIn))
					case strings.HasSuffix(p.Name, ".bias"):
						v[i] = 0.02 * z
					default:
						v[i] = 1 + 0.1*z
					}
				}
			}(part*n/parts, (part+1)*n/parts)
		}
		wg.Wait()
		m.weights[p.Name] = e.Constant(p.Name, opts.DType, p.Shape, v)
	}
	if err := e.Err(); err != nil {
		m.Release()
		return nil, fmt.Errorf("vae: uploading random weights: %w", err)
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "random/%d/%s", seed, cfg.JSON()))
	m.hash = hex.EncodeToString(sum[:])
	return m, nil
}

// reserve announces the weights about to be uploaded, so that the backend
// packs them into one allocation.
func (m *VAE) reserve(params []Param) {
	var n int64
	for _, p := range params {
		elems := int64(1)
		for _, s := range p.Shape {
			elems *= int64(s)
		}
		n += elems * int64(m.opts.DType.Size())
	}
	m.e.ReserveConstants(n, len(params))
}
