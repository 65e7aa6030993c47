package kerneltest

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Attention", testAttention)
	register("AttentionPaddedBatch", testAttentionPaddedBatch)
	register("AttentionMixedDTypes", testAttentionMixed)
	register("AttentionReferenceGradients", testAttentionReferenceGradients)
	register("PartBBadArguments", testPartBBadArguments)
}

// attnShape is one attention configuration: shapes and masks as in
// kernels.AttentionArgs.
type attnShape struct {
	B, Sq, Sk, Hq, Hkv, D int
	KeyLens               []int32
	Causal                bool
	Window                int
}

// String names the shape in subtest names.
func (s attnShape) String() string {
	str := fmt.Sprintf("B%d_Sq%d_Sk%d_H%d-%d_D%d", s.B, s.Sq, s.Sk, s.Hq, s.Hkv, s.D)
	if s.KeyLens != nil {
		str += fmt.Sprintf("_len%v", s.KeyLens)
	}
	if s.Causal {
		str += "_causal"
	}
	if s.Window > 0 {
		str += fmt.Sprintf("_win%d", s.Window)
	}
	return str
}

// visible is the mask exactly as the interface words it: keys j <
// KeyLens[b], and with Causal j ≤ i, and with a Window also j > i−Window.
func (s attnShape) visible(b, i, j int) bool {
	if s.KeyLens != nil && j >= int(s.KeyLens[b]) {
		return false
	}
	if s.Causal && j > i {
		return false
	}
	if s.Window > 0 && j <= i-s.Window {
		return false
	}
	return true
}

// qIdx and kIdx are flat indices into Q, O, dO [B, Sq, Hq, D] and K, V
// [B, Sk, Hkv, D]; nq and nk are their sizes; scale is the usual 1/√D.
func (s attnShape) qIdx(b, i, h, e int) int { return ((b*s.Sq+i)*s.Hq+h)*s.D + e }
func (s attnShape) kIdx(b, j, h, e int) int { return ((b*s.Sk+j)*s.Hkv+h)*s.D + e }
func (s attnShape) scale() float64          { return 1 / math.Sqrt(float64(s.D)) }
func (s attnShape) nq() int                 { return s.B * s.Sq * s.Hq * s.D }
func (s attnShape) nk() int                 { return s.B * s.Sk * s.Hkv * s.D }

// attnProbs returns, per (b, h, i), the full row of softmax probabilities
// P[j] (nil when the row sees no key) and its log-sum-exp, by the plain
// definition: materialise every score, mask, softmax.
func attnProbs(s attnShape, q, k []float64) [][]float64 {
	rows := make([][]float64, s.B*s.Hq*s.Sq)
	g := s.Hq / s.Hkv
	for b := 0; b < s.B; b++ {
		for h := 0; h < s.Hq; h++ {
			for i := 0; i < s.Sq; i++ {
				sc := make([]float64, s.Sk)
				mx := math.Inf(-1)
				for j := 0; j < s.Sk; j++ {
					if !s.visible(b, i, j) {
						sc[j] = math.Inf(-1)
						continue
					}
					var dot float64
					for e := 0; e < s.D; e++ {
						dot += q[s.qIdx(b, i, h, e)] * k[s.kIdx(b, j, h/g, e)]
					}
					sc[j] = dot * s.scale()
					mx = math.Max(mx, sc[j])
				}
				if math.IsInf(mx, -1) {
					continue
				}
				var sum float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx) // exp(−Inf) = 0 for masked keys
					sum += sc[j]
				}
				for j := range sc {
					sc[j] /= sum
				}
				// The log-sum-exp rides along as an extra element.
				rows[(b*s.Hq+h)*s.Sq+i] = append(sc, mx+math.Log(sum))
			}
		}
	}
	return rows
}

