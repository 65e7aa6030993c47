package tokenizers

import (
	"fmt"
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
	merges       map[uint64]bpeMerge // key: left id << 32 | right id
	unk          int32               // -1 without an unknown token
	byteFallback bool
	byteIDs      [256]int32 // <0x00>…<0xFF>, -1 where absent
	fuseUnk      bool
	ignoreMerges bool
}

type bpeMerge struct{ rank, id int32 }

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// newBPE builds the model from its vocabulary and ranked merges (pairs of
// token strings; a pair listed twice keeps its last rank, as in HF).
func newBPE(vocab map[string]int32, merges [][2]string, unkToken string, byteFallback, fuseUnk, ignoreMerges bool) (*bpe, error) {
	m := &bpe{vocab: vocab, merges: make(map[uint64]bpeMerge, len(merges)), unk: -1,
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
	for b := range m.byteIDs {
		id, ok := vocab[fmt.Sprintf("<0x%02X>", b)]
		if !ok {
			id = -1
		}
		m.byteIDs[b] = id
	}
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
		m.merges[pairKey(a, b)] = bpeMerge{int32(rank), id}
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

// bpeCandidate is a queued merge of the symbol at pos with its next.
type bpeCandidate struct {
	rank, pos, id int32
}

func (m *bpe) tokenize(dst []int32, w string) []int32 {
	if w == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return append(dst, id)
		}
	}
	syms := make([]bpeSymbol, 0, len(w))
	add := func(id int32, n int) {
		k := int32(len(syms))
		syms = append(syms, bpeSymbol{id: id, prev: k - 1, next: k + 1, len: int32(n)})
	}
	unkLen := 0 // bytes of a pending unknown token
	for i := 0; i < len(w); {
		_, n := utf8.DecodeRuneInString(w[i:])
		ch := w[i : i+n]
		i += n
		if id, ok := m.vocab[ch]; ok {
			if unkLen > 0 {
				add(m.unk, unkLen)
				unkLen = 0
			}
			add(id, n)
			continue
		}
		if m.byteFallback && m.allBytes(ch) {
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
	if len(syms) == 0 {
		return dst
	}
	syms[len(syms)-1].next = -1
	m.mergeAll(syms)
	for i := 0; i < len(syms); i++ {
		if syms[i].len > 0 {
			dst = append(dst, syms[i].id)
		}
	}
	return dst
}

func (m *bpe) allBytes(ch string) bool {
	for k := 0; k < len(ch); k++ {
		if m.byteIDs[ch[k]] < 0 {
			return false
		}
	}
	return true
}

// mergeAll applies the merges with a min-heap of candidates ordered by
// (rank, position), discarding candidates that went stale, exactly as HF's
// Word::merge_all: O(n log n) in the word's length.
func (m *bpe) mergeAll(syms []bpeSymbol) {
	var h candidateHeap
	for i := 0; i+1 < len(syms); i++ {
		if mg, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			h = append(h, bpeCandidate{mg.rank, int32(i), mg.id})
		}
	}
	h.init()
	for len(h) > 0 {
		top := h.pop()
		cur := &syms[top.pos]
		if cur.len == 0 || cur.next < 0 {
			continue
		}
		nextPos := cur.next
		right := syms[nextPos]
		if mg, ok := m.merges[pairKey(cur.id, right.id)]; !ok || mg.id != top.id {
			continue // stale: one side has been merged since
		}
		cur.id = top.id
		cur.len += right.len
		cur.next = right.next
		syms[nextPos].len = 0
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if mg, ok := m.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				h.push(bpeCandidate{mg.rank, cur.prev, mg.id})
			}
		}
		if cur.next >= 0 {
			if mg, ok := m.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				h.push(bpeCandidate{mg.rank, top.pos, mg.id})
			}
		}
	}
}

// candidateHeap is a binary min-heap of merge candidates by (rank, pos).
type candidateHeap []bpeCandidate

func (h candidateHeap) less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}

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
