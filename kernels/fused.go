package kernels

// GroupNormSiLUBackend is implemented by backends that run GroupNorm and
// the SiLU that follows it as one pass (the VAE normalises that way before
// almost every convolution). It is optional: autograd composes GroupNorm and
// Unary(SiLU) on backends without it, and always while recording a tape,
// whose backward needs the norm's own output.
type GroupNormSiLUBackend interface {
	// GroupNormSiLU writes y = SiLU(GroupNorm(x)) with GroupNorm's
	// arguments and statistics, rounding y once.
	GroupNormSiLU(y, mean, rstd, x, w, b Buffer, n, c, hw, groups int, eps float64)
}
