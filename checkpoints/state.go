package checkpoints

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/internal/atomicfile"
)

// StateFormat and StateVersion identify a training-state folder's manifest.
// The version goes up whenever a reader of the old one would misread the
// new layout; LoadState refuses versions it does not know.
const (
	StateFormat  = "newbie-train-state"
	StateVersion = 1
)

// Files inside a state folder.
const (
	stateManifest = "manifest.json"
	stateTensors  = "tensors.safetensors"
	stateScalars  = "state.json"
)

// Tensor is a named float32 array with its shape (row-major).
type Tensor struct {
	Shape []int
	Data  []float32
}

// State is everything a resumed run needs, in plain types so that train
// can fill it from optim, data and the model without this package knowing
// them.
type State struct {
	// Step is the number of optimizer steps taken.
	Step int64
	// ConfigHash and BaseModelHash let a resume refuse a state written for
	// another configuration or other base weights.
	ConfigHash    string
	BaseModelHash string
	// RunID names the run that wrote the state (see train's run identity):
	// KeepLast prunes only the states of one run.
	RunID string
	// Seed and RNGOffset place the counter-based random stream (Philox
	// seed and the next unused index).
	Seed      uint64
	RNGOffset uint64
	// Tensors are float32 arrays: LoRA masters, optimizer moments.
	Tensors map[string]Tensor
	// Blobs are opaque byte arrays the caller encodes itself.
	Blobs map[string][]byte
	// JSON holds opaque JSON documents: optimizer hyperparameters and step
	// counts, loss-scaler state, LR schedule, loader cursor, metrics.
	JSON map[string]json.RawMessage
	// Meta is free text (program version, notes).
	Meta map[string]string
}

// Manifest is manifest.json: what the folder should hold, so a damaged or
// partial folder is recognised before anything is read from it.
type Manifest struct {
	Format        string         `json:"format"`
	Version       int            `json:"version"`
	Step          int64          `json:"step"`
	ConfigHash    string         `json:"config_hash"`
	BaseModelHash string         `json:"base_model_hash"`
	RunID         string         `json:"run_id,omitempty"`
	WrittenAt     string         `json:"written_at"`
	Files         []ManifestFile `json:"files"`
}

// ManifestFile is one file of a state folder with its size and SHA-256.
type ManifestFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// scalars is state.json.
type scalars struct {
	Step      int64                      `json:"step"`
	Seed      uint64                     `json:"seed"`
	RNGOffset string                     `json:"rng_offset"` // a string: JSON numbers lose uint64 precision in many readers
	Tensors   []string                   `json:"tensors"`
	Blobs     []string                   `json:"blobs"`
	JSON      map[string]json.RawMessage `json:"json"`
	Meta      map[string]string          `json:"meta"`
}

// Name prefixes inside tensors.safetensors keep tensors and blobs apart.
const (
	tensorPrefix = "tensor/"
	blobPrefix   = "blob/"
)

// statePrefix names complete state folders: state-<step>, the step zero
// padded so that a listing sorts in step order.
const statePrefix = "state-"

var stateName = regexp.MustCompile(`^state-(\d+)$`)

// StateDirName is the folder name SaveState uses for a step.
func StateDirName(step int64) string { return fmt.Sprintf("%s%08d", statePrefix, step) }

// SaveState writes st as dir/state-<step>: into a temporary folder first
// (tensors, scalars, then the manifest with every file's size and SHA-256),
// fsynced, then renamed. A state of the same step already there is
// replaced. It returns the folder's path.
func SaveState(dir string, st *State) (string, error) {
	if st == nil {
		return "", errors.New("checkpoints: saving state: state is nil")
	}
	if st.Step < 0 {
		return "", fmt.Errorf("checkpoints: saving state: step %d is negative", st.Step)
	}
	final := filepath.Join(dir, StateDirName(st.Step))
	if err := os.MkdirAll(dir, atomicfile.DirMode); err != nil {
		return "", fmt.Errorf("checkpoints: saving state: %w", err)
	}
	tmp, err := atomicfile.TempDir(final)
	if err != nil {
		return "", fmt.Errorf("checkpoints: saving state: %w", err)
	}
	if err := fillState(tmp, st); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("checkpoints: saving state %s: %w", final, err)
	}
	if err := atomicfile.ReplaceDir(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("checkpoints: saving state: %w", err)
	}
	return final, nil
}

