package cpu

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/newbie-train/newbie-train/kernels"
)

// Attention follows FlashAttention-2 (Dao, 2023) on the CPU: the [Sq, Sk]
// score matrix is never stored. The forward walks blocks of keys with an
// online softmax (a running max m and sum l per query row, rescaling the
// partial output when the max grows) and saves LSE = m + log l. The backward
// recomputes each probability from LSE, P = exp(scale·q·k − LSE), and forms
// dS = P⊙(dP − D) with D = rowsum(dO⊙O).
//
// Every mask the interface offers leaves a query row a contiguous range of
// keys [lo, hi), so masking is loop bounds, never −Inf scores.

const (
	attnQueryBlock = 16 // query positions per forward task
	attnKeyBlock   = 32 // keys per block: K and V blocks of D ≤ 256 stay in L1/L2
)

// attnKeyRange returns the keys [lo, hi) that query row i of sample b sees;
// lo ≥ hi means none.
func attnKeyRange(a *kernels.AttentionArgs, b, i int) (lo, hi int) {
	hi = a.Sk
	if a.KeyLens != nil {
		hi = min(hi, int(a.KeyLens[b]))
	}
	if a.Causal {
		hi = min(hi, i+1)
		if a.Window > 0 {
			lo = max(0, i-a.Window+1)
		}
	}
	return lo, hi
}

// attnArgs validates the shapes, masks and Q/K/V operands shared by the
// forward and the backward, returning the three input buffers.
func (c *Backend) attnArgs(op string, a *kernels.AttentionArgs) (q, k, v *buffer) {
	if a.B < 1 || a.Sq < 1 || a.Sk < 1 || a.Hq < 1 || a.Hkv < 1 || a.D < 1 {
		c.fail("%s: bad shape B=%d Sq=%d Sk=%d Hq=%d Hkv=%d D=%d", op, a.B, a.Sq, a.Sk, a.Hq, a.Hkv, a.D)
		return nil, nil, nil
	}
	if !c.shapeOK(op, a.B, a.Sq, a.Hq, a.D) || !c.shapeOK(op, a.B, a.Sk, a.Hkv, a.D) {
		return nil, nil, nil
	}
	if a.Hq%a.Hkv != 0 {
		c.fail("%s: %d query heads are not a multiple of %d kv heads", op, a.Hq, a.Hkv)
		return nil, nil, nil
	}
	if a.D > 256 {
		c.fail("%s: head size %d exceeds 256", op, a.D)
		return nil, nil, nil
	}
	if a.KeyLens != nil {
		if len(a.KeyLens) != a.B {
			c.fail("%s: KeyLens has %d entries for batch %d", op, len(a.KeyLens), a.B)
			return nil, nil, nil
		}
		for b, n := range a.KeyLens {
			if n < 0 || int(n) > a.Sk {
				c.fail("%s: KeyLens[%d] = %d is outside [0, %d]", op, b, n, a.Sk)
				return nil, nil, nil
			}
		}
	}
	if a.Window < 0 || (a.Window > 0 && !a.Causal) {
		c.fail("%s: Window %d needs Causal (a sliding window is only defined on causal attention)", op, a.Window)
		return nil, nil, nil
	}
	if math.IsNaN(a.Scale) || math.IsInf(a.Scale, 0) {
		c.fail("%s: scale %v is not finite", op, a.Scale)
		return nil, nil, nil
	}
	q = c.floatArg(op, "Q", a.Q, a.B*a.Sq*a.Hq*a.D)
	k = c.floatArg(op, "K", a.K, a.B*a.Sk*a.Hkv*a.D)
	v = c.floatArg(op, "V", a.V, a.B*a.Sk*a.Hkv*a.D)
	if q == nil || k == nil || v == nil {
		return nil, nil, nil
	}
	if k.dt != q.dt || v.dt != q.dt {
		c.fail("%s: Q, K and V must share one dtype, got %v, %v, %v", op, q.dt, k.dt, v.dt)
		return nil, nil, nil
	}
	return q, k, v
}

// Attention computes O = softmax(scale·Q·Kᵀ + mask)·V and LSE, the
// log-sum-exp of each row's scaled, masked scores.
func (c *Backend) Attention(a kernels.AttentionArgs, o, lse kernels.Buffer) {
	const op = "Attention"
	q, k, v := c.attnArgs(op, &a)
	if q == nil {
		return
	}
	ob := c.floatArg(op, "O", o, a.B*a.Sq*a.Hq*a.D)
	lb := c.statArg(op, "LSE", lse, a.B*a.Hq*a.Sq)
	if ob == nil || lb == nil {
		return
	}
	if anyF64(q, ob) {
		attnFwd[float64](&a, q, k, v, ob, lb)
	} else {
		attnFwd[float32](&a, q, k, v, ob, lb)
	}
}

