package checkpoints

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// testState builds a state with random tensors of awkward sizes, a blob,
// an empty blob and opaque JSON documents.
func testState(t *testing.T, step int64) *State {
	t.Helper()
	r := kerneltest.Rng(t)
	tensor := func(shape ...int) Tensor {
		n := 1
		for _, s := range shape {
			n *= s
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return Tensor{Shape: shape, Data: v}
	}
	blob := make([]byte, 37)
	for i := range blob {
		blob[i] = byte(r.IntN(256))
	}
	return &State{
		Step: step, ConfigHash: "cfg-1", BaseModelHash: "base-9", RunID: "run-a",
		Seed: 1<<63 + 12345, RNGOffset: 1<<62 + 7,
		Tensors: map[string]Tensor{
			"lora/layers.0.attention.qkv.A":   tensor(3, 13),
			"lora/layers.0.attention.qkv.B":   tensor(37, 3),
			"adam/m/layers.0.attention.qkv.A": tensor(3, 13),
			"scalar":                          tensor(),
		},
		Blobs: map[string][]byte{"moments.raw": blob, "empty": {}},
		JSON: map[string]json.RawMessage{
			"optimizer": json.RawMessage(`{"step": 12, "lr": 0.0001, "betas": [0.9, 0.999]}`),
			"scaler":    json.RawMessage(`{"scale":65536,"growth_tracker":17}`),
			"loader":    json.RawMessage(`{"epoch":1,"cursor":[3,1,4,1,5]}`),
		},
		Meta: map[string]string{"version": "test"},
	}
}

// compactJSON normalises the JSON entries: a state stores their meaning,
// not their whitespace.
func compactJSON(t *testing.T, m map[string]json.RawMessage) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		var b bytes.Buffer
		if err := json.Compact(&b, v); err != nil {
			t.Fatal(err)
		}
		out[k] = b.String()
	}
	return out
}

func sameState(t *testing.T, got, want *State) {
	t.Helper()
	g, w := *got, *want
	gj, wj := compactJSON(t, g.JSON), compactJSON(t, w.JSON)
	g.JSON, w.JSON = nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("state differs:\n got  step %d seed %d off %d cfg %s base %s tensors %d blobs %d meta %v\n want step %d seed %d off %d cfg %s base %s tensors %d blobs %d meta %v",
			g.Step, g.Seed, g.RNGOffset, g.ConfigHash, g.BaseModelHash, len(g.Tensors), len(g.Blobs), g.Meta,
			w.Step, w.Seed, w.RNGOffset, w.ConfigHash, w.BaseModelHash, len(w.Tensors), len(w.Blobs), w.Meta)
	}
	if !reflect.DeepEqual(gj, wj) {
		t.Errorf("JSON entries differ: got %v, want %v", gj, wj)
	}
}

// TestStateRoundTrip: what SaveState writes, LoadState gives back exactly.
func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := testState(t, 120)
	p, err := SaveState(dir, want)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "state-00000120" {
		t.Errorf("saved as %s", p)
	}
	got, err := LoadState(p)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, want)
	m, err := ReadManifest(p)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != StateVersion || m.Step != 120 || m.ConfigHash != "cfg-1" || len(m.Files) != 2 {
		t.Errorf("manifest %+v", m)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("%d entries in the folder after one save, want 1", len(ents))
	}
}

// TestStateReplaceSameStep: saving a step again (a signal right after a
// periodic save) replaces the folder.
func TestStateReplaceSameStep(t *testing.T) {
	dir := t.TempDir()
	a := testState(t, 5)
	if _, err := SaveState(dir, a); err != nil {
		t.Fatal(err)
	}
	b := testState(t, 5)
	b.Meta["version"] = "second"
	p, err := SaveState(dir, b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(p)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, b)
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d entries after replacing, want 1", len(ents))
	}
}

// TestStateCrashLeftover: a temporary folder left by a save that died
// midway is skipped and reported; the newest complete state wins.
func TestStateCrashLeftover(t *testing.T) {
	dir := t.TempDir()
	if _, err := SaveState(dir, testState(t, 10)); err != nil {
		t.Fatal(err)
	}
	// What a crash after the tensors but before the manifest leaves.
	tmp := filepath.Join(dir, ".tmp-state-00000020-123456")
	os.MkdirAll(tmp, 0o755)
	os.WriteFile(filepath.Join(tmp, "tensors.safetensors"), []byte("partial"), 0o644)
	// And a state folder whose manifest never got written (renamed by hand).
	os.MkdirAll(filepath.Join(dir, "state-00000030"), 0o755)
	p, skipped, err := LatestState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "state-00000010" {
		t.Errorf("latest is %s, want state-00000010", p)
	}
	reasons := map[string]string{}
	for _, s := range skipped {
		reasons[filepath.Base(s.Path)] = s.Reason.Error()
	}
	if !strings.Contains(reasons[".tmp-state-00000020-123456"], "interrupted") || !strings.Contains(reasons["state-00000030"], "manifest.json") {
		t.Errorf("skipped: %v", reasons)
	}
}

