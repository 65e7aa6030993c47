// Package newbie is NewBie-image-Exp0.1 as a whole pipeline of components:
// the Next-DiT (models/nextdit), the FLUX VAE (models/vae), Gemma 3 4B and
// Jina CLIP v2's text tower (models/textenc) with their tokenizers
// (tokenizers). It knows where each component lives on disk and how the
// cache step runs them one at a time.
//
// Discover finds the components of a model folder — the official Hugging
// Face repository NewBie-AI/NewBie-image-Exp0.1 (transformer/, vae/,
// text_encoder/ and clip_model/, each encoder with its tokenizer), the
// diffusers port's layout (transformer/, vae/, text_encoder/,
// text_encoder_2/, tokenizer/, tokenizer_2/), or a flat folder of single
// files — and single files named one by one (Sources), which override what
// the folder gives. Every file is classified by its content (tensor names,
// read through the packages' own layout recognisers), never by its name
// alone, so a renamed file still works and a file in the wrong slot is an
// error that names the file and what it really holds. Missing components
// are reported together, each with what it is for and where it was looked
// for (Model.Require).
//
// GemmaEncoder and JinaEncoder adapt the loaded text encoders to the
// trainer's data.TextEncoder: tokenize as NewBie does (tokenizers.GemmaBatch,
// tokenizers.JinaBatch), encode in batches, and count truncated texts so
// the caller can warn once per dataset. Pipeline loads one component at a
// time for the cache step and frees it before the next (so the step's peak
// memory is its largest phase, not the sum), checks each phase's estimated
// peak against the device before starting it (Check), and records each
// phase's time and measured peak.
//
// The memory plan estimates every phase of a run before it starts —
// EstimateVAEEncode, EstimateGemma, EstimateJina for the cache step,
// EstimateTrain for the LoRA training step, EstimateVAEDecode for
// previews — from the architectures and the run's shapes, batch, rank,
// checkpointing and dtypes; the tests hold each against the peak measured
// on the CPU backend.
//
// WriteRandom writes a complete model folder in either layout with random
// weights, tiny or full size, with small real-format tokenizers generated
// at run time: the tests, the demo and the full-size device run use it, as
// no real weights can be downloaded there.
package newbie
