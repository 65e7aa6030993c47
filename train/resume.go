package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/internal/atomicfile"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/optim"
)

// metaConfig is the state Meta key holding the effective config (YAML) the
// state was written under: what a refused resume is compared against.
const metaConfig = "config"

// resumeInfo is the trainer's own part of a saved state.
type resumeInfo struct {
	// Micro is the number of batches of the sequence the run has taken
	// (over all ranks); Cursor the position of the next one. Both are the
	// same whatever the number of ranks, so a state resumes with any.
	Micro  uint64      `json:"micro_batches"`
	Cursor data.Cursor `json:"loader_cursor"`
	// WorldSize is the number of ranks that trained up to the state (0 in
	// states of older versions: one).
	WorldSize int `json:"world_size"`
	// Curve is every step's loss; a non-finite one is written as null.
	Curve []jsonFloat `json:"loss_curve"`
}

// findResume finds the state to resume ("latest" or a folder) and loads it
// with every checksum verified, before the dataset is scanned. A missing
// or damaged state is a ConfigError (nothing ran).
func (r *run) findResume(which string) error {
	path := which
	if which == "latest" {
		p, skipped, err := checkpoints.LatestState(r.statesDir())
		for _, s := range skipped {
			r.logf("warning: skipping %s: %v", s.Path, s.Reason)
		}
		if errors.Is(err, checkpoints.ErrNoState) || errors.Is(err, fs.ErrNotExist) {
			return configErr(fmt.Errorf("--resume latest: no complete training state in %s: nothing to resume (start without --resume)", r.statesDir()))
		}
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		path = p
	}
	st, err := checkpoints.LoadState(path)
	if err != nil {
		return configErr(fmt.Errorf("--resume %s: %w", which, err))
	}
	if st.RunID != "" && r.out.recorded && st.RunID != r.out.id.ID {
		return configErr(fmt.Errorf("--resume %s: the state belongs to run %s, but save.output %s belongs to run %s; resume with that run's own save.output", which, st.RunID, r.out.dir, r.out.id.ID))
	}
	if st.RunID != "" {
		r.out.id.ID = st.RunID
	}
	var info resumeInfo
	if err := json.Unmarshal(st.JSON["trainer"], &info); err != nil {
		return configErr(fmt.Errorf("--resume %s: trainer state: %w", which, err))
	}
	info.WorldSize = max(info.WorldSize, 1)
	r.resumed, r.resumeDir, r.resumedInfo = st, path, info
	return nil
}

// perStep is the number of batches a step takes over every rank.
func (r *run) perStep() int {
	return r.comm.WorldSize() * max(r.cfg.Train.GradientAccumulation, 1)
}

// runLength is the run's number of steps at batches per epoch. A run of
// train.epochs resumed with another number of batches per step (another
// number of ranks) is as long as it takes to finish the epochs' batches
// from the state's position on.
func (r *run) runLength(batches int) int {
	total := r.cfg.TotalSteps(batches, r.comm.WorldSize())
	if r.resumed == nil || r.cfg.Train.MaxSteps > 0 {
		return total
	}
	saved, err := configs.Parse("the state's config", []byte(r.resumed.Meta[metaConfig]))
	if err != nil || r.resumedInfo.WorldSize*max(saved.Train.GradientAccumulation, 1) == r.perStep() {
		return total
	}
	left := int64(r.cfg.Train.Epochs)*int64(batches) - int64(r.resumedInfo.Micro)
	per := int64(r.perStep())
	return int(r.resumed.Step) + int(max(0, (left+per-1)/per))
}

// resumableChanges are the config keys a resume may change, each allowed
// to grow only: the run gets longer.
var resumableChanges = map[string]bool{"train.max_steps": true, "train.epochs": true}

