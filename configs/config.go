package configs

import (
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/optim"
)

// Config is one training run: the whole lora.yaml. The yaml tags are the
// keys of the file. Zero values of the fields documented as "0 = derived"
// are filled from other fields when a file is loaded; every other field
// starts at Defaults() and is replaced by what the file says.
type Config struct {
	// Model is the base model to fine-tune.
	Model Model `yaml:"model"`
	// Device picks the backend: "auto" (default: CUDA when a GPU is found,
	// else the CPU backend), "cuda" (fail without a GPU) or "cpu".
	Device string `yaml:"device"`
	// GPU is the CUDA device index used when the backend is CUDA. Default 0.
	GPU int `yaml:"gpu"`
	// MemoryBudgetGiB is the most GPU memory, in GiB, any phase of the run
	// (each encoder, the training step, the previews) may plan to use: a
	// phase whose estimate exceeds it is refused before it starts, naming
	// the phase and the shortfall. 0 (default) plans against the memory
	// the device reports free.
	MemoryBudgetGiB float64 `yaml:"memory_budget_gib"`
	// Precision of the forward and backward: "auto" (default: bf16 on GPUs
	// of compute capability ≥ 8, fp16 on older GPUs, fp32 on the CPU),
	// "bf16", "fp16" or "fp32". Masters, moments and gradients are fp32 in
	// every mode.
	Precision optim.Precision `yaml:"precision"`
	// LossScale configures the loss scaler.
	LossScale LossScale `yaml:"loss_scale"`
	// LoRA describes the adapters that are trained.
	LoRA LoRA `yaml:"lora"`
	// Data is the dataset and how it is read, bucketed and captioned.
	Data Data `yaml:"data"`
	// Train holds the optimisation settings.
	Train Train `yaml:"train"`
	// Save says where, how often and in which formats results are written.
	Save Save `yaml:"save"`
	// Sample configures the preview images rendered during training.
	Sample Sample `yaml:"sample"`
	// Logging configures progress logs and metrics.
	Logging Logging `yaml:"logging"`
	// Dist tunes data-parallel training on several GPUs (`--gpus N`,
	// torchrun).
	Dist Dist `yaml:"dist"`

	// file is the name the config was parsed under (for messages); lines
	// maps each key path given in the file ("train.learning_rate",
	// "data.folders[0].path") to its line, and tells explicit settings from
	// defaults.
	file  string
	lines map[string]int
}

// Model names the base model.
type Model struct {
	// Path is a NewBie-image-Exp0.1 model folder: the official Hugging Face
	// layout (transformer/, vae/, text_encoder/, clip_model/), the diffusers
	// port's (transformer/, vae/, text_encoder/, text_encoder_2/,
	// tokenizer/, tokenizer_2/) or a flat folder of single files, every
	// file told by its content. `newbie-train inspect FOLDER` shows what it
	// finds. The keys below name single files that replace the folder's.
	Path string `yaml:"path"`
	// Weights is the Next-DiT: a safetensors file (upstream, ComfyUI
	// layout) or a folder (diffusers layout, or a folder holding one
	// safetensors file). Taken from model.path when empty; the tiny preset
	// with neither starts from random weights (the demo).
	Weights string `yaml:"weights"`
	// VAE is the FLUX VAE file (ae.safetensors or diffusers keys).
	VAE string `yaml:"vae"`
	// Gemma is the Gemma 3 4B text encoder (the multimodal checkpoint, a
	// sharded index or a text-only file); GemmaTokenizer its tokenizer.json,
	// tokenizer.model or a folder holding one.
	Gemma          string `yaml:"gemma"`
	GemmaTokenizer string `yaml:"gemma_tokenizer"`
	// Jina is Jina CLIP v2 (the whole model or its text tower);
	// JinaTokenizer its tokenizer.json, sentencepiece.bpe.model or a folder
	// holding one.
	Jina          string `yaml:"jina"`
	JinaTokenizer string `yaml:"jina_tokenizer"`
	// Preset is the architecture: "newbie-exp0.1" (default: NewBie-image
	// Exp0.1, 3.5 B parameters), "lumina2" (Lumina-Image-2.0) or "tiny" (the
	// small model of the golden tests and the demo).
	Preset string `yaml:"preset"`
	// DType is the storage dtype of the frozen base weights: "bf16"
	// (default), "f16", "f32" or "fp8". fp8 (kohya's --fp8_base) keeps the
	// linear layers' weights as FP8 E4M3 codes with a float32 scale per
	// output row — about half of bf16's bytes: NewBie's DiT takes 3.3 GiB
	// instead of 6.5 — and the rest (norms, biases, embeddings) in bf16;
	// each product runs on its weight dequantised into the autocast dtype,
	// so it moves the loss a little (docs/precision.md) and costs one
	// elementwise pass per product.
	DType string `yaml:"dtype"`
	// Config, when set, is a JSON file with the architecture in upstream
	// spelling (as a weight file's metadata carries it) that replaces the
	// preset's.
	Config string `yaml:"config"`
}

