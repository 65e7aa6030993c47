package tokenizers

import (
	"fmt"
	"sync"
	"unicode/utf8"
)

// model turns one pre-tokenized word into ids, appended to dst.
type model interface {
	tokenize(dst []int32, word string) []int32
	// tokenID returns the id of a token string, or false.
	tokenID(tok string) (int32, bool)
	// size is the number of ids the model's vocabulary spans.
	size() int
	// unknownID is the id of the unknown token, or -1.
	unknownID() int32
}

// bpe is Hugging Face's BPE model: a word starts as its characters (a
// character missing from the vocabulary becomes its UTF-8 bytes <0xXX>
// with byte fallback, else the unknown token, consecutive unknowns fused
// into one with fuseUnk), then adjacent pairs are merged, lowest merge rank
// first and leftmost first among equal ranks, until no pair has a merge.
type bpe struct {
	vocab        map[string]int32
	vocabSize    int
	merges       mergeTable
	asciiIDs     [128]int32 // the one-byte tokens, -1 where absent
	unk          int32      // -1 without an unknown token
	byteFallback bool
	byteIDs      byteTokens
	fuseUnk      bool
	ignoreMerges bool
}

type bpeMerge struct{ rank, id int32 }

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// newBPE builds the model from its vocabulary and ranked merges (pairs of
// token strings; a pair listed twice keeps its last rank, as in HF).
func newBPE(vocab map[string]int32, merges [][2]string, unkToken string, byteFallback, fuseUnk, ignoreMerges bool) (*bpe, error) {
	m := &bpe{vocab: vocab, merges: newMergeTable(len(merges)), unk: -1,
		byteFallback: byteFallback, fuseUnk: fuseUnk, ignoreMerges: ignoreMerges}
	for _, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("vocab: negative id %d", id)
		}
		m.vocabSize = max(m.vocabSize, int(id)+1)
	}
	if unkToken != "" {
		id, ok := vocab[unkToken]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocab", unkToken)
		}
		m.unk = id
	}
	for c := range m.asciiIDs {
		id, ok := vocab[string(rune(c))]
		if !ok {
			id = -1
		}
		m.asciiIDs[c] = id
	}
	m.byteIDs = newByteTokens(m.tokenID)
	for rank, mg := range merges {
		a, ok := vocab[mg[0]]
		if !ok {
			return nil, fmt.Errorf("merge %d (%q %q): %q is not in the vocab", rank, mg[0], mg[1], mg[0])
		}
		b, ok := vocab[mg[1]]
		if !ok {
			return nil, fmt.Errorf("merge %d (%q %q): %q is not in the vocab", rank, mg[0], mg[1], mg[1])
		}
		id, ok := vocab[mg[0]+mg[1]]
		if !ok {
			return nil, fmt.Errorf("merge %d (%q %q): the merged token %q is not in the vocab", rank, mg[0], mg[1], mg[0]+mg[1])
		}
		m.merges.put(pairKey(a, b), bpeMerge{int32(rank), id})
	}
	return m, nil
}

func (m *bpe) tokenID(tok string) (int32, bool) {
	id, ok := m.vocab[tok]
	return id, ok
}

func (m *bpe) size() int { return m.vocabSize }

func (m *bpe) unknownID() int32 { return m.unk }

// bpeSymbol is one symbol of a word being merged, in a linked list over
// the initial symbols; a symbol merged into its left neighbour has len 0.
type bpeSymbol struct {
	id         int32
	prev, next int32
	len        int32
}

// bpeCandidate is a queued merge of the symbol at pos with its next, into
// id: key is rank << 32 | pos, the heap's order; span is the two symbols'
// length in bytes when queued.
type bpeCandidate struct {
	key      uint64
	id, span int32
}

func candidate(rank, pos, id, span int32) bpeCandidate {
	return bpeCandidate{uint64(uint32(rank))<<32 | uint64(uint32(pos)), id, span}
}

func (c bpeCandidate) pos() int32 { return int32(uint32(c.key)) }

// bpeScratch is the reusable memory of one tokenize call.
type bpeScratch struct {
	syms []bpeSymbol
	heap candidateHeap
}

var bpeScratchPool = sync.Pool{New: func() any { return new(bpeScratch) }}

func (m *bpe) tokenize(dst []int32, w string) []int32 {
	if w == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return append(dst, id)
		}
	}
	sc := bpeScratchPool.Get().(*bpeScratch)
	defer bpeScratchPool.Put(sc)
	syms := sc.syms[:0]
	add := func(id int32, n int) {
		k := int32(len(syms))
		syms = append(syms, bpeSymbol{id: id, prev: k - 1, next: k + 1, len: int32(n)})
	}
	unkLen := 0 // bytes of a pending unknown token
	for i := 0; i < len(w); {
		var id int32 = -1
		n := 1
		if c := w[i]; c < utf8.RuneSelf {
			id = m.asciiIDs[c]
		} else {
			_, n = utf8.DecodeRuneInString(w[i:])
			if v, ok := m.vocab[w[i:i+n]]; ok {
				id = v
			}
		}
		ch := w[i : i+n]
		i += n
		if id >= 0 {
			if unkLen > 0 {
				add(m.unk, unkLen)
				unkLen = 0
			}
			add(id, n)
			continue
		}
		if m.byteFallback && m.byteIDs.cover(ch) {
			for k := 0; k < len(ch); k++ {
				add(m.byteIDs[ch[k]], 1)
			}
			continue
		}
		if m.unk < 0 {
			continue // no unknown token: the character is dropped, as in HF
		}
		if unkLen > 0 && !m.fuseUnk {
			add(m.unk, unkLen)
			unkLen = 0
		}
		unkLen += n
	}
	if unkLen > 0 {
		add(m.unk, unkLen)
	}
	sc.syms = syms
	if len(syms) == 0 {
		return dst
	}
	syms[len(syms)-1].next = -1
	sc.heap = m.mergeAll(syms, sc.heap[:0])
	for i := 0; i < len(syms); i++ {
		if syms[i].len > 0 {
			dst = append(dst, syms[i].id)
		}
	}
	return dst
}

