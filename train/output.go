package train

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/internal/atomicfile"
	"github.com/newbie-train/newbie-train/internal/runlock"
)

// Files of an output folder that belong to the folder, not to one save.
const (
	// runFile records the identity of the run that owns the folder.
	runFile = "run.json"
	// lockFile is held by the process writing the folder (internal/runlock).
	lockFile = "run.lock"
	// oldRunsDir receives the runs --fresh moves aside.
	oldRunsDir = "old-runs"
)

// runIdentity is run.json: which run owns an output folder. A run is its
// config (hash), its base model (hash) and its start; a resumed run keeps
// the identity of the run it continues, so its files stay its own.
type runIdentity struct {
	// ID names the run ("20261202T101500Z-3fa1c2"): states carry it, and
	// pruning touches only the states that do.
	ID            string `json:"run_id"`
	StartedAt     string `json:"started_at"` // RFC 3339, UTC
	ConfigHash    string `json:"config_hash"`
	BaseModelHash string `json:"base_model_hash"`
	// Name and LogFile say which files are the run's (save.name,
	// logging.log_file), so --fresh can move exactly them aside.
	Name    string `json:"name"`
	LogFile string `json:"log_file"`
	// Config is the effective config (YAML), for the refusal that names
	// what changed.
	Config string `json:"config"`
}

// started is the run's start time.
func (id runIdentity) started() time.Time {
	t, _ := time.Parse(time.RFC3339, id.StartedAt)
	return t
}

func newIdentity(cfg *configs.Config, baseHash string) runIdentity {
	now := time.Now().UTC().Truncate(time.Second)
	var b [3]byte
	rand.Read(b[:])
	return runIdentity{
		ID:        now.Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:]),
		StartedAt: now.Format(time.RFC3339), ConfigHash: cfg.Hash(), BaseModelHash: baseHash,
		Name: cfg.Save.Name, LogFile: cfg.Logging.LogFile, Config: cfg.String(),
	}
}

// output is an output folder held by this run.
type output struct {
	dir  string
	lock *runlock.Lock
	id   runIdentity
	// recorded: id came from the folder's run.json (not made up now).
	recorded bool
}

// release gives up the folder's lock.
func (o *output) release() {
	if o != nil {
		o.lock.Release()
	}
}

// readIdentity reads run.json; a folder without one returns nil.
func readIdentity(dir string) (*runIdentity, error) {
	raw, err := os.ReadFile(filepath.Join(dir, runFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	var id runIdentity
	if err := json.Unmarshal(raw, &id); err != nil {
		return nil, fmt.Errorf("output folder: %s is damaged (%v); move it away to start a new run there", filepath.Join(dir, runFile), err)
	}
	return &id, nil
}

func (o *output) writeIdentity() error {
	raw, err := json.MarshalIndent(o.id, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteBytes(filepath.Join(o.dir, runFile), append(raw, '\n')); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}
	return nil
}

// lockOutput creates the output folder if needed, takes its lock, and
// removes what interrupted writes left in it (safe now: nobody else writes
// there). what describes this process for a second one that is refused.
func lockOutput(cfg *configs.Config, what string, logf func(string, ...any)) (*output, error) {
	dir := cfg.Save.Output
	if err := os.MkdirAll(dir, atomicfile.DirMode); err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	l, stale, err := runlock.Acquire(filepath.Join(dir, lockFile), what)
	var held *runlock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("save.output %s is in use by another newbie-train process (%s); wait for it to finish, stop it, or give this run another save.output", dir, held.Holder)
	}
	if err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	if stale != nil {
		logf("output folder: took over the lock of %s, which is no longer running", stale)
	}
	o := &output{dir: dir, lock: l}
	if err := o.cleanStale(cfg, logf); err != nil {
		l.Release()
		return nil, err
	}
	return o, nil
}

// cleanStale removes the temporaries of writes a kill interrupted: in the
// output folder, its states, previews and (when it lies inside the output
// folder, which the lock covers) the encode cache.
func (o *output) cleanStale(cfg *configs.Config, logf func(string, ...any)) error {
	dirs := []string{o.dir, filepath.Join(o.dir, "states"), filepath.Join(o.dir, cfg.Save.Name+"-previews")}
	if inside(cfg.Data.Cache, o.dir) {
		dirs = append(dirs, filepath.Join(cfg.Data.Cache, "latents"), filepath.Join(cfg.Data.Cache, "text"))
	}
	if d := filepath.Dir(cfg.Logging.LogFile); d != o.dir && inside(d, o.dir) {
		dirs = append(dirs, d)
	}
	var all []string
	for _, d := range dirs {
		removed, restored, err := atomicfile.RemoveStale(d)
		if err != nil {
			return fmt.Errorf("output folder: %w", err)
		}
		all = append(all, removed...)
		for _, r := range restored {
			logf("output folder: put back %s, which an interrupted save had moved aside", r)
		}
	}
	if len(all) > 0 {
		logf("output folder: removed %d temporary file(s) of interrupted writes (%s)", len(all), strings.Join(relAll(o.dir, all, 4), ", "))
	}
	return nil
}

// inside reports whether path lies in (or is) dir.
func inside(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// relAll shortens paths relative to dir, at most n of them, for a message.
func relAll(dir string, paths []string, n int) []string {
	var out []string
	for i, p := range paths {
		if i == n {
			out = append(out, fmt.Sprintf("and %d more", len(paths)-n))
			break
		}
		if r, err := filepath.Rel(dir, p); err == nil {
			p = r
		}
		out = append(out, p)
	}
	return out
}

// runFiles lists the files and folders of the run named name directly in
// the output folder: its LoRA files (final and per step, every format), its
// loss curve, its previews, its states, its run.json, and its JSONL log.
func runFiles(dir, name, logFile string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if n == runFile || n == "states" || n == filepath.Base(logFile) && filepath.Dir(logFile) == dir || isRunOutput(n, name) {
			out = append(out, filepath.Join(dir, n))
		}
	}
	sort.Strings(out)
	return out
}

// isRunOutput reports whether an entry's name is one of the LoRA, curve or
// preview outputs a run named name writes.
func isRunOutput(entry, name string) bool {
	rest, ok := strings.CutPrefix(entry, name)
	if !ok {
		return false
	}
	rest = stepSuffix.ReplaceAllString(rest, "")
	switch rest {
	case ".safetensors", "_peft", "_kohya.safetensors", "-loss.png", "-previews":
		return true
	}
	return false
}

// stepSuffix is the "-step<N>" of an intermediate save's file names.
var stepSuffix = regexp.MustCompile(`^-step\d{8}`)

// used reports whether the folder holds a run's results: a state, or a
// final LoRA. A run.json alone (a run killed before its first save) does
// not count; neither do intermediate LoRA files without a state.
func used(dir, name string) bool {
	if ents, err := os.ReadDir(filepath.Join(dir, "states")); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "state-") {
				return true
			}
		}
	}
	for _, suffix := range []string{".safetensors", "_peft", "_kohya.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, name+suffix)); err == nil {
			return true
		}
	}
	return false
}

