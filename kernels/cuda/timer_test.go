package cuda

import (
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
)

// TestDeviceTimer: marks around a large product and a small fill give
// increasing times, the product's interval is the longer and of the order
// of the host's clock around the same work (not within a tight bound: one
// run on the H200 timed the same products at twice the host's figure, the
// clocks' state differing between the two), and a graph region inside the
// window runs as plain launches.
func TestDeviceTimer(t *testing.T) {
	c := openGPU(t)
	const n = 4096
	a, _ := c.Alloc(bf16, n*n)
	b, _ := c.Alloc(bf16, n*n)
	out, _ := c.Alloc(f32, n*n)
	small, _ := c.Alloc(f32, 256)
	c.Fill(a, 0.5)
	c.Fill(b, 0.25)
	g := kernels.GemmArgs{M: n, N: n, K: n, Batch: 1, Alpha: 1, A: a, LDA: n, B: b, LDB: n, C: out, LDC: n}
	const reps = 20
	gemms := func() {
		for range reps {
			c.Gemm(g)
		}
	}
	gemms() // warm cuBLAS
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	gemms()
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	host := time.Since(start).Seconds()

	before := c.GraphStats()
	if err := c.StartTiming(); err != nil {
		t.Fatal(err)
	}
	c.BeginGraph("timed")
	c.Mark()
	gemms()
	c.Mark()
	c.Fill(small, 1)
	c.Mark()
	c.EndGraph()
	times, err := c.StopTiming()
	if err != nil {
		t.Fatal(err)
	}
	if len(times) != 3 || times[0] != 0 || !(times[1] > 0 && times[2] > times[1]) {
		t.Fatalf("marks %v; want three increasing times from 0", times)
	}
	gemm, fill := times[1], times[2]-times[1]
	t.Logf("%d products of %d³: %.3f ms by events, %.3f ms by the host; a 256-element fill %.1f µs", reps, n, gemm*1e3, host*1e3, fill*1e6)
	if fill >= gemm/10 {
		t.Errorf("the fill took %g s, the %d products %g s", fill, reps, gemm)
	}
	if gemm > host*4 || gemm < host*0.5 {
		t.Errorf("events time the products at %g s, the host at %g s", gemm, host)
	}
	if st := c.GraphStats().Sub(before); st.Runs != 0 {
		t.Errorf("a graph region ran inside the timing window: %+v", st)
	}
	if err := c.StartTiming(); err != nil { // the events are reused
		t.Fatal(err)
	}
	c.Mark()
	c.Mark()
	if times, err := c.StopTiming(); err != nil || len(times) != 2 {
		t.Errorf("second window: %v, %v", times, err)
	}
}
