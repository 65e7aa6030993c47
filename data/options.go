package data

import (
	"fmt"
	"runtime"
)

// What caption dropout blanks (CaptionOptions.DropoutBlanks).
const (
	// DropoutBlanksGemma blanks only the feature encoder's caption.
	DropoutBlanksGemma = "gemma"
	// DropoutBlanksBoth blanks both encoders' captions.
	DropoutBlanksBoth = "both"
)

// GemmaSystemPrompt is the text NewBie puts in front of every caption it
// hands to Gemma 3 (see DESIGN.md); the CLIP encoder gets the caption alone.
const GemmaSystemPrompt = "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> "

// Folder is one dataset folder. Images directly inside it are used; a folder
// holding no images but subfolders named like "10_name" stands for those
// subfolders (the kohya layout of one parent folder per dataset).
type Folder struct {
	Path string
	// Repeats is how many times each image appears per epoch. Zero means:
	// take it from a "N_name" folder name, else 1.
	Repeats int
}

// Policy says what to do with an image that needs a conversion rule.
type Policy string

// Policies for CMYK, high bit depth and transparency.
const (
	// Convert keeps the image: CMYK is converted to RGB, 16-bit samples are
	// used at full precision.
	Convert Policy = "convert"
	// Reject skips the image with a reason (fatal in strict mode).
	Reject Policy = "reject"
	// White composites transparent pixels over white (alpha only).
	White Policy = "white"
	// Black composites transparent pixels over black (alpha only).
	Black Policy = "black"
)

// CaptionFormat names how a caption is read.
type CaptionFormat string

// Caption formats. Auto decides per file: a caption starting with '<' is
// XML; one made of short comma-separated phrases is tags; anything else is
// natural language.
const (
	FormatAuto CaptionFormat = "auto"
	FormatXML  CaptionFormat = "xml"
	FormatTags CaptionFormat = "tags"
	FormatText CaptionFormat = "text"
)

// CaptionOptions control caption parsing and augmentation.
type CaptionOptions struct {
	// Extension of the caption file next to each image. Default ".txt".
	Extension string
	// Format of the captions. Default FormatAuto.
	Format CaptionFormat
	// AllowMissing lets an image without a caption file use Default as its
	// caption. Default false: a missing caption is a problem (skipped, or
	// fatal in strict mode), since it is usually a forgotten file.
	AllowMissing bool
	// Default is the caption of images without a caption file when
	// AllowMissing is set.
	Default string
	// TriggerWord, when set, is put first in every caption (first tag, or
	// first tag of the first XML leaf element, or in front of natural
	// language) unless the caption already has it, and is never shuffled or
	// dropped.
	TriggerWord string
	// ShuffleTags shuffles the tags inside every leaf element (and the tag
	// list of plain-tag captions), keeping the first KeepTokens in place.
	ShuffleTags bool
	// KeepTokens is how many leading tags of each element stay in place and
	// are never dropped. Default 0.
	KeepTokens int
	// TagDropout is the probability that each other tag is left out.
	TagDropout float64
	// CaptionDropout is the probability that a sample is trained with the
	// empty caption (the unconditional case CFG needs). The empty caption
	// is encoded once and shared.
	CaptionDropout float64
	// DropoutBlanks is what a caption-dropout sample blanks:
	// DropoutBlanksGemma (default, as upstream NewBie's finetune.py: the
	// feature encoder sees the empty caption, the pooled encoder still the
	// real one) or DropoutBlanksBoth (as inference's unconditional branch).
	DropoutBlanks string
	// FixedElements are XML leaf elements never shuffled or dropped.
	// Default ["n", "gender"]: a character's name and gender are identity,
	// not augmentation material.
	FixedElements []string
	// Variants is how many augmented captions are encoded per image when
	// shuffling or tag dropout is on (the cache stores encoder outputs, so
	// augmentation is a choice among pre-encoded variants). Variant 0 is
	// always the caption as written. Default 4; forced to 1 without
	// augmentation.
	Variants int
	// SystemPrompt is prepended to the text the feature encoder (Gemma)
	// sees. Default GemmaSystemPrompt.
	SystemPrompt string
}

