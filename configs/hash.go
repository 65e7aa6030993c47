package configs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"gopkg.in/yaml.v3"
)

// YAML prints the effective config: every key with the value the run uses,
// defaults and derived values filled in and paths absolute. It parses back
// to the same config (and the same Hash); the CLI's --print-config shows
// it and saved LoRA metadata carries it.
func (c *Config) YAML() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# newbie-train effective config (hash %s)\n", c.Hash())
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		// The struct holds only strings, numbers, bools and lists of them,
		// which always encode; say so in the output rather than panic.
		fmt.Fprintf(&b, "# encoding failed: %v\n", err)
	}
	if err := enc.Close(); err != nil {
		fmt.Fprintf(&b, "# encoding failed: %v\n", err)
	}
	return b.Bytes()
}

// String is the effective config as YAML.
func (c *Config) String() string { return string(c.YAML()) }

// hashed is the part of the config that changes what a run computes, the
// input of Hash. A resumed run must match all of it to continue the same
// trajectory:
//
//   - model: preset, dtype;
//   - precision and loss_scale (as written: "auto" stays "auto");
//   - lora: everything;
//   - data: the number of folders and their repeats, resolution, bucket,
//     no_upscale, crop, crop_variants, min_side, strict, transparency,
//     cmyk, high_bit_depth, caption (everything), cache_bf16, drop_last,
//     flip;
//   - train: everything except validation.every, nonfinite_limit and
//     checkpoint_blocks.
//
// Left out, because changing them does not change the numbers (or is
// checked elsewhere): every path (model.weights and model.config: the base
// model is checked by the hash of its contents; data folder paths: a moved
// dataset is the same dataset; data.cache, save.output, logging.log_file),
// lora.init_from (a resumed run restores its own weights), device and gpu
// (a CPU state may resume on a GPU), memory_budget_gib (a plan, not a
// computation), data.workers, data.prefetch,
// data.deep_validate, data.max_pixels (what it changes, the set of images,
// the loader's dataset fingerprint guards), train.validation.every,
// train.nonfinite_limit, train.checkpoint_blocks (which blocks recompute
// their activations: the same gradients either way), the save, sample and logging sections (how
// often to save, render or log) and dist (how long ranks wait for each
// other). HashedValues lists the same keys.
type hashed struct {
	Version   string
	Preset    string
	DType     string
	Precision string
	LossScale LossScale
	LoRA      LoRA
	Repeats   []int
	Data      hashedData
	Train     Train
}

// hashedData is the data section less its paths and pure performance knobs.
type hashedData struct {
	Resolution   int
	Bucket       Bucket
	NoUpscale    bool
	Crop         string
	CropVariants int
	MinSide      int
	Strict       bool
	Transparency string
	CMYK         string
	HighBitDepth string
	Caption      Caption
	CacheBF16    bool
	DropLast     bool
	// Keys added after the first version are left out of the JSON at their
	// zero value (omitempty), so configs that do not use them keep the
	// hashes their saved states were written under.
	Flip bool `json:",omitempty"`
}

// Hash is a stable fingerprint (hex SHA-256) of the training-relevant
// fields listed on hashed. It depends on values only, so key order,
// comments, spelling of numbers (1e-4 vs 0.0001) and defaults written out
// or left implicit do not change it.
func (c *Config) Hash() string {
	d := c.Data
	h := hashed{
		Version:   "newbie-train/configs/hash/v1",
		Preset:    c.Model.Preset,
		DType:     c.Model.DType,
		Precision: string(c.Precision),
		LossScale: c.LossScale,
		LoRA:      c.LoRA,
		Data: hashedData{
			Resolution: d.Resolution, Bucket: d.Bucket, NoUpscale: d.NoUpscale,
			Crop: d.Crop, CropVariants: d.CropVariants, MinSide: d.MinSide, Strict: d.Strict,
			Transparency: d.Transparency, CMYK: d.CMYK, HighBitDepth: d.HighBitDepth,
			Caption: d.Caption, CacheBF16: d.CacheBF16, DropLast: d.DropLast,
			Flip: d.Flip,
		},
		Train: c.Train,
	}
	h.Train.Validation.Every = 0
	for _, f := range d.Folders {
		h.Repeats = append(h.Repeats, f.Repeats)
	}
	// JSON of a struct has a fixed field order and prints floats in their
	// shortest exact form, so equal values always give equal bytes.
	b, err := json.Marshal(h)
	if err != nil {
		// Only finite numbers, strings and bools are in h; keep the hash
		// total anyway by hashing the error text.
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
