package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/train"
)

// InferResult is the outcome of Infer: the time of one model evaluation
// of a sampling step with classifier-free guidance (the conditional and
// unconditional inputs as one batch of 2), as the PyTorch anchor's --infer
// measures it.
type InferResult struct {
	Backend, Switches, Preset string
	Layers                    int
	FP8Base                   bool
	Params                    int64
	Resolution, ImageTokens   int
	CaptionTokens             int
	BuildSeconds              float64
	// Evals is the number of timed evaluations of each row.
	Evals int
	// BaseBytes is what the weights held before the evaluations.
	BaseBytes int64
	// Rows are the measurements, one per Options.CompareOff entry (one
	// for the backend as opened without it).
	Rows     []InferRow
	Compared bool
	// Profile is where one evaluation goes by backend op kind
	// (Options.Profile), measured after the rows.
	Profile *Profile
}

// InferRow is one timed run of evaluations.
type InferRow struct {
	// Paths lists the optional paths that were off (see Options.CompareOff).
	Paths string
	// Seconds is the time of the Evals evaluations (one wait for the device
	// at the end, as the anchor times them); PerEval Seconds/Evals.
	Seconds, PerEval float64
	// PeakBytes is the backend's peak allocation over them.
	PeakBytes int64
	// Graphs is what graph replay did over them.
	Graphs kernels.GraphStats
}

// inferBatch is the batch of a guided evaluation: conditional and
// unconditional.
const inferBatch = 2

// Infer times o.Steps model evaluations (after o.Warmup untimed ones) of
// the preset with random bf16 weights, no LoRA, without gradients under
// bf16 autocast, on one fixed batch of 2 (a noisy latent at o.Resolution,
// o.CaptionTokens caption tokens, the pooled CLIP vector): the forward of
// one sampling step with classifier-free guidance. Each evaluation is a
// graph region of the model, so on the CUDA backend repeats replay.
func Infer(ctx context.Context, o Options) (InferResult, error) {
	if err := o.Validate(); err != nil {
		return InferResult{}, err
	}
	o = o.withDefaults()
	cfg, _ := o.config()
	latent := o.Resolution / vaeFactor
	res := InferResult{Preset: o.Preset, Layers: cfg.NLayers, FP8Base: o.FP8Base, Params: cfg.NumParams(), Resolution: o.Resolution,
		ImageTokens: (latent / cfg.PatchSize) * (latent / cfg.PatchSize), CaptionTokens: o.CaptionTokens, Evals: o.Steps}
	be, _, err := train.OpenBackend(o.Backend, o.GPU, o.Log)
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	if c, ok := be.(interface{ Close() }); ok {
		defer c.Close()
	}
	res.Backend = be.Name()
	if st, ok := be.(kernels.Switchable); ok {
		res.Switches = st.Switches()
	}
	pb := &profiler{Backend: be} // forwards, until a profile window opens
	e := ag.New(pb)
	start := time.Now()
	model, err := nextdit.NewRandom(e, cfg, nextdit.Options{DType: kernels.BF16, FP8Base: o.FP8Base}, o.Seed)
	if err != nil {
		return res, fmt.Errorf("bench: model: %w", err)
	}
	defer model.Release()
	e.SeedRandom(o.Seed, 0)
	in := nextdit.Inputs{
		X:        e.Normal(kernels.BF16, []int{inferBatch, cfg.InChannels, latent, latent}).Keep(),
		T:        []float64{0.4, 0.4},
		CapFeats: e.Normal(kernels.BF16, []int{inferBatch, o.CaptionTokens, cfg.CapFeatDim}).Keep(),
		CapLens:  []int{o.CaptionTokens, o.CaptionTokens},
	}
	if cfg.ClipTextDim > 0 {
		in.ClipPooled = e.Normal(kernels.BF16, []int{inferBatch, cfg.ClipTextDim}).Keep()
	}
	defer func() {
		for _, t := range []*ag.Tensor{in.X, in.CapFeats, in.ClipPooled} {
			if t != nil {
				t.Release()
			}
		}
	}()
	if err := e.Err(); err != nil {
		return res, fmt.Errorf("bench: building the model: %w", err)
	}
	res.BuildSeconds = time.Since(start).Seconds()
	res.BaseBytes = be.MemStats().Allocated
	prevGrad, prevCast := e.SetGradEnabled(false), e.SetAutocast(kernels.BF16)
	defer func() { e.SetGradEnabled(prevGrad); e.SetAutocast(prevCast) }()
	eval := func() error {
		out, err := model.Forward(in)
		if err != nil {
			return err
		}
		out.Release()
		return nil
	}
	for i := range o.Warmup {
		if err := eval(); err != nil {
			return res, fmt.Errorf("bench: warm-up evaluation %d: %w", i+1, err)
		}
	}
	if err := e.Err(); err != nil {
		return res, fmt.Errorf("bench: warm-up: %w", err)
	}
	configs := o.CompareOff
	if len(configs) == 0 {
		configs = []string{""}
	} else {
		res.Compared = true
	}
	for _, paths := range configs {
		row := InferRow{Paths: paths}
		if res.Compared {
			sw, isSw := be.(kernels.Switchable)
			if !isSw {
				return res, fmt.Errorf("bench: --compare-off: the %s backend has no optional paths to switch", be.Name())
			}
			if err := sw.SetOff(paths); err != nil {
				return res, fmt.Errorf("bench: --compare-off: %w", err)
			}
			// A warm-up under the new setting (graphs capture on their
			// second run, the first records).
			for range 2 {
				if err := eval(); err != nil {
					return res, fmt.Errorf("bench: warm-up evaluation (%s): %w", pathsLabel(paths), err)
				}
			}
			if err := e.Err(); err != nil {
				return res, fmt.Errorf("bench: warm-up: %w", err)
			}
		}
		be.ResetPeak()
		var graphs kernels.GraphStats
		if g, ok := be.(kernels.Graphs); ok {
			graphs = g.GraphStats()
		}
		start = time.Now()
		for i := range o.Steps {
			if err := ctx.Err(); err != nil {
				return res, fmt.Errorf("bench: %w", err)
			}
			if err := eval(); err != nil {
				return res, fmt.Errorf("bench: evaluation %d: %w", i+1, err)
			}
		}
		if err := e.Err(); err != nil {
			return res, fmt.Errorf("bench: evaluations: %w", err)
		}
		row.Seconds = time.Since(start).Seconds()
		row.PerEval = row.Seconds / float64(o.Steps)
		row.PeakBytes = be.MemStats().Peak
		if g, ok := be.(kernels.Graphs); ok {
			row.Graphs = g.GraphStats().Sub(graphs)
		}
		fmt.Fprintf(o.Log, "bench: %d evaluations in %.3f s (%.4f s each)\n", o.Steps, row.Seconds, row.PerEval)
		res.Rows = append(res.Rows, row)
	}
	if o.Profile {
		// One evaluation counting its ops, one waiting after each (the
		// last row's paths).
		pb.begin(false)
		err := eval()
		counted := pb.end()
		if err == nil {
			err = e.Err()
		}
		if err != nil {
			return res, fmt.Errorf("bench: profile evaluation: %w", err)
		}
		pb.begin(true)
		start = time.Now()
		err = eval()
		timed := pb.end()
		if err == nil {
			err = pb.Sync()
		}
		if err == nil {
			err = pb.takeErr()
		}
		if err != nil {
			return res, fmt.Errorf("bench: profile evaluation: %w", err)
		}
		res.Profile = newProfile(counted, timed, time.Since(start).Seconds())
	}
	return res, e.EndStep()
}