// BucketOptions control aspect-ratio bucketing.
type BucketOptions struct {
	// TargetArea is the pixel area every bucket approaches from below.
	// Default 1024×1024 (NewBie's training resolution).
	TargetArea int
	// Step is the multiple every bucket side is a multiple of. Default 16:
	// the VAE divides by 8 and the transformer patches by 2.
	Step int
	// MinSide and MaxSide bound bucket sides. Defaults 512 and 2048.
	MinSide, MaxSide int
	// NoUpscale keeps images smaller than their bucket from being enlarged:
	// such an image gets a smaller bucket of the same shape.
	NoUpscale bool
	// RandomCrop picks the crop window at random (per crop variant) instead
	// of centring it.
	RandomCrop bool
	// CropVariants is how many random crops are encoded per image when
	// RandomCrop is on. Default 1.
	CropVariants int
}

// LoaderOptions control batching.
type LoaderOptions struct {
	// BatchSize is the number of samples per batch. Default 1.
	BatchSize int
	// DropLast drops each bucket's incomplete last batch of an epoch
	// instead of returning a smaller batch. Default false.
	DropLast bool
	// Prefetch is how many batches the background goroutine prepares ahead.
	// Default 2.
	Prefetch int
}

// Options configure the whole pipeline. Zero fields take the documented
// defaults (see Defaults); the configs package maps the YAML onto this.
type Options struct {
	Folders []Folder
	// MinSide is the smallest accepted image side in pixels (after EXIF
	// orientation). Default 256.
	MinSide int
	// MaxPixels is the largest accepted image, width × height as the
	// file's header declares it, checked before any pixel is decoded; it
	// also bounds how many pixels the workers decode at once. Default
	// DefaultMaxPixels.
	MaxPixels int
	// CMYK is Convert (default) or Reject.
	CMYK Policy
	// HighBitDepth (16-bit samples) is Convert (default) or Reject.
	HighBitDepth Policy
	// Alpha (images with any transparent pixel) is White (default), Black
	// or Reject.
	Alpha Policy
	// Strict makes every problem fatal instead of skipping the file.
	Strict bool
	// SkipDeepValidate turns off the full decode of every image during the
	// scan. The full decode is the only sure way to find truncated or
	// corrupt pixel data, so it is on by default; without it only the header
	// and the file's end marker are checked, and damage in between surfaces
	// when the cache encodes the image.
	SkipDeepValidate bool
	// Workers is the number of files validated at once. Default: GOMAXPROCS.
	Workers int
	// Seed drives every random choice (epoch order, crops, captions).
	Seed    uint64
	Caption CaptionOptions
	Buckets BucketOptions
	Loader  LoaderOptions
	// CacheDir holds the encode cache. Required by the cache.
	CacheDir string
	// CacheBF16 stores latents and text features as bf16 instead of f32,
	// halving the cache (the real encoders compute in bf16 anyway).
	CacheBF16 bool
	// Flip adds horizontal-flip augmentation: every crop is also encoded
	// mirrored (a VAE latent is not exactly flip-equivariant, so the
	// mirrored image is encoded rather than the latent flipped), and the
	// loader trains half the samples, chosen by its seeded stream, on the
	// mirrored latent.
	Flip bool
}

// DefaultMaxPixels is MaxPixels' default: 8192 × 8192 (64 MiP), larger
// than nearly all real artwork, and about 1.3 GB to decode.
const DefaultMaxPixels = 8192 * 8192

