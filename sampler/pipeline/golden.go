package pipeline

import (
	"context"
	"encoding/json"
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/internal/golden"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/sampler"
)

// GoldenRuns are the runs of ../shared/golden/sampler/tiny.sample.golden.safetensors,
// in the order its README lists them.
var GoldenRuns = []string{"midpoint", "euler", "dpm"}

// GoldenTolerance is the README's limit on every trajectory point and final
// sample, by the dtype the replay computes in.
var GoldenTolerance = map[kernels.DType]float64{kernels.F64: 1e-6, kernels.F32: 1e-5}

// GoldenSettings are one run's __metadata__["<run>.settings"].
type GoldenSettings struct {
	Solver    string  `json:"solver"`
	NumSteps  int     `json:"num_steps"`
	Shift     float64 `json:"shift"`
	CFGScale  float64 `json:"cfg_scale"`
	CFGTrunc  float64 `json:"cfg_trunc"`
	RenormCFG float64 `json:"renorm_cfg"`
	Batch     int     `json:"batch"`
}

// ReplayGolden runs every run of a sampler golden file (upstream's
// sample_ode / sample_dpm over forward_with_cfg on the tiny model) through
// this package's sampler and the model at weights, computing in dt (F64 or
// F32), and compares the time grid, every trajectory point and each final
// sample with the reference.
func ReplayGolden(ctx context.Context, b kernels.Backend, weights, path string, dt kernels.DType) (golden.Results, error) {
	tol, ok := GoldenTolerance[dt]
	if !ok {
		return nil, fmt.Errorf("pipeline: golden sampling replays in F64 or F32, not %v", dt)
	}
	g, err := golden.Open(path)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	e := ag.New(b)
	m, err := nextdit.Load(e, weights, nextdit.Options{DType: dt})
	if err != nil {
		return nil, err
	}
	defer m.Release()
	var rs golden.Results
	for _, run := range GoldenRuns {
		r, err := replayRun(ctx, m, g, run, dt, tol)
		e.EndStep()
		if err != nil {
			return nil, fmt.Errorf("pipeline: golden run %s: %w", run, err)
		}
		rs = append(rs, r...)
	}
	return rs, nil
}

// replayRun replays one run.
func replayRun(ctx context.Context, m *nextdit.Model, g *golden.File, run string, dt kernels.DType, tol float64) (golden.Results, error) {
	js, ok := g.Metadata()[run+".settings"]
	if !ok {
		return nil, fmt.Errorf("%s has no __metadata__[%q]", g.Path(), run+".settings")
	}
	var st GoldenSettings
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		return nil, fmt.Errorf("%s: settings %s: %w", g.Path(), js, err)
	}
	opts := sampler.Options{Method: sampler.Method(st.Solver), Steps: st.NumSteps, Shift: st.Shift}
	guide := sampler.Guidance{Scale: st.CFGScale, Trunc: st.CFGTrunc, Renorm: st.RenormCFG}
	c, err := goldenConditioning(g, run)
	if err != nil {
		return nil, err
	}
	z, err := g.Tensor(run + ".in.z")
	if err != nil {
		return nil, err
	}
	if z.Shape[0] != c.B || st.Batch != c.B {
		return nil, fmt.Errorf("%s: %s.in.z is %v for %d caption pairs and batch %d", g.Path(), run, z.Shape, c.B, st.Batch)
	}
	var traj golden.Tensor
	hasTraj := has(g, run+".out.trajectory")
	if hasTraj {
		if traj, err = g.Tensor(run + ".out.trajectory"); err != nil {
			return nil, err
		}
	}
	var rs golden.Results
	if has(g, run+".out.grid") {
		ref, err := g.Tensor(run + ".out.grid")
		if err != nil {
			return nil, err
		}
		rs = append(rs, golden.Compare(run+" grid", opts.Grid(), ref.Values, tol))
	}
	n := len(z.Values)
	point := func(i int, x *ag.Tensor) error {
		if !hasTraj {
			return nil
		}
		if (i+1)*n > len(traj.Values) {
			return fmt.Errorf("%s: %s.out.trajectory %v has no point %d", g.Path(), run, traj.Shape, i)
		}
		v, err := x.Values()
		if err != nil {
			return err
		}
		rs = append(rs, golden.Compare(fmt.Sprintf("%s trajectory[%d]", run, i), v, traj.Values[i*n:(i+1)*n], tol))
		return nil
	}
	e := m.Engine()
	x0 := e.FromFloat64(dt, z.Shape, z.Values)
	defer x0.Release()
	if err := point(0, x0); err != nil {
		return nil, err
	}
	opts.Observe = func(step, _ int, x *ag.Tensor) error { return point(step, x) }
	bd, err := bind(m, c, dt, dt, nil)
	if err != nil {
		return nil, err
	}
	defer bd.release()
	x, err := sampler.Sample(ctx, x0, sampler.Guided(bd.conditional(), guide), opts)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	got, err := x.Values()
	if err != nil {
		return nil, err
	}
	ref, err := g.Tensor(run + ".out.final")
	if err != nil {
		return nil, err
	}
	return append(rs, golden.Compare(run+" final", got, ref.Values, tol)), nil
}

// goldenConditioning reads a run's 2B caption rows (in.cap_feats, in.cap_mask,
// in.clip_text_pooled) as a Conditioning.
func goldenConditioning(g *golden.File, run string) (*Conditioning, error) {
	feats, err := g.Tensor(run + ".in.cap_feats")
	if err != nil {
		return nil, err
	}
	mask, err := g.Rows(run + ".in.cap_mask")
	if err != nil {
		return nil, err
	}
	if len(feats.Shape) != 3 || feats.Shape[0]%2 != 0 || len(mask) != feats.Shape[0] {
		return nil, fmt.Errorf("%s: %s.in.cap_feats %v with %d mask rows is not [2B, L, D]", g.Path(), run, feats.Shape, len(mask))
	}
	c := &Conditioning{B: feats.Shape[0] / 2, L: feats.Shape[1], D: feats.Shape[2], Feats: feats.Values}
	flat := make([]float64, 0, len(mask)*c.L)
	for _, row := range mask {
		for _, v := range row {
			flat = append(flat, float64(v))
		}
	}
	if c.Lens, err = nextdit.CapLensFromMask(flat, len(mask), c.L); err != nil {
		return nil, fmt.Errorf("%s: %s.in.cap_mask: %w", g.Path(), run, err)
	}
	if has(g, run+".in.clip_text_pooled") {
		p, err := g.Tensor(run + ".in.clip_text_pooled")
		if err != nil {
			return nil, err
		}
		c.Pooled, c.P = p.Values, p.Shape[1]
	}
	return c, nil
}

// has reports whether the golden file holds a tensor.
func has(g *golden.File, name string) bool {
	_, ok := g.Info(name)
	return ok
}