func fillState(tmp string, st *State) error {
	var ts []safetensors.Tensor
	tnames := sortedKeys(st.Tensors)
	for _, name := range tnames {
		t := st.Tensors[name]
		n := 1
		for _, s := range t.Shape {
			if s < 0 {
				return fmt.Errorf("tensor %q has a negative dimension in %v", name, t.Shape)
			}
			n *= s
		}
		if n != len(t.Data) {
			return fmt.Errorf("tensor %q has %d values but shape %v needs %d", name, len(t.Data), t.Shape, n)
		}
		ts = append(ts, floatTensor(tensorPrefix+name, t.Shape, t.Data, safetensors.F32))
	}
	bnames := sortedKeys(st.Blobs)
	for _, name := range bnames {
		b := st.Blobs[name]
		ts = append(ts, safetensors.Tensor{Name: blobPrefix + name, DType: safetensors.U8, Shape: []int{len(b)}, Data: nonNil(b)})
	}
	for name, raw := range st.JSON {
		if !json.Valid(raw) {
			return fmt.Errorf("JSON entry %q is not valid JSON", name)
		}
	}
	if err := safetensors.Write(filepath.Join(tmp, stateTensors), ts, map[string]string{"format": StateFormat}); err != nil {
		return err
	}
	sc := scalars{Step: st.Step, Seed: st.Seed, RNGOffset: strconv.FormatUint(st.RNGOffset, 10),
		Tensors: tnames, Blobs: bnames, JSON: st.JSON, Meta: st.Meta}
	raw, err := json.MarshalIndent(sc, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, stateScalars), append(raw, '\n')); err != nil {
		return err
	}
	man := Manifest{Format: StateFormat, Version: StateVersion, Step: st.Step, ConfigHash: st.ConfigHash,
		BaseModelHash: st.BaseModelHash, RunID: st.RunID, WrittenAt: time.Now().UTC().Format(time.RFC3339)}
	for _, name := range []string{stateTensors, stateScalars} {
		mf, err := describeFile(filepath.Join(tmp, name))
		if err != nil {
			return err
		}
		mf.Name = name
		man.Files = append(man.Files, mf)
	}
	raw, err = json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(filepath.Join(tmp, stateManifest), append(raw, '\n'))
}

