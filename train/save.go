package train

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/internal/atomicfile"
)

// statesDir is where a run's training states live.
func (r *run) statesDir() string { return filepath.Join(r.cfg.Save.Output, "states") }

// loraPath is where a LoRA file of the given format goes: the plain name for
// the final save, with the step for intermediate ones.
func (r *run) loraPath(f checkpoints.Format, final bool) string {
	stem := r.cfg.Save.Name
	if !final {
		stem += fmt.Sprintf("-step%08d", r.step)
	}
	return loraFile(r.cfg.Save.Output, stem, f)
}

// loraFile is the file (or PEFT folder) of a LoRA in format f.
func loraFile(dir, stem string, f checkpoints.Format) string {
	switch f {
	case checkpoints.FormatPEFT:
		return filepath.Join(dir, stem+"_peft")
	case checkpoints.FormatKohya:
		return filepath.Join(dir, stem+"_kohya.safetensors")
	}
	return filepath.Join(dir, stem+".safetensors")
}

// exportLoRA downloads the adapters into the canonical file form.
func (r *run) exportLoRA() (*checkpoints.LoRA, error) {
	l := &checkpoints.LoRA{
		Rank: r.cfg.LoRA.Rank, Alpha: r.cfg.LoRA.Alpha, Targets: r.cfg.LoRA.Targets,
		Layers: map[string]checkpoints.LoRALayer{},
		Meta: map[string]string{
			checkpoints.MetaBaseModelHash: r.baseHash,
			checkpoints.MetaBaseModel:     r.cfg.Model.Weights,
			checkpoints.MetaSteps:         strconv.Itoa(r.step),
			checkpoints.MetaConfig:        r.cfg.String(),
			"preset":                      r.cfg.Model.Preset,
			"run_id":                      r.out.id.ID,
		},
	}
	for _, a := range r.set.Adapters() {
		av, err := float32s(a.A)
		if err != nil {
			return nil, err
		}
		bv, err := float32s(a.B)
		if err != nil {
			return nil, err
		}
		l.Layers[a.Name] = checkpoints.LoRALayer{A: av, B: bv, In: a.In, Out: a.Out, Rank: r.cfg.LoRA.Rank, Alpha: r.cfg.LoRA.Alpha}
	}
	return l, nil
}

func float32s(t *ag.Tensor) ([]float32, error) {
	v, err := t.Values()
	if err != nil {
		return nil, err
	}
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out, nil
}

// save writes the LoRA in every configured format (the kohya file with
// kohya's ss_* training metadata), the training state and the loss curve,
// and prunes this run's older states and intermediate LoRA files. In a
// data-parallel job rank 0 writes, and the other ranks wait for it.
func (r *run) save(ctx context.Context, res *Result) error {
	err := r.rank0Only(fmt.Sprintf("rank 0's save of step %d", r.step), 0, func() error { return r.writeSave(ctx, res) })
	if err == nil && !r.rank0() {
		r.savedDir = filepath.Join(r.statesDir(), checkpoints.StateDirName(int64(r.step)))
	}
	r.savedStep = r.step
	return err
}

// writeSave is save's work, on rank 0.
func (r *run) writeSave(ctx context.Context, res *Result) error {
	final := r.step >= r.total
	r.stageNow("the save of step %d", r.step)
	l, err := r.exportLoRA()
	if err != nil {
		return err
	}
	res.LoRAFiles = res.LoRAFiles[:0]
	for _, name := range r.cfg.Save.Formats {
		f, err := checkpoints.ParseFormat(name)
		if err != nil {
			return err
		}
		out := l
		if f == checkpoints.FormatKohya {
			k := *l
			k.Meta = r.kohyaMeta(l.Meta)
			out = &k
		}
		p := r.loraPath(f, final)
		if err := checkpoints.WriteLoRA(p, out, f, checkpoints.ExportOptions{}); err != nil {
			return fmt.Errorf("save LoRA: %w", err)
		}
		res.LoRAFiles = append(res.LoRAFiles, p)
	}
	st, err := r.state(l)
	if err != nil {
		return err
	}
	dir, err := checkpoints.SaveState(r.statesDir(), st)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	res.StateDir = dir
	r.savedStep, r.savedDir = r.step, dir
	if r.cfg.Save.KeepLast > 0 {
		if _, err := checkpoints.KeepLast(r.statesDir(), r.cfg.Save.KeepLast, r.out.id.ID); err != nil {
			return err
		}
	}
	if r.cfg.Save.KeepLastLoRAs > 0 {
		if err := r.pruneLoRAs(r.cfg.Save.KeepLastLoRAs); err != nil {
			return err
		}
	}
	if err := writeLossCurve(filepath.Join(r.cfg.Save.Output, r.cfg.Save.Name+"-loss.png"), r.curve); err != nil {
		return err
	}
	if r.cfg.Sample.Every == 0 && !r.stopping && ctx.Err() == nil {
		r.stageNow("the previews of step %d (the state is saved)", r.step)
		if err := r.renderPreviews(ctx); err != nil {
			return err
		}
	}
	r.logf("saved step %d: %v, state %s", r.step, res.LoRAFiles, dir)
	return nil
}

