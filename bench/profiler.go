package bench

import (
	"errors"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
)

// profiler wraps a backend to count the ops a step issues and, in timed
// mode, to attribute device time to each op: with the backend's device
// timer (kernels.DeviceTimer) when it has one, by events before and after
// each op, else by waiting for the device after each op. Outside a
// begin/end window it only forwards calls.
type profiler struct {
	kernels.Backend
	// rank is the LoRA rank, which marks the adapters' products.
	rank      int
	on, timed bool
	start     time.Time
	queue     float64 // seconds from begin to the first wait for the device
	queued    bool
	count     map[string]int
	seconds   map[string]float64
	// clock is the device timer of a timed window, nil when it waits;
	// spans are the window's ops as pairs of mark indices.
	clock kernels.DeviceTimer
	spans []markSpan
	marks int
	// err keeps the first failure that a wait of timed mode took from the
	// backend (Sync clears it there), to be returned by the next Sync or
	// Download as the backend would have.
	err error
}

// markSpan is one op of a device-timed window: the kind and the marks
// recorded before and after it.
type markSpan struct {
	kind          string
	before, after int
}

// profileWindow is what one begin/end window recorded.
type profileWindow struct {
	count   map[string]int
	seconds map[string]float64
	queue   float64
	// device is set when seconds are device time between marks; span is
	// then the window's device time from its first mark to its last.
	device bool
	span   float64
}

func (p *profiler) begin(timed bool) {
	p.on, p.timed, p.queued = true, timed, false
	p.count, p.seconds = map[string]int{}, map[string]float64{}
	p.clock, p.spans, p.marks = nil, nil, 0
	if t, ok := p.Backend.(kernels.DeviceTimer); ok && timed {
		if err := t.StartTiming(); err == nil {
			p.clock = t
			p.mark()
		}
	}
	p.start = time.Now()
	p.queue = 0
}

func (p *profiler) end() profileWindow {
	p.on = false
	if !p.queued {
		p.queue = time.Since(p.start).Seconds()
	}
	w := profileWindow{count: p.count, seconds: p.seconds, queue: p.queue}
	if p.clock == nil {
		return w
	}
	times, err := p.clock.StopTiming()
	p.clock = nil
	if err != nil {
		if p.err == nil {
			p.err = err
		}
		return w
	}
	w.device = true
	for _, s := range p.spans {
		if s.after < len(times) {
			w.seconds[s.kind] += times[s.after] - times[s.before]
		}
	}
	if len(times) > 0 {
		w.span = times[len(times)-1]
	}
	return w
}

// mark records a device timestamp and returns its index.
func (p *profiler) mark() int {
	p.clock.Mark()
	p.marks++
	return p.marks - 1
}

// takeErr returns and clears a failure held from a timed wait.
func (p *profiler) takeErr() error {
	err := p.err
	p.err = nil
	return err
}

// op runs one backend call, counting it (and timing it with a wait in timed
// mode) while a window is open.
func (p *profiler) op(kind string, call func()) {
	if !p.on {
		call()
		return
	}
	p.count[kind]++
	if !p.timed {
		call()
		return
	}
	if p.clock != nil {
		before := p.mark()
		call()
		p.spans = append(p.spans, markSpan{kind: kind, before: before, after: p.mark()})
		return
	}
	t := time.Now()
	call()
	if err := p.Backend.Sync(); err != nil && p.err == nil {
		p.err = err
	}
	p.seconds[kind] += time.Since(t).Seconds()
}

// waited marks the first wait for the device in a counting window.
func (p *profiler) waited() {
	if p.on && !p.queued {
		p.queued = true
		p.queue = time.Since(p.start).Seconds()
	}
}

// Sync waits for the device; a failure held from a timed wait comes first.
func (p *profiler) Sync() error {
	p.waited()
	err := p.Backend.Sync()
	if p.err != nil {
		err = errors.Join(p.takeErr(), err)
	}
	return err
}

// Download copies to the host; a failure held from a timed wait comes first.
func (p *profiler) Download(dst []byte, src kernels.Buffer, off int) error {
	p.waited()
	err := p.Backend.Download(dst, src, off)
	if p.err != nil {
		err = errors.Join(p.takeErr(), err)
	}
	return err
}

// Upload copies host bytes to the device (counted: it is a transfer queued
// on the stream like any op).
func (p *profiler) Upload(dst kernels.Buffer, off int, src []byte) {
	p.op("Upload", func() { p.Backend.Upload(dst, off, src) })
}

// Fill forwards with profiling.
func (p *profiler) Fill(dst kernels.Buffer, v float64) {
	p.op("Fill "+dtypeOf(dst), func() { p.Backend.Fill(dst, v) })
}

// Cast forwards with profiling.
func (p *profiler) Cast(dst, src kernels.Buffer) {
	p.op("Cast "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Cast(dst, src) })
}

