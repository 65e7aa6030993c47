// Package vae is the FLUX.1 autoencoder: diffusers' AutoencoderKL in the
// FLUX layout (16 latent channels, four DownEncoderBlock2D / UpDecoderBlock2D
// stages, GroupNorm with 32 groups and eps 1e-6, one single-head
// self-attention in each mid-block, no quant / post-quant convolutions),
// built from autograd ops so that it runs on any kernels backend.
//
// The trainer needs the encoder: images in [−1, 1] become the latents the
// DiT learns on, latent = (mean − shift) × scale with FLUX's shift 0.1159
// and scale 0.3611. The decoder turns an (unscaled) latent back into an
// image for evaluation samples. Weights are read from a safetensors file
// with diffusers key names (encoder.down_blocks.0.resnets.0.norm1.weight,
// decoder.mid_block.attentions.0.to_q.weight, …) or with Black Forest
// Labs' names (FLUX's original ae.safetensors); the architecture comes from
// the file's __metadata__["config"], else from a config.json beside the
// file (a diffusers vae/ folder), else it is FLUX.1's.
//
// Three pieces are composed here because the engine lacks them: the
// downsampler's asymmetric zero pad (a Concat with zeros), the
// log-variance clamp (from Abs), and attention for heads wider than the
// fused op's 256 (FLUX's mid-block head is 512 wide): explicit products
// and a softmax over chunks of query rows.
//
// Decode works in overlapping, linearly blended latent tiles above
// Options.DecodeTile (128 by default: images above 1024² on a side), as
// diffusers' tiled_decode does, so the decoder's memory stays bounded.
//
// Encoder wraps a loaded VAE as a data.ImageEncoder, so the encode cache
// and the loader use the real model where tests and the demo use
// data.StandInVAE.
package vae