// attnRef is O = P·V and LSE per row in float64; rows that see no key get
// O = 0 and LSE = −Inf.
func attnRef(s attnShape, q, k, v []float64) (o, lse []float64) {
	g := s.Hq / s.Hkv
	o = make([]float64, s.nq())
	lse = make([]float64, s.B*s.Hq*s.Sq)
	P := attnProbs(s, q, k)
	for b := 0; b < s.B; b++ {
		for h := 0; h < s.Hq; h++ {
			for i := 0; i < s.Sq; i++ {
				p := P[(b*s.Hq+h)*s.Sq+i]
				if p == nil {
					lse[(b*s.Hq+h)*s.Sq+i] = math.Inf(-1)
					continue
				}
				lse[(b*s.Hq+h)*s.Sq+i] = p[s.Sk]
				for j := 0; j < s.Sk; j++ {
					for e := 0; e < s.D; e++ {
						o[s.qIdx(b, i, h, e)] += p[j] * v[s.kIdx(b, j, h/g, e)]
					}
				}
			}
		}
	}
	return o, lse
}

// attnGradRef is the analytic backward of attnRef with the full matrices:
// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P⊙(dP − rowsum(P⊙dP)), dQ = scale·dS·K,
// dK = scale·dSᵀ·Q, summing the query heads that share a kv head.
func attnGradRef(s attnShape, q, k, v, dO []float64) (dq, dk, dv []float64) {
	g := s.Hq / s.Hkv
	dq = make([]float64, s.nq())
	dk = make([]float64, s.nk())
	dv = make([]float64, s.nk())
	P := attnProbs(s, q, k)
	for b := 0; b < s.B; b++ {
		for h := 0; h < s.Hq; h++ {
			kh := h / g
			for i := 0; i < s.Sq; i++ {
				p := P[(b*s.Hq+h)*s.Sq+i]
				if p == nil {
					continue
				}
				dp := make([]float64, s.Sk)
				var rs float64
				for j := 0; j < s.Sk; j++ {
					for e := 0; e < s.D; e++ {
						dp[j] += dO[s.qIdx(b, i, h, e)] * v[s.kIdx(b, j, kh, e)]
					}
					rs += p[j] * dp[j]
				}
				for j := 0; j < s.Sk; j++ {
					ds := p[j] * (dp[j] - rs) * s.scale()
					for e := 0; e < s.D; e++ {
						dv[s.kIdx(b, j, kh, e)] += p[j] * dO[s.qIdx(b, i, h, e)]
						dq[s.qIdx(b, i, h, e)] += ds * k[s.kIdx(b, j, kh, e)]
						dk[s.kIdx(b, j, kh, e)] += ds * q[s.qIdx(b, i, h, e)]
					}
				}
			}
		}
	}
	return dq, dk, dv
}

// attnArgs builds the backend arguments for shape s over buffers q, k, v.
func attnArgs(s attnShape, q, k, v kernels.Buffer) kernels.AttentionArgs {
	return kernels.AttentionArgs{Q: q, K: k, V: v, B: s.B, Sq: s.Sq, Sk: s.Sk, Hq: s.Hq, Hkv: s.Hkv, D: s.D,
		Scale: s.scale(), KeyLens: s.KeyLens, Causal: s.Causal, Window: s.Window}
}