// nonNil keeps a zero-length blob writable (the safetensors writer wants
// Data or Source for every tensor).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// describeFile measures a file and hashes it.
func describeFile(path string) (ManifestFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return ManifestFile{}, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return ManifestFile{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	return ManifestFile{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// FileSHA256 is the hex SHA-256 of a file: the base model hash the trainer
// records in LoRA metadata and states.
func FileSHA256(path string) (string, error) {
	mf, err := describeFile(path)
	if err != nil {
		return "", fmt.Errorf("checkpoints: %w", err)
	}
	return mf.SHA256, nil
}

// ReadManifest reads and checks a state folder's manifest.json.
func ReadManifest(path string) (*Manifest, error) {
	p := filepath.Join(path, stateManifest)
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("state %s: %s is damaged: %w", path, p, err)
	}
	switch {
	case m.Format != StateFormat:
		return nil, fmt.Errorf("state %s: %s has format %q, want %q", path, p, m.Format, StateFormat)
	case m.Version != StateVersion:
		return nil, fmt.Errorf("state %s: %s is version %d; this program reads version %d", path, p, m.Version, StateVersion)
	}
	have := map[string]bool{}
	for _, f := range m.Files {
		have[f.Name] = true
		if f.Name != filepath.Base(f.Name) || f.Name == stateManifest {
			return nil, fmt.Errorf("state %s: %s lists a bad file name %q", path, p, f.Name)
		}
	}
	for _, need := range []string{stateTensors, stateScalars} {
		if !have[need] {
			return nil, fmt.Errorf("state %s: %s does not list %s", path, p, need)
		}
	}
	return &m, nil
}

// verifyState checks a state folder against its manifest: sizes always,
// checksums when full is set.
func verifyState(path string, full bool) (*Manifest, error) {
	m, err := ReadManifest(path)
	if err != nil {
		return nil, err
	}
	for _, f := range m.Files {
		p := filepath.Join(path, f.Name)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
		if st.Size() != f.Size {
			return nil, fmt.Errorf("state %s: %s is %d bytes, the manifest says %d (truncated or damaged)", path, p, st.Size(), f.Size)
		}
		if !full {
			continue
		}
		got, err := describeFile(p)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", path, err)
		}
		if got.SHA256 != f.SHA256 {
			return nil, fmt.Errorf("state %s: %s has SHA-256 %s, the manifest says %s (damaged)", path, p, got.SHA256, f.SHA256)
		}
	}
	return m, nil
}

// LoadState reads a state folder after verifying every file's size and
// SHA-256 against the manifest; a damaged state is refused with the name
// of the file that is wrong.
func LoadState(path string) (*State, error) {
	m, err := verifyState(path, true)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: loading %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(path, stateScalars))
	if err != nil {
		return nil, fmt.Errorf("checkpoints: loading state: %w", err)
	}
	var sc scalars
	if err := json.Unmarshal(raw, &sc); err != nil {
		return nil, fmt.Errorf("checkpoints: loading state %s: %s: %w", path, stateScalars, err)
	}
	off, err := strconv.ParseUint(sc.RNGOffset, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: loading state %s: %s: rng_offset %q: %w", path, stateScalars, sc.RNGOffset, err)
	}
	if sc.Step != m.Step {
		return nil, fmt.Errorf("checkpoints: loading state %s: %s says step %d, the manifest %d", path, stateScalars, sc.Step, m.Step)
	}
	st := &State{Step: sc.Step, ConfigHash: m.ConfigHash, BaseModelHash: m.BaseModelHash, RunID: m.RunID, Seed: sc.Seed,
		RNGOffset: off, Tensors: map[string]Tensor{}, Blobs: map[string][]byte{}, JSON: sc.JSON, Meta: sc.Meta}
	if st.JSON == nil {
		st.JSON = map[string]json.RawMessage{}
	}
	// Hand the documents back compact: the file is indented for people to
	// read, and callers should not see that whitespace.
	for k, v := range st.JSON {
		var b bytes.Buffer
		if err := json.Compact(&b, v); err != nil {
			return nil, fmt.Errorf("checkpoints: loading state %s: %s: JSON entry %q: %w", path, stateScalars, k, err)
		}
		st.JSON[k] = b.Bytes()
	}
	if st.Meta == nil {
		st.Meta = map[string]string{}
	}
	tp := filepath.Join(path, stateTensors)
	f, err := safetensors.Open(tp)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: loading state: %w", err)
	}
	defer f.Close()
	for _, name := range sc.Tensors {
		info, ok := f.Info(tensorPrefix + name)
		if !ok || info.DType != safetensors.F32 {
			return nil, fmt.Errorf("checkpoints: loading state: %s has no F32 tensor %q", tp, tensorPrefix+name)
		}
		v, err := f.Float32(tensorPrefix + name)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: loading state: %w", err)
		}
		st.Tensors[name] = Tensor{Shape: info.Shape, Data: v}
	}
	for _, name := range sc.Blobs {
		b, err := f.Bytes(blobPrefix + name)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: loading state: %w", err)
		}
		st.Blobs[name] = append([]byte{}, b...)
	}
	if n := len(sc.Tensors) + len(sc.Blobs); n != len(f.Names()) {
		return nil, fmt.Errorf("checkpoints: loading state: %s holds %d tensors, %s lists %d", tp, len(f.Names()), stateScalars, n)
	}
	return st, nil
}

// Skipped is a folder LatestState passed over, with the reason.
type Skipped struct {
	Path   string
	Reason error
}

// ErrNoState is returned (wrapped) by LatestState when no complete state
// exists.
var ErrNoState = errors.New("no complete training state")

