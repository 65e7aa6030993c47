package vae

import (
	"fmt"
	"slices"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/internal/golden"
	"github.com/newbie-train/newbie-train/kernels"
)

// Tolerances are the golden README's bounds for the VAE golden
// (../shared/golden/vae): bf16 is bf16 weights under bf16 autocast, as the
// trainer loads a frozen VAE.
var Tolerances = golden.Tolerances{F64: 1e-6, F32: 1e-5, BF16: 5e-2}

// Parity loads VAE weights (any layout Load reads) on backend b in
// precision (fp64, fp32, bf16), encodes the golden file's in.image and
// decodes the mean (../shared/golden/vae/vae_tiny.golden.safetensors), and
// compares out.mean, out.logvar, out.latent and out.decoded with the
// reference, held to Tolerances.
func Parity(b kernels.Backend, weights, goldenPath, precision string) (golden.Results, error) {
	d, err := golden.FrozenDType(precision)
	if err != nil {
		return nil, err
	}
	f, err := golden.Open(goldenPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := f.Tensor("in.image")
	if err != nil {
		return nil, err
	}
	e := ag.New(b)
	m, err := Load(e, weights, Options{DType: d})
	if err != nil {
		return nil, err
	}
	defer m.Release()
	in := d
	if d == kernels.BF16 {
		// bf16 weights run under bf16 autocast on a float32 image.
		e.SetAutocast(kernels.BF16)
		defer e.SetAutocast(0)
		in = kernels.F32
	}
	got := map[string]*ag.Tensor{}
	e.NoGrad(func() {
		x := e.FromFloat64(in, img.Shape, img.Values)
		var mean, logvar *ag.Tensor
		if mean, logvar, err = m.Encode(x); err != nil {
			return
		}
		got["out.mean"], got["out.logvar"] = mean, logvar
		if got["out.latent"], err = m.Latent(x); err != nil {
			return
		}
		got["out.decoded"], err = m.Decode(mean)
	})
	if err != nil {
		return nil, err
	}
	var rs golden.Results
	for _, name := range []string{"out.mean", "out.logvar", "out.latent", "out.decoded"} {
		ref, err := f.Tensor(name)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(got[name].Shape(), ref.Shape) {
			return nil, fmt.Errorf("vae: parity: %s is %v, the reference %v", name, got[name].Shape(), ref.Shape)
		}
		v, err := got[name].Values()
		if err != nil {
			return nil, err
		}
		rs = append(rs, golden.Compare(name, v, ref.Values, Tolerances.For(d)))
	}
	return rs, e.EndStep()
}