// mergeAll applies the merges as HF's Word::merge_all does: a min-heap of
// candidates ordered by (rank, position), O(n log n) in the word's length,
// so the lowest-ranked pair merges first and the leftmost among equals.
// HF drops a popped candidate whose pair no longer maps to its merged id.
// A pair changes only when one of its symbols absorbs a neighbour, which
// makes the pair's text strictly longer, and a longer text is another
// token: so a candidate is current exactly when its two symbols still span
// the bytes they spanned when it was queued, which is checked here without
// a lookup. It returns the heap's memory for reuse.
func (m *bpe) mergeAll(syms []bpeSymbol, h candidateHeap) candidateHeap {
	for i := 0; i+1 < len(syms); i++ {
		if mg, ok := m.merges.get(pairKey(syms[i].id, syms[i+1].id)); ok {
			h = append(h, candidate(mg.rank, int32(i), mg.id, syms[i].len+syms[i+1].len))
		}
	}
	h.init()
	for len(h) > 0 {
		top := h.pop()
		pos := top.pos()
		cur := &syms[pos]
		if cur.len == 0 || cur.next < 0 || cur.len+syms[cur.next].len != top.span {
			continue // stale: a symbol of the pair went into another merge
		}
		nextPos := cur.next
		right := syms[nextPos]
		cur.id = top.id
		cur.len += right.len
		cur.next = right.next
		syms[nextPos].len = 0
		if right.next >= 0 {
			syms[right.next].prev = pos
		}
		if cur.prev >= 0 {
			left := &syms[cur.prev]
			if mg, ok := m.merges.get(pairKey(left.id, cur.id)); ok {
				h.push(candidate(mg.rank, cur.prev, mg.id, left.len+cur.len))
			}
		}
		if cur.next >= 0 {
			next := &syms[cur.next]
			if mg, ok := m.merges.get(pairKey(cur.id, next.id)); ok {
				h.push(candidate(mg.rank, pos, mg.id, cur.len+next.len))
			}
		}
	}
	return h
}

// candidateHeap is a binary min-heap of merge candidates by (rank, pos).
type candidateHeap []bpeCandidate

func (h candidateHeap) less(i, j int) bool { return h[i].key < h[j].key }

func (h candidateHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *candidateHeap) push(c bpeCandidate) {
	*h = append(*h, c)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s.less(i, p) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *candidateHeap) pop() bpeCandidate {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	*h = s[:last]
	h.down(0)
	return top
}

func (h candidateHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		j := l
		if r := l + 1; r < n && h.less(r, l) {
			j = r
		}
		if !h.less(j, i) {
			return
		}
		h[i], h[j] = h[j], h[i]
		i = j
	}
}

// mergeTable maps a pair of ids (pairKey) to its merge: an open-addressing
// hash table with linear probing, faster than a Go map for the half a
// million merges a large vocabulary has, which is where BPE spends its time.
// A key and its merge share a slot, so a lookup touches one cache line.
type mergeTable struct {
	slots []mergeSlot
	shift uint
	n     int // pairs held
}

type mergeSlot struct {
	key   uint64 // emptyPair where free
	merge bpeMerge
}

// emptyPair is no pair of valid ids (they are below 2³¹).
const emptyPair = ^uint64(0)

func newMergeTable(n int) mergeTable {
	size, shift := 8, uint(61)
	for size < 2*n {
		size *= 2
		shift--
	}
	t := mergeTable{slots: make([]mergeSlot, size), shift: shift}
	for i := range t.slots {
		t.slots[i].key = emptyPair
	}
	return t
}

func (t *mergeTable) slot(k uint64) uint64 { return (k * 0x9E3779B97F4A7C15) >> t.shift }

// put sets k's merge, replacing an earlier one.
func (t *mergeTable) put(k uint64, v bpeMerge) {
	mask := uint64(len(t.slots) - 1)
	for i := t.slot(k); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.key == emptyPair {
			t.n++
		}
		if s.key == k || s.key == emptyPair {
			*s = mergeSlot{k, v}
			return
		}
	}
}

func (t *mergeTable) get(k uint64) (bpeMerge, bool) {
	mask := uint64(len(t.slots) - 1)
	for i := t.slot(k); ; i = (i + 1) & mask {
		switch s := &t.slots[i]; s.key {
		case k:
			return s.merge, true
		case emptyPair:
			return bpeMerge{}, false
		}
	}
}