// TestStateDamage: a flipped byte or a truncated file in any state file is
// found by its checksum or size, LoadState refuses naming the file, and
// LatestState falls back to the previous state.
func TestStateDamage(t *testing.T) {
	cases := []struct {
		file string
		hurt func(b []byte) []byte
		want string
	}{
		{stateTensors, func(b []byte) []byte { b[len(b)-50] ^= 0x01; return b }, "SHA-256"},
		{stateTensors, func(b []byte) []byte { b[20] ^= 0x40; return b }, "SHA-256"},
		{stateScalars, func(b []byte) []byte { b[len(b)/2] ^= 0x02; return b }, "SHA-256"},
		{stateTensors, func(b []byte) []byte { return b[:len(b)-3] }, "truncated"},
		{stateManifest, func(b []byte) []byte { return b[:len(b)/2] }, "damaged"},
	}
	for _, c := range cases {
		t.Run(c.file+"/"+c.want, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := SaveState(dir, testState(t, 7)); err != nil {
				t.Fatal(err)
			}
			p8, err := SaveState(dir, testState(t, 8))
			if err != nil {
				t.Fatal(err)
			}
			fp := filepath.Join(p8, c.file)
			b, err := os.ReadFile(fp)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(fp, c.hurt(b), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = LoadState(p8)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.file) {
				t.Errorf("LoadState error %v, want one naming %s and %q", err, c.file, c.want)
			}
			latest, skipped, err := LatestState(dir)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(latest) != "state-00000007" || len(skipped) != 1 || skipped[0].Path != p8 {
				t.Errorf("latest %s skipped %v; want state-00000007 with state-00000008 skipped", latest, skipped)
			}
		})
	}
}

// TestStateNone: an empty folder has no state, and says so with ErrNoState.
func TestStateNone(t *testing.T) {
	_, _, err := LatestState(t.TempDir())
	if !errors.Is(err, ErrNoState) {
		t.Errorf("error %v, want ErrNoState", err)
	}
}

// TestKeepLast: only the newest n complete states remain; a damaged newer
// state does not count and is left for inspection; stale temporaries go.
func TestKeepLast(t *testing.T) {
	cases := []struct {
		name    string
		steps   []int64
		damage  int64 // a state whose tensors file is truncated (0: none)
		temp    string
		n       int
		keep    []string
		removed int
	}{
		{"plain", []int64{1, 2, 3, 4, 5}, 0, "", 2, []string{"state-00000004", "state-00000005"}, 3},
		{"all-kept", []int64{3, 9}, 0, "", 5, []string{"state-00000003", "state-00000009"}, 0},
		{"damaged-newest", []int64{1, 2, 3}, 3, "", 1, []string{"state-00000002", "state-00000003"}, 1},
		{"stale-temp", []int64{4, 6}, 0, ".state-00000005.tmp-1", 1, []string{"state-00000006"}, 2},
		{"live-temp", []int64{4, 6}, 0, ".state-00000007.tmp-1", 1, []string{".state-00000007.tmp-1", "state-00000006"}, 1},
		{"old-style-temp", []int64{4, 6}, 0, ".tmp-state-00000005-1", 1, []string{"state-00000006"}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, s := range c.steps {
				p, err := SaveState(dir, testState(t, s))
				if err != nil {
					t.Fatal(err)
				}
				if s == c.damage {
					os.Truncate(filepath.Join(p, stateTensors), 10)
				}
			}
			if c.temp != "" {
				os.MkdirAll(filepath.Join(dir, c.temp), 0o755)
			}
			removed, err := KeepLast(dir, c.n, "run-a")
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				left = append(left, e.Name())
			}
			if !reflect.DeepEqual(left, c.keep) || len(removed) != c.removed {
				t.Errorf("left %v (removed %v), want %v (%d removed)", left, removed, c.keep, c.removed)
			}
		})
	}
	if _, err := KeepLast(t.TempDir(), 0, ""); err == nil {
		t.Error("KeepLast(0) accepted")
	}
}

// TestKeepLastOnlyItsRun: pruning one run never deletes another run's
// states, even newer-numbered ones (the states of a finished run left in
// the folder once deleted a new run's every save).
func TestKeepLastOnlyItsRun(t *testing.T) {
	dir := t.TempDir()
	for _, s := range []struct {
		step int64
		run  string
	}{{30, "old"}, {40, "old"}, {2, "new"}, {4, "new"}, {6, "new"}} {
		st := testState(t, s.step)
		st.RunID = s.run
		if _, err := SaveState(dir, st); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := KeepLast(dir, 2, "new"); err != nil {
		t.Fatal(err)
	}
	var left []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	want := []string{"state-00000004", "state-00000006", "state-00000030", "state-00000040"}
	if !reflect.DeepEqual(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
	st, err := LoadState(filepath.Join(dir, "state-00000006"))
	if err != nil || st.RunID != "new" {
		t.Errorf("run id %q read back (%v)", st.RunID, err)
	}
}

// TestStateErrors: inconsistent input is refused before anything is
// written.
func TestStateErrors(t *testing.T) {
	dir := t.TempDir()
	st := testState(t, 3)
	st.Tensors["bad"] = Tensor{Shape: []int{2, 5}, Data: make([]float32, 9)}
	if _, err := SaveState(dir, st); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Errorf("error %v, want one naming the bad tensor", err)
	}
	st = testState(t, 3)
	st.JSON["broken"] = json.RawMessage(`{"a":`)
	if _, err := SaveState(dir, st); err == nil || !strings.Contains(err.Error(), `"broken"`) {
		t.Errorf("error %v, want one naming the bad JSON", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed saves left %d entries", len(ents))
	}
}
