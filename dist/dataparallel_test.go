package dist

import (
	"fmt"
	"math"
	"testing"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// tinyLoRA is a stack of checkpointed LoRA layers on one engine: frozen
// weights, trainable A and B.
type tinyLoRA struct {
	e     *ag.Engine
	ws    []*ag.Tensor
	lora  []*ag.Tensor // a0, b0, a1, b1, …: registration order
	width int
}

func newTinyLoRA(layers, width, rank int) *tinyLoRA {
	m := &tinyLoRA{e: ag.New(cpu.New()), width: width}
	val := func(n int, seed, scale float64) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = scale * math.Sin(seed+1.7*float64(i))
		}
		return v
	}
	for l := range layers {
		m.ws = append(m.ws, m.e.Constant(fmt.Sprintf("w%d", l), kernels.F32, []int{width, width}, val(width*width, float64(l), 0.4)))
		m.lora = append(m.lora,
			m.e.Param(fmt.Sprintf("a%d", l), kernels.F32, []int{rank, width}, val(rank*width, 10+float64(l), 0.3)),
			m.e.Param(fmt.Sprintf("b%d", l), kernels.F32, []int{width, rank}, val(width*rank, 20+float64(l), 0.2)))
	}
	return m
}

// step back-propagates the loss of micro-batch mb into the LoRA gradients.
func (m *tinyLoRA) step(mb int, autocast kernels.DType) error {
	const rows = 5
	x := make([]float64, rows*m.width)
	y := make([]float64, rows*m.width)
	for i := range x {
		x[i] = math.Cos(float64(7*mb+1) * float64(i+1) * 0.37)
		y[i] = math.Sin(float64(3*mb+2) * float64(i+1) * 0.11)
	}
	prev := m.e.SetAutocast(autocast)
	defer m.e.SetAutocast(prev)
	h := m.e.FromFloat64(kernels.F32, []int{rows, m.width}, x)
	for l, w := range m.ws {
		a, b := m.lora[2*l], m.lora[2*l+1]
		h = ag.Checkpoint(func(in []*ag.Tensor) *ag.Tensor {
			return ag.SiLU(ag.LoRALinear(in[0], in[0], w, nil, a, b, 0.5))
		}, h)
	}
	loss := ag.MSE(h, m.e.FromFloat64(kernels.F32, []int{rows, m.width}, y))
	if err := m.e.Backward(loss); err != nil {
		return err
	}
	return m.e.EndStep()
}

func (m *tinyLoRA) grads(t *testing.T) [][]float64 {
	var out [][]float64
	for _, p := range m.lora {
		v, err := p.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// TestDataParallelEqualsAccumulation puts the pieces together on the CPU
// backend: N ranks, one micro-batch each, whose engines report each LoRA
// gradient ready during the backward (the layers are checkpointed) to a
// Reducer that sums its buckets through the in-process communicator, end
// with the same gradients, bit for bit, as one engine accumulating the N
// micro-batches in rank order — in fp32 and under bf16 autocast.
func TestDataParallelEqualsAccumulation(t *testing.T) {
	const layers, width, rank = 3, 8, 2
	for _, autocast := range []kernels.DType{0, kernels.BF16} {
		precision := "fp32"
		if autocast != 0 {
			precision = "bf16 autocast"
		}
		for _, world := range []int{2, 3} {
			ref := newTinyLoRA(layers, width, rank)
			for mb := range world {
				if err := ref.step(mb, autocast); err != nil {
					t.Fatal(err)
				}
			}
			want := ref.grads(t)

			models := make([]*tinyLoRA, world)
			bs := make([]kernels.Backend, world)
			for r := range world {
				models[r] = newTinyLoRA(layers, width, rank)
				bs[r] = models[r].e.Backend()
			}
			comms := NewInProcess(bs, 10*time.Second)
			sums := make([]int, world)    // buckets summed before Backward returned
			buckets := make([]int, world) // buckets planned
			noErrors(t, onRanks(comms, func(c Communicator) error {
				m := models[c.Rank()]
				index := map[*ag.Tensor]int{}
				grads := make([]kernels.Buffer, len(m.lora))
				for i, p := range m.lora {
					index[p] = i
					grads[i] = p.Grad().Buffer()
				}
				counting := &countingComm{Communicator: c, n: &sums[c.Rank()]}
				red, err := NewReducer(counting, grads, 100) // small buckets: several per backward
				if err != nil {
					return err
				}
				var readyErr error
				m.e.OnGradReady(func(leaf *ag.Tensor) {
					if err := red.Ready(index[leaf]); err != nil && readyErr == nil {
						readyErr = err
					}
				})
				if err := m.step(c.Rank(), autocast); err != nil {
					return err
				}
				buckets[c.Rank()] = len(red.Buckets())
				counting.n = new(int) // Finish's sums are not counted
				if readyErr != nil {
					return readyErr
				}
				return red.Finish()
			}))
			for r, m := range models {
				got := m.grads(t)
				for i := range got {
					for k := range got[i] {
						if math.Float32bits(float32(got[i][k])) != math.Float32bits(float32(want[i][k])) {
							t.Fatalf("%s, %d ranks: rank %d %s[%d] is %v, one engine accumulating has %v", precision, world, r, m.lora[i].Name, k, got[i][k], want[i][k])
						}
					}
				}
			}
			for r := range world {
				if sums[r] != buckets[r] {
					t.Fatalf("rank %d summed %d of its %d buckets during the backward", r, sums[r], buckets[r])
				}
			}
			t.Logf("%s, %d ranks: all %d buckets summed during the backward, gradients equal bit for bit", precision, world, buckets[0])
		}
	}
}

// countingComm counts the sums that reach the communicator.
type countingComm struct {
	Communicator
	n *int
}

func (c *countingComm) AllReduceSum(bufs ...kernels.Buffer) error {
	*c.n++
	return c.Communicator.AllReduceSum(bufs...)
}
