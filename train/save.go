package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/optim"
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
	switch f {
	case checkpoints.FormatPEFT:
		return filepath.Join(r.cfg.Save.Output, stem+"_peft")
	case checkpoints.FormatKohya:
		return filepath.Join(r.cfg.Save.Output, stem+"_kohya.safetensors")
	}
	return filepath.Join(r.cfg.Save.Output, stem+".safetensors")
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

// resumeInfo is the trainer's own part of a saved state.
type resumeInfo struct {
	Micro  uint64      `json:"micro_batches"`
	Cursor data.Cursor `json:"loader_cursor"`
	Curve  []float64   `json:"loss_curve"`
}

// save writes the LoRA in every configured format, the training state and
// the loss curve, and prunes old states.
func (r *run) save(res *Result) error {
	final := r.step >= r.total
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
		p := r.loraPath(f, final)
		if err := checkpoints.WriteLoRA(p, l, f, checkpoints.ExportOptions{}); err != nil {
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
	if r.cfg.Save.KeepLast > 0 {
		if _, err := checkpoints.KeepLast(r.statesDir(), r.cfg.Save.KeepLast); err != nil {
			return err
		}
	}
	if err := writeLossCurve(filepath.Join(r.cfg.Save.Output, r.cfg.Save.Name+"-loss.png"), r.curve); err != nil {
		return err
	}
	if r.cfg.Sample.Every == 0 && !r.stopping {
		if err := r.renderPreviews(); err != nil {
			return err
		}
	}
	r.logf("saved step %d: %v, state %s", r.step, res.LoRAFiles, dir)
	return nil
}

// state gathers everything a resumed run needs.
func (r *run) state(l *checkpoints.LoRA) (*checkpoints.State, error) {
	seed, off := r.e.RandomState()
	st := &checkpoints.State{
		Step: int64(r.step), ConfigHash: r.cfg.Hash(), BaseModelHash: r.baseHash,
		Seed: seed, RNGOffset: off,
		Tensors: map[string]checkpoints.Tensor{},
		JSON:    map[string]json.RawMessage{},
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
		return nil, err
	}
	info := resumeInfo{Micro: r.micro, Cursor: r.loader.Cursor(), Curve: r.curve}
	if st.JSON["trainer"], err = json.Marshal(info); err != nil {
		return nil, err
	}
	return st, nil
}

// resume restores a saved state: "latest" or a state folder.
func (r *run) resume(which string) error {
	path := which
	if which == "latest" {
		p, skipped, err := checkpoints.LatestState(r.statesDir())
		for _, s := range skipped {
			r.logf("warning: skipping %s: %v", s.Path, s.Reason)
		}
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		path = p
	}
	st, err := checkpoints.LoadState(path)
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if err := checkpoints.CheckCompatible(st, r.cfg.Hash(), r.baseHash); err != nil {
		return fmt.Errorf("resume from %s refused: %w", path, err)
	}
	for _, a := range r.set.Adapters() {
		for suffix, t := range map[string]*ag.Tensor{".lora_A": a.A, ".lora_B": a.B} {
			saved, ok := st.Tensors[a.Name+suffix]
			if !ok || len(saved.Data) != t.Len() {
				return fmt.Errorf("resume from %s: the state has no %s of %d values", path, a.Name+suffix, t.Len())
			}
			v := make([]float64, len(saved.Data))
			for i, x := range saved.Data {
				v[i] = float64(x)
			}
			r.b.Upload(t.Buffer(), 0, kernels.EncodeF64(kernels.F32, v))
		}
	}
	var ostate optim.State
	if err := json.Unmarshal(st.JSON["optimizer"], &ostate); err != nil {
		return fmt.Errorf("resume from %s: optimizer state: %w", path, err)
	}
	if err := r.opt.SetState(ostate); err != nil {
		return fmt.Errorf("resume from %s: %w", path, err)
	}
	var info resumeInfo
	if err := json.Unmarshal(st.JSON["trainer"], &info); err != nil {
		return fmt.Errorf("resume from %s: trainer state: %w", path, err)
	}
	r.loader.Close()
	r.loader, err = data.NewLoader(r.encoded, info.Cursor)
	if err != nil {
		return fmt.Errorf("resume from %s: %w", path, err)
	}
	r.e.SeedRandom(st.Seed, st.RNGOffset)
	r.step, r.micro, r.curve = int(st.Step), info.Micro, info.Curve
	if r.step >= r.total {
		return errors.New("resume: the saved state is already at the run's last step")
	}
	r.logf("resumed from %s at step %d", path, r.step)
	return nil
}
