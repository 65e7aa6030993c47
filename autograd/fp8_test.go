package autograd_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestQuantizeFP8 quantises a weight whose rows span very different
// magnitudes (and one all-zero row) and checks the codes against the
// definition: per row, scale = amax/448 and q = E4M3(w/scale), with each
// row's largest magnitude at ±448 and the dequantised values within E4M3's
// half-ulp of the weight.
func TestQuantizeFP8(t *testing.T) {
	const rows, cols = 6, 37
	e := autograd.New(cpu.New())
	r := rand.New(rand.NewPCG(3, 3))
	v := make([]float64, rows*cols)
	for i := range v {
		row := i / cols
		if row == 4 {
			continue // all zeros
		}
		v[i] = r.NormFloat64() * math.Pow(10, float64(row-3))
	}
	w := e.Constant("w", kernels.F32, []int{rows, cols}, v)
	q, err := autograd.QuantizeFP8(w)
	if err != nil {
		t.Fatal(err)
	}
	if q.DType() != kernels.F8E4M3 || q.FP8Scale() == nil || q.RequiresGrad() {
		t.Fatalf("quantised weight %v, scale %v, trainable %v", q, q.FP8Scale(), q.RequiresGrad())
	}
	scale, err := q.FP8Scale().Values()
	if err != nil {
		t.Fatal(err)
	}
	deq, err := q.Values()
	if err != nil {
		t.Fatal(err)
	}
	for row := range rows {
		amax := 0.0
		for j := range cols {
			amax = math.Max(amax, math.Abs(float64(float32(v[row*cols+j]))))
		}
		wantScale := float64(float32(float32(amax) * float32(1.0/448)))
		if row == 4 {
			wantScale = 1.0 / (1 << 60)
		}
		if scale[row] != wantScale {
			t.Errorf("row %d: scale %g, want %g", row, scale[row], wantScale)
		}
		for j := range cols {
			i := row*cols + j
			code := kernels.F8E4M3FromF32(float32(v[i]) / float32(scale[row]))
			want := float64(kernels.F32FromF8E4M3(code) * float32(scale[row]))
			if deq[i] != want {
				t.Fatalf("w[%d][%d] = %g dequantises to %g, want %g", row, j, v[i], deq[i], want)
			}
			if err := math.Abs(deq[i] - v[i]); err > math.Abs(v[i])/16+4*scale[row]/512 {
				t.Errorf("w[%d][%d] = %g dequantises to %g: off by more than half an E4M3 step", row, j, v[i], deq[i])
			}
		}
	}
	if _, err := autograd.QuantizeFP8(e.Param("p", kernels.F32, []int{2, 2}, []float64{1, 2, 3, 4})); err == nil {
		t.Error("a trainable weight was quantised")
	}
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
}