// RealEncoders reports whether the model section names the real encoders
// (a model folder or any single encoder file), or needs them: every preset
// but tiny does. The tiny preset without them trains on the stand-in
// encoders.
func (m Model) RealEncoders() bool { return m.Preset != "tiny" || m.NamesEncoders() }

// NamesEncoders reports whether the model section names a model folder or
// any encoder file.
func (m Model) NamesEncoders() bool {
	return m.Path != "" || m.VAE != "" || m.Gemma != "" || m.GemmaTokenizer != "" || m.Jina != "" || m.JinaTokenizer != ""
}

// LossScale configures the loss scaler (torch.amp.GradScaler semantics).
type LossScale struct {
	// Mode is "default" (default: dynamic for fp16, off for bf16 and fp32),
	// "dynamic", "static" or "off". The non-finite gradient check and the
	// skipped step run in every mode.
	Mode string `yaml:"mode"`
	// Init is the starting (dynamic) or fixed (static) scale. Default 65536.
	Init float64 `yaml:"init"`
	// GrowthInterval is the number of clean steps after which a dynamic
	// scale doubles. Default 2000.
	GrowthInterval int `yaml:"growth_interval"`
}

// LoRA describes the adapters.
type LoRA struct {
	// Rank of every adapter. Default 32.
	Rank int `yaml:"rank"`
	// Alpha scales the update by alpha/rank. 0 = derived: equal to the rank
	// (scale 1), which with the default rank is the upstream trainer's 32.
	Alpha float64 `yaml:"alpha"`
	// Dropout is the probability of dropping an input element of the
	// adapter path while training. Default 0.
	Dropout float64 `yaml:"dropout"`
	// Targets are PEFT-style module names: a linear layer gets an adapter
	// when its name equals a target or ends with "." + target. Default:
	// attention.qkv, attention.out, feed_forward.w1, feed_forward.w2,
	// feed_forward.w3, adaLN_modulation.1.
	Targets []string `yaml:"targets"`
	// Init is how A starts: "peft" (default: Kaiming-uniform, as PEFT and
	// torch.nn.Linear) or "gaussian" (N(0, 1/rank)). B starts at zero.
	Init string `yaml:"init"`
	// InitFrom, when set, starts the adapters from an existing LoRA (a PEFT
	// folder, a ComfyUI or a kohya file) instead of Init: its layers must be
	// exactly the ones lora.targets adapts, at lora.rank; a different alpha
	// is absorbed into B so the starting update is the file's. Left out of
	// Hash like every path (a resumed run restores its own weights).
	InitFrom string `yaml:"init_from" json:"-"`
}

// Folder is one dataset folder and how often its images repeat per epoch.
// In the file a folder may also be given as its path alone.
type Folder struct {
	// Path of the folder. Images directly inside it are used; a folder of
	// "N_name" subfolders stands for those subfolders (kohya layout).
	Path string `yaml:"path"`
	// Repeats per epoch; 0 (default) takes N from an "N_name" folder name,
	// else 1.
	Repeats int `yaml:"repeats"`
}

