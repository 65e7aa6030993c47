package lora

import (
	"fmt"
	"io"
	"sort"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// Export copies the adapters to the host in checkpoints' canonical form
// (A [rank, in], B [out, rank] as float32, keyed by module path), which
// checkpoints.WriteLoRA writes as PEFT, ComfyUI or kohya. Meta is left
// empty for the caller (steps, base model hash, config).
func (s *Set) Export() (*checkpoints.LoRA, error) {
	if len(s.order) == 0 {
		return nil, fmt.Errorf("lora: export: the set has no adapters (released?)")
	}
	l := &checkpoints.LoRA{
		Rank: s.cfg.Rank, Alpha: s.cfg.Alpha,
		Targets: append([]string(nil), s.cfg.Targets...),
		Layers:  map[string]checkpoints.LoRALayer{},
		Meta:    map[string]string{},
	}
	for _, a := range s.Adapters() {
		av, err := hostF32(a.A)
		if err != nil {
			return nil, fmt.Errorf("lora: export %s.lora_A: %w", a.Name, err)
		}
		bv, err := hostF32(a.B)
		if err != nil {
			return nil, fmt.Errorf("lora: export %s.lora_B: %w", a.Name, err)
		}
		l.Layers[a.Name] = checkpoints.LoRALayer{A: av, B: bv, In: a.In, Out: a.Out, Rank: s.cfg.Rank, Alpha: s.cfg.Alpha}
	}
	return l, nil
}

// hostF32 downloads a tensor and narrows it to float32 (exact for F32
// masters; F64 parity masters round once).
func hostF32(t *ag.Tensor) ([]float32, error) {
	if t == nil || t.Buffer() == nil {
		return nil, fmt.Errorf("tensor was released")
	}
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

// Import attaches adapters described by l (read from any format with
// checkpoints.ReadLoRA) to m, with l's rank, alpha and targets, masters in
// dtype master (0 for F32), and fills them with l's matrices. A Set has one
// rank and one alpha, so a LoRA whose layers differ (PEFT rank_pattern /
// alpha_pattern, per-key alphas) is refused naming the layers. Layers the
// model does not adapt, adapters the LoRA lacks and mis-shaped matrices
// are reported together; on any error the model is left without a hook.
func Import(m *nextdit.Model, l *checkpoints.LoRA, master kernels.DType) (*Set, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("lora: import: %w", err)
	}
	var odd []string
	for _, name := range l.LayerNames() {
		if ly := l.Layers[name]; ly.Rank != l.Rank || ly.Alpha != l.Alpha {
			odd = append(odd, fmt.Sprintf("%s (rank %d, alpha %g)", name, ly.Rank, ly.Alpha))
		}
	}
	if len(odd) > 0 {
		return nil, fmt.Errorf("lora: import: layers with their own rank or alpha are not supported (default rank %d, alpha %g): %s", l.Rank, l.Alpha, strings.Join(odd, ", "))
	}
	targets := l.Targets
	if len(targets) == 0 {
		targets = checkpoints.DeriveTargets(l.LayerNames())
	}
	prev := m.Hook()
	s, err := Attach(m, Config{Rank: l.Rank, Alpha: l.Alpha, Targets: targets, Master: master})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Set, error) {
		s.Release()
		m.SetHook(prev)
		return nil, err
	}
	if err := fits(s, l); err != nil {
		return fail(err)
	}
	be := m.Engine().Backend()
	for _, a := range s.Adapters() {
		ly := l.Layers[a.Name]
		be.Upload(a.A.Buffer(), 0, kernels.EncodeF64(a.A.DType(), widen(ly.A)))
		be.Upload(a.B.Buffer(), 0, kernels.EncodeF64(a.B.DType(), widen(ly.B)))
	}
	if err := m.Engine().Err(); err != nil {
		return fail(fmt.Errorf("lora: uploading adapters: %w", err))
	}
	return s, nil
}

