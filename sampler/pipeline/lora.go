package pipeline

import (
	"fmt"
	"math"
	"sort"

	"github.com/newbie-train/newbie-train/checkpoints"
)

// WeightedLoRA is one LoRA and the strength it is applied with (1 as
// trained; the update becomes strength·(alpha/rank)·B·A).
type WeightedLoRA struct {
	LoRA     *checkpoints.LoRA
	Strength float64
}

// StackLoRAs folds several LoRAs with their strengths into one adapter
// whose update is exactly the sum of theirs, so that a model with a single
// adapter hook (lora.Import) applies them all: per layer, the stack's A is
// the layers' A matrices one above the other and its B their B matrices
// side by side, each scaled by strength·alpha/rank, with alpha equal to the
// rank (scale 1). Layers a LoRA does not adapt get zero rows there, so every
// layer has the same rank (lora.Import wants one). A single LoRA with one
// rank and alpha keeps them and has only its B scaled by the strength, so
// at strength 1 it is applied bit for bit as the trainer ran it.
func StackLoRAs(ls []WeightedLoRA) (*checkpoints.LoRA, error) {
	if len(ls) == 0 {
		return nil, fmt.Errorf("pipeline: no LoRA to stack")
	}
	for i, w := range ls {
		if err := w.LoRA.Validate(); err != nil {
			return nil, fmt.Errorf("pipeline: LoRA %d: %w", i+1, err)
		}
		if math.IsNaN(w.Strength) || math.IsInf(w.Strength, 0) {
			return nil, fmt.Errorf("pipeline: LoRA %d: strength %g is not a finite number", i+1, w.Strength)
		}
	}
	if len(ls) == 1 && uniform(ls[0].LoRA) {
		return scaled(ls[0].LoRA, ls[0].Strength), nil
	}
	// Each LoRA's widest layer rank is its share of the stacked rank.
	ranks := make([]int, len(ls))
	total := 0
	shapes := map[string][2]int{}
	for i, w := range ls {
		for name, ly := range w.LoRA.Layers {
			ranks[i] = max(ranks[i], ly.Rank)
			if s, ok := shapes[name]; ok && s != [2]int{ly.In, ly.Out} {
				return nil, fmt.Errorf("pipeline: LoRA %d maps %s as %d → %d, an earlier one as %d → %d", i+1, name, ly.In, ly.Out, s[0], s[1])
			}
			shapes[name] = [2]int{ly.In, ly.Out}
		}
		total += ranks[i]
	}
	names := make([]string, 0, len(shapes))
	for n := range shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	out := &checkpoints.LoRA{Rank: total, Alpha: float64(total), Targets: names, Layers: map[string]checkpoints.LoRALayer{}, Meta: map[string]string{}}
	for _, name := range names {
		in, o := shapes[name][0], shapes[name][1]
		st := checkpoints.LoRALayer{In: in, Out: o, Rank: total, Alpha: float64(total), A: make([]float32, total*in), B: make([]float32, o*total)}
		off := 0
		for i, w := range ls {
			if ly, ok := w.LoRA.Layers[name]; ok {
				copy(st.A[off*in:], ly.A)
				s := w.Strength * ly.Alpha / float64(ly.Rank)
				for r := range o {
					for k := range ly.Rank {
						st.B[r*total+off+k] = float32(s * float64(ly.B[r*ly.Rank+k]))
					}
				}
			}
			off += ranks[i]
		}
		out.Layers[name] = st
	}
	return out, nil
}

// uniform reports whether every layer has the LoRA's rank and alpha.
func uniform(l *checkpoints.LoRA) bool {
	for _, ly := range l.Layers {
		if ly.Rank != l.Rank || ly.Alpha != l.Alpha {
			return false
		}
	}
	return true
}

// scaled is l with every B multiplied by strength (a copy; l unchanged),
// targeting exactly the layers it has.
func scaled(l *checkpoints.LoRA, strength float64) *checkpoints.LoRA {
	out := *l
	out.Targets = l.LayerNames() // exactly its layers, whatever its targets select
	out.Layers = make(map[string]checkpoints.LoRALayer, len(l.Layers))
	for name, ly := range l.Layers {
		if strength != 1 {
			b := make([]float32, len(ly.B))
			for i, v := range ly.B {
				b[i] = float32(strength * float64(v))
			}
			ly.B = b
		}
		out.Layers[name] = ly
	}
	return &out
}