// attnFwd is the forward in compute type T (see the file comment).
func attnFwd[T realT](a *kernels.AttentionArgs, q, k, v, o, lse *buffer) {
	qs, ks, vs := viewReal[T](q), viewReal[T](k), viewReal[T](v)
	g := a.Hq / a.Hkv
	d := a.D
	scale := T(a.Scale)
	negInf := T(math.Inf(-1))
	nqb := (a.Sq + attnQueryBlock - 1) / attnQueryBlock
	// A task is one block of query positions of one (sample, kv head); all g
	// query heads sharing that kv head ride along, so each K/V block loaded
	// serves g·attnQueryBlock rows.
	attnParallel(a.B*a.Hkv*nqb, func() func(t int) {
		rows := attnQueryBlock * g
		m := make([]T, rows)
		l := make([]T, rows)
		acc := make([]T, rows*d)
		s := make([]T, attnKeyBlock)
		return func(t int) {
			b, kvh, qb := t/(a.Hkv*nqb), (t/nqb)%a.Hkv, t%nqb
			i0 := qb * attnQueryBlock
			i1 := min(a.Sq, i0+attnQueryBlock)
			jmin, jmax := a.Sk, 0
			for i := i0; i < i1; i++ {
				lo, hi := attnKeyRange(a, b, i)
				if lo < hi {
					jmin, jmax = min(jmin, lo), max(jmax, hi)
				}
			}
			for r := range rows {
				m[r], l[r] = negInf, 0
			}
			clear(acc)
			for j0 := jmin; j0 < jmax; j0 += attnKeyBlock {
				j1 := min(j0+attnKeyBlock, jmax)
				for i := i0; i < i1; i++ {
					lo, hi := attnKeyRange(a, b, i)
					ja, je := max(lo, j0), min(hi, j1)
					if ja >= je {
						continue
					}
					for hh := 0; hh < g; hh++ {
						r := (i-i0)*g + hh
						qoff := ((b*a.Sq+i)*a.Hq + kvh*g + hh) * d
						qv := qs[qoff : qoff+d]
						sc := s[:je-ja]
						attnScores(sc, qv, ks, ((b*a.Sk+ja)*a.Hkv+kvh)*d, a.Hkv*d, scale)
						mx := m[r]
						for _, x := range sc {
							mx = max(mx, x)
						}
						// Rescale what was summed under the old max; the
						// first block has m = −Inf, so alpha = 0.
						alpha := T(math.Exp(float64(m[r] - mx)))
						var sum T
						for jj, x := range sc {
							p := T(math.Exp(float64(x - mx)))
							sc[jj] = p
							sum += p
						}
						l[r] = l[r]*alpha + sum
						ar := acc[r*d : (r+1)*d]
						if alpha != 1 {
							for e := range ar {
								ar[e] *= alpha
							}
						}
						attnAccumulate(ar, sc, vs, ((b*a.Sk+ja)*a.Hkv+kvh)*d, a.Hkv*d)
						m[r] = mx
					}
				}
			}
			for i := i0; i < i1; i++ {
				for hh := 0; hh < g; hh++ {
					r := (i-i0)*g + hh
					ar := acc[r*d : (r+1)*d]
					lv := float64(negInf)
					if l[r] > 0 {
						inv := 1 / l[r]
						for e := range ar {
							ar[e] *= inv
						}
						lv = float64(m[r]) + math.Log(float64(l[r]))
					} // else no key is visible: O = 0 (acc is still zero), LSE = −Inf.
					lse.set((b*a.Hq+kvh*g+hh)*a.Sq+i, float64(T(lv)))
				}
				// The g heads of one position are adjacent in O.
				writeReal(o, ((b*a.Sq+i)*a.Hq+kvh*g)*d, acc[(i-i0)*g*d:(i-i0+1)*g*d])
			}
		}
	})
}

// AttentionGrad computes dQ, dK and dV (overwritten) from dO, the forward's
// inputs, its output O and its LSE.
func (c *Backend) AttentionGrad(a kernels.AttentionArgs, o, lse, dO, dQ, dK, dV kernels.Buffer) {
	const op = "AttentionGrad"
	q, k, v := c.attnArgs(op, &a)
	if q == nil {
		return
	}
	nq, nk := a.B*a.Sq*a.Hq*a.D, a.B*a.Sk*a.Hkv*a.D
	ob := c.floatArg(op, "O", o, nq)
	lb := c.statArg(op, "LSE", lse, a.B*a.Hq*a.Sq)
	gb := c.floatArg(op, "dO", dO, nq)
	dqb := c.floatArg(op, "dQ", dQ, nq)
	dkb := c.floatArg(op, "dK", dK, nk)
	dvb := c.floatArg(op, "dV", dV, nk)
	if ob == nil || lb == nil || gb == nil || dqb == nil || dkb == nil || dvb == nil {
		return
	}
	if anyF64(q, dqb, dkb, dvb) {
		attnBwd[float64](&a, q, k, v, ob, lb, gb, dqb, dkb, dvb)
	} else {
		attnBwd[float32](&a, q, k, v, ob, lb, gb, dqb, dkb, dvb)
	}
}

