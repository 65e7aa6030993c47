package train

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// trajectoryHParams are the hyperparameters a recorded run stores as JSON
// in its metadata ("hparams").
type trajectoryHParams struct {
	Steps       int       `json:"steps"`
	LR          float64   `json:"lr"`
	Betas       []float64 `json:"betas"`
	Eps         float64   `json:"eps"`
	WeightDecay float64   `json:"weight_decay"`
	ClipNorm    float64   `json:"clip_grad_norm"`
	Rank        int       `json:"rank"`
	Alpha       float64   `json:"alpha"`
	Targets     []string  `json:"targets"`
}

// ReplayReport compares a replayed run with the recording.
type ReplayReport struct {
	Losses, RefLosses       []float64
	GradNorms, RefGradNorms []float64
	// LossErr is the largest relative error of a step's loss.
	LossErr float64
	// GradNormErr is the largest relative error of a step's gradient norm
	// before clipping.
	GradNormErr float64
	// FinalErr is the relative error of each final LoRA tensor (PEFT name);
	// MaxFinalErr the largest of them.
	FinalErr    map[string]float64
	MaxFinalErr float64
}

// Replay runs a recorded LoRA training run (the format of
// ../shared/golden/nextdit/tiny.train.golden.safetensors: noise in.x0
// [step,B,C,H,W], timesteps in.t [step,B], hyperparameters in the metadata,
// the inputs in the sibling file the metadata names, init.* and final.*
// LoRA tensors under PEFT names) through the trainer's own step — model,
// LoRA, loss, clipping, AdamW — on backend b in dtype dt (F64 or F32
// storage and masters; with autocast set, bf16/fp16 compute over F32) and
// reports the error of every step's loss and of the final LoRA tensors.
func Replay(b kernels.Backend, weightsPath, trajectoryPath string, dt, autocast kernels.DType) (*ReplayReport, error) {
	tf, err := safetensors.Open(trajectoryPath)
	if err != nil {
		return nil, err
	}
	defer tf.Close()
	var hp trajectoryHParams
	if err := json.Unmarshal([]byte(tf.Metadata()["hparams"]), &hp); err != nil {
		return nil, fmt.Errorf("%s: hparams metadata: %w", trajectoryPath, err)
	}
	inputsName := tf.Metadata()["golden"]
	if inputsName == "" {
		return nil, fmt.Errorf("%s: metadata names no inputs file (\"golden\")", trajectoryPath)
	}
	inf, err := safetensors.Open(filepath.Join(filepath.Dir(trajectoryPath), inputsName))
	if err != nil {
		return nil, err
	}
	defer inf.Close()

	e := ag.New(b)
	m, err := nextdit.Load(e, weightsPath, nextdit.Options{DType: dt})
	if err != nil {
		return nil, err
	}
	defer m.Release()
	set, err := lora.Attach(m, lora.Config{Rank: hp.Rank, Alpha: hp.Alpha, Targets: hp.Targets, Master: dt})
	if err != nil {
		return nil, err
	}
	defer set.Release()
	for _, a := range set.Adapters() {
		for which, t := range map[string]*ag.Tensor{"A": a.A, "B": a.B} {
			name := "init." + lora.PEFTKey(a.Name, which)
			v, err := tf.Float64(name)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", trajectoryPath, err)
			}
			if len(v) != t.Len() {
				return nil, fmt.Errorf("%s: %s has %d values, the adapter %d", trajectoryPath, name, len(v), t.Len())
			}
			b.Upload(t.Buffer(), 0, kernels.EncodeF64(dt, v))
		}
	}
	opt, err := optim.New(b, []optim.Group{{Name: "lora", Params: OptimParams(set), Hyper: optim.Hyper{
		LR: hp.LR, WeightDecay: hp.WeightDecay, Beta1: hp.Betas[0], Beta2: hp.Betas[1], Eps: hp.Eps,
	}}}, optim.Config{Precision: optim.FP32, MaxGradNorm: hp.ClipNorm})
	if err != nil {
		return nil, err
	}
	defer opt.Close()
	st := &Stepper{Model: m, LoRA: set, Opt: opt}

	x1, x1Shape, err := readTensor(inf, "in.x")
	if err != nil {
		return nil, err
	}
	capv, capShape, err := readTensor(inf, "in.cap_feats")
	if err != nil {
		return nil, err
	}
	mask, _, err := readTensor(inf, "in.cap_mask")
	if err != nil {
		return nil, err
	}
	clip, clipShape, err := readTensor(inf, "in.clip_text_pooled")
	if err != nil {
		return nil, err
	}
	capLens, err := nextdit.CapLensFromMask(mask, capShape[0], capShape[1])
	if err != nil {
		return nil, err
	}
	x0s, x0Shape, err := readTensor(tf, "in.x0")
	if err != nil {
		return nil, err
	}
	ts, _, err := readTensor(tf, "in.t")
	if err != nil {
		return nil, err
	}
	refLoss, _, err := readTensor(tf, "out.loss")
	if err != nil {
		return nil, err
	}
	refNorm, _, err := readTensor(tf, "out.grad_norm_before_clip")
	if err != nil {
		return nil, err
	}
	steps, per, batch := x0Shape[0], len(x1), x1Shape[0]
	rep := &ReplayReport{RefLosses: refLoss, RefGradNorms: refNorm, FinalErr: map[string]float64{}}
	for step := range steps {
		prev := e.SetAutocast(autocast)
		mb := MicroBatch{
			FlowBatch: FlowBatch{
				X1:         e.FromFloat64(dt, x1Shape, x1),
				CapFeats:   e.FromFloat64(dt, capShape, capv),
				CapLens:    capLens,
				ClipPooled: e.FromFloat64(dt, clipShape, clip),
			},
			X0: e.FromFloat64(dt, x1Shape, x0s[step*per:(step+1)*per]),
			T:  ts[step*batch : (step+1)*batch],
		}
		out, err := st.Step([]MicroBatch{mb})
		e.SetAutocast(prev)
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", step+1, err)
		}
		rep.Losses = append(rep.Losses, out.Loss)
		rep.GradNorms = append(rep.GradNorms, out.GradNorm)
		rep.LossErr = max(rep.LossErr, math.Abs(out.Loss-refLoss[step])/math.Abs(refLoss[step]))
		rep.GradNormErr = max(rep.GradNormErr, math.Abs(out.GradNorm-refNorm[step])/math.Abs(refNorm[step]))
	}
	for _, a := range set.Adapters() {
		for which, t := range map[string]*ag.Tensor{"A": a.A, "B": a.B} {
			name := lora.PEFTKey(a.Name, which)
			want, err := tf.Float64("final." + name)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", trajectoryPath, err)
			}
			got, err := t.Values()
			if err != nil {
				return nil, err
			}
			rel := kernels.RelErr(got, want)
			rep.FinalErr[name] = rel
			rep.MaxFinalErr = max(rep.MaxFinalErr, rel)
		}
	}
	return rep, nil
}

// readTensor reads a tensor as float64 values with its shape.
func readTensor(f *safetensors.File, name string) ([]float64, []int, error) {
	info, ok := f.Info(name)
	if !ok {
		return nil, nil, fmt.Errorf("%s: no tensor %q", f.Path(), name)
	}
	v, err := f.Float64(name)
	if err != nil {
		return nil, nil, err
	}
	return v, info.Shape, nil
}
