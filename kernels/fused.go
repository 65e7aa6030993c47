package kernels

import "fmt"

// This file holds the fused ops of the Next-DiT block: what the engine used
// to issue as several back-to-back primitives, defined as exactly that
// composition (every stage rounded as the primitive that computed it would
// store it), so that a backend may run them as one pass over memory or, as
// the CPU backend does, literally as the composition (ComposeNormScale and
// the others below, over any Backend's primitives).

// ScaleMode is how NormScale turns its per-sample factor into the
// multiplier of the normalised rows.
type ScaleMode uint8

// Scale modes: the factor as it is, adaLN's scale (1 + s) and adaLN's tanh
// gate.
const (
	ScaleAsIs ScaleMode = iota
	ScaleOnePlus
	ScaleTanh
)

// String names the mode.
func (m ScaleMode) String() string {
	switch m {
	case ScaleAsIs:
		return "s"
	case ScaleOnePlus:
		return "1+s"
	case ScaleTanh:
		return "tanh(s)"
	}
	return fmt.Sprintf("ScaleMode(%d)", uint8(m))
}

// NormScaleArgs describes NormScale and NormScaleGrad over x [Rows, Cols]:
//
//	n = RMSNorm(x)·w                 (rstd = 1/√(mean(x²)+Eps), w may be nil)
//	m = n ⊙ f(S[sample])              (S nil: m = n)
//	y = Res + m                       (Res nil: y = m)
//
// Row r belongs to sample r/Seq and reads the factor of column j at
// S[SOff + (r/Seq)·SStride + j]: a chunk of adaLN's [B, 4·dim] modulation
// read in place. f is Mode's function, its result rounded to S's dtype (as a
// Tanh or Affine op on the chunk would store it); n, m and y are each
// rounded to y's dtype, which is what RMSNorm, Mul and Add writing y's dtype
// would give. Res has y's shape. In NormScaleGrad, Res is what dx adds
// to instead: dx = Res + the norm's gradient, the gradient rounded to dx's
// dtype first, as an Add after it would round the pair (Res may be dx
// itself: a gradient accumulated in place).
type NormScaleArgs struct {
	Rows, Cols int
	Eps        float64
	S          Buffer
	Seq        int
	SOff       int
	SStride    int
	Mode       ScaleMode
	Res        Buffer
}

// Samples is the number of samples (rows of S) the rows span.
func (a NormScaleArgs) Samples() int {
	if a.Seq <= 0 {
		return 0
	}
	return a.Rows / a.Seq
}

// Check reports arguments NormScale cannot take, for backends to share.
func (a NormScaleArgs) Check() error {
	switch {
	case a.Rows < 0 || a.Cols < 0:
		return fmt.Errorf("negative shape %d×%d", a.Rows, a.Cols)
	case a.Mode > ScaleTanh:
		return fmt.Errorf("unknown scale mode %d", a.Mode)
	case a.S == nil:
		return nil
	case a.Seq <= 0 || a.Rows%a.Seq != 0:
		return fmt.Errorf("%d rows are not whole samples of %d", a.Rows, a.Seq)
	case a.SOff < 0 || a.SStride < a.Cols:
		return fmt.Errorf("factor offset %d and stride %d do not hold rows of %d", a.SOff, a.SStride, a.Cols)
	case a.Rows > 0 && a.SOff+(a.Samples()-1)*a.SStride+a.Cols > a.S.Len():
		return fmt.Errorf("factor rows of %d at offset %d stride %d overrun its %d elements", a.Cols, a.SOff, a.SStride, a.S.Len())
	}
	return nil
}

// QKVArgs describes QKVNormRope and QKVNormRopeGrad: the fused projection
// qkv [B·S, (Hq+2·Hkv)·D] holds per token the Hq query heads, then the Hkv
// key heads, then the Hkv value heads, each of D elements. The op writes
//
//	q [B, S, Hq, D]  = Rope(RMSNorm(q heads)·wq)
//	k [B, S, Hkv, D] = Rope(RMSNorm(k heads)·wk)
//	v [B, S, Hkv, D] = the value heads
//
// per head of D elements (rstd = 1/√(mean(x²)+Eps), saved per head in
// rstdQ [B·S·Hq] and rstdK [B·S·Hkv]); the normalised heads are rounded to
// q's (k's) dtype before the rotation, as RMSNorm then Rope would store
// them. cos and sin [B, S, D/2] are the rotation's tables; Interleaved
// pairs as Rope does.
type QKVArgs struct {
	B, S, Hq, Hkv, D int
	Eps              float64
	Interleaved      bool
}

// Width is the row length of qkv.
func (a QKVArgs) Width() int { return (a.Hq + 2*a.Hkv) * a.D }

// Check reports shapes QKVNormRope cannot take.
func (a QKVArgs) Check() error {
	switch {
	case a.B < 0 || a.S < 0 || a.Hq < 0 || a.Hkv < 0 || a.D < 0:
		return fmt.Errorf("negative shape %+v", a)
	case a.D%2 != 0:
		return fmt.Errorf("head size %d is odd", a.D)
	}
	return nil
}