// stepLoRA matches an intermediate LoRA save of the run's name:
// <name>-step<N>.safetensors, <name>-step<N>_peft, <name>-step<N>_kohya.safetensors.
func stepLoRA(name string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-step(\d{8})(?:\.safetensors|_peft|_kohya\.safetensors)$`)
}

// pruneLoRAs keeps the intermediate LoRA files of the n newest saved steps
// (every format of a step counts once) and deletes the older ones. The
// output folder is this run's (its lock and run.json say so), and only
// names of its save.name are touched; the final LoRA never is.
func (r *run) pruneLoRAs(n int) error {
	dir := r.cfg.Save.Output
	re := stepLoRA(r.cfg.Save.Name)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pruning LoRA files: %w", err)
	}
	bySteps := map[int][]string{}
	for _, e := range ents {
		if m := re.FindStringSubmatch(e.Name()); m != nil {
			step, _ := strconv.Atoi(m[1])
			bySteps[step] = append(bySteps[step], filepath.Join(dir, e.Name()))
		}
	}
	steps := make([]int, 0, len(bySteps))
	for s := range bySteps {
		steps = append(steps, s)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(steps)))
	for i, s := range steps {
		if i < n {
			continue
		}
		for _, p := range bySteps[s] {
			// Never half a PEFT folder: see atomicfile.Remove.
			if err := atomicfile.Remove(p); err != nil {
				return fmt.Errorf("pruning LoRA files: %w", err)
			}
		}
	}
	return nil
}

// state gathers everything a resumed run needs.
func (r *run) state(l *checkpoints.LoRA) (*checkpoints.State, error) {
	seed, off := r.e.RandomState()
	st := &checkpoints.State{
		Step: int64(r.step), ConfigHash: r.cfg.Hash(), BaseModelHash: r.baseHash, RunID: r.out.id.ID,
		Seed: seed, RNGOffset: off,
		Tensors: map[string]checkpoints.Tensor{},
		JSON:    map[string]json.RawMessage{},
		Meta:    map[string]string{metaConfig: r.cfg.String()},
	}
	for name, layer := range l.Layers {
		st.Tensors[name+".lora_A"] = checkpoints.Tensor{Shape: []int{layer.Rank, layer.In}, Data: layer.A}
		st.Tensors[name+".lora_B"] = checkpoints.Tensor{Shape: []int{layer.Out, layer.Rank}, Data: layer.B}
	}
	ostate, err := r.opt.State()
	if err != nil {
		return nil, err
	}
	if st.JSON["optimizer"], err = json.Marshal(ostate); err != nil {
		return nil, fmt.Errorf("optimizer state: %w", err)
	}
	info := resumeInfo{Micro: r.micro, Cursor: r.loader.After(int64(r.micro - r.loaderStart)), WorldSize: r.comm.WorldSize(), Curve: make([]jsonFloat, len(r.curve))}
	for i, v := range r.curve {
		info.Curve[i] = jsonFloat(v)
	}
	if st.JSON["trainer"], err = json.Marshal(info); err != nil {
		return nil, fmt.Errorf("trainer state: %w", err)
	}
	return st, nil
}