// Copy2D forwards with profiling.
func (p *profiler) Copy2D(dst kernels.Buffer, dstOff, dstStride int, src kernels.Buffer, srcOff, srcStride int, rows, cols int) {
	p.op("Copy2D "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Copy2D(dst, dstOff, dstStride, src, srcOff, srcStride, rows, cols) })
}

// Permute forwards with profiling.
func (p *profiler) Permute(dst, src kernels.Buffer, shape []int, perm []int) {
	p.op("Permute", func() { p.Backend.Permute(dst, src, shape, perm) })
}

// Gemm forwards with profiling, telling the adapters' products (a side
// equal to the LoRA rank) from the others, which the frozen weights
// dominate, and the adapters' products by the side the rank is: N = r
// makes a [rows, r] factor (the down-projection, the factor's gradient),
// K = r spreads one over an output (the up-projection into y, the
// factor's share of dx), M = r is lora_A's gradient; "+C" marks those that
// accumulate into C (beta ≠ 0), which read it as well.
func (p *profiler) Gemm(g kernels.GemmArgs) {
	kind := "Gemm"
	if r := p.rank; r > 0 {
		switch {
		case g.N == r:
			kind = "Gemm (LoRA, N=r)"
		case g.K == r:
			kind = "Gemm (LoRA, K=r)"
		case g.M == r:
			kind = "Gemm (LoRA, M=r)"
		}
		if kind != "Gemm" && g.Beta != 0 {
			kind += " +C"
		}
	}
	p.op(kind, func() { p.Backend.Gemm(g) })
}

// unaryNames name the unary ops in the profile.
var unaryNames = map[kernels.UnaryOp]string{
	kernels.Identity: "Identity", kernels.Neg: "Neg", kernels.Abs: "Abs", kernels.Exp: "Exp",
	kernels.Log: "Log", kernels.Sqrt: "Sqrt", kernels.Rsqrt: "Rsqrt", kernels.Recip: "Recip",
	kernels.Square: "Square", kernels.Tanh: "Tanh", kernels.Sigmoid: "Sigmoid", kernels.SiLU: "SiLU",
	kernels.GELUTanh: "GELUTanh", kernels.Affine: "Affine", kernels.PowScalar: "PowScalar",
	kernels.DropoutMask: "DropoutMask",
}

// binaryNames name the binary ops in the profile.
var binaryNames = map[kernels.BinaryOp]string{
	kernels.Add: "Add", kernels.Sub: "Sub", kernels.Mul: "Mul", kernels.Div: "Div",
	kernels.Maximum: "Maximum", kernels.Minimum: "Minimum",
}

// dtypeOf names a buffer's dtype for a profile kind ("-" for none).
func dtypeOf(b kernels.Buffer) string {
	if b == nil {
		return "-"
	}
	return b.DType().String()
}

// sizeClass marks the elementwise ops over an activation-sized output (a
// million elements or more) apart from the small ones over weights, factors
// and conditioning: each kind's time is then read against its bytes.
func sizeClass(dst kernels.Buffer) string {
	if dst != nil && dst.Len() >= 1<<20 {
		return " (≥1M)"
	}
	return ""
}

// broadcastOf marks a binary op whose operands are not both full-size
// (a broadcast, e.g. a per-channel scale over every token).
func broadcastOf(dst, a, b []int) string {
	n := func(shape []int) int {
		k := 1
		for _, v := range shape {
			k *= v
		}
		return k
	}
	if n(a) != n(dst) || n(b) != n(dst) {
		return " (broadcast)"
	}
	return ""
}

// Unary forwards with profiling.
func (p *profiler) Unary(op kernels.UnaryOp, dst, src kernels.Buffer, up kernels.UnaryParams) {
	p.op("Unary "+unaryNames[op]+" "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Unary(op, dst, src, up) })
}

// UnaryGrad forwards with profiling.
func (p *profiler) UnaryGrad(op kernels.UnaryOp, dx, x, dy kernels.Buffer, up kernels.UnaryParams) {
	p.op("UnaryGrad "+unaryNames[op]+" "+dtypeOf(dy)+"→"+dtypeOf(dx), func() { p.Backend.UnaryGrad(op, dx, x, dy, up) })
}

// Binary forwards with profiling.
func (p *profiler) Binary(op kernels.BinaryOp, dst kernels.Buffer, dstShape []int, a kernels.Buffer, aShape []int, b kernels.Buffer, bShape []int) {
	p.op("Binary "+binaryNames[op]+" "+dtypeOf(a)+","+dtypeOf(b)+"→"+dtypeOf(dst)+broadcastOf(dstShape, aShape, bShape)+sizeClass(dst),
		func() { p.Backend.Binary(op, dst, dstShape, a, aShape, b, bShape) })
}