// checkResume refuses a state written for another base model or another
// config, naming every key that changed with its old and new value. Only a
// longer run (train.max_steps or train.epochs raised) is allowed; its
// learning-rate schedule becomes the config's schedule over the new
// length from the resumed step on.
func (r *run) checkResume() error {
	st, path := r.resumed, r.resumeDir
	if st.BaseModelHash != r.baseHash {
		return configErr(fmt.Errorf("resume from %s refused: the state was trained on base model %s, but this run's model.weights are %s", path, short(st.BaseModelHash), short(r.baseHash)))
	}
	saved, err := configs.Parse("the state's config", []byte(st.Meta[metaConfig]))
	switch {
	case st.Meta[metaConfig] == "" || err != nil:
		// A state of an older version: only its hash says anything.
		if st.ConfigHash != r.cfg.Hash() {
			return configErr(fmt.Errorf("resume from %s refused: the state was written for config %s, this run's config is %s", path, short(st.ConfigHash), short(r.cfg.Hash())))
		}
	default:
		var refused, grown []string
		savedWorld, world := r.resumedInfo.WorldSize, r.comm.WorldSize()
		for _, ch := range configs.Diff(saved, r.cfg) {
			old, errO := strconv.Atoi(ch.Old)
			new, errN := strconv.Atoi(ch.New)
			if resumableChanges[ch.Key] && errO == nil && errN == nil && new > old {
				grown = append(grown, ch.String())
				continue
			}
			if ch.Key == "train.gradient_accumulation" && errO == nil && errN == nil && old*savedWorld == new*world {
				// Another number of ranks, the same batches per step:
				// the same run.
				r.logf("resume: %s on %d ranks takes the %d × %d batches per step the state was trained with on %d", ch, world, world, new, savedWorld)
				continue
			}
			refused = append(refused, ch.String())
		}
		if len(refused) > 0 {
			return configErr(fmt.Errorf("resume from %s refused: the config changed since the state was written:\n  %s\n(a resume continues the same run: change these back, or start a new run with --fresh; only train.max_steps or train.epochs may grow, and train.gradient_accumulation may change with the number of GPUs so that GPUs × gradient_accumulation stays the same)",
				path, strings.Join(refused, "\n  ")))
		}
		if was, now := savedWorld*max(saved.Train.GradientAccumulation, 1), r.perStep(); was != now {
			hint := ""
			if was%world == 0 {
				hint = fmt.Sprintf("; --set train.gradient_accumulation=%d keeps %d", was/world, was)
			}
			r.logf("resume: the state was trained on %d rank(s) with %d batches per step; this run takes %d per step from step %d on%s", savedWorld, was, now, st.Step+1, hint)
		}
		if len(grown) > 0 {
			r.logf("resume: the run is longer now (%s): from step %d the learning rate follows the config's %s schedule over the new %d steps",
				strings.Join(grown, ", "), st.Step, r.cfg.Train.Schedule, r.total)
		}
	}
	if int(st.Step) >= r.total {
		return configErr(fmt.Errorf("resume from %s: the state is at step %d, and the run has %d steps: nothing left to train (raise train.max_steps, e.g. --set train.max_steps=%d)", path, st.Step, r.total, int(st.Step)+r.total/2+1))
	}
	return nil
}

// restore loads the resumed state into the adapters, the optimizer, the
// loader and the random stream.
func (r *run) restore() error {
	st, path := r.resumed, r.resumeDir
	for _, a := range r.set.Adapters() {
		for suffix, t := range map[string]*ag.Tensor{".lora_A": a.A, ".lora_B": a.B} {
			saved, ok := st.Tensors[a.Name+suffix]
			if !ok || len(saved.Data) != t.Len() {
				return fmt.Errorf("resume from %s: the state has no %s of %d values", path, a.Name+suffix, t.Len())
			}
			upload(r.b, t, saved.Data)
		}
	}
	var ostate optim.State
	if err := json.Unmarshal(st.JSON["optimizer"], &ostate); err != nil {
		return fmt.Errorf("resume from %s: optimizer state: %w", path, err)
	}
	// The schedule is the config's for this run's length: the saved one
	// unless the run was made longer.
	ostate.Schedule = r.cfg.Schedule(r.total)
	if err := r.opt.SetState(ostate); err != nil {
		return fmt.Errorf("resume from %s: %w", path, err)
	}
	info := r.resumedInfo
	r.step, r.micro = int(st.Step), info.Micro
	if err := r.startLoader(info.Cursor); err != nil {
		return fmt.Errorf("resume from %s: %w", path, err)
	}
	r.e.SeedRandom(st.Seed, st.RNGOffset)
	r.curve = make([]float64, len(info.Curve))
	for i, v := range info.Curve {
		r.curve[i] = float64(v)
	}
	r.savedStep, r.savedDir = r.step, path
	r.logf("resumed from %s at step %d", path, r.step)
	return nil
}

// upload writes host values into a device tensor.
func upload(b kernels.Backend, t *ag.Tensor, v []float32) {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	b.Upload(t.Buffer(), 0, kernels.EncodeF64(t.DType(), f))
}

// openLog opens the JSONL log: a new run starts it empty; a resumed run
// first cuts it back to the state's step (a killed run may have logged
// steps after its last save, which the resumed run logs again).
func (r *run) openLog() error {
	p := r.cfg.Logging.LogFile
	if err := os.MkdirAll(filepath.Dir(p), atomicfile.DirMode); err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if r.resumed != nil {
		dropped, err := truncateLog(p, r.step)
		if err != nil {
			return err
		}
		if dropped > 0 {
			r.logf("log %s: dropped %d line(s) after step %d, which the resumed run repeats", p, dropped, r.step)
		}
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(p, flags, atomicfile.FileMode)
	if err != nil {
		return fmt.Errorf("log file: %w", err)
	}
	r.jsonl = f
	return nil
}

// truncateLog keeps the lines of a JSONL log up to step (and drops a line
// cut short by a kill), rewriting the file atomically when anything goes.
// It returns how many lines it dropped.
func truncateLog(path string, step int) (int, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("log file: %w", err)
	}
	var kept bytes.Buffer
	dropped := 0
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		var rec struct {
			Step *int `json:"step"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Step == nil || *rec.Step > step {
			dropped++
			continue
		}
		kept.Write(sc.Bytes())
		kept.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("log file %s: %w", path, err)
	}
	if dropped == 0 && kept.Len() == len(raw) {
		return 0, nil
	}
	if err := atomicfile.WriteBytes(path, kept.Bytes()); err != nil {
		return 0, fmt.Errorf("log file: %w", err)
	}
	return dropped, nil
}
