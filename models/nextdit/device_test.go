package nextdit

import (
	"encoding/binary"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	_ "github.com/newbie-train/newbie-train/kernels/cuda" // registers "cuda" for kernels.Open
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestGoldenParityCUDA is TestGoldenParity on the GPU backend: fp32 within
// 1e-5, bf16 autocast within the README's bf16 tolerances.
func TestGoldenParityCUDA(t *testing.T) {
	g := openGolden(t)
	kerneltest.OpenCUDA(t) // skip early where there is no GPU
	cases := []struct {
		name            string
		autocast        kernels.DType
		checkpoint      bool
		outTol, gradTol float64
	}{
		{"f32", 0, false, 1e-5, 1e-5},
		{"f32-checkpointed", 0, true, 1e-5, 1e-5},
		{"bf16-autocast", kernels.BF16, false, 2e-2, 5e-2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, in, y := runGoldenOn(t, kerneltest.OpenCUDA(t), g, kernels.F32, tc.autocast, map[bool]int{false: ckptNone, true: ckptAll}[tc.checkpoint])
			kerneltest.Check(t, "out.y", y, g.get(t, "out.y"), tc.outTol)
			kerneltest.Check(t, "grad.in.x", gradValues(t, in.X), g.get(t, "grad.in.x"), tc.gradTol)
			kerneltest.Check(t, "grad.in.cap_feats", gradValues(t, in.CapFeats), g.get(t, "grad.in.cap_feats"), tc.gradTol)
			kerneltest.Check(t, "grad.in.clip_text_pooled", gradValues(t, in.ClipPooled), g.get(t, "grad.in.clip_text_pooled"), tc.gradTol)
			worst, worstName := 0.0, ""
			for _, name := range g.ref.Names() {
				key, ok := strings.CutPrefix(name, "grad.")
				if !ok || strings.HasPrefix(key, "in.") {
					continue
				}
				got, want := gradValues(t, m.Weight(key)), g.get(t, name)
				kerneltest.Check(t, name, got, want, tc.gradTol)
				if e := kernels.RelErr(got, want); e > worst {
					worst, worstName = e, name
				}
			}
			t.Logf("%s: out rel err %.3g, grad x %.3g, worst parameter gradient %.3g (%s)", m.Engine().Backend().Name(),
				kernels.RelErr(y, g.get(t, "out.y")), kernels.RelErr(gradValues(t, in.X), g.get(t, "grad.in.x")), worst, worstName)
		})
	}
}

// writeRandomBF16 writes a weight file of architecture cfg with random bf16
// values in the upstream layout, streaming each tensor so the host never
// holds the whole model.
func writeRandomBF16(t *testing.T, path string, cfg Config) {
	t.Helper()
	var ts []safetensors.Tensor
	for i, p := range cfg.Params() {
		n := 1
		for _, s := range p.Shape {
			n *= s
		}
		bound := 0.02 // biases
		switch {
		case len(p.Shape) == 2:
			bound = math.Sqrt(3 / float64(p.Shape[1])) // unit-variance outputs
		case !strings.HasSuffix(p.Name, ".bias"):
			bound = -1 // norm weights: 1
		}
		seed := uint64(i)
		ts = append(ts, safetensors.Tensor{Name: p.Name, DType: safetensors.BF16, Shape: p.Shape,
			Source: func(w io.Writer) error {
				r := rand.New(rand.NewPCG(seed, 17))
				buf := make([]byte, 0, 1<<20)
				for k := 0; k < n; k++ {
					v := float32(1)
					if bound > 0 {
						v = float32((2*r.Float64() - 1) * bound)
					}
					buf = binary.LittleEndian.AppendUint16(buf, kernels.BF16FromF32(v))
					if len(buf) == cap(buf) || k == n-1 {
						if _, err := w.Write(buf); err != nil {
							return err
						}
						buf = buf[:0]
					}
				}
				return nil
			}})
	}
	if err := safetensors.Write(path, ts, map[string]string{"config": cfg.JSON()}); err != nil {
		t.Fatal(err)
	}
}

