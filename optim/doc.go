// Package optim turns gradients into parameter updates: AdamW on fp32 master
// weights with parameter groups, the precision modes of a run, a loss scaler
// with PyTorch GradScaler semantics, gradient clipping by global norm,
// gradient accumulation over micro-batches, learning-rate schedules, and the
// optimizer state a checkpoint stores so a resumed run continues exactly.
//
// It works on kernels.Backend buffers directly: a trainable parameter is a
// name, a master buffer and a gradient buffer (see Param), so it needs nothing
// from autograd and runs unchanged on every backend. Semantics follow
// PyTorch's (torch.optim.AdamW, torch.amp.GradScaler,
// torch.nn.utils.clip_grad_norm_, the transformers/diffusers schedules) so
// hyperparameters carry over from the scripts users already know.
//
// One optimizer step (Optimizer.Step) costs one synchronisation: the
// non-finite flag and the sum of squares of all gradients are computed on the
// device in one pass each and read together; the unscale factor 1/scale, the
// 1/micro-batches average and the clipping coefficient are folded into the
// fused AdamW's GradScale, so gradients are never rewritten.
package optim
