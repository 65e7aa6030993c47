// Package train is the LoRA trainer: the flow-matching objective of
// NewBie-image (t = 1 is data, t = 0 noise, x_t = t·x1 + (1−t)·x0, target
// x1 − x0, MSE in float32), the optimizer step around it (loss scaling,
// accumulation, clipping, AdamW on fp32 masters), and the cadence of logs,
// saves and resumes — in one process, or data-parallel over the ranks of a
// job (Options.Dist), which train what one process accumulating their
// micro-batches trains (see dataparallel.go).
package train
