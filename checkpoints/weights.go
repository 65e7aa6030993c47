package checkpoints

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
)

// Weights is a Next-DiT weights source opened for reading by upstream
// name: one safetensors file or the shards of one, in any Layout. Tensors
// stay in the memory-mapped files until asked for, and each accessor builds
// only the one tensor requested.
type Weights struct {
	// Map is the key map the names come from (layout, unmapped and ignored
	// keys for reporting).
	Map   *KeyMap
	files []*safetensors.File
	// owner gives the shard holding each file key.
	owner map[string]*safetensors.File
	infos map[string]safetensors.TensorInfo
}

// indexSuffix ends the name of a sharded checkpoint's index file.
const indexSuffix = ".safetensors.index.json"

// OpenWeights opens a weights source. path may be a .safetensors file, a
// *.safetensors.index.json (the shards it names form one logical file), or
// a folder: a diffusers model folder (its transformer/ subfolder is used),
// or a folder holding one index file, or one or more .safetensors files
// (several without an index are taken as shards of one model, and a name
// found twice is an error).
func OpenWeights(path string) (_ *Weights, err error) {
	shards, err := resolveShards(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: opening weights: %w", err)
	}
	w := &Weights{owner: map[string]*safetensors.File{}, infos: map[string]safetensors.TensorInfo{}}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	var keys []string
	for _, s := range shards {
		f, err := safetensors.Open(s.file)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: opening weights: %w", err)
		}
		w.files = append(w.files, f)
		for _, k := range f.Names() {
			if prev, dup := w.owner[k]; dup {
				return nil, fmt.Errorf("checkpoints: opening weights: tensor %q is in both %s and %s", k, prev.Path(), f.Path())
			}
			w.owner[k] = f
			keys = append(keys, k)
		}
		for _, k := range s.expect {
			if _, ok := f.Info(k); !ok {
				return nil, fmt.Errorf("checkpoints: opening weights: the index puts %q in %s, but that shard has no such tensor", k, f.Path())
			}
		}
		if s.expect != nil {
			want := map[string]bool{}
			for _, k := range s.expect {
				want[k] = true
			}
			for _, k := range f.Names() {
				if !want[k] {
					return nil, fmt.Errorf("checkpoints: opening weights: shard %s holds %q, which the index does not list", f.Path(), k)
				}
			}
		}
	}
	sort.Strings(keys)
	m, err := MapWeightKeys(keys)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: opening weights %s: %w", path, err)
	}
	w.Map = m
	for name, r := range m.Recipes {
		info, err := w.recipeInfo(r)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: opening weights %s: %w", path, err)
		}
		w.infos[name] = info
	}
	return w, nil
}

// recipeInfo checks that a recipe's parts can be concatenated (same dtype,
// same trailing dimensions) and gives the result's shape.
func (w *Weights) recipeInfo(r Recipe) (safetensors.TensorInfo, error) {
	var out safetensors.TensorInfo
	for i, p := range r.Parts {
		t, _ := w.owner[p.Key].Info(p.Key)
		if i == 0 {
			out = safetensors.TensorInfo{Name: r.Name, DType: t.DType, Shape: append([]int(nil), t.Shape...)}
			continue
		}
		if t.DType != out.DType {
			return out, fmt.Errorf("%s: %q is %s but %q is %s; the pieces of one tensor must share a dtype", r.Name, r.Parts[0].Key, out.DType, p.Key, t.DType)
		}
		if len(t.Shape) != len(out.Shape) || len(t.Shape) == 0 || !slices.Equal(t.Shape[1:], out.Shape[1:]) {
			return out, fmt.Errorf("%s: cannot stack the rows of %q %v onto %q: trailing dimensions differ", r.Name, p.Key, t.Shape, r.Parts[0].Key)
		}
		out.Shape[0] += t.Shape[0]
	}
	return out, nil
}

// Layout is the detected naming scheme.
func (w *Weights) Layout() Layout { return w.Map.Layout }

// Names lists the upstream names, sorted.
func (w *Weights) Names() []string { return w.Map.Names() }

// Info describes an upstream-named tensor; ok is false when there is none.
// It returns safetensors.TensorInfo (Begin and End left zero: a stacked
// tensor has no single byte range) so that a loader written against
// *safetensors.File — Names, Info, Metadata, Float64/Float32/BF16 — can take
// a *Weights through a small interface and read every layout.
func (w *Weights) Info(name string) (safetensors.TensorInfo, bool) {
	i, ok := w.infos[name]
	i.Shape = append([]int(nil), i.Shape...)
	return i, ok
}