// ComposeSwiGLU runs SwiGLU on b as Unary(SiLU) then Binary(Mul).
func ComposeSwiGLU(b Backend, y, a, v Buffer) error {
	s := &scratch{b: b}
	defer s.free()
	t := s.get(a.DType(), a.Len())
	if s.err != nil {
		return s.err
	}
	n := []int{a.Len()}
	b.Unary(SiLU, t, a, UnaryParams{})
	b.Binary(Mul, y, n, t, n, v, n)
	return nil
}

// ComposeSwiGLUGrad runs SwiGLUGrad on b as the separate ops: dy⊙v, then
// UnaryGrad(SiLU) for da; SiLU(a), then dy⊙SiLU(a) for db.
func ComposeSwiGLUGrad(b Backend, da, db, dy, a, v Buffer) error {
	s := &scratch{b: b}
	defer s.free()
	n := []int{a.Len()}
	if da != nil {
		t := s.get(dy.DType(), a.Len())
		if s.err != nil {
			return s.err
		}
		b.Binary(Mul, t, n, dy, n, v, n)
		b.UnaryGrad(SiLU, da, a, t, UnaryParams{})
	}
	if db != nil {
		t := s.get(a.DType(), a.Len())
		if s.err != nil {
			return s.err
		}
		b.Unary(SiLU, t, a, UnaryParams{})
		b.Binary(Mul, db, n, dy, n, t, n)
	}
	return nil
}

// scratch allocates temporaries for the compositions and frees them all.
type scratch struct {
	b    Backend
	bufs []Buffer
	err  error
}

func (s *scratch) get(d DType, n int) Buffer {
	if s.err != nil {
		return nil
	}
	buf, err := s.b.Alloc(d, n)
	if err != nil {
		s.err = err
		return nil
	}
	s.bufs = append(s.bufs, buf)
	return buf
}

func (s *scratch) free() {
	for _, b := range s.bufs {
		s.b.Free(b)
	}
}

// factors writes f(S) for each sample into a [samples, Cols] buffer of S's
// dtype (the chunk copied out, then Tanh or Affine as the model's ops did).
func (s *scratch) factors(a NormScaleArgs) (raw, f Buffer) {
	n := a.Samples()
	raw = s.get(a.S.DType(), n*a.Cols)
	if raw == nil {
		return nil, nil
	}
	s.b.Copy2D(raw, 0, a.Cols, a.S, a.SOff, a.SStride, n, a.Cols)
	switch a.Mode {
	case ScaleOnePlus:
		f = s.get(a.S.DType(), n*a.Cols)
		if f != nil {
			s.b.Unary(Affine, f, raw, UnaryParams{A: 1, B: 1})
		}
	case ScaleTanh:
		f = s.get(a.S.DType(), n*a.Cols)
		if f != nil {
			s.b.Unary(Tanh, f, raw, UnaryParams{})
		}
	default:
		f = raw
	}
	return raw, f
}

// ComposeNormScale runs NormScale on b as RMSNorm, the factor's chunk copy
// and Tanh/Affine, Mul and Add: the definition of the op, used by the CPU
// backend and by the CUDA backend when its fused kernels are turned off.
// An allocation failure is returned (the backend records it as its own).
func ComposeNormScale(b Backend, y, rstd, x, w Buffer, a NormScaleArgs) error {
	s := &scratch{b: b}
	defer s.free()
	rc := []int{a.Rows, a.Cols}
	n := y
	if a.S != nil || a.Res != nil {
		n = s.get(y.DType(), a.Rows*a.Cols)
	}
	if s.err != nil {
		return s.err
	}
	b.RMSNorm(n, rstd, x, w, a.Rows, a.Cols, a.Eps)
	m := n
	if a.S != nil {
		_, f := s.factors(a)
		m = y
		if a.Res != nil {
			m = s.get(y.DType(), a.Rows*a.Cols)
		}
		if s.err != nil {
			return s.err
		}
		ns := a.Samples()
		b.Binary(Mul, m, []int{ns, a.Seq, a.Cols}, n, []int{ns, a.Seq, a.Cols}, f, []int{ns, 1, a.Cols})
	}
	if a.Res != nil {
		b.Binary(Add, y, rc, a.Res, rc, m, rc)
	}
	return nil
}

