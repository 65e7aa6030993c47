package optim

import (
	"fmt"

	"github.com/newbie-train/newbie-train/kernels"
)

// StateVersion is the version of State this package writes and reads.
const StateVersion = 1

// TensorState holds one parameter's AdamW moments as the little-endian bytes
// of their buffers, so a checkpoint stores them bit for bit (e.g. as
// safetensors tensors "<name>.exp_avg" and "<name>.exp_avg_sq").
type TensorState struct {
	Name  string
	DType string // "F32" (or "F64" in checks)
	Len   int    // elements
	M, V  []byte // first and second moments
}

// State is everything an Optimizer needs to continue a run exactly: the
// moments, the update count (AdamW's t and the schedule position), the
// micro-batches pending, the loss scaler and the schedule. It is a plain
// value with no buffers in it, for a checkpoint writer to store. The master
// weights are not in it: they are the model's parameters, saved with the
// model.
type State struct {
	Version      int
	Step         int // updates applied
	MicroBatches int // micro-batches added since the last step
	Scaler       ScalerState
	Schedule     Schedule
	Tensors      []TensorState
}

// State downloads the optimizer's state (one synchronisation).
func (o *Optimizer) State() (State, error) {
	st := State{
		Version:      StateVersion,
		Step:         o.step,
		MicroBatches: o.micro,
		Scaler:       o.scaler.State(),
		Schedule:     o.cfg.Schedule,
		Tensors:      make([]TensorState, len(o.params)),
	}
	for i, p := range o.params {
		n := p.Master.Len()
		ts := TensorState{Name: p.Name, DType: o.dt.String(), Len: n,
			M: make([]byte, n*o.dt.Size()), V: make([]byte, n*o.dt.Size())}
		if err := o.be.Download(ts.M, o.m[i], 0); err != nil {
			return State{}, fmt.Errorf("optim: saving first moment of %s: %w", p.Name, err)
		}
		if err := o.be.Download(ts.V, o.v[i], 0); err != nil {
			return State{}, fmt.Errorf("optim: saving second moment of %s: %w", p.Name, err)
		}
		st.Tensors[i] = ts
	}
	return st, nil
}

// SetState restores a state saved by State into an optimizer built over the
// same parameters (matched by name; order may differ). The state's schedule
// replaces the configured one, so the resumed run follows the same curve; to
// change the schedule on resume, edit st.Schedule first. A state its checks
// refuse changes nothing.
func (o *Optimizer) SetState(st State) error {
	if st.Version != StateVersion {
		return fmt.Errorf("optim: state version %d, this build reads %d", st.Version, StateVersion)
	}
	if st.Step < 0 || st.MicroBatches < 0 {
		return fmt.Errorf("optim: state has step %d and %d pending micro-batches", st.Step, st.MicroBatches)
	}
	if st.Schedule.Kind != "" {
		if err := st.Schedule.Validate(); err != nil {
			return fmt.Errorf("optim: state's lr schedule: %w", err)
		}
	}
	byName := make(map[string]int, len(st.Tensors))
	for i, ts := range st.Tensors {
		if _, dup := byName[ts.Name]; dup {
			return fmt.Errorf("optim: state holds parameter %s twice", ts.Name)
		}
		byName[ts.Name] = i
	}
	if len(st.Tensors) != len(o.params) {
		return fmt.Errorf("optim: state holds %d parameters, this optimizer %d", len(st.Tensors), len(o.params))
	}
	order := make([]int, len(o.params))
	for i, p := range o.params {
		j, ok := byName[p.Name]
		if !ok {
			return fmt.Errorf("optim: state has no moments for parameter %s", p.Name)
		}
		ts := st.Tensors[j]
		d, err := kernels.ParseDType(ts.DType)
		if err != nil {
			return fmt.Errorf("optim: state of %s: %w", p.Name, err)
		}
		if d != o.dt || ts.Len != p.Master.Len() || len(ts.M) != ts.Len*d.Size() || len(ts.V) != ts.Len*d.Size() {
			return fmt.Errorf("optim: state of %s is %s[%d] with %d+%d bytes of moments, the parameter is %v[%d]",
				p.Name, ts.DType, ts.Len, len(ts.M), len(ts.V), o.dt, p.Master.Len())
		}
		order[i] = j
	}
	// The scaler last among the checks: it is the one that changes state.
	prev := o.scaler.State()
	if err := o.scaler.SetState(st.Scaler); err != nil {
		return fmt.Errorf("optim: %w", err)
	}
	for i, j := range order {
		o.be.Upload(o.m[i], 0, st.Tensors[j].M)
		o.be.Upload(o.v[i], 0, st.Tensors[j].V)
	}
	if err := o.be.Sync(); err != nil {
		_ = o.scaler.SetState(prev)
		return fmt.Errorf("optim: restoring moments: %w", err)
	}
	o.step, o.micro = st.Step, st.MicroBatches
	o.cfg.Schedule = st.Schedule
	return nil
}