// Defaults returns o with every zero field set to its documented default.
func (o Options) Defaults() Options {
	if o.MinSide == 0 {
		o.MinSide = 256
	}
	if o.MaxPixels == 0 {
		o.MaxPixels = DefaultMaxPixels
	}
	if o.CMYK == "" {
		o.CMYK = Convert
	}
	if o.HighBitDepth == "" {
		o.HighBitDepth = Convert
	}
	if o.Alpha == "" {
		o.Alpha = White
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	c := &o.Caption
	if c.Extension == "" {
		c.Extension = ".txt"
	} else if c.Extension[0] != '.' {
		c.Extension = "." + c.Extension
	}
	if c.Format == "" {
		c.Format = FormatAuto
	}
	if c.FixedElements == nil {
		c.FixedElements = []string{"n", "gender"}
	}
	if c.Variants == 0 {
		c.Variants = 4
	}
	if !c.ShuffleTags && c.TagDropout == 0 {
		c.Variants = 1
	}
	if c.DropoutBlanks == "" {
		c.DropoutBlanks = DropoutBlanksGemma
	}
	if c.SystemPrompt == "" {
		c.SystemPrompt = GemmaSystemPrompt
	}
	b := &o.Buckets
	if b.TargetArea == 0 {
		b.TargetArea = 1024 * 1024
	}
	if b.Step == 0 {
		b.Step = 16
	}
	if b.MinSide == 0 {
		b.MinSide = 512
	}
	if b.MaxSide == 0 {
		b.MaxSide = 2048
	}
	if b.CropVariants == 0 || !b.RandomCrop {
		b.CropVariants = 1
	}
	l := &o.Loader
	if l.BatchSize == 0 {
		l.BatchSize = 1
	}
	if l.Prefetch == 0 {
		l.Prefetch = 2
	}
	return o
}

// Validate reports the first option that cannot work, naming the field.
func (o Options) Validate() error {
	switch {
	case len(o.Folders) == 0:
		return fmt.Errorf("data: no dataset folders given")
	case o.MinSide < 1:
		return fmt.Errorf("data: min_side %d must be positive", o.MinSide)
	case o.MaxPixels < 1:
		return fmt.Errorf("data: max_pixels %d must be positive", o.MaxPixels)
	case o.CMYK != Convert && o.CMYK != Reject:
		return fmt.Errorf("data: cmyk policy %q: want convert or reject", o.CMYK)
	case o.HighBitDepth != Convert && o.HighBitDepth != Reject:
		return fmt.Errorf("data: high_bit_depth policy %q: want convert or reject", o.HighBitDepth)
	case o.Alpha != White && o.Alpha != Black && o.Alpha != Reject:
		return fmt.Errorf("data: alpha policy %q: want white, black or reject", o.Alpha)
	}
	c := o.Caption
	switch {
	case c.Format != FormatAuto && c.Format != FormatXML && c.Format != FormatTags && c.Format != FormatText:
		return fmt.Errorf("data: caption format %q: want auto, xml, tags or text", c.Format)
	case c.TagDropout < 0 || c.TagDropout >= 1:
		return fmt.Errorf("data: tag_dropout %g must be in [0, 1)", c.TagDropout)
	case c.CaptionDropout < 0 || c.CaptionDropout >= 1:
		return fmt.Errorf("data: caption_dropout %g must be in [0, 1)", c.CaptionDropout)
	case c.DropoutBlanks != DropoutBlanksGemma && c.DropoutBlanks != DropoutBlanksBoth:
		return fmt.Errorf("data: data.caption.dropout_blanks %q: want %s or %s", c.DropoutBlanks, DropoutBlanksGemma, DropoutBlanksBoth)
	case c.KeepTokens < 0:
		return fmt.Errorf("data: keep_tokens %d must not be negative", c.KeepTokens)
	case c.Variants < 1 || c.Variants > 64:
		return fmt.Errorf("data: caption variants %d must be in [1, 64]", c.Variants)
	}
	b := o.Buckets
	switch {
	case b.Step < 8 || b.Step%8 != 0:
		return fmt.Errorf("data: bucket step %d must be a positive multiple of 8 (the VAE downsamples by 8)", b.Step)
	case b.MinSide < b.Step || b.MaxSide < b.MinSide:
		return fmt.Errorf("data: bucket sides [%d, %d] must satisfy step ≤ min ≤ max", b.MinSide, b.MaxSide)
	case b.TargetArea < b.MinSide*b.MinSide:
		return fmt.Errorf("data: bucket target area %d is below min side² %d", b.TargetArea, b.MinSide*b.MinSide)
	case b.CropVariants < 1 || b.CropVariants > 64:
		return fmt.Errorf("data: crop variants %d must be in [1, 64]", b.CropVariants)
	}
	if o.Loader.BatchSize < 1 {
		return fmt.Errorf("data: batch size %d must be positive", o.Loader.BatchSize)
	}
	for i, f := range o.Folders {
		if f.Path == "" {
			return fmt.Errorf("data: folders[%d] has no path", i)
		}
		if f.Repeats < 0 {
			return fmt.Errorf("data: folders[%d] (%s): repeats %d must not be negative", i, f.Path, f.Repeats)
		}
	}
	return nil
}
