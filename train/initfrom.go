package train

import (
	"fmt"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// checkInitFrom reads lora.init_from (any format checkpoints.ReadLoRA
// reads) and checks, before anything is encoded, that it fits the
// adapters this config attaches to a model of architecture mc: the same
// layers (those lora.targets select), the same shapes, lora.rank. Every
// misfit is listed; they are a ConfigError.
func checkInitFrom(cfg *configs.Config, mc nextdit.Config, baseHash string, logf func(string, ...any)) (*checkpoints.LoRA, error) {
	path := cfg.LoRA.InitFrom
	l, format, err := checkpoints.ReadLoRA(path)
	if err != nil {
		return nil, configErr(fmt.Errorf("lora.init_from: %w", err))
	}
	want := map[string]nextdit.LinearInfo{}
	for _, li := range mc.Linears() {
		for _, t := range cfg.LoRA.Targets {
			if lora.Matches(li.Name, t) {
				want[li.Name] = li
			}
		}
	}
	var problems []string
	for _, name := range l.LayerNames() {
		ly := l.Layers[name]
		li, ok := want[name]
		switch {
		case !ok:
			problems = append(problems, "has "+name+", which lora.targets do not adapt")
		case ly.In != li.In || ly.Out != li.Out:
			problems = append(problems, fmt.Sprintf("%s is %d → %d, the model's layer %d → %d", name, ly.In, ly.Out, li.In, li.Out))
		case ly.Rank != cfg.LoRA.Rank:
			problems = append(problems, fmt.Sprintf("%s has rank %d, lora.rank is %d", name, ly.Rank, cfg.LoRA.Rank))
		}
	}
	for name := range want {
		if _, ok := l.Layers[name]; !ok {
			problems = append(problems, "lacks "+name+", which lora.targets adapt")
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		if len(problems) > 8 {
			problems = append(problems[:8], fmt.Sprintf("and %d more", len(problems)-8))
		}
		return nil, configErr(fmt.Errorf("lora.init_from %s (%s, rank %d, %d layers) does not fit this run's adapters (rank %d, targets %v):\n  %s",
			path, format, l.Rank, len(l.Layers), cfg.LoRA.Rank, cfg.LoRA.Targets, strings.Join(problems, "\n  ")))
	}
	if h := l.Meta[checkpoints.MetaBaseModelHash]; h != "" && h != baseHash {
		logf("warning: lora.init_from %s was trained on base model %s; this run's is %s", path, short(h), short(baseHash))
	}
	logf("lora: starting from %s (%s LoRA, %d layers)", path, format, len(l.Layers))
	return l, nil
}

// applyInitFrom loads the checked init_from LoRA into the adapters. A
// layer whose alpha differs from lora.alpha has its B scaled by the ratio
// of the two, so the update (alpha/rank)·B·A the training starts from is
// the file's.
func (r *run) applyInitFrom() error {
	rescaled := 0
	for _, a := range r.set.Adapters() {
		ly := r.initFrom.Layers[a.Name]
		b := ly.B
		if ly.Alpha != r.cfg.LoRA.Alpha {
			k := float32(ly.Alpha / r.cfg.LoRA.Alpha)
			b = make([]float32, len(ly.B))
			for i, v := range ly.B {
				b[i] = v * k
			}
			rescaled++
		}
		upload(r.b, a.A, ly.A)
		upload(r.b, a.B, b)
	}
	if err := r.e.Err(); err != nil {
		return fmt.Errorf("lora.init_from: uploading: %w", err)
	}
	if rescaled > 0 {
		r.logf("lora.init_from: %d layers had another alpha than lora.alpha %g; their B is rescaled so the starting update is the file's", rescaled, r.cfg.LoRA.Alpha)
	}
	return nil
}
