// Package pipeline makes images with a Next-DiT: prompts through the text
// encoders (behind the system prompt as upstream inference puts it), noise
// from a seed, the sampler with classifier-free guidance batched as
// upstream's forward_with_cfg, the latent through a decoder (the FLUX VAE,
// or the stand-in of the tiny demo model), and PNG files carrying their
// settings in the A1111 "parameters" text chunk. `newbie-train sample`, a
// training run's previews and the replay of upstream's reference sampling
// runs all go through it.
package pipeline
