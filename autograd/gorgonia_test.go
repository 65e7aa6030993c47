package autograd_test

import (
	"math"
	"testing"

	"gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// oracleCase is one composite function computed twice: by gorgonia (an
// independent float64 autodiff library) and by this engine.
type oracleCase struct {
	name   string
	shapes [][]int
	// gorgonia builds the cost; use(i) returns a new node holding input i.
	// Every use is its own node and the gradients of an input's nodes are
	// summed. (gorgonia v0.9.18's tape machine computes wrong values for an
	// elementwise product of two computed nodes, for its Broadcast* ops and
	// for constants of equal values but different shapes, so composites such
	// as RMSNorm or SwiGLU built from primitives cannot use it as an oracle;
	// those are checked against finite differences in TestGradients.)
	gorgonia func(g *gorgonia.ExprGraph, use func(i int) *gorgonia.Node) (*gorgonia.Node, error)
	// ours builds the same cost.
	ours func(in []*autograd.Tensor) *autograd.Tensor
}

// TestAgainstGorgonia checks the loss and the gradients of every input of
// three composite functions (an MLP with softmax cross-entropy, a deep
// tanh/sigmoid perceptron, an attention head) against gorgonia, to 1e-9 in float64.
func TestAgainstGorgonia(t *testing.T) {
	const eps = 1e-6
	cases := []oracleCase{
		{
			// A two-layer MLP with a softmax cross-entropy against one-hot
			// targets.
			name:   "MLPSoftmaxCrossEntropy",
			shapes: [][]int{{6, 5}, {5, 7}, {7, 4}, {6, 4}},
			gorgonia: func(g *gorgonia.ExprGraph, use func(i int) *gorgonia.Node) (*gorgonia.Node, error) {
				h1, err := gorgonia.Mul(use(0), use(1))
				if err != nil {
					return nil, err
				}
				h2, err := gorgonia.Tanh(h1)
				if err != nil {
					return nil, err
				}
				logits, err := gorgonia.Mul(h2, use(2))
				if err != nil {
					return nil, err
				}
				sm, err := gorgonia.SoftMax(logits)
				if err != nil {
					return nil, err
				}
				logp, err := gorgonia.Log(sm)
				if err != nil {
					return nil, err
				}
				picked, err := gorgonia.HadamardProd(logp, use(3))
				if err != nil {
					return nil, err
				}
				s, err := gorgonia.Sum(picked)
				if err != nil {
					return nil, err
				}
				return gorgonia.Div(s, gorgonia.NewConstant(-6.0))
			},
			ours: func(in []*autograd.Tensor) *autograd.Tensor {
				h := autograd.Tanh(autograd.MatMul(in[0], in[1], false, false))
				logits := autograd.MatMul(h, in[2], false, false)
				logp := autograd.Log(autograd.Softmax(logits))
				return autograd.Scale(autograd.SumAll(autograd.Mul(logp, in[3])), -1.0/6)
			},
		},
		{
			// A three-layer tanh/sigmoid perceptron, weighted-summed.
			name:   "DeepPerceptron",
			shapes: [][]int{{5, 6}, {6, 9}, {9, 7}, {7, 4}, {5, 4}},
			gorgonia: func(g *gorgonia.ExprGraph, use func(i int) *gorgonia.Node) (*gorgonia.Node, error) {
				a, err := gorgonia.Mul(use(0), use(1))
				if err != nil {
					return nil, err
				}
				if a, err = gorgonia.Tanh(a); err != nil {
					return nil, err
				}
				if a, err = gorgonia.Mul(a, use(2)); err != nil {
					return nil, err
				}
				if a, err = gorgonia.Sigmoid(a); err != nil {
					return nil, err
				}
				if a, err = gorgonia.Mul(a, use(3)); err != nil {
					return nil, err
				}
				if a, err = gorgonia.HadamardProd(a, use(4)); err != nil {
					return nil, err
				}
				return gorgonia.Sum(a)
			},
			ours: func(in []*autograd.Tensor) *autograd.Tensor {
				a := autograd.Tanh(autograd.MatMul(in[0], in[1], false, false))
				a = autograd.Sigmoid(autograd.MatMul(a, in[2], false, false))
				a = autograd.MatMul(a, in[3], false, false)
				return autograd.SumAll(autograd.Mul(a, in[4]))
			},
		},
		{
			// One attention head: softmax(q·kᵀ/√d)·v, weighted-summed.
			name:   "AttentionHead",
			shapes: [][]int{{5, 6}, {7, 6}, {7, 4}, {5, 4}},
			gorgonia: func(g *gorgonia.ExprGraph, use func(i int) *gorgonia.Node) (*gorgonia.Node, error) {
				kt, err := gorgonia.Transpose(use(1))
				if err != nil {
					return nil, err
				}
				s, err := gorgonia.Mul(use(0), kt)
				if err != nil {
					return nil, err
				}
				s, err = gorgonia.Div(s, gorgonia.NewConstant(math.Sqrt(6)))
				if err != nil {
					return nil, err
				}
				p, err := gorgonia.SoftMax(s)
				if err != nil {
					return nil, err
				}
				o, err := gorgonia.Mul(p, use(2))
				if err != nil {
					return nil, err
				}
				ow, err := gorgonia.HadamardProd(o, use(3))
				if err != nil {
					return nil, err
				}
				return gorgonia.Sum(ow)
			},
			ours: func(in []*autograd.Tensor) *autograd.Tensor {
				s := autograd.Scale(autograd.MatMul(in[0], in[1], false, true), 1/math.Sqrt(6))
				o := autograd.MatMul(autograd.Softmax(s), in[2], false, false)
				return autograd.SumAll(autograd.Mul(o, in[3]))
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := kerneltest.Rng(t)
			vals := make([][]float64, len(c.shapes))
			for i, s := range c.shapes {
				vals[i] = kerneltest.Randn(r, s[0]*s[1], 1)
			}
			if c.name == "MLPSoftmaxCrossEntropy" { // the last input is one-hot targets
				for i := range vals[3] {
					vals[3][i] = 0
				}
				for row := 0; row < 6; row++ {
					vals[3][row*4+r.IntN(4)] = 1
				}
			}

			g := gorgonia.NewGraph()
			var nodes []*gorgonia.Node
			var owner []int
			use := func(i int) *gorgonia.Node {
				s := c.shapes[i]
				backing := append([]float64(nil), vals[i]...)
				n := gorgonia.NewMatrix(g, tensor.Float64, gorgonia.WithShape(s...),
					gorgonia.WithValue(tensor.New(tensor.WithShape(s...), tensor.WithBacking(backing))))
				nodes = append(nodes, n)
				owner = append(owner, i)
				return n
			}
			cost, err := c.gorgonia(g, use)
			if err != nil {
				t.Fatalf("gorgonia graph: %v", err)
			}
			if _, err := gorgonia.Grad(cost, nodes...); err != nil {
				t.Fatalf("gorgonia grad: %v", err)
			}
			vm := gorgonia.NewTapeMachine(g)
			defer vm.Close()
			if err := vm.RunAll(); err != nil {
				t.Fatalf("gorgonia run: %v", err)
			}
			wantLoss := cost.Value().Data().(float64)

			e := autograd.New(cpu.New())
			ins := make([]*autograd.Tensor, len(vals))
			for i, s := range c.shapes {
				ins[i] = e.FromFloat64(kernels.F64, s, vals[i]).Input()
			}
			loss := c.ours(ins)
			if err := e.Backward(loss); err != nil {
				t.Fatal(err)
			}
			gotLoss, err := loss.Item()
			if err != nil {
				t.Fatal(err)
			}
			if d := math.Abs(gotLoss-wantLoss) / math.Abs(wantLoss); d > 1e-9 {
				t.Errorf("loss %v, gorgonia %v (relative %.3g)", gotLoss, wantLoss, d)
			}
			want := make([][]float64, len(vals))
			for j, n := range nodes {
				gv, err := n.Grad()
				if err != nil {
					t.Fatalf("gorgonia grad of input %d: %v", owner[j], err)
				}
				i := owner[j]
				if want[i] == nil {
					want[i] = make([]float64, len(vals[i]))
				}
				for k, v := range gv.Data().([]float64) {
					want[i][k] += v
				}
			}
			for i := range vals {
				got, err := ins[i].Grad().Values()
				if err != nil {
					t.Fatal(err)
				}
				if d := kernels.RelErr(got, want[i]); !(d < 1e-9) {
					t.Errorf("input %d: gradient differs from gorgonia by %.3g", i, d)
				}
			}
		})
	}
}
