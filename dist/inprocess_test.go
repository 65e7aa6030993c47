package dist

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

func cpuBackends(n int) []kernels.Backend {
	bs := make([]kernels.Backend, n)
	for i := range bs {
		bs[i] = cpu.New()
	}
	return bs
}

// putBuf makes a buffer of dtype d holding vals (rounded to d).
func putBuf(t *testing.T, b kernels.Backend, d kernels.DType, vals []float64) kernels.Buffer {
	buf, _ := kerneltest.Put(t, b, d, vals)
	return buf
}

// onRanks runs f on every rank in its own goroutine and returns their errors.
func onRanks(comms []Communicator, f func(c Communicator) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = f(c) }()
	}
	wg.Wait()
	return errs
}

func noErrors(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// TestInProcessAllReduce sums random F32 and BF16 buffers of every rank in
// one call and checks the result against the float64 sum, and that it is
// the same bits on every rank and equals adding the ranks in order.
func TestInProcessAllReduce(t *testing.T) {
	const n = 1000
	for _, world := range []int{1, 2, 3, 5} {
		bs := cpuBackends(world)
		comms := NewInProcess(bs, 10*time.Second)
		in := map[kernels.DType][][]float64{}
		bufs := make([][]kernels.Buffer, world)
		for _, d := range []kernels.DType{kernels.F32, kernels.BF16} {
			for r := range world {
				rng := rand.New(rand.NewPCG(uint64(world), uint64(10*r)+uint64(d)))
				v := make([]float64, n)
				for k := range v {
					v[k] = rng.NormFloat64() * math.Pow(2, float64(rng.IntN(8)-4))
				}
				bufs[r] = append(bufs[r], putBuf(t, bs[r], d, v))
				in[d] = append(in[d], kerneltest.Quantize(d, v)) // as stored
			}
		}
		noErrors(t, onRanks(comms, func(c Communicator) error { return c.AllReduceSum(bufs[c.Rank()]...) }))
		for i, d := range []kernels.DType{kernels.F32, kernels.BF16} {
			exact := make([]float64, n)
			ordered := make([]float64, n) // rank 0 + rank 1 + …, rounded to d at each addition
			for k := range n {
				acc := float32(in[d][0][k])
				for r := range world {
					exact[k] += in[d][r][k]
					if r > 0 {
						acc += float32(in[d][r][k])
						if d == kernels.BF16 {
							acc = kernels.RoundBF16(acc)
						}
					}
				}
				ordered[k] = float64(acc)
			}
			got0 := kerneltest.Get(t, bs[0], bufs[0][i])
			for r := range world {
				got := kerneltest.Get(t, bs[r], bufs[r][i])
				for k := range got {
					if math.Float64bits(got[k]) != math.Float64bits(got0[k]) {
						t.Fatalf("world %d %v: rank %d element %d is %v, rank 0 has %v", world, d, r, k, got[k], got0[k])
					}
					if got[k] != ordered[k] {
						t.Fatalf("world %d %v: element %d is %v, the sum in rank order is %v", world, d, k, got[k], ordered[k])
					}
				}
			}
			tol := 1e-6
			if d == kernels.BF16 {
				tol = 1e-2
			}
			e := kernels.RelErr(got0, exact)
			t.Logf("world %d %v: relative error against the float64 sum %.3g", world, d, e)
			if e > tol {
				t.Fatalf("world %d %v: relative error %.3g > %g", world, d, e, tol)
			}
		}
	}
}

func TestInProcessBroadcast(t *testing.T) {
	bs := cpuBackends(3)
	comms := NewInProcess(bs, 10*time.Second)
	bufs := make([]kernels.Buffer, 3)
	var want []float64
	for r := range 3 {
		v := make([]float64, 257)
		for k := range v {
			v[k] = float64(r*1000+k) + 0.25
		}
		if r == 2 {
			want = v
		}
		bufs[r] = putBuf(t, bs[r], kernels.F32, v)
	}
	noErrors(t, onRanks(comms, func(c Communicator) error { return c.Broadcast(bufs[c.Rank()], 2) }))
	for r := range 3 {
		got := kerneltest.Get(t, bs[r], bufs[r])
		for k := range got {
			if got[k] != want[k] {
				t.Fatalf("rank %d element %d is %v, root has %v", r, k, got[k], want[k])
			}
		}
	}
}

// TestInProcessFailures: every way a job goes wrong ends every waiting
// rank with an error that says what happened, within a bounded time.
func TestInProcessFailures(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		rank0   func(c Communicator, buf kernels.Buffer) error
		rank1   func(c Communicator, buf kernels.Buffer) error
		want    string
	}{
		{
			name:  "mismatched calls",
			rank0: func(c Communicator, b kernels.Buffer) error { return c.AllReduceSum(b) },
			rank1: func(c Communicator, b kernels.Buffer) error { return c.Broadcast(b, 0) },
			want:  "every rank must make the same calls",
		},
		{
			name:    "a rank that never comes",
			timeout: 200 * time.Millisecond,
			rank0:   func(c Communicator, b kernels.Buffer) error { return c.AllReduceSum(b) },
			rank1:   func(c Communicator, b kernels.Buffer) error { return nil },
			want:    "rank 0 waited 200ms in AllReduceSum(F32[8]) for rank 1",
		},
		{
			name:  "abort",
			rank0: func(c Communicator, b kernels.Buffer) error { return c.AllReduceSum(b) },
			rank1: func(c Communicator, b kernels.Buffer) error {
				time.Sleep(50 * time.Millisecond)
				c.Abort(errors.New("out of memory"))
				return nil
			},
			want: "rank 1 aborted: out of memory",
		},
		{
			name:  "close",
			rank0: func(c Communicator, b kernels.Buffer) error { return c.Barrier(0) },
			rank1: func(c Communicator, b kernels.Buffer) error {
				time.Sleep(50 * time.Millisecond)
				return c.Close()
			},
			want: "rank 1 closed its communicator while rank 0 waited in Barrier",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := cpuBackends(2)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = time.Minute
			}
			comms := NewInProcess(bs, timeout)
			bufs := []kernels.Buffer{putBuf(t, bs[0], kernels.F32, make([]float64, 8)), putBuf(t, bs[1], kernels.F32, make([]float64, 8))}
			start := time.Now()
			errs := onRanks(comms, func(c Communicator) error {
				if c.Rank() == 0 {
					return tt.rank0(c, bufs[0])
				}
				return tt.rank1(c, bufs[1])
			})
			wantErr(t, errs[0], tt.want)
			wantErr(t, comms[1].Err(), tt.want)
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

// TestBarrierTimeouts: a barrier waits the job's timeout when given 0, its
// own when given one, and without limit when given a negative one.
func TestBarrierTimeouts(t *testing.T) {
	late := func(timeout time.Duration) []error {
		comms := NewInProcess(cpuBackends(2), 100*time.Millisecond)
		return onRanks(comms, func(c Communicator) error {
			if c.Rank() == 1 {
				time.Sleep(300 * time.Millisecond)
			}
			return c.Barrier(timeout)
		})
	}
	wantErr(t, late(0)[0], "rank 0 waited 100ms in Barrier for rank 1")
	wantErr(t, late(50 * time.Millisecond)[0], "rank 0 waited 50ms in Barrier for rank 1")
	noErrors(t, late(time.Second))
	noErrors(t, late(-1))
}

func TestAllReduceRefusesDTypes(t *testing.T) {
	bs := cpuBackends(1)
	f64 := putBuf(t, bs[0], kernels.F64, []float64{1})
	for _, c := range []Communicator{NewInProcess(bs, time.Second)[0], single{}} {
		wantErr(t, c.AllReduceSum(f64), "buffer 0 is F64; sums are of F32 or BF16 buffers")
		wantErr(t, c.Broadcast(f64, 1), "root 1 is not a rank of a job of 1")
	}
}

// TestOpen: a plain run, and a job of one process on a backend without a
// collective library, get the one-rank communicator, which changes
// nothing.
func TestOpen(t *testing.T) {
	b := cpu.New()
	c, err := Open(context.Background(), b, Single(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := []float64{1.5, -2, 3}
	buf := putBuf(t, b, kernels.F32, v)
	if err := c.AllReduceSum(buf); err != nil {
		t.Fatal(err)
	}
	if err := c.Broadcast(buf, 0); err != nil {
		t.Fatal(err)
	}
	if got := kerneltest.Get(t, b, buf); got[0] != v[0] || got[1] != v[1] || got[2] != v[2] {
		t.Fatalf("one rank's collectives changed %v into %v", v, got)
	}
	if c.Rank() != 0 || c.WorldSize() != 1 || c.Barrier(0) != nil || c.Close() != nil {
		t.Fatal("the one-rank communicator is not rank 0 of 1")
	}
	one := Env{WorldSize: 1, LocalWorldSize: 1, fromEnv: true}
	if c, err := Open(context.Background(), b, one, Options{}); err != nil || c.WorldSize() != 1 {
		t.Fatalf("a job of one process on the cpu backend: %v, %v", c, err)
	}
}