// Data configures the dataset.
type Data struct {
	// Folders are the dataset folders. Required.
	Folders []Folder `yaml:"folders"`
	// Resolution is the side of the square whose area every aspect bucket
	// approaches; a multiple of 16 (the VAE divides by 8 and the
	// transformer patches by 2). Default 1024.
	Resolution int `yaml:"resolution"`
	// Bucket bounds the aspect buckets.
	Bucket Bucket `yaml:"bucket"`
	// NoUpscale keeps images smaller than their bucket from being enlarged:
	// they get a smaller bucket of the same shape. Default false.
	NoUpscale bool `yaml:"no_upscale"`
	// Crop is "center" (default) or "random": where the bucket's window
	// sits in an image whose shape differs from the bucket's.
	Crop string `yaml:"crop"`
	// CropVariants is how many random crops are encoded per image with
	// random cropping (the cache holds encoded latents). Default 1; forced
	// to 1 with center cropping.
	CropVariants int `yaml:"crop_variants"`
	// MinSide is the smallest accepted image side in pixels; smaller images
	// are skipped (an error when strict). 0 = derived: a quarter of the
	// resolution, at most 256.
	MinSide int `yaml:"min_side"`
	// Strict makes every unreadable, too small or caption-less image an
	// error instead of a skipped file. Default false.
	Strict bool `yaml:"strict"`
	// DeepValidate decodes every image fully during the scan, the only sure
	// way to find corrupt pixel data before training. Default true.
	DeepValidate bool `yaml:"deep_validate"`
	// Transparency says what happens to images with transparent pixels:
	// "white" (default: composite over white), "black" or "reject".
	Transparency string `yaml:"transparency"`
	// MaxPixels is the largest image (width × height, read from the file's
	// header before anything is decoded) the scan accepts; larger images
	// are skipped by name (an error when strict). It also bounds the memory
	// of decoding: the images decoded at once never hold more pixels than
	// this. Default 67108864 (8192 × 8192, 64 MiP).
	MaxPixels int `yaml:"max_pixels"`
	// Flip adds the mirror image of every image as an augmentation: each
	// crop is also encoded flipped (a latent is not a flipped image's
	// latent, so the flip is encoded, not applied to the latent), and the
	// loader picks the flipped one for half the samples, from its seeded
	// stream. Default false: a mirror breaks asymmetric characters
	// (a scar on one cheek, a side ponytail, text).
	Flip bool `yaml:"flip"`
	// CMYK images are "convert"ed to RGB (default) or "reject"ed.
	CMYK string `yaml:"cmyk"`
	// HighBitDepth (16-bit) images are "convert"ed (default) or "reject"ed.
	HighBitDepth string `yaml:"high_bit_depth"`
	// Caption controls how captions are read and augmented.
	Caption Caption `yaml:"caption"`
	// Cache is the folder of the encode cache (latents and text features).
	// "" = derived: <save.output>/cache.
	Cache string `yaml:"cache"`
	// CacheBF16 stores cached latents and text features as bf16, halving
	// the cache. Default false.
	CacheBF16 bool `yaml:"cache_bf16"`
	// Workers is the number of files validated at once; 0 (default) = one
	// per core.
	Workers int `yaml:"workers"`
	// Prefetch is how many batches are prepared ahead. Default 2.
	Prefetch int `yaml:"prefetch"`
	// DropLast drops each bucket's incomplete last batch of an epoch.
	// Default false.
	DropLast bool `yaml:"drop_last"`
}

// Bucket bounds the aspect buckets.
type Bucket struct {
	// Step is the multiple every bucket side is a multiple of; a multiple of
	// 16. Default 16.
	Step int `yaml:"step"`
	// MinSide is the shortest bucket side. 0 = derived: half the resolution.
	MinSide int `yaml:"min_side"`
	// MaxSide is the longest bucket side. 0 = derived: twice the resolution.
	MaxSide int `yaml:"max_side"`
}

// Caption configures caption reading and augmentation.
type Caption struct {
	// Extension of the caption file beside each image. Default ".txt".
	Extension string `yaml:"extension"`
	// Format is "auto" (default: decided per file), "xml", "tags" or "text".
	Format string `yaml:"format"`
	// AllowMissing lets an image without a caption file train with Default
	// as its caption. Default false: a missing caption file is usually a
	// forgotten one, so the image is skipped with a message (an error when
	// strict).
	AllowMissing bool `yaml:"allow_missing"`
	// Default is the caption of images without a caption file when
	// AllowMissing is set. Default "".
	Default string `yaml:"default"`
	// TriggerWord, when set, is put first in every caption and never
	// shuffled or dropped.
	TriggerWord string `yaml:"trigger_word"`
	// Shuffle shuffles the tags of each caption element. Default false.
	Shuffle bool `yaml:"shuffle"`
	// KeepTokens is how many leading tags of each element stay in place and
	// are never dropped. Default 0.
	KeepTokens int `yaml:"keep_tokens"`
	// TagDropout is the probability that each other tag is left out.
	// Default 0.
	TagDropout float64 `yaml:"tag_dropout"`
	// CaptionDropout is the probability that a sample trains with the empty
	// caption (the unconditional case CFG needs). Default 0.
	CaptionDropout float64 `yaml:"caption_dropout"`
	// DropoutBlanks is what a caption-dropout sample blanks: "gemma"
	// (default, as upstream NewBie's finetune.py: Gemma sees the empty
	// caption, Jina CLIP still the real one) or "both" (as inference's
	// unconditional branch).
	DropoutBlanks string `yaml:"dropout_blanks"`
	// Variants is how many augmented captions are encoded per image when
	// shuffling or tag dropout is on. Default 4; forced to 1 without
	// augmentation.
	Variants int `yaml:"variants"`
	// FixedElements are XML elements never shuffled or dropped. Default
	// [n, gender]: a character's name and gender are identity.
	FixedElements []string `yaml:"fixed_elements"`
	// SystemPrompt is put before every caption the Gemma encoder sees.
	// "" = derived: NewBie's prompt (data.GemmaSystemPrompt).
	SystemPrompt string `yaml:"system_prompt"`
}

