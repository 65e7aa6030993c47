package train

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
)

// ValidationTimesteps are the fixed timesteps of the validation loss: the
// same points every pass, so its curve moves only with the weights.
var ValidationTimesteps = []float64{0.1, 0.3, 0.5, 0.7, 0.9}

// validationSeed seeds the validation noise, apart from the training draws.
const validationSeed = 0x76616c6964 // "valid"

// SplitHeldOut divides an encoded dataset into training and held-out parts.
// An image is held out when the leading 64 bits of SHA-256(its content hash)
// fall below fraction·2⁶⁴: the choice depends only on the image, so adding
// images never moves others between the parts. Each part gets its own
// fingerprint, so a loader cursor of one never resumes in the other.
func SplitHeldOut(enc *data.Encoded, fraction float64) (train, held *data.Encoded, err error) {
	tr, va := *enc, *enc
	tr.Items, va.Items = nil, nil
	for _, it := range enc.Items {
		h := sha256.Sum256([]byte(it.Item.Hash))
		if float64(binary.BigEndian.Uint64(h[:8]))/18446744073709551616.0 < fraction {
			va.Items = append(va.Items, it)
		} else {
			tr.Items = append(tr.Items, it)
		}
	}
	if len(va.Items) == 0 || len(tr.Items) == 0 {
		return nil, nil, fmt.Errorf("train.validation.split %g of %d images leaves %d for training and %d held out: both need at least one", fraction, len(enc.Items), len(tr.Items), len(va.Items))
	}
	tag := func(part string) string {
		h := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%g", enc.Fingerprint, part, fraction)))
		return hex.EncodeToString(h[:8])
	}
	tr.Fingerprint, va.Fingerprint = tag("train"), tag("held-out")
	return &tr, &va, nil
}

// validationLoss is the mean flow-matching loss over every held-out batch at
// each of ValidationTimesteps, with fixed noise, without recording a tape.
// It leaves the engine's random stream where it was, so a run with
// validation draws the same training noise as one without.
func (r *run) validationLoss() (float64, error) {
	loader, err := data.NewLoader(r.held, data.Cursor{})
	if err != nil {
		return 0, err
	}
	defer loader.Close()
	seed, off := r.e.RandomState()
	defer r.e.SeedRandom(seed, off)
	r.e.SeedRandom(validationSeed, 0)
	prev := r.e.SetAutocast(r.autocast)
	defer r.e.SetAutocast(prev)

	var sum float64
	var n int
	for range loader.BatchesPerEpoch() {
		b, err := loader.Next()
		if err != nil {
			return 0, err
		}
		fb := r.uploadBatch(b)
		shape := fb.X1.Shape()
		x0 := r.e.Normal(kernels.F32, shape)
		for _, t := range ValidationTimesteps {
			ts := make([]float64, shape[0])
			for i := range ts {
				ts[i] = t
			}
			var loss *ag.Tensor
			r.e.NoGrad(func() { loss, err = FlowLoss(r.model, fb, x0, ts) })
			if err != nil {
				r.e.EndStep()
				return 0, err
			}
			v, err := loss.Item()
			if err != nil {
				r.e.EndStep()
				return 0, err
			}
			sum += v
			n++
		}
		if err := r.e.EndStep(); err != nil {
			return 0, err
		}
	}
	return sum / float64(n), nil
}
