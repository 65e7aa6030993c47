package kernels

import "fmt"

// MaxPermuteRank is the highest rank Permute takes.
const MaxPermuteRank = 6

// PermuteLen checks Permute's shape and perm — rank 1 to MaxPermuteRank,
// perm a permutation of the axes, no negative extent — and returns the
// element count, so every backend accepts and refuses the same arguments.
func PermuteLen(shape, perm []int) (int, error) {
	r := len(shape)
	if r == 0 || r > MaxPermuteRank || len(perm) != r {
		return 0, fmt.Errorf("shape %v with perm %v (rank 1..%d, one entry per axis)", shape, perm, MaxPermuteRank)
	}
	var seen [MaxPermuteRank]bool
	n := 1
	for i, p := range perm {
		if p < 0 || p >= r || seen[p] {
			return 0, fmt.Errorf("perm %v is not a permutation of 0..%d", perm, r-1)
		}
		seen[p] = true
		if shape[i] < 0 {
			return 0, fmt.Errorf("negative extent in shape %v", shape)
		}
		n *= shape[i]
	}
	return n, nil
}
