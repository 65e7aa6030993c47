// Package nextdit is the Next-DiT diffusion transformer of NewBie-image-Exp0.1
// (upstream class NextDiT_CLIP) and its Lumina-Image-2.0 sibling, built from
// autograd ops so that one forward serves training (with gradients, autocast
// and activation checkpointing) and parity checks against the upstream
// PyTorch numbers.
//
// The network, in upstream terms: latents are cut into p×p patches
// (flattened in pH, pW, C order) and embedded by x_embedder; the timestep
// goes through a sinusoidal embedding and t_embedder, and, when the model
// has a CLIP-pooled path, is joined with clip_text_pooled_proj(pooled) by
// time_text_embed into the adaLN conditioning; caption features go through
// cap_embedder and the context refiner blocks (no modulation); image tokens
// through the noise refiner blocks; then every sample becomes one sequence
// [caption (its own length); image tokens], padded at the end, run through
// the joint blocks with a key-padding mask and 3-axis RoPE, and the final
// layer maps the image tokens back to patches.
//
// Weights live in a Model under the upstream key names
// (layers.0.attention.qkv.weight, …). Frozen weights are autograd Constants
// in a storage dtype (BF16 by default, F32, or F64 for float64 parity);
// SetTrainable turns chosen ones into fp32 (or f64) Params. Every linear
// layer is routed through an optional LinearHook, which is how LoRA adapters
// (package models/lora) add their low-rank update.
package nextdit
