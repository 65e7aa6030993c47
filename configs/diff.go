package configs

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// unhashed are the key paths Hash leaves out (see hashed), as prefixes of
// a key path: a key is left out when it equals one or lies below it.
// data.folders[*].path stands for every folder's path.
var unhashed = []string{
	"model.path", "model.weights", "model.vae", "model.gemma", "model.gemma_tokenizer", "model.jina", "model.jina_tokenizer",
	"model.config", "lora.init_from", "device", "gpu", "memory_budget_gib",
	"data.folders[*].path", "data.cache", "data.workers", "data.prefetch",
	"data.deep_validate", "data.max_pixels",
	"train.validation.every", "train.nonfinite_limit", "train.checkpoint_blocks",
	"save", "sample", "logging", "dist",
}

// folderIndex matches a list index in a key path.
var folderIndex = regexp.MustCompile(`\[\d+\]`)

func isUnhashed(path string) bool {
	generic := folderIndex.ReplaceAllString(path, "[*]")
	for _, u := range unhashed {
		if generic == u || strings.HasPrefix(generic, u+".") {
			return true
		}
	}
	return false
}

// HashedValues flattens the keys Hash covers into key path → value as the
// messages print it ("train.learning_rate" → "0.0001", "lora.targets" →
// "[attention.qkv, …]", "data.folders[0].repeats" → "10"). Two configs
// with the same Hash have the same HashedValues, and Diff compares them.
func (c *Config) HashedValues() map[string]string {
	out := map[string]string{}
	walkLeaves(reflect.ValueOf(*c), "", func(path string, f reflect.Value) {
		if !isUnhashed(path) {
			out[path] = formatValue(f)
		}
	})
	return out
}

// walkLeaves calls visit with every leaf field of the schema struct v and
// its key path ("train.learning_rate", "data.folders[0].repeats").
func walkLeaves(v reflect.Value, prefix string, visit func(path string, f reflect.Value)) {
	keys, index := structFields(v.Type())
	for _, k := range keys {
		f := v.Field(index[k])
		p := join(prefix, k)
		switch {
		case f.Kind() == reflect.Struct:
			walkLeaves(f, p, visit)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
			for i := range f.Len() {
				walkLeaves(f.Index(i), fmt.Sprintf("%s[%d]", p, i), visit)
			}
		default:
			visit(p, f)
		}
	}
}

// formatValue prints a leaf: numbers in their shortest exact form, strings
// quoted, lists in brackets.
func formatValue(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = formatValue(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Float64:
		return fmtFloat(v.Float())
	}
	return fmt.Sprint(v.Interface())
}

// Change is one key whose value differs between two configs. A key one of
// them lacks (a dataset folder more or less) has "(none)" on that side.
type Change struct {
	Key, Old, New string
}

// String is "key: old → new".
func (ch Change) String() string { return ch.Key + ": " + ch.Old + " → " + ch.New }

// Diff lists the keys Hash covers whose values differ from old to new, in
// key order: what made two hashes differ.
func Diff(old, new *Config) []Change {
	a, b := old.HashedValues(), new.HashedValues()
	var out []Change
	for k, va := range a {
		vb, ok := b[k]
		if !ok {
			vb = "(none)"
		}
		if va != vb {
			out = append(out, Change{Key: k, Old: va, New: vb})
		}
	}
	for k, vb := range b {
		if _, ok := a[k]; !ok {
			out = append(out, Change{Key: k, Old: "(none)", New: vb})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
