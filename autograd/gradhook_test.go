package autograd

import (
	"fmt"
	"slices"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// readyLog records the leaves OnGradReady reports and their gradients at
// that moment.
type readyLog struct {
	names []string
	grads map[string][]float64
}

func watchReady(t *testing.T, e *Engine) *readyLog {
	l := &readyLog{grads: map[string][]float64{}}
	e.OnGradReady(func(leaf *Tensor) {
		v, err := leaf.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		l.names = append(l.names, leaf.Name)
		l.grads[leaf.Name] = v
	})
	return l
}

// gradHookModel is the sum of blocks applied in turn, block k scaling by
// w[k] (with shared, block 0 also by the last block's parameter) and a
// SiLU; with ckpt each block is checkpointed, reading its parameters
// without taking them as inputs.
func gradHookModel(e *Engine, ws []*Tensor, ckpt, shared bool) *Tensor {
	x := e.FromFloat64(kernels.F32, []int{2, 3}, []float64{0.5, -1, 2, 1.5, 0.25, -0.75})
	for k, w := range ws {
		block := func(in []*Tensor) *Tensor {
			h := SiLU(Mul(in[0], w))
			if shared && k == 0 {
				h = Mul(h, ws[len(ws)-1])
			}
			return h
		}
		if ckpt {
			x = Checkpoint(block, x)
		} else {
			x = block([]*Tensor{x})
		}
	}
	return Sum(Sum(x, 1, false), 0, false)
}

// TestOnGradReady: every reached leaf is reported once, last block first,
// with its final gradient already in place — with and without
// checkpointing, with a parameter two blocks share, and with one the pass
// never reaches.
func TestOnGradReady(t *testing.T) {
	for _, tt := range []struct {
		ckpt, shared bool
		order        string
	}{
		{false, false, "[w3 w2 w1 w0]"},
		{true, false, "[w3 w2 w1 w0]"},
		// w3 is also read by block 0, after w0: it is final once that
		// product's backward has run, before w0's.
		{false, true, "[w2 w1 w3 w0]"},
		// Block 0's checkpoint reads w0 then w3: both are final once its
		// recompute has run, reported in the order read.
		{true, true, "[w2 w1 w0 w3]"},
	} {
		t.Run(fmt.Sprintf("checkpoint=%v shared=%v", tt.ckpt, tt.shared), func(t *testing.T) {
			e := New(cpu.New())
			var ws []*Tensor
			for k := range 4 {
				ws = append(ws, e.Param(fmt.Sprintf("w%d", k), kernels.F32, []int{1, 3}, []float64{0.9 + 0.1*float64(k), -0.5, 1.25}))
			}
			e.Param("unused", kernels.F32, []int{3}, []float64{1, 2, 3}) // never reached, never reported
			log := watchReady(t, e)
			for step := range 2 { // a second step: the hook holds across steps
				log.names = nil
				loss := gradHookModel(e, ws, tt.ckpt, tt.shared)
				if err := e.Backward(loss); err != nil {
					t.Fatal(err)
				}
				if got := fmt.Sprint(log.names); got != tt.order {
					t.Fatalf("step %d: reported %s, want %s", step, got, tt.order)
				}
				for _, w := range ws {
					final, err := w.Grad().Values()
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(log.grads[w.Name], final) {
						t.Fatalf("step %d: %s was reported with gradient %v, it ends as %v", step, w.Name, log.grads[w.Name], final)
					}
				}
				if err := e.EndStep(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestOnGradReadyMatchesPlainRun: the hook changes no gradient, and
// removing it stops the reports.
func TestOnGradReadyMatchesPlainRun(t *testing.T) {
	grads := func(hook, ckpt bool) [][]float64 {
		e := New(cpu.New())
		var ws []*Tensor
		for k := range 3 {
			ws = append(ws, e.Param(fmt.Sprintf("w%d", k), kernels.F32, []int{1, 3}, []float64{0.7, float64(k) - 1, 1.5}))
		}
		n := 0
		if hook {
			e.OnGradReady(func(*Tensor) { n++ })
		}
		if err := e.Backward(gradHookModel(e, ws, ckpt, true)); err != nil {
			t.Fatal(err)
		}
		if hook && n != 3 {
			t.Fatalf("%d reports, want 3", n)
		}
		e.EndStep()
		e.OnGradReady(nil)
		if err := e.Backward(gradHookModel(e, ws, ckpt, true)); err != nil {
			t.Fatal(err)
		}
		if hook && n != 3 {
			t.Fatalf("reports after the hook was removed: %d", n)
		}
		var out [][]float64
		for _, w := range ws {
			v, _ := w.Grad().Values()
			out = append(out, v)
		}
		return out
	}
	for _, ckpt := range []bool{false, true} {
		plain, hooked := grads(false, ckpt), grads(true, ckpt)
		if fmt.Sprint(plain) != fmt.Sprint(hooked) {
			t.Fatalf("checkpoint=%v: gradients %v with the hook, %v without", ckpt, hooked, plain)
		}
	}
}
