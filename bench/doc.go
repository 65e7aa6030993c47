// Package bench measures the trainer: it builds a Next-DiT preset with
// random weights and LoRA adapters on a backend and times the trainer's own
// step (train.Stepper) per activation-checkpointing mode, with peak memory,
// the anchor's FLOP count and, on request, a per-op profile taken through a
// counting wrapper around the backend. `newbie-train bench` is its command.
package bench