// attnBwd is the backward in compute type T (see the file comment).
func attnBwd[T realT](a *kernels.AttentionArgs, q, k, v, o, lse, dO, dQ, dK, dV *buffer) {
	qs, ks, vs := viewReal[T](q), viewReal[T](k), viewReal[T](v)
	ov, gs, ls := viewReal[T](o), viewReal[T](dO), viewReal[T](lse)
	g := a.Hq / a.Hkv
	d := a.D
	scale := T(a.Scale)
	// One task per (sample, kv head): it owns the dK/dV rows of its kv head
	// and the dQ rows of the g query heads that read it, so every gradient
	// element is summed by one goroutine in one fixed order, with no locks.
	attnParallel(a.B*a.Hkv, func() func(t int) {
		dq := make([]T, a.Sq*g*d)
		dk := make([]T, a.Sk*d)
		dv := make([]T, a.Sk*d)
		dd := make([]T, a.Sq*g)
		return func(t int) {
			b, kvh := t/a.Hkv, t%a.Hkv
			clear(dq)
			clear(dk)
			clear(dv)
			// D_r = dO_r·O_r, the Σ_j P·dP term of the softmax backward.
			for i := 0; i < a.Sq; i++ {
				for hh := 0; hh < g; hh++ {
					off := ((b*a.Sq+i)*a.Hq + kvh*g + hh) * d
					dd[i*g+hh] = attnDot(gs[off:off+d], ov[off:off+d])
				}
			}
			for j0 := 0; j0 < a.Sk; j0 += attnKeyBlock {
				j1 := min(j0+attnKeyBlock, a.Sk)
				for i := 0; i < a.Sq; i++ {
					lo, hi := attnKeyRange(a, b, i)
					ja, je := max(lo, j0), min(hi, j1)
					if ja >= je {
						continue
					}
					for hh := 0; hh < g; hh++ {
						r := i*g + hh
						h := kvh*g + hh
						lv := ls[(b*a.Hq+h)*a.Sq+i]
						if math.IsInf(float64(lv), -1) {
							continue
						}
						off := ((b*a.Sq+i)*a.Hq + h) * d
						qv, gv := qs[off:off+d], gs[off:off+d]
						dqr := dq[r*d : (r+1)*d]
						attnBwdRow(qv, gv, dqr, dk, dv, ks, vs, ja, je, ((b*a.Sk)*a.Hkv+kvh)*d, a.Hkv*d, d, scale, lv, dd[r])
					}
				}
			}
			for i := 0; i < a.Sq; i++ {
				writeReal(dQ, ((b*a.Sq+i)*a.Hq+kvh*g)*d, dq[i*g*d:(i+1)*g*d])
			}
			for j := 0; j < a.Sk; j++ {
				off := ((b*a.Sk+j)*a.Hkv + kvh) * d
				writeReal(dK, off, dk[j*d:(j+1)*d])
				writeReal(dV, off, dv[j*d:(j+1)*d])
			}
		}
	})
}

// attnParallel runs tasks 0..n−1 on up to GOMAXPROCS goroutines that take
// the next task from a shared counter. Attention tasks differ in cost (under
// a causal mask a late query block sees many more keys than an early one),
// so fixed contiguous chunks would leave cores idle. Which goroutine runs a
// task does not matter to the result: a task's outputs are its own and are
// summed in a fixed order. worker is called once per goroutine to set up its
// scratch and returns the function that runs one task.
func attnParallel(n int, worker func() func(t int)) {
	workers := min(n, runtime.GOMAXPROCS(0))
	if workers <= 1 {
		run := worker()
		for t := 0; t < n; t++ {
			run(t)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run := worker()
			for {
				t := int(next.Add(1) - 1)
				if t >= n {
					return
				}
				run(t)
			}
		}()
	}
	wg.Wait()
}

