package train

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/kernels"
)

// ValidationTimesteps are the fixed timesteps of the validation loss: the
// same points every pass, so its curve moves only with the weights.
var ValidationTimesteps = []float64{0.1, 0.3, 0.5, 0.7, 0.9}

// validationSeed seeds the validation noise, apart from the training draws.
const validationSeed = 0x76616c6964 // "valid"

// heldOutImages chooses the held-out images of a validation split: an
// image is held out when the leading 64 bits of SHA-256(its content hash)
// fall below fraction·2⁶⁴, so the choice depends only on the image and
// adding images never moves others between the parts. A small dataset
// whose rule holds out nothing holds out the one image with the smallest
// such key instead (at least one image is always held out); both parts
// must keep an image. It runs on the scanned items, before encoding.
func heldOutImages(items []*data.Item, fraction float64) (map[string]bool, error) {
	key := func(it *data.Item) uint64 {
		h := sha256.Sum256([]byte(it.Hash))
		return binary.BigEndian.Uint64(h[:8])
	}
	held := map[string]bool{}
	var first *data.Item
	for _, it := range items {
		if float64(key(it))/18446744073709551616.0 < fraction {
			held[it.Hash] = true
		}
		if first == nil || key(it) < key(first) {
			first = it
		}
	}
	if len(held) == 0 && first != nil {
		held[first.Hash] = true
	}
	if len(items)-len(held) < 1 {
		return nil, fmt.Errorf("train.validation.split %g of %d images leaves %d for training and %d held out: both need at least one (set train.validation.split: 0 to turn validation off)", fraction, len(items), len(items)-len(held), len(held))
	}
	return held, nil
}

// splitHeldOut divides an encoded dataset into training and held-out
// parts by the images heldOutImages chose. Each part gets its own
// fingerprint, so a loader cursor of one never resumes in the other.
func splitHeldOut(enc *data.Encoded, held map[string]bool, fraction float64) (train, val *data.Encoded, err error) {
	tr, va := *enc, *enc
	tr.Items, va.Items = nil, nil
	for _, it := range enc.Items {
		if held[it.Item.Hash] {
			va.Items = append(va.Items, it)
		} else {
			tr.Items = append(tr.Items, it)
		}
	}
	if len(va.Items) == 0 || len(tr.Items) == 0 {
		// Only when images that passed the scan failed to encode.
		return nil, nil, fmt.Errorf("train.validation.split %g: after encoding, %d images are left for training and %d held out: both need at least one", fraction, len(tr.Items), len(va.Items))
	}
	tag := func(part string) string {
		h := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%g", enc.Fingerprint, part, fraction)))
		return hex.EncodeToString(h[:8])
	}
	tr.Fingerprint, va.Fingerprint = tag("train"), tag("held-out")
	return &tr, &va, nil
}

// planSplit applies the validation split to the scanned dataset and sizes
// the run from the training part: the batches per epoch (reported when
// buckets make some smaller than train.batch_size), the number of steps,
// and whether the batch size fits the dataset at all.
func (r *run) planSplit() error {
	cfg := r.cfg
	items := r.ds.Items
	if split := cfg.Train.Validation.Split; split > 0 {
		held, err := heldOutImages(items, split)
		if err != nil {
			return configErr(err)
		}
		r.heldOut = held
		var tr []*data.Item
		for _, it := range items {
			if !held[it.Hash] {
				tr = append(tr, it)
			}
		}
		items = tr
		r.logf("validation: %d images held out, %d for training; loss at t = %v every %d steps", len(held), len(tr), ValidationTimesteps, cfg.Train.Validation.Every)
	}
	samples := 0
	for _, it := range items {
		samples += it.Repeats
	}
	lo := r.ds.Options.Loader
	if lo.BatchSize > samples {
		return configErr(fmt.Errorf("train.batch_size %d is larger than the training set's %d samples per epoch (%d images, repeats included): lower train.batch_size to at most %d", lo.BatchSize, samples, len(items), samples))
	}
	batches, sizes := data.EpochBatches(items, lo)
	if batches == 0 {
		return configErr(fmt.Errorf("data.drop_last: no bucket holds a full batch of %d (%d samples over %d buckets), so an epoch has no batch: turn drop_last off or lower train.batch_size", lo.BatchSize, samples, len(sizes)))
	}
	if len(sizes) > 1 || sizes[lo.BatchSize] != batches {
		var parts []string
		for size, n := range sizes {
			if size != lo.BatchSize {
				parts = append(parts, fmt.Sprintf("%d of %d", n, size))
			}
		}
		sort.Strings(parts)
		r.logf("batches: %d per epoch, %d of train.batch_size %d and %s: a batch holds images of one bucket, so each bucket's last batch is partial (data.drop_last drops those)",
			batches, sizes[lo.BatchSize], lo.BatchSize, strings.Join(parts, ", "))
	}
	r.batches = batches
	r.total = r.runLength(batches)
	if r.total <= 0 {
		return configErr(fmt.Errorf("the run has no steps (max_steps %d, epochs %d, %d batches per epoch)", cfg.Train.MaxSteps, cfg.Train.Epochs, batches))
	}
	if err := cfg.Schedule(r.total).Validate(); err != nil {
		// With train.epochs the length is known only now.
		return configErr(fmt.Errorf("train: a run of %d steps: %w", r.total, err))
	}
	return nil
}

// splitEncoded applies the split chosen before encoding to the encoded
// dataset.
func (r *run) splitEncoded(encoded *data.Encoded) error {
	if r.heldOut == nil {
		r.encoded = encoded
		return nil
	}
	tr, va, err := splitHeldOut(encoded, r.heldOut, r.cfg.Train.Validation.Split)
	if err != nil {
		return err
	}
	r.encoded, r.held = tr, va
	return nil
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