// TestFP8WeightMatchesDequantised: Linear, LoRALinear and LowRankLinear
// with an fp8 weight give the very output and gradients they give with the
// dequantised weight as an ordinary bf16 or f32 constant, under bf16
// autocast and without; and the tape holds the codes, not a wide copy.
func TestFP8WeightMatchesDequantised(t *testing.T) {
	for _, setup := range []struct {
		name           string
		model, cast    kernels.DType
		form           string
		bias, trainedX bool
	}{
		{"linear/f32", kernels.F32, 0, "linear", true, true},
		{"linear/bf16 autocast", kernels.BF16, kernels.BF16, "linear", true, true},
		{"lora/f32", kernels.F32, 0, "lora", false, true},
		{"lora/bf16 autocast", kernels.BF16, kernels.BF16, "lora", true, true},
		{"lowrank/bf16 autocast", kernels.BF16, kernels.BF16, "lowrank", false, true},
		{"lora/frozen input", kernels.BF16, kernels.BF16, "lora", false, false},
	} {
		t.Run(setup.name, func(t *testing.T) {
			run := func(quant bool) (out []float64, grads [][]float64, held int64) {
				be := cpu.New()
				e := autograd.New(be)
				r := rand.New(rand.NewPCG(8, 8))
				const in, outF, rank = 24, 20, 4
				wv := kerneltest.Randn(r, outF*in, 0.2)
				w := e.Constant("w", kernels.F32, []int{outF, in}, wv)
				q, err := autograd.QuantizeFP8(w)
				if err != nil {
					t.Fatal(err)
				}
				w.Release()
				if !quant {
					v, err := q.Values()
					if err != nil {
						t.Fatal(err)
					}
					q.Release()
					q = e.Constant("w", setup.model, []int{outF, in}, v)
				}
				x := e.FromFloat64(setup.model, []int{3, 5, in}, kerneltest.Randn(r, 15*in, 1))
				if setup.trainedX {
					x.Input()
				}
				var bias *autograd.Tensor
				if setup.bias {
					bias = e.Param("bias", kernels.F32, []int{outF}, kerneltest.Randn(r, outF, 0.1))
				}
				a := e.Param("a", kernels.F32, []int{rank, in}, kerneltest.Randn(r, rank*in, 0.3))
				b := e.Param("b", kernels.F32, []int{outF, rank}, kerneltest.Randn(r, outF*rank, 0.3))
				g := e.FromFloat64(kernels.F32, []int{3, 5, outF}, kerneltest.Randn(r, 15*outF, 1))
				e.SetAutocast(setup.cast)
				before := be.MemStats().Allocated
				var y *autograd.Tensor
				switch setup.form {
				case "linear":
					y = autograd.Linear(x, q, bias)
				case "lora":
					y = autograd.LoRALinear(x, x, q, bias, a, b, 0.75)
				default:
					y = autograd.LowRankLinear(x, q, bias, autograd.Linear(x, a, nil), b, 0.75)
				}
				held = be.MemStats().Allocated - before
				if err := e.Backward(autograd.SumAll(autograd.Mul(y, g))); err != nil {
					t.Fatal(err)
				}
				if out, err = y.Values(); err != nil {
					t.Fatal(err)
				}
				for _, p := range []*autograd.Tensor{x, bias, a, b} {
					if p == nil || p.Grad() == nil {
						grads = append(grads, nil)
						continue
					}
					v, err := p.Grad().Values()
					if err != nil {
						t.Fatal(err)
					}
					grads = append(grads, v)
				}
				if err := e.EndStep(); err != nil {
					t.Fatal(err)
				}
				return out, grads, held
			}
			out8, grads8, held8 := run(true)
			out, grads, held := run(false)
			sameValues(t, "output", out8, out)
			for i := range grads {
				if (grads[i] == nil) != (grads8[i] == nil) {
					t.Fatalf("gradient %d present %v with fp8, %v without", i, grads8[i] != nil, grads[i] != nil)
				}
				if grads[i] != nil {
					sameValues(t, "gradient", grads8[i], grads[i])
				}
			}
			// Held after the forward: output, saved inputs and the like —
			// with fp8 no more than with the wide constant, whose bytes the
			// wide run keeps only as the (persistent) weight itself.
			if held8 > held {
				t.Errorf("the forward with an fp8 weight holds %d bytes more than with a %v weight", held8-held, setup.model)
			}
		})
	}
}

// TestFP8WeightRefusedByOtherOps: an fp8 weight is read only by the linear
// ops; anything else that would cast it (and drop its scales) fails.
func TestFP8WeightRefusedByOtherOps(t *testing.T) {
	e := autograd.New(cpu.New())
	w := e.Constant("w", kernels.F32, []int{4, 3}, []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	q, err := autograd.QuantizeFP8(w)
	if err != nil {
		t.Fatal(err)
	}
	x := e.FromFloat64(kernels.F32, []int{2, 4}, make([]float64, 8))
	autograd.MatMul(x, q, false, false)
	if err := e.EndStep(); err == nil {
		t.Error("MatMul read an fp8 weight")
	}
}