// Train holds the optimisation settings.
type Train struct {
	// MaxSteps is the run's length in optimizer steps. Give it or Epochs,
	// not both.
	MaxSteps int `yaml:"max_steps"`
	// Epochs is the run's length in passes over the dataset (repeats
	// included). Give it or MaxSteps, not both.
	Epochs int `yaml:"epochs"`
	// BatchSize is the number of samples per micro-batch. Default 1.
	BatchSize int `yaml:"batch_size"`
	// GradientAccumulation is the number of micro-batches summed into one
	// optimizer step. Default 1.
	GradientAccumulation int `yaml:"gradient_accumulation"`
	// LearningRate is the peak learning rate. Default 1e-4.
	LearningRate float64 `yaml:"learning_rate"`
	// Schedule is the learning-rate curve after warmup: "cosine" (default),
	// "linear" or "constant".
	Schedule string `yaml:"schedule"`
	// WarmupSteps ramps the learning rate up from 0 over this many steps.
	// Default 100 unless WarmupRatio is given.
	WarmupSteps int `yaml:"warmup_steps"`
	// WarmupRatio gives the warmup as a fraction of the run in [0, 1),
	// instead of WarmupSteps. Default 0.
	WarmupRatio float64 `yaml:"warmup_ratio"`
	// MinLRRatio is the floor of the decay as a fraction of the peak, in
	// [0, 1]. Default 0.
	MinLRRatio float64 `yaml:"min_lr_ratio"`
	// Cycles is the number of cosine cycles (hard restarts); 0 or 1
	// (default) means one decay.
	Cycles int `yaml:"cycles"`
	// Optimizer holds AdamW's other hyperparameters.
	Optimizer Optimizer `yaml:"optimizer"`
	// GradClip clips the gradients' global L2 norm; 0 disables clipping.
	// Default 1.0.
	GradClip float64 `yaml:"grad_clip"`
	// Seed drives every random choice of the run (adapter init, data order,
	// augmentation, noise, timesteps). Default 42.
	Seed uint64 `yaml:"seed"`
	// ActivationCheckpointing recomputes each transformer block's
	// activations in the backward instead of keeping them: much less
	// memory, about a third more compute. Default true.
	ActivationCheckpointing bool `yaml:"activation_checkpointing"`
	// CheckpointBlocks, with activation checkpointing on, says how many of
	// the transformer blocks are checkpointed, spread evenly (NewBie runs
	// 40: two context and two noise refiners, 36 joint layers): "all"
	// (default), "auto" (the fewest that the memory plan fits in
	// memory_budget_gib or the GPU's free memory: less recompute, so
	// faster, with the same gradients; before a first block it tries
	// recomputing only the blocks' norms in the backward, then some
	// blocks' feed-forward inputs), or a number of blocks.
	CheckpointBlocks string `yaml:"checkpoint_blocks" json:"-"`
	// Timesteps chooses how training timesteps are drawn.
	Timesteps Timesteps `yaml:"timesteps"`
	// Validation configures the held-out loss.
	Validation Validation `yaml:"validation"`
	// NonFiniteLimit stops the run when the loss has been NaN or infinite
	// for this many consecutive steps (the weights stop learning: every such
	// step is skipped), keeping the last saved state. Default 20.
	NonFiniteLimit int `yaml:"nonfinite_limit" json:"-"`
}

