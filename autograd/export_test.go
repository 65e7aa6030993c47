package autograd

// The separate-op definitions of the fused ops, for the tests that compare
// the two.
var (
	ComposeNormScale   = composeNormScale
	ComposeQKVNormRope = composeQKVNormRope
)
