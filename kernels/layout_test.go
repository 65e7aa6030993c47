package kernels

import (
	"strings"
	"testing"
)

func TestPermuteLen(t *testing.T) {
	for _, tc := range []struct {
		shape, perm []int
		n           int
		err         string
	}{
		{[]int{2, 3, 5}, []int{2, 0, 1}, 30, ""},
		{[]int{7}, []int{0}, 7, ""},
		{[]int{1, 1, 1, 1, 1, 1}, []int{5, 4, 3, 2, 1, 0}, 1, ""},
		{[]int{4, 0}, []int{1, 0}, 0, ""},
		{nil, nil, 0, "rank 1..6"},
		{[]int{1, 1, 1, 1, 1, 1, 1}, []int{0, 1, 2, 3, 4, 5, 6}, 0, "rank 1..6"},
		{[]int{2, 3}, []int{0}, 0, "rank 1..6"},
		{[]int{2, 3}, []int{0, 0}, 0, "not a permutation"},
		{[]int{2, 3}, []int{0, 2}, 0, "not a permutation"},
		{[]int{2, 3}, []int{-1, 0}, 0, "not a permutation"},
		{[]int{2, -3}, []int{1, 0}, 0, "negative extent"},
	} {
		n, err := PermuteLen(tc.shape, tc.perm)
		switch {
		case tc.err == "" && (err != nil || n != tc.n):
			t.Errorf("PermuteLen(%v, %v) = %d, %v; want %d", tc.shape, tc.perm, n, err, tc.n)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("PermuteLen(%v, %v) error %v; want one saying %q", tc.shape, tc.perm, err, tc.err)
		}
	}
}