// moveAside moves the files of the run that owned the folder into
// old-runs/<its id>/ (renamed, never deleted) and returns where.
func (o *output) moveAside(prev *runIdentity, cfg *configs.Config) (string, error) {
	name, logFile, id := cfg.Save.Name, cfg.Logging.LogFile, "unknown-"+time.Now().UTC().Format("20060102T150405Z")
	if prev != nil {
		name, logFile, id = prev.Name, prev.LogFile, prev.ID
	}
	dest := filepath.Join(o.dir, oldRunsDir, id)
	if _, err := os.Stat(dest); err == nil {
		dest += "-" + time.Now().UTC().Format("150405")
	}
	if err := os.MkdirAll(dest, atomicfile.DirMode); err != nil {
		return "", fmt.Errorf("output folder: moving the earlier run aside: %w", err)
	}
	files := runFiles(o.dir, name, logFile)
	if logFile != "" && filepath.Dir(logFile) != o.dir && inside(logFile, o.dir) {
		if _, err := os.Stat(logFile); err == nil {
			files = append(files, logFile)
		}
	}
	for _, f := range files {
		if err := os.Rename(f, filepath.Join(dest, filepath.Base(f))); err != nil {
			return "", fmt.Errorf("output folder: moving the earlier run aside: %w", err)
		}
	}
	atomicfile.SyncDir(o.dir)
	return dest, nil
}

// claim decides whether this run may write the folder, and as which run:
//
//   - resuming: the run continues the identity of the folder's run (the
//     state's own checks come later);
//   - a new run on a folder holding no results: it becomes the folder's run;
//   - a new run on a folder holding another run's results: refused, naming
//     what differs, unless fresh, which moves that run aside first.
func (o *output) claim(cfg *configs.Config, baseHash string, resume string, fresh bool, logf func(string, ...any)) error {
	prev, err := readIdentity(o.dir)
	if err != nil {
		return err
	}
	isUsed := used(o.dir, cfg.Save.Name) || prev != nil && prev.Name != cfg.Save.Name && used(o.dir, prev.Name)
	switch {
	case resume != "":
		// run.json is rewritten once the state's checks pass (see
		// run.preflight): a refused resume must leave it as it was.
		if prev != nil {
			o.id, o.recorded = *prev, true
		} else {
			o.id = newIdentity(cfg, baseHash)
		}
		return nil
	case isUsed && !fresh:
		return &ConfigError{Err: fmt.Errorf("save.output %s already holds %s: %s; continue that run with --resume latest, or start over with --fresh (which moves it to %s/)",
			o.dir, describeRun(prev), whatDiffers(prev, cfg, baseHash), filepath.Join(o.dir, oldRunsDir))}
	default:
		if isUsed {
			dest, err := o.moveAside(prev, cfg)
			if err != nil {
				return err
			}
			logf("output folder: --fresh moved the earlier run (%s) to %s", describeRun(prev), dest)
		}
		o.id = newIdentity(cfg, baseHash)
	}
	return o.writeIdentity()
}

// describeRun names a run by its start.
func describeRun(id *runIdentity) string {
	if id == nil {
		return "the results of an earlier run (no run.json: written by an older version)"
	}
	return "the run started " + id.started().Local().Format("2006-01-02 15:04:05")
}

// whatDiffers says how this run differs from the folder's: the changed
// config keys with their old and new values, or another base model.
func whatDiffers(prev *runIdentity, cfg *configs.Config, baseHash string) string {
	if prev == nil {
		return "its config is not recorded"
	}
	var parts []string
	if old, err := configs.Parse("run.json", []byte(prev.Config)); err == nil {
		for _, ch := range configs.Diff(old, cfg) {
			parts = append(parts, ch.String())
		}
	} else if prev.ConfigHash != cfg.Hash() {
		parts = append(parts, "its config (hash "+short(prev.ConfigHash)+") is not this one ("+short(cfg.Hash())+")")
	}
	if prev.BaseModelHash != baseHash {
		parts = append(parts, "base model "+short(prev.BaseModelHash)+" → "+short(baseHash))
	}
	if len(parts) == 0 {
		return "with the same config"
	}
	return "this run changes " + strings.Join(parts, "; ")
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
