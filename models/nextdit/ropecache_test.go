package nextdit

import (
	"math"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// TestRopeCache: a shape's tables are uploaded once and then reused, hold
// buildRope's values, the oldest shape is dropped past ropeCacheSize, and
// Release frees them all.
func TestRopeCache(t *testing.T) {
	cfg, _ := Preset("tiny")
	be := cpu.New()
	e := ag.New(be)
	m, err := NewRandom(e, cfg, Options{DType: kernels.F32}, 1)
	if err != nil {
		t.Fatal(err)
	}
	weights := be.MemStats().Allocated
	first := m.rope([]int{3, 5}, 5, 2, 3, 11)
	if again := m.rope([]int{3, 5}, 5, 2, 3, 11); again != first {
		t.Error("the same shape's tables were built again")
	}
	want := buildRope(cfg, []int{3, 5}, 5, 2, 3, 11)
	for name, c := range map[string]struct {
		got  *ag.Tensor
		want []float64
	}{"caption cos": {first.capCos, want.capCos}, "image sin": {first.imgSin, want.imgSin}, "joint cos": {first.jCos, want.jointCos}} {
		v, err := c.got.Values()
		if err != nil {
			t.Fatal(err)
		}
		for i := range v {
			if math.Abs(v[i]-c.want[i]) > 1e-7 {
				t.Fatalf("%s[%d] = %g, want %g", name, i, v[i], c.want[i])
			}
		}
	}
	for i := range ropeCacheSize {
		m.rope([]int{i + 1}, 9, 2, 2, 13)
	}
	if len(m.ropes) != ropeCacheSize {
		t.Errorf("%d shapes kept, want %d", len(m.ropes), ropeCacheSize)
	}
	if _, ok := m.ropes[ropeKey(kernels.F32, []int{3, 5}, 5, 2, 3, 11)]; ok {
		t.Error("the oldest shape was not dropped")
	}
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}
	if be.MemStats().Allocated <= weights {
		t.Error("EndStep freed the kept tables")
	}
	m.Release()
	if got := be.MemStats().Allocated; got != 0 {
		t.Errorf("%d bytes held after Release", got)
	}
}