func testAttention(t *testing.T, b kernels.Backend) {
	shapes := []attnShape{
		{B: 2, Sq: 13, Sk: 13, Hq: 6, Hkv: 2, D: 96, KeyLens: []int32{13, 7}},
		{B: 1, Sq: 37, Sk: 37, Hq: 6, Hkv: 2, D: 40, Causal: true, Window: 3},
		{B: 2, Sq: 7, Sk: 45, Hq: 2, Hkv: 2, D: 256},
		// Several query blocks, causal with Sq ≠ Sk (rows past the last key
		// see them all), a sample with no key at all.
		{B: 2, Sq: 50, Sk: 41, Hq: 3, Hkv: 1, D: 40, KeyLens: []int32{30, 0}, Causal: true},
		{B: 1, Sq: 19, Sk: 70, Hq: 4, Hkv: 4, D: 13, Causal: true, Window: 5, KeyLens: []int32{66}},
	}
	for ci, s := range shapes {
		for _, d := range pbDTypesFor(ci) {
			t.Run(fmt.Sprintf("%v/%v", d, s), func(t *testing.T) {
				r := Rng(t)
				st := pbStat(d)
				qb, q := Put(t, b, d, Randn(r, s.nq(), 1))
				kb, k := Put(t, b, d, Randn(r, s.nk(), 1))
				vb, v := Put(t, b, d, Randn(r, s.nk(), 1))
				ob := Poisoned(t, b, d, s.nq())
				lb := Poisoned(t, b, st, s.B*s.Hq*s.Sq)
				a := attnArgs(s, qb, kb, vb)
				b.Attention(a, ob, lb)
				o, lse := attnRef(s, q, k, v)
				Check(t, "O", Get(t, b, ob), o, Tol(d, d))
				pbCheckInf(t, "LSE", Get(t, b, lb), lse, Tol(d, st))

				gb, dO := Put(t, b, d, Randn(r, s.nq(), 1))
				dqb := Poisoned(t, b, d, s.nq())
				dkb := Poisoned(t, b, d, s.nk())
				dvb := Poisoned(t, b, d, s.nk())
				b.AttentionGrad(a, ob, lb, gb, dqb, dkb, dvb)
				dq, dk, dv := attnGradRef(s, q, k, v, dO)
				Check(t, "dQ", Get(t, b, dqb), dq, Tol(d, d))
				Check(t, "dK", Get(t, b, dkb), dk, Tol(d, d))
				Check(t, "dV", Get(t, b, dvb), dv, Tol(d, d))
			})
		}
	}
}

// testAttentionMixed feeds BF16 Q, K, V and asks for F32 O and gradients:
// scores and sums are float32 either way, so only the single rounding of
// the stores differs from an F32 run.
func testAttentionMixed(t *testing.T, b kernels.Backend) {
	s := attnShape{B: 2, Sq: 21, Sk: 34, Hq: 6, Hkv: 3, D: 24, KeyLens: []int32{34, 19}, Causal: true, Window: 9}
	r := Rng(t)
	qb, q := Put(t, b, kernels.BF16, Randn(r, s.nq(), 1))
	kb, k := Put(t, b, kernels.BF16, Randn(r, s.nk(), 1))
	vb, v := Put(t, b, kernels.BF16, Randn(r, s.nk(), 1))
	ob, lb := Poisoned(t, b, kernels.F32, s.nq()), Poisoned(t, b, kernels.F32, s.B*s.Hq*s.Sq)
	a := attnArgs(s, qb, kb, vb)
	b.Attention(a, ob, lb)
	o, lse := attnRef(s, q, k, v)
	tol := Tol(kernels.F32, kernels.F32)
	Check(t, "O", Get(t, b, ob), o, tol)
	pbCheckInf(t, "LSE", Get(t, b, lb), lse, tol)
	gb, dO := Put(t, b, kernels.F32, Randn(r, s.nq(), 1))
	dqb, dkb, dvb := Poisoned(t, b, kernels.F32, s.nq()), Poisoned(t, b, kernels.F32, s.nk()), Poisoned(t, b, kernels.F32, s.nk())
	b.AttentionGrad(a, ob, lb, gb, dqb, dkb, dvb)
	dq, dk, dv := attnGradRef(s, q, k, v, dO)
	Check(t, "dQ", Get(t, b, dqb), dq, tol)
	Check(t, "dK", Get(t, b, dkb), dk, tol)
	Check(t, "dV", Get(t, b, dvb), dv, tol)
}

