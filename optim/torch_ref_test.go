package optim

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// torchRef is testdata/adamw_ref.json, written by testdata/torch_adamw.py
// from torch.optim.AdamW in float64.
type torchRef struct {
	TorchVersion string `json:"torch_version"`
	Steps        int    `json:"steps"`
	Names        []string
	Groups       []struct {
		Params      []string
		LR          float64
		Betas       [2]float64
		Eps         float64
		WeightDecay float64 `json:"weight_decay"`
	}
	Init  [][]float64
	Grads [][][]float64 // [step][param][element]
	After [][][]float64 // parameters after each step
}

// TestAdamWMatchesTorch replays PyTorch's gradient sequence through the
// optimizer (groups with different lr, betas, eps and weight decay) on the
// CPU backend and compares the parameters after every one of the 50 steps.
func TestAdamWMatchesTorch(t *testing.T) {
	raw, err := os.ReadFile("testdata/adamw_ref.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref torchRef
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatalf("decoding adamw_ref.json: %v", err)
	}
	if ref.Steps != 50 || len(ref.Grads) != ref.Steps || len(ref.After) != ref.Steps {
		t.Fatalf("reference holds %d steps (%d grads, %d results), want 50", ref.Steps, len(ref.Grads), len(ref.After))
	}
	index := map[string]int{}
	for i, n := range ref.Names {
		index[n] = i
	}
	for _, tc := range []struct {
		dt  kernels.DType
		tol float64
	}{
		{kernels.F64, 1e-12},
		{kernels.F32, 1e-6},
	} {
		t.Run(tc.dt.String(), func(t *testing.T) {
			be := cpu.New()
			params := make([]Param, len(ref.Names))
			for i, n := range ref.Names {
				params[i] = newParam(t, be, n, tc.dt, ref.Init[i])
			}
			var groups []Group
			for gi, g := range ref.Groups {
				grp := Group{Name: string(rune('a' + gi)), Hyper: Hyper{LR: g.LR, WeightDecay: g.WeightDecay, Beta1: g.Betas[0], Beta2: g.Betas[1], Eps: g.Eps}}
				for _, n := range g.Params {
					grp.Params = append(grp.Params, params[index[n]])
				}
				groups = append(groups, grp)
			}
			o, err := New(be, groups, Config{Precision: FP32})
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			worst := 0.0
			for s := 0; s < ref.Steps; s++ {
				for i, p := range params {
					setGrad(be, p, ref.Grads[s][i])
				}
				res, err := o.Step()
				if err != nil {
					t.Fatalf("step %d: %v", s+1, err)
				}
				if !res.Applied {
					t.Fatalf("step %d skipped (grad norm %g)", s+1, res.GradNorm)
				}
				for i, p := range params {
					e := kernels.RelErr(download(t, be, p.Master), ref.After[s][i])
					worst = max(worst, e)
					if !(e <= tc.tol) {
						t.Fatalf("step %d, %s: relative error %.3g > %.3g against torch %s", s+1, p.Name, e, tc.tol, ref.TorchVersion)
					}
				}
			}
			t.Logf("%v masters: worst relative error over %d steps %.3g (torch %s)", tc.dt, ref.Steps, worst, ref.TorchVersion)
		})
	}
}
