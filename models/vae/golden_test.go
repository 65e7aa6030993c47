package vae

import (
	"slices"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// goldenRun is the opened reference files of the tiny VAE.
type goldenRun struct {
	weights string
	ref     *golden.File
}

func openGolden(t *testing.T) goldenRun {
	t.Helper()
	return goldenRun{
		weights: goldentest.Path(t, "vae", "vae_tiny.weights.safetensors"),
		ref:     goldentest.Open(t, "vae", "vae_tiny.golden.safetensors"),
	}
}

// get reads a reference tensor as float64 with its shape.
func (g goldenRun) get(t *testing.T, name string) ([]float64, []int) {
	t.Helper()
	v := goldentest.Tensor(t, g.ref, name)
	return v.Values, v.Shape
}

func newEngine() *ag.Engine { return ag.New(cpu.New()) }

// values reads a tensor, failing the test on an engine error.
func values(t *testing.T, x *ag.Tensor) []float64 {
	t.Helper()
	if x == nil {
		t.Fatal("nil tensor")
	}
	v, err := x.Values()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// goldenCase is one precision of the golden comparison.
type goldenCase struct {
	name       string
	store      kernels.DType
	autocast   kernels.DType
	checkpoint bool
	// chunk > 0 runs the mid-block attention through the explicit
	// (wide-head) path with that many query rows per chunk.
	chunk int
	// input is the image's dtype (0: the storage dtype, F32 for bf16).
	input kernels.DType
	tol   float64
}

// TestGolden compares the four golden outputs in each precision: float64
// and float32 storage run in their own dtype; bf16 runs float32 weights
// under bf16 autocast (and bf16 storage under autocast, as the trainer
// would load a frozen VAE); the explicit-attention cases run the path that
// FLUX's 512-wide head takes. (Checkpointing changes nothing without a
// tape; TestInputGradients covers it.) Encoding twice (Encode for mean/logvar, Latent
// for the latent) also checks that Encode leaves nothing behind that
// changes a second pass.
func TestGolden(t *testing.T) {
	g := openGolden(t)
	for _, c := range []goldenCase{
		{name: "f64", store: kernels.F64, tol: 1e-6},
		{name: "f32", store: kernels.F32, tol: 1e-5},
		{name: "bf16-autocast", store: kernels.F32, autocast: kernels.BF16, tol: 5e-2},
		{name: "bf16-storage-autocast", store: kernels.BF16, autocast: kernels.BF16, tol: 5e-2},
		{name: "bf16-storage", store: kernels.BF16, input: kernels.BF16, tol: 5e-2},
		{name: "f64-explicit-attention", store: kernels.F64, chunk: 1000, tol: 1e-6},
		{name: "f32-explicit-attention-chunked", store: kernels.F32, chunk: 7, tol: 1e-5},
		{name: "bf16-explicit-attention-chunked", store: kernels.F32, autocast: kernels.BF16, chunk: 13, tol: 5e-2},
	} {
		t.Run(c.name, func(t *testing.T) { runGolden(t, newEngine(), g, c) })
	}
}

// runGolden encodes and decodes the golden image on engine e as c says and
// compares the four outputs with the reference.
func runGolden(t *testing.T, e *ag.Engine, g goldenRun, c goldenCase) {
	img, imgShape := g.get(t, "in.image")
	m, err := Load(e, g.weights, Options{DType: c.store, Checkpoint: c.checkpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if c.chunk > 0 {
		m.testHeadLimit, m.testChunkRows = new(int), c.chunk
	}
	e.SetAutocast(c.autocast)
	defer e.SetAutocast(0)
	inDType := c.input
	if inDType == 0 {
		inDType = c.store
		if inDType == kernels.BF16 {
			inDType = kernels.F32
		}
	}
	x := e.FromFloat64(inDType, imgShape, img)
	var got = map[string]*ag.Tensor{}
	e.NoGrad(func() {
		mean, logvar, err := m.Encode(x)
		if err != nil {
			t.Fatal(err)
		}
		got["out.mean"], got["out.logvar"] = mean, logvar
		if got["out.latent"], err = m.Latent(x); err != nil {
			t.Fatal(err)
		}
		if got["out.decoded"], err = m.Decode(mean); err != nil {
			t.Fatal(err)
		}
	})
	for _, name := range []string{"out.mean", "out.logvar", "out.latent", "out.decoded"} {
		want, shape := g.get(t, name)
		if !slices.Equal(got[name].Shape(), shape) {
			t.Fatalf("%s: shape %v, golden %v", name, got[name].Shape(), shape)
		}
		err := kernels.RelErr(values(t, got[name]), want)
		t.Logf("%s: rel err %.3g", name, err)
		if err > c.tol {
			t.Errorf("%s: rel err %.3g > %.g", name, err, c.tol)
		}
	}
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
}