// testAttentionPaddedBatch checks that a sample gives the same bits whether
// it runs alone or right-padded inside a batch: padding must not leak into
// the sums, and padded keys must get exactly zero gradient.
func testAttentionPaddedBatch(t *testing.T, b kernels.Backend) {
	// 45 keys span two key blocks of the CPU backend; the second sample's
	// 37 keys end inside the second block.
	for _, batch := range []attnShape{
		{B: 2, Sq: 45, Sk: 45, Hq: 6, Hkv: 2, D: 40, KeyLens: []int32{45, 37}},
		{B: 2, Sq: 45, Sk: 45, Hq: 6, Hkv: 2, D: 40, KeyLens: []int32{45, 37}, Causal: true},
		{B: 2, Sq: 13, Sk: 13, Hq: 4, Hkv: 1, D: 96, KeyLens: []int32{13, 7}, Causal: true, Window: 3},
	} {
		for _, d := range []kernels.DType{kernels.F32, kernels.BF16} {
			t.Run(fmt.Sprintf("%v/%v", d, batch), func(t *testing.T) {
				attnPaddedBatch(t, b, d, batch)
			})
		}
	}
}

// attnPaddedBatch runs a two-sample right-padded batch and then each sample
// alone with exactly its keys, and requires the same bits.
func attnPaddedBatch(t *testing.T, b kernels.Backend, d kernels.DType, batch attnShape) {
	r := Rng(t)
	lens := batch.KeyLens
	q, k, v, dO := Randn(r, batch.nq(), 1), Randn(r, batch.nk(), 1), Randn(r, batch.nk(), 1), Randn(r, batch.nq(), 1)
	full := attnRun(t, b, d, batch, q, k, v, dO)
	for s := 0; s < batch.B; s++ {
		alone := attnShape{B: 1, Sq: batch.Sq, Sk: int(lens[s]), Hq: batch.Hq, Hkv: batch.Hkv, D: batch.D,
			Causal: batch.Causal, Window: batch.Window}
		nq, nk, sk := alone.nq(), alone.nk(), batch.nk()/batch.B
		qs, gs := q[s*nq:(s+1)*nq], dO[s*nq:(s+1)*nq]
		ks, vs := k[s*sk:s*sk+nk], v[s*sk:s*sk+nk]
		one := attnRun(t, b, d, alone, qs, ks, vs, gs)
		same := func(what string, got, want []float64) {
			t.Helper()
			Check(t, fmt.Sprintf("sample %d %s", s, what), got, want, 0)
		}
		same("O", full.o[s*nq:(s+1)*nq], one.o)
		// Late rows of the windowed case see no key: LSE = −Inf on both sides.
		pbCheckInf(t, fmt.Sprintf("sample %d LSE", s), full.lse[s*batch.Hq*batch.Sq:(s+1)*batch.Hq*batch.Sq], one.lse, 0)
		same("dQ", full.dq[s*nq:(s+1)*nq], one.dq)
		same("dK", full.dk[s*sk:s*sk+nk], one.dk)
		same("dV", full.dv[s*sk:s*sk+nk], one.dv)
		pad := make([]float64, sk-nk)
		same("dK of padded keys", full.dk[s*sk+nk:(s+1)*sk], pad)
		same("dV of padded keys", full.dv[s*sk+nk:(s+1)*sk], pad)
	}
}

// pbCheckInf is Check for results with infinite elements (LSE of rows that
// see no key): those must match exactly, the rest within tol. RelErr alone
// cannot take them: −Inf − (−Inf) is NaN, which it counts as a mismatch.
func pbCheckInf(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", what, len(got), len(want))
		return
	}
	g, w := append([]float64(nil), got...), append([]float64(nil), want...)
	for i := range w {
		if math.IsInf(w[i], 0) {
			if g[i] != w[i] {
				t.Errorf("%s: element %d is %v, want %v", what, i, g[i], w[i])
				return
			}
			g[i], w[i] = 0, 0
		}
	}
	Check(t, what, g, w, tol)
}

