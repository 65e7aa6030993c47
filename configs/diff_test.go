package configs

import (
	"reflect"
	"strings"
	"testing"
)

// perturb changes a leaf's value.
func perturb(f reflect.Value) {
	switch f.Kind() {
	case reflect.String:
		f.SetString(f.String() + "x")
	case reflect.Int:
		f.SetInt(f.Int() + 1)
	case reflect.Uint64:
		f.SetUint(f.Uint() + 1)
	case reflect.Float64:
		f.SetFloat(f.Float()*1.5 + 0.25)
	case reflect.Bool:
		f.SetBool(!f.Bool())
	case reflect.Slice:
		f.Set(reflect.Append(f, reflect.Zero(f.Type().Elem())))
	default:
		panic("no perturbation for " + f.Kind().String())
	}
}

// TestHashedValuesMatchHash: for every key of the schema, changing its
// value changes Hash exactly when HashedValues lists the key, and then
// Diff names that key alone with its old and new value — so the refusal
// of a resume always says what changed.
func TestHashedValuesMatchHash(t *testing.T) {
	load := func() *Config {
		c, err := Load("lora.yaml")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ref := load()
	hashed := ref.HashedValues()
	var paths []string
	walkLeaves(reflect.ValueOf(ref).Elem(), "", func(p string, _ reflect.Value) { paths = append(paths, p) })
	if len(paths) < 90 {
		t.Fatalf("only %d keys found", len(paths))
	}
	for _, p := range paths {
		c := load()
		walkLeaves(reflect.ValueOf(c).Elem(), "", func(q string, f reflect.Value) {
			if q == p {
				perturb(f)
			}
		})
		_, isHashed := hashed[p]
		changed := c.Hash() != ref.Hash()
		if changed != isHashed {
			t.Errorf("%s: hash changed %v, but HashedValues lists it: %v", p, changed, isHashed)
		}
		d := Diff(ref, c)
		switch {
		case isHashed && (len(d) != 1 || d[0].Key != p || d[0].Old == d[0].New):
			t.Errorf("%s: Diff %v, want that key alone", p, d)
		case !isHashed && len(d) != 0:
			t.Errorf("%s (not hashed): Diff %v", p, d)
		}
	}
}

// TestDiffMessage: a changed learning rate and an added folder read as key:
// old → new.
func TestDiffMessage(t *testing.T) {
	a := mustParse(t, "/a/lora.yaml", minimal)
	b := mustParse(t, "/a/lora.yaml", withSection(withSection(minimal, "train: {max_steps: 1000, learning_rate: 5e-4}"), "data: {folders: [images, {path: more, repeats: 3}]}"))
	var got []string
	for _, c := range Diff(a, b) {
		got = append(got, c.String())
	}
	want := []string{"data.folders[1].repeats: (none) → 3", "train.learning_rate: 0.0001 → 0.0005"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