// Optimizer holds AdamW's hyperparameters besides the learning rate.
type Optimizer struct {
	// Betas are the first- and second-moment decays. Default [0.9, 0.999].
	Betas []float64 `yaml:"betas"`
	// Eps is added to the denominator. Default 1e-8.
	Eps float64 `yaml:"eps"`
	// WeightDecay is the decoupled weight decay. Default 0.01.
	WeightDecay float64 `yaml:"weight_decay"`
}

// Timesteps chooses the training timestep distribution (t = 1 is data,
// t = 0 noise).
type Timesteps struct {
	// Sampling is "lognorm_shift" (default: t = sigmoid(N(0, 1)), then
	// shifted toward noise by μ linear in the image's tokens, 0.5 at 256 to
	// 1.15 at 4096, as upstream NewBie), "logit_normal" (t =
	// sigmoid(N(mean, std²)), no shift) or "uniform".
	Sampling string `yaml:"sampling"`
	// Mean of logit_normal's normal draw. Default 0 (the only value the
	// other samplings accept).
	Mean float64 `yaml:"mean"`
	// Std of logit_normal's normal draw. Default 1 (the only value the
	// other samplings accept).
	Std float64 `yaml:"std"`
}

// Validation configures the validation loss on a held-out split, measured
// at fixed timesteps.
type Validation struct {
	// Split is the fraction of images held out, in [0, 1); 0 (default)
	// turns validation off.
	Split float64 `yaml:"split"`
	// Every is the number of optimizer steps between validation passes.
	// Default 100.
	Every int `yaml:"every"`
}

// Save says where and how results are written.
type Save struct {
	// Every is the number of optimizer steps between saves; 0 saves only at
	// the end (and on Ctrl-C). Default 500.
	Every int `yaml:"every"`
	// KeepLast is how many of the newest training states of this run are
	// kept; 0 keeps all. Default 3.
	KeepLast int `yaml:"keep_last"`
	// KeepLastLoRAs is how many of this run's intermediate LoRA saves
	// (<name>-step<N> in every format) are kept; 0 keeps all. The final
	// LoRA is never pruned. Default 3.
	KeepLastLoRAs int `yaml:"keep_last_loras"`
	// Formats of the LoRA files: any of "comfyui" (single file,
	// diffusion_model.<path>.lora_A/B), "peft" (adapter folder) and "kohya"
	// (lora_unet_… keys). Default [comfyui, peft].
	Formats []string `yaml:"formats"`
	// Output is the folder that receives everything. Default "output".
	Output string `yaml:"output"`
	// Name is the file name stem of the LoRA files. Default "newbie_lora".
	Name string `yaml:"name"`
}

// Sample configures the preview images rendered during training.
type Sample struct {
	// Prompts to render; none (default) turns sampling off.
	Prompts []string `yaml:"prompts"`
	// NegativePrompt is the unconditional side of CFG. Default "".
	NegativePrompt string `yaml:"negative_prompt"`
	// Every is the number of optimizer steps between previews; 0 (default)
	// renders them with every save.
	Every int `yaml:"every"`
	// Steps is upstream's num_sampling_steps: the grid points of the
	// midpoint and Euler methods (steps−1 integration steps, so at least 2)
	// or DPM-Solver++'s steps. Default 28.
	Steps int `yaml:"steps"`
	// CFG is the classifier-free guidance scale; 1 turns guidance off.
	// Default 4.5.
	CFG float64 `yaml:"cfg"`
	// CFGTrunc stops guidance once t (1 = data) reaches it; 1 (default)
	// guides every evaluation (upstream's cfg_trunc).
	CFGTrunc float64 `yaml:"cfg_trunc"`
	// Renorm, when > 0, caps the guided velocity's norm at Renorm times the
	// conditional one's (upstream's renorm_cfg). Default 0: off.
	Renorm float64 `yaml:"renorm"`
	// Seed of the preview noise, the same for every preview so that they
	// compare. Default 42.
	Seed uint64 `yaml:"seed"`
	// Sampler is "midpoint" (default), "euler" or "dpm" (DPM-Solver++).
	Sampler string `yaml:"sampler"`
	// TimeShift is the sampling time shift. Default 6 (upstream's).
	TimeShift float64 `yaml:"time_shift"`
	// Resolution of the previews, a multiple of 16. 0 = derived: the data
	// resolution.
	Resolution int `yaml:"resolution"`
}