// attnResult holds what one forward and backward produced.
type attnResult struct{ o, lse, dq, dk, dv []float64 }

// attnRun runs the backend's forward and backward on host values.
func attnRun(t *testing.T, b kernels.Backend, d kernels.DType, s attnShape, q, k, v, dO []float64) attnResult {
	t.Helper()
	qb, _ := Put(t, b, d, q)
	kb, _ := Put(t, b, d, k)
	vb, _ := Put(t, b, d, v)
	gb, _ := Put(t, b, d, dO)
	ob := Poisoned(t, b, d, s.nq())
	lb := Poisoned(t, b, pbStat(d), s.B*s.Hq*s.Sq)
	dqb := Poisoned(t, b, d, s.nq())
	dkb := Poisoned(t, b, d, s.nk())
	dvb := Poisoned(t, b, d, s.nk())
	a := attnArgs(s, qb, kb, vb)
	b.Attention(a, ob, lb)
	b.AttentionGrad(a, ob, lb, gb, dqb, dkb, dvb)
	return attnResult{Get(t, b, ob), Get(t, b, lb), Get(t, b, dqb), Get(t, b, dkb), Get(t, b, dvb)}
}

// testAttentionReferenceGradients checks attnGradRef against central
// differences of attnRef's loss ⟨O, G⟩ on tiny shapes with every mask.
func testAttentionReferenceGradients(t *testing.T, _ kernels.Backend) {
	for _, s := range []attnShape{
		{B: 2, Sq: 4, Sk: 5, Hq: 2, Hkv: 1, D: 3, KeyLens: []int32{5, 3}},
		{B: 1, Sq: 6, Sk: 5, Hq: 2, Hkv: 2, D: 2, Causal: true, Window: 2, KeyLens: []int32{4}},
	} {
		t.Run(s.String(), func(t *testing.T) {
			r := Rng(t)
			q, k, v, g := Randn(r, s.nq(), 1), Randn(r, s.nk(), 1), Randn(r, s.nk(), 1), Randn(r, s.nq(), 1)
			loss := func() float64 { o, _ := attnRef(s, q, k, v); return pbDot(o, g) }
			dq, dk, dv := attnGradRef(s, q, k, v, g)
			const h, tol = 1e-6, 1e-7
			Check(t, "dQ", dq, pbNumGrad(loss, q, h), tol)
			Check(t, "dK", dk, pbNumGrad(loss, k, h), tol)
			Check(t, "dV", dv, pbNumGrad(loss, v, h), tol)
		})
	}
}