// TestFullSizeStepCUDA writes the full newbie-exp0.1 model with random
// weights to a bf16 safetensors file, loads it back onto the GPU (base
// weights frozen in bf16, the final layer's modulation trainable in fp32,
// the input gradient asked for), and runs forward + backward at 1024×1024 (a 128×128 latent, 4096 image
// tokens) with a 256-token caption under bf16 autocast with per-block
// checkpointing, reporting time and peak device memory. It needs
// NEWBIE_FULLSIZE=1 (it writes a 7 GB file).
func TestFullSizeStepCUDA(t *testing.T) {
	if os.Getenv("NEWBIE_FULLSIZE") == "" {
		t.Skip("set NEWBIE_FULLSIZE=1 to run the full-size step (writes a 7 GB file)")
	}
	be := kerneltest.OpenCUDA(t)
	cfg, _ := Preset("newbie-exp0.1")
	dir := os.Getenv("NEWBIE_FULLSIZE_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "newbie-random.bf16.safetensors")
	t0 := time.Now()
	writeRandomBF16(t, path, cfg)
	st, _ := os.Stat(path)
	t.Logf("wrote %s: %.2f GB in %v", path, float64(st.Size())/1e9, time.Since(t0).Round(time.Millisecond))

	e := ag.New(be)
	t0 = time.Now()
	m, err := Load(e, path, Options{DType: kernels.BF16, Checkpoint: os.Getenv("NEWBIE_NO_CHECKPOINT") == ""})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d parameters in %v; device memory %.2f GiB", cfg.NumParams(), time.Since(t0).Round(time.Millisecond),
		float64(be.MemStats().Allocated)/(1<<30))
	// Train the final layer's modulation so parameter gradients flow too.
	if _, err := m.SetTrainable(func(n string) bool { return strings.HasPrefix(n, "final_layer.adaLN_modulation") }, kernels.F32); err != nil {
		t.Fatal(err)
	}
	const capLen = 256
	r := rand.New(rand.NewPCG(3, 4))
	randn := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = r.NormFloat64()
		}
		return v
	}
	for step := range 3 {
		be.ResetPeak()
		t0 = time.Now()
		x := e.FromFloat64(kernels.F32, []int{1, 16, 128, 128}, randn(16*128*128)).Input()
		cf := e.FromFloat64(kernels.F32, []int{1, capLen, cfg.CapFeatDim}, randn(capLen*cfg.CapFeatDim))
		clip := e.FromFloat64(kernels.F32, []int{1, cfg.ClipTextDim}, randn(cfg.ClipTextDim))
		e.SetAutocast(kernels.BF16)
		y, err := m.Forward(Inputs{X: x, T: []float64{0.6}, CapFeats: cf, CapLens: []int{capLen}, ClipPooled: clip})
		if err != nil {
			t.Fatal(err)
		}
		loss := ag.MeanAll(ag.Square(y))
		e.SetAutocast(0)
		if err := e.Backward(loss); err != nil {
			t.Fatal(err)
		}
		lv, err := loss.Item()
		if err != nil {
			t.Fatal(err)
		}
		gx, err := x.Grad().Values()
		if err != nil {
			t.Fatal(err)
		}
		var gn float64
		for _, v := range gx {
			gn += v * v
		}
		el := time.Since(t0)
		if err := e.EndStep(); err != nil {
			t.Fatal(err)
		}
		t.Logf("step %d: forward+backward %v, loss %.4g, |grad x| %.4g, peak device memory %.2f GiB",
			step, el.Round(time.Millisecond), lv, math.Sqrt(gn), float64(be.MemStats().Peak)/(1<<30))
		if math.IsNaN(lv) || math.IsNaN(gn) || gn == 0 {
			t.Fatalf("step %d: loss %g, grad norm² %g", step, lv, gn)
		}
	}
}