// Logging configures progress logs and metrics.
type Logging struct {
	// Every is the number of optimizer steps between log lines. Default 10.
	Every int `yaml:"every"`
	// MetricsAddr is the host:port of the Prometheus metrics endpoint; ""
	// (default) serves none.
	MetricsAddr string `yaml:"metrics_addr"`
	// LogFile is the JSONL log. "" = derived: <save.output>/<save.name>.jsonl.
	LogFile string `yaml:"log_file"`
}

// Dist tunes data-parallel training: one process per GPU, rank 0 saving,
// logging and rendering previews.
type Dist struct {
	// Timeout is how many seconds a rank waits for the others — to join,
	// to finish a gradient sum, and at the barriers where rank 0 saves,
	// validates or renders previews — before it takes them for lost and the
	// job fails. A rank whose process ends is noticed at once whatever
	// this says; the timeout catches one that is alive but stuck. Default
	// 600: longer than rank 0's slowest save or preview pass.
	Timeout int `yaml:"timeout"`
}

// DefaultTargets are the default LoRA targets: the attention and SwiGLU
// projections and the adaLN modulation of every block.
var DefaultTargets = []string{
	"attention.qkv", "attention.out",
	"feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
	"adaLN_modulation.1",
}

// DefaultMaxPixels is data.max_pixels' default: 8192 × 8192.
const DefaultMaxPixels = data.DefaultMaxPixels

// Presets are the architecture names model.preset accepts, in the order
// messages list them.
var Presets = []string{"newbie-exp0.1", "lumina2", "tiny"}

// Defaults returns the config every file starts from: the upstream NewBie
// LoRA trainer's settings where it has them (rank 32, alpha 32, lr 1e-4,
// cosine with 100 warmup steps, AdamW (0.9, 0.999) eps 1e-8 weight decay
// 0.01, grad clip 1.0, seed 42, activation checkpointing on, batch 1 at
// 1024²). Fields documented as derived are zero here and filled when a file
// is loaded; the dataset folders and the run's length have no default.
func Defaults() Config {
	return Config{
		Model:     Model{Preset: "newbie-exp0.1", DType: "bf16"},
		Device:    "auto",
		Precision: optim.Auto,
		LossScale: LossScale{Mode: "default", Init: 65536, GrowthInterval: 2000},
		LoRA: LoRA{
			Rank: 32, Targets: append([]string(nil), DefaultTargets...), Init: "peft",
		},
		Data: Data{
			Resolution:   1024,
			Bucket:       Bucket{Step: 16},
			Crop:         "center",
			CropVariants: 1,
			DeepValidate: true,
			Transparency: "white",
			CMYK:         "convert",
			HighBitDepth: "convert",
			Caption: Caption{
				Extension: ".txt", Format: "auto", Variants: 4, DropoutBlanks: data.DropoutBlanksGemma,
				FixedElements: []string{"n", "gender"},
			},
			Prefetch:  2,
			MaxPixels: DefaultMaxPixels,
		},
		Train: Train{
			BatchSize:               1,
			GradientAccumulation:    1,
			LearningRate:            1e-4,
			Schedule:                "cosine",
			WarmupSteps:             100,
			Optimizer:               Optimizer{Betas: []float64{0.9, 0.999}, Eps: 1e-8, WeightDecay: 0.01},
			GradClip:                1.0,
			Seed:                    42,
			ActivationCheckpointing: true,
			CheckpointBlocks:        "all",
			Timesteps:               Timesteps{Sampling: "lognorm_shift", Std: 1},
			Validation:              Validation{Every: 100},
			NonFiniteLimit:          20,
		},
		Save: Save{
			Every: 500, KeepLast: 3, KeepLastLoRAs: 3, Formats: []string{"comfyui", "peft"},
			Output: "output", Name: "newbie_lora",
		},
		Sample:  Sample{Steps: 28, CFG: 4.5, CFGTrunc: 1, Seed: 42, Sampler: "midpoint", TimeShift: 6},
		Logging: Logging{Every: 10},
		Dist:    Dist{Timeout: 600},
	}
}

// File is the name the config was parsed under ("" for one built in code).
func (c *Config) File() string { return c.file }

// Line is the line of the key at path in the file ("train.learning_rate",
// "data.folders[1].path"), or 0 when the file does not set it.
func (c *Config) Line(path string) int { return c.lines[path] }

// IsSet reports whether the file sets the key at path (as opposed to the
// value being a default).
func (c *Config) IsSet(path string) bool {
	_, ok := c.lines[path]
	return ok
}