// testPartBBadArguments checks that the norm, attention, rope, conv and
// upsample ops report arguments that disagree with their buffers through
// Sync, naming the op, instead of panicking or writing out of bounds.
func testPartBBadArguments(t *testing.T, b kernels.Backend) {
	buf := func(d kernels.DType, n int) kernels.Buffer {
		x, _ := Put(t, b, d, Randn(Rng(t), n, 1))
		return x
	}
	s := attnShape{B: 1, Sq: 5, Sk: 6, Hq: 2, Hkv: 1, D: 4}
	q, k, v := buf(kernels.F32, s.nq()), buf(kernels.F32, s.nk()), buf(kernels.F32, s.nk())
	o, lse := buf(kernels.F32, s.nq()), buf(kernels.F32, s.Hq*s.Sq)
	freed := buf(kernels.F32, 12)
	b.Free(freed)
	for _, tc := range []struct {
		name, op string
		call     func()
	}{
		{"rmsnorm short y", "RMSNorm", func() { b.RMSNorm(buf(kernels.F32, 11), buf(kernels.F32, 3), buf(kernels.F32, 12), nil, 3, 4, 1e-6) }},
		{"rmsnorm bf16 rstd", "RMSNorm", func() {
			b.RMSNorm(buf(kernels.F32, 12), buf(kernels.BF16, 3), buf(kernels.F32, 12), nil, 3, 4, 1e-6)
		}},
		{"layernorm freed x", "LayerNorm", func() {
			b.LayerNorm(buf(kernels.F32, 12), buf(kernels.F32, 3), buf(kernels.F32, 3), freed, nil, nil, 3, 4, 1e-6)
		}},
		{"groupnorm groups", "GroupNorm", func() {
			b.GroupNorm(buf(kernels.F32, 12), buf(kernels.F32, 2), buf(kernels.F32, 2), buf(kernels.F32, 12), nil, nil, 1, 6, 2, 4, 1e-6)
		}},
		{"groupnormgrad short dw", "GroupNormGrad", func() {
			b.GroupNormGrad(buf(kernels.F32, 12), buf(kernels.F32, 5), nil, buf(kernels.F32, 12), buf(kernels.F32, 12), nil,
				buf(kernels.F32, 2), buf(kernels.F32, 2), 1, 6, 2, 2)
		}},
		{"attention window without causal", "Attention", func() {
			a := attnArgs(s, q, k, v)
			a.Window = 2
			b.Attention(a, o, lse)
		}},
		{"attention heads", "Attention", func() {
			a := attnArgs(s, q, k, v)
			a.Hkv = 3
			b.Attention(a, o, lse)
		}},
		{"attention key lens", "Attention", func() {
			a := attnArgs(s, q, k, v)
			a.KeyLens = []int32{7}
			b.Attention(a, o, lse)
		}},
		{"attention mixed dtypes", "Attention", func() {
			b.Attention(attnArgs(s, q, buf(kernels.BF16, s.nk()), v), o, lse)
		}},
		{"attentiongrad short dK", "AttentionGrad", func() {
			b.AttentionGrad(attnArgs(s, q, k, v), o, lse, o, buf(kernels.F32, s.nq()), buf(kernels.F32, 3), buf(kernels.F32, s.nk()))
		}},
		{"rope odd d", "Rope", func() {
			b.Rope(buf(kernels.F32, 15), buf(kernels.F32, 15), buf(kernels.F32, 3), buf(kernels.F32, 3), 1, 1, 3, 5, false, false)
		}},
		{"rope i32", "Rope", func() {
			b.Rope(buf(kernels.F32, 8), buf(kernels.I32, 8), buf(kernels.F32, 2), buf(kernels.F32, 2), 1, 1, 2, 4, true, false)
		}},
		{"conv short w", "Conv2D", func() {
			a := kernels.ConvArgs{N: 1, Cin: 2, H: 5, W: 5, Cout: 3, KH: 3, KW: 3, Stride: 1, Pad: 1}
			b.Conv2D(buf(kernels.F32, 75), buf(kernels.F32, 50), buf(kernels.F32, 53), nil, a)
		}},
		{"conv kernel too big", "Conv2DGrad", func() {
			a := kernels.ConvArgs{N: 1, Cin: 1, H: 2, W: 2, Cout: 1, KH: 5, KW: 5, Stride: 1, Pad: 1}
			b.Conv2DGrad(nil, nil, nil, buf(kernels.F32, 1), buf(kernels.F32, 4), buf(kernels.F32, 25), a)
		}},
		{"upsample short y", "Upsample2x", func() { b.Upsample2x(buf(kernels.F32, 15), buf(kernels.F32, 4), 1, 1, 2, 2) }},
		{"upsamplegrad short dx", "Upsample2xGrad", func() { b.Upsample2xGrad(buf(kernels.F32, 3), buf(kernels.F32, 16), 1, 1, 2, 2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := b.Sync(); err != nil {
				t.Fatalf("failure left over before the call: %v", err)
			}
			tc.call()
			err := b.Sync()
			if err == nil {
				t.Fatalf("bad arguments were not reported")
			}
			if msg := err.Error(); !strings.Contains(msg, tc.op) {
				t.Errorf("the failure %q does not name %s", msg, tc.op)
			}
		})
	}
}
