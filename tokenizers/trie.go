package tokenizers

import "sort"

// byteTrie maps byte strings to values, for prefix searches: the Unigram
// pieces and the added tokens. Node 0 is the root; a node's children are
// a sorted run of edges.
type byteTrie struct {
	root      [256]int32 // the root's children, -1 where none
	edgeStart []int32    // node n's edges are edges[edgeStart[n]:edgeStart[n+1]]
	labels    []byte
	targets   []int32
	values    []int32 // the value ending at a node, -1 where none
}

// child returns the child of node by byte c, or -1.
func (t *byteTrie) child(node int32, c byte) int32 {
	if node == 0 {
		return t.root[c]
	}
	lo, hi := int(t.edgeStart[node]), int(t.edgeStart[node+1])
	if hi-lo <= 8 {
		for i := lo; i < hi; i++ {
			if t.labels[i] == c {
				return t.targets[i]
			}
		}
		return -1
	}
	i := lo + sort.Search(hi-lo, func(k int) bool { return t.labels[lo+k] >= c })
	if i < hi && t.labels[i] == c {
		return t.targets[i]
	}
	return -1
}

// longestPrefix returns the value of the longest key that is a prefix of
// s and its length, or -1, 0.
func (t *byteTrie) longestPrefix(s string) (value int32, n int) {
	value = -1
	node := int32(0)
	for i := 0; i < len(s); i++ {
		node = t.child(node, s[i])
		if node < 0 {
			break
		}
		if v := t.values[node]; v >= 0 {
			value, n = v, i+1
		}
	}
	return value, n
}

// trieBuilder collects keys before building the trie.
type trieBuilder struct {
	keys []string
	vals []int32
}

func (b *trieBuilder) add(key string, v int32) {
	b.keys = append(b.keys, key)
	b.vals = append(b.vals, v)
}

// build makes the trie. A key added more than once keeps its first value
// if keepFirst, else its last. Nodes are numbered breadth first.
func (b *trieBuilder) build(keepFirst bool) byteTrie {
	order := make([]int, len(b.keys))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return b.keys[order[i]] < b.keys[order[j]] })
	// One entry per distinct key.
	keys := make([]string, 0, len(order))
	vals := make([]int32, 0, len(order))
	for _, k := range order {
		key := b.keys[k]
		if n := len(keys); n > 0 && keys[n-1] == key {
			if !keepFirst {
				vals[n-1] = b.vals[k]
			}
			continue
		}
		keys = append(keys, key)
		vals = append(vals, b.vals[k])
	}
	var t byteTrie
	for i := range t.root {
		t.root[i] = -1
	}
	// A node is the run keys[lo:hi] sharing a prefix of length depth.
	type run struct{ lo, hi, depth int }
	queue := []run{{0, len(keys), 0}}
	for k := 0; k < len(queue); k++ {
		r := queue[k]
		value := int32(-1)
		lo := r.lo
		if lo < r.hi && len(keys[lo]) == r.depth { // sorted: the key equal to the prefix comes first
			value = vals[lo]
			lo++
		}
		t.values = append(t.values, value)
		t.edgeStart = append(t.edgeStart, int32(len(t.labels)))
		for lo < r.hi {
			c := keys[lo][r.depth]
			hi := lo + 1
			for hi < r.hi && keys[hi][r.depth] == c {
				hi++
			}
			child := int32(len(queue))
			t.labels = append(t.labels, c)
			t.targets = append(t.targets, child)
			if k == 0 {
				t.root[c] = child
			}
			queue = append(queue, run{lo, hi, r.depth + 1})
			lo = hi
		}
	}
	t.edgeStart = append(t.edgeStart, int32(len(t.labels)))
	return t
}