// fits compares the set's adapters with the LoRA's layers and lists every
// difference.
func fits(s *Set, l *checkpoints.LoRA) error {
	var problems []string
	for _, name := range l.LayerNames() {
		a := s.Adapter(name)
		ly := l.Layers[name]
		switch {
		case a == nil:
			problems = append(problems, "unexpected layer "+name+" (the model has no such linear layer, or the targets do not select it)")
		case ly.In != a.In || ly.Out != a.Out:
			problems = append(problems, fmt.Sprintf("mis-shaped %s: the LoRA has in %d, out %d; the model's layer has in %d, out %d", name, ly.In, ly.Out, a.In, a.Out))
		}
	}
	for _, a := range s.Adapters() {
		if _, ok := l.Layers[a.Name]; !ok {
			problems = append(problems, fmt.Sprintf("missing %s (targets select it; expected A [%d %d], B [%d %d])", a.Name, s.cfg.Rank, a.In, a.Out, s.cfg.Rank))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	return fmt.Errorf("lora: the LoRA does not fit the model's adapters:\n  %s", strings.Join(problems, "\n  "))
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// Load reads a LoRA in any of the three formats (a PEFT folder, a ComfyUI
// or a kohya file; checkpoints.ReadLoRA tells them apart) and imports it
// onto m. It returns the format it found.
func Load(m *nextdit.Model, path string, master kernels.DType) (*Set, checkpoints.Format, error) {
	l, format, err := checkpoints.ReadLoRA(path)
	if err != nil {
		return nil, "", fmt.Errorf("lora: %w", err)
	}
	s, err := Import(m, l, master)
	if err != nil {
		return nil, format, fmt.Errorf("%w (%s LoRA %s)", err, format, path)
	}
	return s, format, nil
}

// ParityAdapter is the LoRA at path as a nextdit.AdapterFunc, so a golden
// parity run (nextdit.RunGolden) can compare its gradients.
func ParityAdapter(path string) nextdit.AdapterFunc {
	return func(m *nextdit.Model, master kernels.DType) (map[string]*ag.Tensor, error) {
		s, _, err := Load(m, path, master)
		if err != nil {
			return nil, err
		}
		s.SetTraining(false) // parity compares the deterministic forward
		out := map[string]*ag.Tensor{}
		for _, a := range s.Adapters() {
			out[a.Name+".lora_A"], out[a.Name+".lora_B"] = a.A, a.B
		}
		return out, nil
	}
}

// CheckBase checks that every layer of l is a linear weight of the base src
// with shape [out, in], listing all layers that are not.
func CheckBase(l *checkpoints.LoRA, src nextdit.Source) error {
	var problems []string
	for _, name := range l.LayerNames() {
		ly := l.Layers[name]
		info, ok := src.Info(name + ".weight")
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: the base has no %s.weight", name, name))
		case len(info.Shape) != 2 || info.Shape[0] != ly.Out || info.Shape[1] != ly.In:
			problems = append(problems, fmt.Sprintf("%s: the LoRA maps %d → %d features, the base weight is %v", name, ly.In, ly.Out, info.Shape))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	return fmt.Errorf("lora: the LoRA does not fit the base (%d layers):\n  %s", len(problems), strings.Join(problems, "\n  "))
}

// AddDelta adds (alpha/rank)·B·A to the row-major weight w [out, in] on the
// host, accumulating each element in float64 and rounding to float32 once,
// so a merged file is as close to base + adapter as float32 allows.
func AddDelta(w []float32, ly checkpoints.LoRALayer) error {
	if len(w) != ly.Out*ly.In || len(ly.A) != ly.Rank*ly.In || len(ly.B) != ly.Out*ly.Rank || ly.Rank <= 0 {
		return fmt.Errorf("lora: AddDelta: weight of %d values, A of %d and B of %d do not fit out %d, in %d, rank %d", len(w), len(ly.A), len(ly.B), ly.Out, ly.In, ly.Rank)
	}
	scale := ly.Alpha / float64(ly.Rank)
	row := make([]float64, ly.In)
	for o := range ly.Out {
		clear(row)
		for r := range ly.Rank {
			b := float64(ly.B[o*ly.Rank+r])
			if b == 0 {
				continue
			}
			for i, a := range ly.A[r*ly.In : (r+1)*ly.In] {
				row[i] += b * float64(a)
			}
		}
		wr := w[o*ly.In : (o+1)*ly.In]
		for i := range wr {
			wr[i] = float32(float64(wr[i]) + scale*row[i])
		}
	}
	return nil
}

// MergedTensors describes the merged model for safetensors.Write: every
// weight of cfg present in src, under its upstream name, in dtype dt
// (F32, BF16 or F16; empty keeps each tensor's own float dtype, F64 becoming
// F32), with the update of l added to the layers it adapts. Tensors are
// read, merged and encoded one at a time while the file is written, so host
// memory never holds more than one. l must have passed CheckBase.
func MergedTensors(src nextdit.Source, cfg nextdit.Config, l *checkpoints.LoRA, dt safetensors.DType) ([]safetensors.Tensor, error) {
	switch dt {
	case "", safetensors.F32, safetensors.BF16, safetensors.F16:
	default:
		return nil, fmt.Errorf("lora: merged weights can be F32, BF16 or F16, not %s", dt)
	}
	var ts []safetensors.Tensor
	for _, p := range cfg.Params() {
		info, ok := src.Info(p.Name)
		if !ok { // norm_final.weight, which diffusers drops and forward never reads
			continue
		}
		out := dt
		if out == "" {
			out = info.DType
			if out != safetensors.BF16 && out != safetensors.F16 {
				out = safetensors.F32
			}
		}
		layer, _ := strings.CutSuffix(p.Name, ".weight")
		ly, adapted := l.Layers[layer]
		name := p.Name
		ts = append(ts, safetensors.Tensor{Name: name, DType: out, Shape: p.Shape, Source: func(w io.Writer) error {
			v, err := src.Float32(name)
			if err != nil {
				return err
			}
			if adapted {
				if err := AddDelta(v, ly); err != nil {
					return err
				}
			}
			return safetensors.WriteFloats(w, v, out)
		}})
	}
	return ts, nil
}