// stateEntry is a state-<step> folder found in a directory.
type stateEntry struct {
	path string
	step int64
}

// listStates returns the state-<step> folders of dir, newest first, and the
// temporary folders left by interrupted saves.
func listStates(dir string) (states []stateEntry, temps []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if atomicfile.IsTemp(e.Name()) {
			temps = append(temps, filepath.Join(dir, e.Name()))
			continue
		}
		m := stateName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		step, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || step > math.MaxInt64/2 {
			continue
		}
		states = append(states, stateEntry{path: filepath.Join(dir, e.Name()), step: step})
	}
	sort.Slice(states, func(a, b int) bool { return states[a].step > states[b].step })
	return states, temps, nil
}

// LatestState finds the newest complete state under dir. Temporary folders
// of interrupted saves and damaged states (bad manifest, wrong size or
// checksum) are skipped and returned with the reason, so the caller can
// report them; when nothing usable is left the error wraps ErrNoState.
func LatestState(dir string) (path string, skipped []Skipped, err error) {
	states, temps, err := listStates(dir)
	if err != nil {
		return "", nil, fmt.Errorf("checkpoints: looking for a state in %s: %w", dir, err)
	}
	for _, t := range temps {
		skipped = append(skipped, Skipped{Path: t, Reason: errors.New("temporary folder of an interrupted save")})
	}
	for _, s := range states {
		m, err := verifyState(s.path, true)
		if err == nil && m.Step != s.step {
			err = fmt.Errorf("state %s: the folder says step %d but its manifest says %d", s.path, s.step, m.Step)
		}
		if err != nil {
			skipped = append(skipped, Skipped{Path: s.path, Reason: err})
			continue
		}
		return s.path, skipped, nil
	}
	return "", skipped, fmt.Errorf("checkpoints: %w in %s", ErrNoState, dir)
}

// KeepLast deletes the older states of one run under dir so that its n
// newest complete ones remain (complete: manifest readable and file sizes
// right — the cheap check, since this runs after every save). Only states
// whose manifest names runID count or are deleted: another run's states,
// and states whose manifest cannot be read, are never touched (runID ""
// takes every readable state as the run's). Damaged states newer than the
// kept ones are left in place for inspection. Temporary folders of
// interrupted saves older than the newest kept state are deleted too. A
// state is renamed to a temporary name before it is deleted, so a kill
// while deleting leaves a temporary, not a state with files missing. It
// returns the deleted paths.
func KeepLast(dir string, n int, runID string) ([]string, error) {
	if n < 1 {
		return nil, fmt.Errorf("checkpoints: keep-last must be at least 1, got %d", n)
	}
	states, temps, err := listStates(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: pruning states in %s: %w", dir, err)
	}
	kept := 0
	var newest int64 = -1
	var removed []string
	var errs []error
	for _, s := range states {
		m, merr := ReadManifest(s.path)
		if merr != nil || (runID != "" && m.RunID != runID) {
			continue
		}
		if kept < n {
			if _, err := verifyState(s.path, false); err == nil {
				kept++
				if newest < 0 {
					newest = s.step
				}
			}
			continue
		}
		if err := atomicfile.Remove(s.path); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, s.path)
	}
	for _, t := range temps {
		// Only temporaries older than a complete state are surely dead; a
		// newer one may be a save in progress.
		step, ok := tempStep(t)
		if newest < 0 || !ok || step >= newest {
			continue
		}
		if err := os.RemoveAll(t); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, t)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("checkpoints: pruning states in %s: %w", dir, errors.Join(errs...))
	}
	return removed, nil
}

// tempName reads the step out of a temporary folder's name: a save in
// progress (.state-<step>.tmp-<random>), a state being deleted, or the
// older spelling .tmp-state-<step>-<random>.
var tempName = regexp.MustCompile(`^\.(?:tmp-state-(\d+)-|state-(\d+)\.tmp-)`)

func tempStep(path string) (int64, bool) {
	m := tempName.FindStringSubmatch(filepath.Base(path))
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseInt(m[1]+m[2], 10, 64)
	return v, err == nil
}
