package optim

import (
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// newParam allocates a parameter with the given master values (rounded to
// dt) and a gradient buffer of the same dtype.
func newParam(t *testing.T, be kernels.Backend, name string, dt kernels.DType, init []float64) Param {
	t.Helper()
	m, _ := kerneltest.Put(t, be, dt, init)
	g, err := be.Alloc(dt, len(init))
	if err != nil {
		t.Fatalf("alloc grad of %s: %v", name, err)
	}
	return Param{Name: name, Master: m, Grad: g}
}

// setGrad uploads host gradient values into p's gradient buffer.
func setGrad(be kernels.Backend, p Param, g []float64) {
	be.Upload(p.Grad, 0, kernels.EncodeF64(p.Grad.DType(), g))
}

// download reads a buffer back as float64.
func download(t *testing.T, be kernels.Backend, b kernels.Buffer) []float64 {
	t.Helper()
	return kerneltest.Get(t, be, b)
}
