package textenc

import (
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/internal/golden"
	"github.com/newbie-train/newbie-train/kernels"
)

// GemmaTolerances are what the Gemma golden (../shared/golden/gemma3) is
// held to: Penultimate on hidden_states[-2], Last on last_hidden_state.
//
// Float64: the reference's own floor is about 1e-6. transformers'
// Gemma3RMSNorm upcasts to float32 (x.float()) even in a float64 model, and
// float32 norms alone move a float64 result of this random model by 6–9e-7:
// our float64 path is 8.6e-7 / 1.02e-6 from the golden, and so is an
// independent plain-loop float64 forward that matches ours to 1e-15
// (TestGoldenHostReference). So hidden_states[-2] keeps the README's 1e-6
// and last_hidden_state, one layer and one norm further, gets 1.5e-6.
//
// BF16 (bf16 weights and activations, as transformers' bf16 Gemma): on
// this random model rounding the weights to bf16 alone moves the outputs by
// 2.2e-2 / 2.6e-2 (measured with float32 compute), and bf16 activations
// bring them to 3.7e-2 / 4.3e-2, beyond the README's 2e-2 for the Next-DiT:
// the bound is 6e-2. transformers' own bf16 Gemma3TextModel with the
// golden's weights lands at 4.35e-2 / 5.10e-2 (H200, 2026-12-04,
// scripts/torch_gemma3_encode.py --golden), further off than ours.
var GemmaTolerances = struct{ Penultimate, Last golden.Tolerances }{
	Penultimate: golden.Tolerances{F64: 1e-6, F32: 1e-5, BF16: 6e-2},
	Last:        golden.Tolerances{F64: 1.5e-6, F32: 1e-5, BF16: 6e-2},
}

// JinaTolerances are the golden README's bounds for the Jina golden
// (../shared/golden/jina) on out.pooled and out.last_hidden_state.
var JinaTolerances = golden.Tolerances{F64: 1e-6, F32: 1e-5, BF16: 2e-2}

// goldenBatch is a golden file's token ids and attention mask, and a
// reader of [B, L, D] references at the mask-1 positions.
type goldenBatch struct {
	f         *golden.File
	ids, mask [][]int32
}

func openGoldenBatch(path string) (*goldenBatch, error) {
	f, err := golden.Open(path)
	if err != nil {
		return nil, err
	}
	g := &goldenBatch{f: f}
	if g.ids, err = f.Rows("in.input_ids"); err == nil {
		g.mask, err = f.Rows("in.attention_mask")
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return g, nil
}

// compare reads reference name and compares got with it: for a [B, L, D]
// tensor only at positions where the mask is 1.
func (g *goldenBatch) compare(name string, got *ag.Tensor, tol float64) (golden.Result, error) {
	ref, err := g.f.Tensor(name)
	if err != nil {
		return golden.Result{}, err
	}
	v, err := got.Values()
	if err != nil {
		return golden.Result{}, err
	}
	if len(v) != len(ref.Values) {
		return golden.Result{}, fmt.Errorf("textenc: %s: ours has %d values %v, the reference %d %v", name, len(v), got.Shape(), len(ref.Values), ref.Shape)
	}
	if len(ref.Shape) != 3 {
		return golden.Compare(name, v, ref.Values, tol), nil
	}
	l, d := ref.Shape[1], ref.Shape[2]
	ours, want := maskedRows(v, g.mask, l, d), maskedRows(ref.Values, g.mask, l, d)
	return golden.Compare(name+" (mask 1)", ours, want, tol), nil
}

// parityOutput is one tensor a parity run compares with its reference.
type parityOutput struct {
	name string
	got  *ag.Tensor
	tol  float64
}

// encoderParity opens a golden file, hands its inputs to run (which loads
// the encoder in dtype d on e and returns what to compare) and compares.
func encoderParity(b kernels.Backend, goldenPath, precision string,
	run func(e *ag.Engine, d kernels.DType, ids, mask [][]int32) ([]parityOutput, error)) (golden.Results, error) {
	d, err := golden.FrozenDType(precision)
	if err != nil {
		return nil, err
	}
	g, err := openGoldenBatch(goldenPath)
	if err != nil {
		return nil, err
	}
	defer g.f.Close()
	e := ag.New(b)
	outs, err := run(e, d, g.ids, g.mask)
	if err != nil {
		return nil, err
	}
	var rs golden.Results
	for _, o := range outs {
		r, err := g.compare(o.name, o.got, o.tol)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, e.EndStep()
}

// inputsError names the golden file whose inputs a forward refused.
func inputsError(err error, goldenPath string) error {
	return fmt.Errorf("%w (the inputs of %s)", err, goldenPath)
}

// GemmaParity loads Gemma weights (any layout Load reads) on backend b in
// precision (fp64, fp32, bf16), runs a golden file's in.input_ids and
// in.attention_mask (../shared/golden/gemma3/gemma_tiny.golden.safetensors)
// and compares hidden_states[-2] — through PenultimateHidden, NewBie's path
// — and last_hidden_state with the reference at the real tokens, held to
// GemmaTolerances.
func GemmaParity(b kernels.Backend, weights, goldenPath, precision string) (golden.Results, error) {
	return encoderParity(b, goldenPath, precision, func(e *ag.Engine, d kernels.DType, ids, mask [][]int32) ([]parityOutput, error) {
		m, err := Load(e, weights, Options{DType: d})
		if err != nil {
			return nil, err
		}
		defer m.Release()
		m2, err := m.PenultimateHidden(ids, mask)
		if err != nil {
			return nil, inputsError(err, goldenPath)
		}
		hs, err := m.Forward(ids, mask)
		if err != nil {
			return nil, inputsError(err, goldenPath)
		}
		return []parityOutput{
			{"out.hidden_states_m2", m2, GemmaTolerances.Penultimate.For(d)},
			{"out.last_hidden_state", hs[len(hs)-1], GemmaTolerances.Last.For(d)},
		}, nil
	})
}

// JinaParity loads Jina text-tower weights (any layout LoadJina reads) on
// backend b in precision (fp64, fp32, bf16), runs a golden file's inputs
// (../shared/golden/jina/jina_tiny.golden.safetensors) with the config's
// default LoRA task and compares out.pooled and out.last_hidden_state (at
// the real tokens) with the reference, held to JinaTolerances.
func JinaParity(b kernels.Backend, weights, goldenPath, precision string) (golden.Results, error) {
	return encoderParity(b, goldenPath, precision, func(e *ag.Engine, d kernels.DType, ids, mask [][]int32) ([]parityOutput, error) {
		j, err := LoadJina(e, weights, JinaOptions{DType: d})
		if err != nil {
			return nil, err
		}
		defer j.Release()
		pooled, err := j.Pooled(ids, mask)
		if err != nil {
			return nil, inputsError(err, goldenPath)
		}
		last, err := j.Forward(ids, mask)
		if err != nil {
			return nil, inputsError(err, goldenPath)
		}
		tol := JinaTolerances.For(d)
		return []parityOutput{{"out.pooled", pooled, tol}, {"out.last_hidden_state", last, tol}}, nil
	})
}

// maskedRows keeps the rows of v [B, L, d] at the positions where mask
// [B, L] is 1: padded positions of an encoder's output mean nothing.
func maskedRows(v []float64, mask [][]int32, l, d int) []float64 {
	var out []float64
	for b, row := range mask {
		for i, m := range row {
			if m == 1 {
				out = append(out, v[(b*l+i)*d:(b*l+i+1)*d]...)
			}
		}
	}
	return out
}