// Reduce forwards with profiling.
func (p *profiler) Reduce(op kernels.ReduceOp, dst, src kernels.Buffer, outer, axis, inner int) {
	p.op("Reduce "+dtypeOf(src)+"→"+dtypeOf(dst), func() { p.Backend.Reduce(op, dst, src, outer, axis, inner) })
}

// SumSquares forwards with profiling.
func (p *profiler) SumSquares(dst kernels.Buffer, srcs []kernels.Buffer) {
	p.op("SumSquares", func() { p.Backend.SumSquares(dst, srcs) })
}

// NonFinite forwards with profiling.
func (p *profiler) NonFinite(dst kernels.Buffer, srcs []kernels.Buffer) {
	p.op("NonFinite", func() { p.Backend.NonFinite(dst, srcs) })
}

// Softmax forwards with profiling.
func (p *profiler) Softmax(dst, src kernels.Buffer, rows, cols int) {
	p.op("Softmax", func() { p.Backend.Softmax(dst, src, rows, cols) })
}

// SoftmaxGrad forwards with profiling.
func (p *profiler) SoftmaxGrad(dx, y, dy kernels.Buffer, rows, cols int) {
	p.op("SoftmaxGrad", func() { p.Backend.SoftmaxGrad(dx, y, dy, rows, cols) })
}

// RMSNorm forwards with profiling.
func (p *profiler) RMSNorm(y, rstd, x, w kernels.Buffer, rows, cols int, eps float64) {
	p.op("RMSNorm "+dtypeOf(x)+"→"+dtypeOf(y), func() { p.Backend.RMSNorm(y, rstd, x, w, rows, cols, eps) })
}

// RMSNormGrad forwards with profiling.
func (p *profiler) RMSNormGrad(dx, dw, dy, x, w, rstd kernels.Buffer, rows, cols int) {
	p.op("RMSNormGrad "+dtypeOf(dy)+"→"+dtypeOf(dx), func() { p.Backend.RMSNormGrad(dx, dw, dy, x, w, rstd, rows, cols) })
}

// LayerNorm forwards with profiling.
func (p *profiler) LayerNorm(y, mean, rstd, x, w, b kernels.Buffer, rows, cols int, eps float64) {
	p.op("LayerNorm", func() { p.Backend.LayerNorm(y, mean, rstd, x, w, b, rows, cols, eps) })
}

// LayerNormGrad forwards with profiling.
func (p *profiler) LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, rows, cols int) {
	p.op("LayerNormGrad", func() { p.Backend.LayerNormGrad(dx, dw, db, dy, x, w, mean, rstd, rows, cols) })
}

// GroupNorm forwards with profiling.
func (p *profiler) GroupNorm(y, mean, rstd, x, w, b kernels.Buffer, n, c, hw, groups int, eps float64) {
	p.op("GroupNorm", func() { p.Backend.GroupNorm(y, mean, rstd, x, w, b, n, c, hw, groups, eps) })
}

// GroupNormGrad forwards with profiling.
func (p *profiler) GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd kernels.Buffer, n, c, hw, groups int) {
	p.op("GroupNormGrad", func() { p.Backend.GroupNormGrad(dx, dw, db, dy, x, w, mean, rstd, n, c, hw, groups) })
}

// Attention forwards with profiling.
func (p *profiler) Attention(a kernels.AttentionArgs, o, lse kernels.Buffer) {
	p.op("Attention", func() { p.Backend.Attention(a, o, lse) })
}

// AttentionGrad forwards with profiling.
func (p *profiler) AttentionGrad(a kernels.AttentionArgs, o, lse, dO, dQ, dK, dV kernels.Buffer) {
	p.op("AttentionGrad", func() { p.Backend.AttentionGrad(a, o, lse, dO, dQ, dK, dV) })
}

// Rope forwards with profiling.
func (p *profiler) Rope(dst, x, cos, sin kernels.Buffer, b, s, h, d int, interleaved, inverse bool) {
	p.op("Rope", func() { p.Backend.Rope(dst, x, cos, sin, b, s, h, d, interleaved, inverse) })
}

// Conv2D forwards with profiling.
func (p *profiler) Conv2D(y, x, w, bias kernels.Buffer, c kernels.ConvArgs) {
	p.op("Conv2D", func() { p.Backend.Conv2D(y, x, w, bias, c) })
}

// Conv2DGrad forwards with profiling.
func (p *profiler) Conv2DGrad(dx, dw, dbias, dy, x, w kernels.Buffer, c kernels.ConvArgs) {
	p.op("Conv2DGrad", func() { p.Backend.Conv2DGrad(dx, dw, dbias, dy, x, w, c) })
}

// Upsample2x forwards with profiling.
func (p *profiler) Upsample2x(y, x kernels.Buffer, n, c, h, w int) {
	p.op("Upsample2x", func() { p.Backend.Upsample2x(y, x, n, c, h, w) })
}

