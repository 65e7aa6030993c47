// Package checkpoints holds every file format newbie-train reads or writes
// around the model, except the safetensors container itself (subpackage
// safetensors):
//
//   - LoRA adapters in a plain canonical form (LoRA, LoRALayer) and their
//     three interchange formats: a PEFT folder, a ComfyUI / diffusion-pipe
//     single file and a kohya single file (WriteLoRA, ReadLoRA).
//   - Base-weight key maps for the Next-DiT: the upstream names, ComfyUI's
//     `model.diffusion_model.` single files and the diffusers layout with
//     split q/k/v, single or sharded (MapWeightKeys, OpenWeights).
//   - Training-state folders: one folder per save, written under a temporary
//     name and renamed when whole, with a checksummed manifest (SaveState,
//     LoadState, LatestState, KeepLast).
//
// The package deliberately knows nothing of models/, optim/ or data/: it
// works on names, float32 slices and opaque JSON, so the model and trainer
// convert to and from these plain forms and the file code stays testable on
// its own.
package checkpoints
