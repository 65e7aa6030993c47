package dist

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

func TestPlanBuckets(t *testing.T) {
	tests := []struct {
		sizes []int64
		cap   int64
		want  [][]int
	}{
		{[]int64{10, 10, 10, 10}, 20, [][]int{{3, 2}, {1, 0}}},
		{[]int64{10, 10, 10, 10}, 25, [][]int{{3, 2, 1}, {0}}},
		{[]int64{10, 10, 10, 10}, 1000, [][]int{{3, 2, 1, 0}}},
		{[]int64{5, 100, 5}, 20, [][]int{{2, 1}, {0}}},
		{[]int64{7, 8, 9}, 0, [][]int{{2}, {1}, {0}}},
		{nil, 20, nil},
	}
	for _, tt := range tests {
		got := PlanBuckets(tt.sizes, tt.cap)
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("PlanBuckets(%v, %d) = %v, want %v", tt.sizes, tt.cap, got, tt.want)
		}
	}
}

// recorder is a Communicator of one rank that logs the sums asked of it.
type recorder struct {
	single
	grads []kernels.Buffer
	log   [][]int // the gradient indices of each AllReduceSum, in call order
}

func (c *recorder) AllReduceSum(bufs ...kernels.Buffer) error {
	var idx []int
	for _, b := range bufs {
		idx = append(idx, slices.Index(c.grads, b))
	}
	c.log = append(c.log, idx)
	return nil
}

// TestReducerOrder: a bucket is summed the moment its last gradient is
// ready, and never before the buckets planned ahead of it.
func TestReducerOrder(t *testing.T) {
	b := cpu.New()
	grads := make([]kernels.Buffer, 4)
	for i := range grads {
		grads[i], _ = b.Alloc(kernels.F32, 3) // 12 bytes each
	}
	c := &recorder{grads: grads}
	r, err := NewReducer(c, grads, 24)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Buckets()); got != "[[3 2] [1 0]]" {
		t.Fatalf("buckets %s", got)
	}
	type event struct {
		ready int
		log   string // the sums made so far, after Ready
	}
	steps := []struct {
		name   string
		events []event
		final  string // after Finish
	}{
		{"backward order", []event{{3, "[]"}, {2, "[[3 2]]"}, {1, "[[3 2]]"}, {0, "[[3 2] [1 0]]"}}, "[[3 2] [1 0]]"},
		{"later bucket first", []event{{0, "[]"}, {1, "[]"}, {3, "[]"}, {2, "[[3 2] [1 0]]"}}, "[[3 2] [1 0]]"},
		{"a gradient never reported", []event{{3, "[]"}, {2, "[[3 2]]"}, {0, "[[3 2]]"}}, "[[3 2] [1 0]]"},
		{"nothing reported", nil, "[[3 2] [1 0]]"},
	}
	for _, st := range steps {
		c.log = nil
		for _, ev := range st.events {
			if err := r.Ready(ev.ready); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(c.log); got != ev.log {
				t.Fatalf("%s: after Ready(%d) the sums are %s, want %s", st.name, ev.ready, got, ev.log)
			}
		}
		if err := r.Finish(); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(c.log); got != st.final {
			t.Fatalf("%s: after Finish the sums are %s, want %s", st.name, got, st.final)
		}
	}
	r.Ready(1)
	wantErr(t, r.Ready(1), "gradient 1 was reported ready twice in one step")
	wantErr(t, r.Finish(), "reported ready twice")
	if err := r.Finish(); err != nil {
		t.Fatalf("the error outlived its step: %v", err)
	}
	wantErr(t, r.Ready(4), "gradient 4 is not one of its 4")
	f64, _ := b.Alloc(kernels.F64, 1)
	_, err = NewReducer(c, []kernels.Buffer{grads[0], f64}, 24)
	wantErr(t, err, "gradient 1 is F64")
}

// TestReducerReplan: Order gives the order of the last step's readiness,
// and a plan made in it sums each bucket the moment it is complete — here
// a backward that finishes the gradients 1, 3, 0, 2, against the plan by
// registration that would wait for 2 before anything.
func TestReducerReplan(t *testing.T) {
	b := cpu.New()
	grads := make([]kernels.Buffer, 4)
	for i := range grads {
		grads[i], _ = b.Alloc(kernels.F32, 3)
	}
	c := &recorder{grads: grads}
	r, err := NewReducer(c, grads, 24)
	if err != nil {
		t.Fatal(err)
	}
	backward := []int{1, 3, 0, 2}
	for _, i := range backward {
		r.Ready(i)
	}
	if err := r.Finish(); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Order()); got != "[1 3 0 2]" {
		t.Fatalf("Order %s", got)
	}
	if err := r.Replan(r.Order()); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Buckets()); got != "[[1 3] [0 2]]" {
		t.Fatalf("buckets after Replan %s", got)
	}
	c.log = nil
	r.Ready(1)
	r.Ready(3)
	if got := fmt.Sprint(c.log); got != "[[1 3]]" {
		t.Fatalf("after 1 and 3 the sums are %s, want the first bucket", got)
	}
	r.Finish()
	// An order missing gradients puts them last; a repeated one is refused.
	if err := r.Replan([]int{2}); err != nil || fmt.Sprint(r.Buckets()) != "[[2 3] [1 0]]" {
		t.Fatalf("Replan([2]): %v, buckets %v", err, r.Buckets())
	}
	wantErr(t, r.Replan([]int{1, 1}), "not an order of 4 gradients")
}

// TestReducerInProcess: three ranks whose gradients become ready in
// different orders still sum every bucket, to the sum in rank order.
func TestReducerInProcess(t *testing.T) {
	const world = 3
	sizes := []int{5, 300, 17, 64, 1, 128, 33}
	bs := cpuBackends(world)
	comms := NewInProcess(bs, 10*time.Second)
	grads := make([][]kernels.Buffer, world)
	want := make([][]float32, len(sizes))
	for i, n := range sizes {
		want[i] = make([]float32, n)
		for r := range world {
			v := make([]float64, n)
			for k := range v {
				v[k] = float64(r+1)*0.1 + float64(i*k%7)/3
				want[i][k] += float32(v[k])
			}
			grads[r] = append(grads[r], putBuf(t, bs[r], kernels.F32, v))
		}
	}
	for step := range 2 {
		noErrors(t, onRanks(comms, func(c Communicator) error {
			red, err := NewReducer(c, grads[c.Rank()], 400)
			if err != nil {
				return err
			}
			order := rand.New(rand.NewPCG(uint64(step), uint64(c.Rank()))).Perm(len(sizes))
			for _, i := range order {
				if err := red.Ready(i); err != nil {
					return err
				}
			}
			return red.Finish()
		}))
		if step == 1 {
			break // the second step checks that the Reducers start over in step
		}
		for r := range world {
			for i := range sizes {
				got := kerneltest.Get(t, bs[r], grads[r][i])
				for k := range got {
					if float32(got[k]) != want[i][k] {
						t.Fatalf("rank %d gradient %d element %d is %v, want %v", r, i, k, got[k], want[i][k])
					}
				}
			}
		}
	}
}