// Upsample2xGrad forwards with profiling.
func (p *profiler) Upsample2xGrad(dx, dy kernels.Buffer, n, c, h, w int) {
	p.op("Upsample2xGrad", func() { p.Backend.Upsample2xGrad(dx, dy, n, c, h, w) })
}

// Gather forwards with profiling.
func (p *profiler) Gather(dst, table, ids kernels.Buffer, dim int) {
	p.op("Gather", func() { p.Backend.Gather(dst, table, ids, dim) })
}

// ScatterAdd forwards with profiling.
func (p *profiler) ScatterAdd(dst, src, ids kernels.Buffer, dim int) {
	p.op("ScatterAdd", func() { p.Backend.ScatterAdd(dst, src, ids, dim) })
}

// RandNormal forwards with profiling.
func (p *profiler) RandNormal(dst kernels.Buffer, seed, offset uint64, mean, std float64) {
	p.op("RandNormal", func() { p.Backend.RandNormal(dst, seed, offset, mean, std) })
}

// RandUniform forwards with profiling.
func (p *profiler) RandUniform(dst kernels.Buffer, seed, offset uint64, lo, hi float64) {
	p.op("RandUniform", func() { p.Backend.RandUniform(dst, seed, offset, lo, hi) })
}

// AdamW forwards with profiling.
func (p *profiler) AdamW(a kernels.AdamWArgs) { p.op("AdamW", func() { p.Backend.AdamW(a) }) }

// NormScale forwards with profiling.
func (p *profiler) NormScale(y, rstd, x, w kernels.Buffer, a kernels.NormScaleArgs) {
	p.op("NormScale "+dtypeOf(x)+"→"+dtypeOf(y), func() { p.Backend.NormScale(y, rstd, x, w, a) })
}

// NormScaleGrad forwards with profiling.
func (p *profiler) NormScaleGrad(dx, ds, dy, x, w, rstd kernels.Buffer, a kernels.NormScaleArgs) {
	p.op("NormScaleGrad "+dtypeOf(dy)+"→"+dtypeOf(dx), func() { p.Backend.NormScaleGrad(dx, ds, dy, x, w, rstd, a) })
}

// QKVNormRope forwards with profiling.
func (p *profiler) QKVNormRope(q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin kernels.Buffer, a kernels.QKVArgs) {
	p.op("QKVNormRope", func() { p.Backend.QKVNormRope(q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin, a) })
}

// QKVNormRopeGrad forwards with profiling.
func (p *profiler) QKVNormRopeGrad(dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin kernels.Buffer, a kernels.QKVArgs) {
	p.op("QKVNormRopeGrad", func() { p.Backend.QKVNormRopeGrad(dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin, a) })
}

// BeginGraph forwards to the backend when it replays graphs.
func (p *profiler) BeginGraph(key string) { kernels.BeginGraph(p.Backend, key) }

// EndGraph forwards to the backend when it replays graphs.
func (p *profiler) EndGraph() { kernels.EndGraph(p.Backend) }

// GraphStats forwards to the backend; a backend without graphs reports
// them off.
func (p *profiler) GraphStats() kernels.GraphStats {
	if g, ok := p.Backend.(kernels.Graphs); ok {
		return g.GraphStats()
	}
	return kernels.GraphStats{Off: "the " + p.Backend.Name() + " backend has none"}
}

// SwiGLU forwards with profiling.
func (p *profiler) SwiGLU(y, a, b kernels.Buffer) {
	p.op("SwiGLU "+dtypeOf(a), func() { p.Backend.SwiGLU(y, a, b) })
}

// SwiGLUGrad forwards with profiling.
func (p *profiler) SwiGLUGrad(da, db, dy, a, b kernels.Buffer) {
	p.op("SwiGLUGrad "+dtypeOf(a), func() { p.Backend.SwiGLUGrad(da, db, dy, a, b) })
}

// ReserveConstants forwards to a backend that packs constants (the CUDA
// backend packs a model's frozen weights into one arena), so that the
// bench's memory figures are the trainer's: without it every weight would
// be an ordinary block rounded to its size class.
func (p *profiler) ReserveConstants(n int64, count int) {
	if ca, ok := p.Backend.(kernels.ConstantArena); ok {
		ca.ReserveConstants(n, count)
	}
}

// AllocConstant forwards to a backend that packs constants; on any other
// a constant is an ordinary buffer (as kernels.ConstantArena allows).
func (p *profiler) AllocConstant(d kernels.DType, n int) (kernels.Buffer, error) {
	if ca, ok := p.Backend.(kernels.ConstantArena); ok {
		return ca.AllocConstant(d, n)
	}
	return p.Backend.Alloc(d, n)
}
