package kerneltest

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/kernels"
)

func init() {
	register("Gather", testGather)
	register("ScatterAdd", testScatterAdd)
	register("GatherBadID", testGatherBadID)
}

// paIDs returns n ids in [0, rows), with repeats (n > rows), as an I32
// buffer and as ints.
func paIDs(t *testing.T, b kernels.Backend, n, rows int) (kernels.Buffer, []int) {
	t.Helper()
	r := Rng(t)
	ids := make([]int32, n)
	out := make([]int, n)
	for i := range ids {
		ids[i] = int32(r.IntN(rows))
		out[i] = int(ids[i])
	}
	buf, err := b.Alloc(kernels.I32, n)
	if err != nil {
		t.Fatal(err)
	}
	b.Upload(buf, 0, kernels.EncodeI32(ids))
	return buf, out
}

func testGather(t *testing.T, b kernels.Backend) {
	pairs := [][2]kernels.DType{ // table, dst
		{kernels.F64, kernels.F64}, {kernels.F32, kernels.F32}, {kernels.BF16, kernels.BF16},
		{kernels.F16, kernels.F16}, {kernels.BF16, kernels.F32}, {kernels.F32, kernels.BF16},
	}
	for _, p := range pairs {
		for _, s := range [][3]int{{13, 7, 37}, {100, 1, 13}, {5, 600, 9}} { // rows, dim, n
			t.Run(fmt.Sprintf("%v->%v/%v", p[0], p[1], s), func(t *testing.T) {
				rows, dim, n := s[0], s[1], s[2]
				tb, tab := Put(t, b, p[0], Randn(Rng(t), rows*dim, 1))
				ib, ids := paIDs(t, b, n, rows)
				dst := Poisoned(t, b, p[1], n*dim)
				b.Gather(dst, tb, ib, dim)
				want := make([]float64, n*dim)
				for i, id := range ids {
					copy(want[i*dim:(i+1)*dim], tab[id*dim:(id+1)*dim])
				}
				Check(t, "Gather", Get(t, b, dst), Quantize(p[1], want), 0)
			})
		}
	}
}

func testScatterAdd(t *testing.T, b kernels.Backend) {
	pairs := [][2]kernels.DType{ // src, dst
		{kernels.F64, kernels.F64}, {kernels.F32, kernels.F32}, {kernels.BF16, kernels.F32},
		{kernels.F32, kernels.BF16}, {kernels.F16, kernels.F16},
	}
	for _, p := range pairs {
		for _, s := range [][3]int{{13, 7, 37}, {100, 1, 13}, {5, 600, 9}} { // rows, dim, n
			t.Run(fmt.Sprintf("%v->%v/%v", p[0], p[1], s), func(t *testing.T) {
				rows, dim, n := s[0], s[1], s[2]
				r := Rng(t)
				db, want := Put(t, b, p[1], Randn(r, rows*dim, 1))
				sb, src := Put(t, b, p[0], Randn(r, n*dim, 1))
				ib, ids := paIDs(t, b, n, rows)
				b.ScatterAdd(db, sb, ib, dim)
				for i, id := range ids {
					for j := 0; j < dim; j++ {
						want[id*dim+j] += src[i*dim+j]
					}
				}
				Check(t, "ScatterAdd", Get(t, b, db), want, Tol(p[0], p[1]))
			})
		}
	}
}

// testGatherBadID checks that an id outside the table is a failure reported
// by Sync that names the id and its position.
func testGatherBadID(t *testing.T, b kernels.Backend) {
	for _, bad := range []int32{13, -1} {
		t.Run(fmt.Sprint(bad), func(t *testing.T) {
			tb, _ := Put(t, b, kernels.F32, Randn(Rng(t), 13*4, 1))
			ids, err := b.Alloc(kernels.I32, 5)
			if err != nil {
				t.Fatal(err)
			}
			b.Upload(ids, 0, kernels.EncodeI32([]int32{0, 12, 3, bad, 1}))
			dst := Poisoned(t, b, kernels.F32, 5*4)
			b.Gather(dst, tb, ids, 4)
			err = b.Sync()
			if err == nil {
				t.Fatalf("Gather with id %d: Sync returned nil", bad)
			}
			// The position (3) must appear as a number of its own, not as
			// part of the row count 13.
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprint(bad)) || !regexp.MustCompile(`\b3\b`).MatchString(msg) {
				t.Errorf("error %q should name id %d and position 3", msg, bad)
			}
			db, _ := Put(t, b, kernels.F32, Randn(Rng(t), 13*4, 1))
			b.ScatterAdd(db, dst, ids, 4)
			if err := b.Sync(); err == nil {
				t.Fatalf("ScatterAdd with id %d: Sync returned nil", bad)
			}
		})
	}
}