// attnDot is x·y with four independent partial sums (better pipelining than
// one chain) combined in a fixed order, so it is reproducible.
func attnDot[T realT](x, y []T) T {
	y = y[:len(x)]
	var s0, s1, s2, s3 T
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// attnScores writes sc[jj] = scale·(q·k_jj) for len(sc) keys whose rows
// start at ks[off] and follow every stride elements. Four keys go through
// the loop together (one load of q[e] feeds four independent chains), but
// each score is one chain over e in order whether or not its key is in a
// group of four, so a score never depends on where a block starts: the
// backward recomputes exactly the forward's score, and a sample gives the
// same bits alone or padded in a batch.
func attnScores[T realT](sc, q, ks []T, off, stride int, scale T) {
	d := len(q)
	jj := 0
	for ; jj+4 <= len(sc); jj += 4 {
		o := off + jj*stride
		k0, k1 := ks[o:][:d], ks[o+stride:][:d]
		k2, k3 := ks[o+2*stride:][:d], ks[o+3*stride:][:d]
		var s0, s1, s2, s3 T
		for e, x := range q {
			s0 += x * k0[e]
			s1 += x * k1[e]
			s2 += x * k2[e]
			s3 += x * k3[e]
		}
		sc[jj], sc[jj+1], sc[jj+2], sc[jj+3] = scale*s0, scale*s1, scale*s2, scale*s3
	}
	for ; jj < len(sc); jj++ {
		o := off + jj*stride
		k := ks[o : o+d]
		var s T
		for e, x := range q {
			s += x * k[e]
		}
		sc[jj] = scale * s
	}
}

// attnAccumulate adds Σ_jj p[jj]·v_jj to acc, the v rows laid out as in
// attnScores. Four rows per pass load and store acc once instead of four
// times; the grouping is fixed by len(p), so the sum order is too.
func attnAccumulate[T realT](acc, p, vs []T, off, stride int) {
	d := len(acc)
	acc = acc[:d]
	jj := 0
	for ; jj+4 <= len(p); jj += 4 {
		o := off + jj*stride
		v0, v1 := vs[o:][:d], vs[o+stride:][:d]
		v2, v3 := vs[o+2*stride:][:d], vs[o+3*stride:][:d]
		p0, p1, p2, p3 := p[jj], p[jj+1], p[jj+2], p[jj+3]
		for e := range acc {
			acc[e] += p0*v0[e] + p1*v1[e] + p2*v2[e] + p3*v3[e]
		}
	}
	for ; jj < len(p); jj++ {
		o := off + jj*stride
		attnAxpy(acc, p[jj], vs[o:][:d])
	}
}

// attnBwdRow adds one query row's contributions over keys [ja, je) to its
// dQ row and to the group's dK, dV rows (dense [Sk, d] per kv head), with
// P = exp(scale·q·k − lse) and dS = P·(dO·v − dd)·scale, FlashAttention-2's
// recomputation. Keys go four at a time for the same reasons as in the
// forward; the score is computed exactly as attnScores does.
func attnBwdRow[T realT](q, g, dq, dk, dv, ks, vs []T, ja, je, base, stride, d int, scale, lse, dd T) {
	q, g, dq = q[:d], g[:d], dq[:d]
	var sc, dp [4]T
	for j := ja; j < je; {
		n := min(4, je-j)
		o := base + j*stride
		attnScores(sc[:n], q, ks, o, stride, scale)
		attnScores(dp[:n], g, vs, o, stride, 1)
		var p, ds [4]T
		for t := 0; t < n; t++ {
			p[t] = T(math.Exp(float64(sc[t] - lse)))
			ds[t] = p[t] * (dp[t] - dd) * scale
		}
		if n == 4 {
			k0, k1 := ks[o:][:d], ks[o+stride:][:d]
			k2, k3 := ks[o+2*stride:][:d], ks[o+3*stride:][:d]
			for e := range dq {
				dq[e] += ds[0]*k0[e] + ds[1]*k1[e] + ds[2]*k2[e] + ds[3]*k3[e]
			}
			r0, r1, r2, r3 := dk[j*d:][:d], dk[(j+1)*d:][:d], dk[(j+2)*d:][:d], dk[(j+3)*d:][:d]
			w0, w1, w2, w3 := dv[j*d:][:d], dv[(j+1)*d:][:d], dv[(j+2)*d:][:d], dv[(j+3)*d:][:d]
			for e, x := range q {
				ge := g[e]
				r0[e] += ds[0] * x
				r1[e] += ds[1] * x
				r2[e] += ds[2] * x
				r3[e] += ds[3] * x
				w0[e] += p[0] * ge
				w1[e] += p[1] * ge
				w2[e] += p[2] * ge
				w3[e] += p[3] * ge
			}
		} else {
			for t := 0; t < n; t++ {
				kj := ks[o+t*stride : o+t*stride+d]
				attnAxpy(dq, ds[t], kj)
				attnAxpy(dk[(j+t)*d:][:d], ds[t], q)
				attnAxpy(dv[(j+t)*d:][:d], p[t], g)
			}
		}
		j += n
	}
}

// attnAxpy is y += alpha·x.
func attnAxpy[T realT](y []T, alpha T, x []T) {
	x = x[:len(y)]
	for i, v := range x {
		y[i] += alpha * v
	}
}