// Metadata merges the __metadata__ of every shard (the first shard wins on
// a conflicting key).
func (w *Weights) Metadata() map[string]string {
	out := map[string]string{}
	for i := len(w.files) - 1; i >= 0; i-- {
		for k, v := range w.files[i].Metadata() {
			out[k] = v
		}
	}
	return out
}

// Float32 builds an upstream-named tensor as float32 (concatenating the
// rows of split parts).
func (w *Weights) Float32(name string) ([]float32, error) {
	return gather(w, name, func(f *safetensors.File, k string) ([]float32, error) { return f.Float32(k) })
}

// BF16 builds an upstream-named tensor as bfloat16 bit patterns.
func (w *Weights) BF16(name string) ([]uint16, error) {
	return gather(w, name, func(f *safetensors.File, k string) ([]uint16, error) { return f.BF16(k) })
}

// Encoded builds an upstream-named tensor in dtype d, little-endian (see
// safetensors.File.Encoded): a tensor of one part stored in d is the file's
// own bytes.
func (w *Weights) Encoded(name string, d safetensors.DType) ([]byte, error) {
	return gather(w, name, func(f *safetensors.File, k string) ([]byte, error) { return f.Encoded(k, d) })
}

// Float64 builds an upstream-named tensor as float64.
func (w *Weights) Float64(name string) ([]float64, error) {
	return gather(w, name, func(f *safetensors.File, k string) ([]float64, error) { return f.Float64(k) })
}

// gather applies read to every part of name's recipe and stacks the rows;
// row-major storage makes stacking along the first axis a concatenation.
func gather[T any](w *Weights, name string, read func(*safetensors.File, string) ([]T, error)) ([]T, error) {
	r, ok := w.Map.Recipes[name]
	if !ok {
		return nil, fmt.Errorf("checkpoints: weights have no tensor %q (layout %s)", name, w.Map.Layout)
	}
	if len(r.Parts) == 1 {
		return read(w.owner[r.Parts[0].Key], r.Parts[0].Key)
	}
	info := w.infos[name]
	n := 1
	for _, s := range info.Shape {
		n *= s
	}
	out := make([]T, 0, n)
	for _, p := range r.Parts {
		v, err := read(w.owner[p.Key], p.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, v...)
	}
	return out, nil
}

// Close unmaps every shard.
func (w *Weights) Close() error {
	var errs []error
	for _, f := range w.files {
		if err := f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	w.files = nil
	return errors.Join(errs...)
}

// shard is one file of a weights source; expect lists the keys an index
// assigns to it (nil when there is no index).
type shard struct {
	file   string
	expect []string
}

// resolveShards turns a path into the files that make one logical model.
func resolveShards(path string) ([]shard, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		if strings.HasSuffix(path, indexSuffix) {
			return readIndex(path)
		}
		return []shard{{file: path}}, nil
	}
	if sub := filepath.Join(path, "transformer"); isDir(sub) {
		path = sub
	}
	idx, _ := filepath.Glob(filepath.Join(path, "*"+indexSuffix))
	if len(idx) > 1 {
		return nil, fmt.Errorf("%s holds %d index files (%s); name the one to use", path, len(idx), strings.Join(idx, ", "))
	}
	if len(idx) == 1 {
		return readIndex(idx[0])
	}
	files, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
	if len(files) == 0 {
		return nil, fmt.Errorf("%s holds no .safetensors file and no %s", path, "*"+indexSuffix)
	}
	sort.Strings(files)
	out := make([]shard, len(files))
	for i, f := range files {
		out[i] = shard{file: f}
	}
	return out, nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// ReadIndex reads a Hugging Face shard index — {"metadata": {...},
// "weight_map": {tensor: shard file name}}, shard names relative to the
// index's folder — and returns its weight map; an index without one is an
// error.
func ReadIndex(path string) (map[string]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("%s: weight_map is missing or empty", path)
	}
	return idx.WeightMap, nil
}

// readIndex reads a shard index into the shards it names, each with the
// keys it must hold.
func readIndex(path string) ([]shard, error) {
	weightMap, err := ReadIndex(path)
	if err != nil {
		return nil, err
	}
	by := map[string][]string{}
	for k, f := range weightMap {
		if f == "" || filepath.IsAbs(f) || strings.Contains(filepath.ToSlash(f), "../") {
			return nil, fmt.Errorf("%s: tensor %q is mapped to %q, which is not a file beside the index", path, k, f)
		}
		by[f] = append(by[f], k)
	}
	names := make([]string, 0, len(by))
	for f := range by {
		names = append(names, f)
	}
	sort.Strings(names)
	dir := filepath.Dir(path)
	out := make([]shard, len(names))
	for i, f := range names {
		keys := by[f]
		sort.Strings(keys)
		out[i] = shard{file: filepath.Join(dir, f), expect: keys}
	}
	return out, nil
}