// ComposeNormScaleGrad runs NormScaleGrad on b as the backward of the
// composition: the norm recomputed, dn = dy⊙f(S), RMSNormGrad, and for ds
// the column sums of dy⊙n per sample (F32, F64 for F64 operands), rounded to
// S's dtype, through the mode's derivative, into ds's chunk with zeros
// elsewhere; with Res, the gradient apart and then Res + it into dx. dy
// has y's dtype.
func ComposeNormScaleGrad(b Backend, dx, ds, dy, x, w, rstd Buffer, a NormScaleArgs) error {
	s := &scratch{b: b}
	defer s.free()
	d := dy.DType()
	dn := dy
	var raw, f Buffer
	ns := a.Samples()
	full := []int{ns, a.Seq, a.Cols}
	if a.S != nil {
		raw, f = s.factors(a)
		dn = s.get(d, a.Rows*a.Cols)
		if s.err != nil {
			return s.err
		}
		b.Binary(Mul, dn, full, dy, full, f, []int{ns, 1, a.Cols})
	}
	if a.Res != nil {
		// The gradient apart, then the Add (Res may be dx).
		g := s.get(dx.DType(), a.Rows*a.Cols)
		if s.err != nil {
			return s.err
		}
		b.RMSNormGrad(g, nil, dn, x, w, rstd, a.Rows, a.Cols)
		rc := []int{a.Rows, a.Cols}
		b.Binary(Add, dx, rc, a.Res, rc, g, rc)
	} else {
		b.RMSNormGrad(dx, nil, dn, x, w, rstd, a.Rows, a.Cols)
	}
	if ds == nil || a.S == nil {
		return s.err
	}
	acc := F32
	if d == F64 || a.S.DType() == F64 {
		acc = F64
	}
	n := s.get(d, a.Rows*a.Cols)
	r := s.get(rstd.DType(), a.Rows)
	t := s.get(d, a.Rows*a.Cols)
	red := s.get(acc, ns*a.Cols)
	g := s.get(a.S.DType(), ns*a.Cols)
	if s.err != nil {
		return s.err
	}
	b.RMSNorm(n, r, x, w, a.Rows, a.Cols, a.Eps)
	b.Binary(Mul, t, full, dy, full, n, full)
	b.Reduce(Sum, red, t, ns, a.Seq, a.Cols)
	b.Cast(g, red)
	switch a.Mode {
	case ScaleOnePlus:
		b.UnaryGrad(Affine, g, g, g, UnaryParams{A: 1, B: 1})
	case ScaleTanh:
		b.UnaryGrad(Tanh, g, raw, g, UnaryParams{})
	}
	b.Fill(ds, 0)
	b.Copy2D(ds, a.SOff, a.SStride, g, 0, a.Cols, ns, a.Cols)
	return nil
}

// ComposeQKVNormRope runs QKVNormRope on b as the slices of qkv, the two
// RMSNorms and the two rotations.
func ComposeQKVNormRope(b Backend, q, k, v, rstdQ, rstdK, qkv, wq, wk, cos, sin Buffer, a QKVArgs) error {
	s := &scratch{b: b}
	defer s.free()
	rows, w := a.B*a.S, a.Width()
	for _, h := range []struct {
		out, rstd, wt Buffer
		heads, off    int
	}{{q, rstdQ, wq, a.Hq, 0}, {k, rstdK, wk, a.Hkv, a.Hq * a.D}} {
		n := h.heads * a.D
		x := s.get(qkv.DType(), rows*n)
		y := s.get(h.out.DType(), rows*n)
		if s.err != nil {
			return s.err
		}
		b.Copy2D(x, 0, n, qkv, h.off, w, rows, n)
		b.RMSNorm(y, h.rstd, x, h.wt, rows*h.heads, a.D, a.Eps)
		b.Rope(h.out, y, cos, sin, a.B, a.S, h.heads, a.D, a.Interleaved, false)
	}
	b.Copy2D(v, 0, a.Hkv*a.D, qkv, (a.Hq+a.Hkv)*a.D, w, rows, a.Hkv*a.D)
	return nil
}

// ComposeQKVNormRopeGrad runs QKVNormRopeGrad on b as the inverse
// rotations, the two RMSNormGrads and the copies into dqkv (every element
// written). dq and dk have q's and k's dtypes.
func ComposeQKVNormRopeGrad(b Backend, dqkv, dq, dk, dv, qkv, wq, wk, rstdQ, rstdK, cos, sin Buffer, a QKVArgs) error {
	s := &scratch{b: b}
	defer s.free()
	rows, w := a.B*a.S, a.Width()
	for _, h := range []struct {
		g, rstd, wt Buffer
		heads, off  int
	}{{dq, rstdQ, wq, a.Hq, 0}, {dk, rstdK, wk, a.Hkv, a.Hq * a.D}} {
		n := h.heads * a.D
		gr := s.get(h.g.DType(), rows*n)
		x := s.get(qkv.DType(), rows*n)
		dx := s.get(dqkv.DType(), rows*n)
		if s.err != nil {
			return s.err
		}
		b.Rope(gr, h.g, cos, sin, a.B, a.S, h.heads, a.D, a.Interleaved, true)
		b.Copy2D(x, 0, n, qkv, h.off, w, rows, n)
		b.RMSNormGrad(dx, nil, gr, x, h.wt, h.rstd, rows*h.heads, a.D)
		b.Copy2D(dqkv, h.off, w, dx, 0, n, rows, n)
	}
	b.Copy2D(dqkv, (a.Hq+a.Hkv)*a.D, w, dv, 0, a.Hkv*a.D, rows, a.Hkv*a.D)
	return nil
}

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