// Table formats the result as Markdown.
func (r InferResult) Table() string {
	var sb strings.Builder
	gib := func(n int64) string { return fmt.Sprintf("%.2f", float64(n)/(1<<30)) }
	fmt.Fprintf(&sb, "backend: %s\n", r.Backend)
	if r.Switches != "" {
		fmt.Fprintf(&sb, "switches: %s\n", r.Switches)
	}
	weights := "bf16"
	if r.FP8Base {
		weights = "fp8 linear"
	}
	fmt.Fprintf(&sb, "model: %s (%d layers), %d parameters, %s weights, no LoRA, no gradients, bf16 autocast\n", r.Preset, r.Layers, r.Params, weights)
	fmt.Fprintf(&sb, "input: batch %d (guided: conditional + unconditional), %d×%d image (%d image tokens) + %d caption tokens; built in %.1f s\n\n",
		inferBatch, r.Resolution, r.Resolution, r.ImageTokens, r.CaptionTokens, r.BuildSeconds)
	sb.WriteString("| paths | evaluations | s total | s/eval | peak GiB |\n| --- | --- | --- | --- | --- |\n")
	label := func(row InferRow) string {
		if !r.Compared {
			return "as opened"
		}
		return pathsLabel(row.Paths)
	}
	for _, row := range r.Rows {
		fmt.Fprintf(&sb, "| %s | %d | %.4f | %.4f | %s |\n", label(row), r.Evals, row.Seconds, row.PerEval, gib(row.PeakBytes))
	}
	for _, row := range r.Rows {
		if row.Graphs != (kernels.GraphStats{}) {
			fmt.Fprintf(&sb, "\n%s: %s\n", label(row), row.Graphs)
		}
	}
	if p := r.Profile; p != nil {
		fmt.Fprintf(&sb, "\nprofile: %d backend ops per evaluation; host queues them in %.3f s (evaluation %.4f s); %s\n\n",
			p.Ops, p.QueueSeconds, r.Rows[len(r.Rows)-1].PerEval, p.clockText("evaluation"))
		p.writeKinds(&sb)
	}
	return sb.String()
}
