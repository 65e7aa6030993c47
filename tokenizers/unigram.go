package tokenizers

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"unicode/utf8"
)

// unkPenalty is how far below the lowest piece score an unknown character
// scores (SentencePiece's kUnkPenalty).
const unkPenalty = 10.0

// unigram is SentencePiece's Unigram model as Hugging Face runs it: the
// segmentation of a word with the highest total piece score (Viterbi over
// the byte positions), unknown characters scoring minScore − 10 and
// consecutive unknowns fused into one unknown token.
type unigram struct {
	scores       []float64
	ids          map[string]int32 // a piece listed twice maps to its last id
	trie         byteTrie         // values are ids
	minScore     float64
	unk          int32
	byteFallback bool
	byteIDs      byteTokens
}

// unigramPiece is one vocabulary entry; its id is its index.
type unigramPiece struct {
	piece string
	score float64
}

func newUnigram(pieces []unigramPiece, unkID int, byteFallback bool) (*unigram, error) {
	if len(pieces) == 0 {
		return nil, fmt.Errorf("empty vocab")
	}
	if unkID < 0 {
		// HF accepts this and then fails on the first character outside the vocabulary.
		return nil, fmt.Errorf("no unk_id: text with a character outside the vocab could not be encoded")
	}
	if unkID >= len(pieces) {
		return nil, fmt.Errorf("unk_id %d is outside the vocab of %d pieces", unkID, len(pieces))
	}
	m := &unigram{scores: make([]float64, len(pieces)), ids: make(map[string]int32, len(pieces)),
		minScore: math.Inf(1), unk: int32(unkID), byteFallback: byteFallback}
	var b trieBuilder
	for i, p := range pieces {
		m.scores[i] = p.score
		m.ids[p.piece] = int32(i)
		b.add(p.piece, int32(i))
		m.minScore = min(m.minScore, p.score)
	}
	m.trie = b.build(false)
	m.byteIDs = newByteTokens(m.tokenID)
	return m, nil
}

func (m *unigram) tokenID(tok string) (int32, bool) {
	id, ok := m.ids[tok]
	return id, ok
}

func (m *unigram) size() int { return len(m.scores) }

func (m *unigram) unknownID() int32 { return m.unk }

// unigramNode is the best path ending at a byte position.
type unigramNode struct {
	score float64
	start int32 // where its last token starts; -1 while unreached
	id    int32
}

func (m *unigram) tokenize(dst []int32, w string) []int32 {
	if w == "" {
		return dst
	}
	n := len(w)
	sc := unigramScratchPool.Get().(*unigramScratch)
	defer unigramScratchPool.Put(sc)
	best := slices.Grow(sc.best[:0], n+1)[:n+1]
	sc.best = best
	for i := range best {
		best[i] = unigramNode{start: -1}
	}
	best[0].start = 0
	unkScore := m.minScore - unkPenalty
	// Forward over the word; at each position the pieces starting there,
	// shortest first, replace a path only when strictly better: of equal
	// scores the first found stays (HF's tie rule).
	for i := 0; i < n; {
		_, charLen := utf8.DecodeRuneInString(w[i:])
		base := best[i].score
		single := false
		node := int32(0)
		for j := i; j < n; j++ {
			node = m.trie.child(node, w[j])
			if node < 0 {
				break
			}
			id := m.trie.values[node]
			if id < 0 {
				continue
			}
			end := j + 1
			cand := base + m.scores[id]
			if t := &best[end]; t.start < 0 || cand > t.score {
				*t = unigramNode{cand, int32(i), id}
			}
			if end-i == charLen {
				single = true
			}
		}
		if !single {
			end := i + charLen
			cand := base + unkScore
			if t := &best[end]; t.start < 0 || cand > t.score {
				*t = unigramNode{cand, int32(i), m.unk}
			}
		}
		i += charLen
	}
	// Back from the end, fusing runs of unknown tokens into one span.
	spans := sc.spans[:0]
	defer func() { sc.spans = spans }()
	for end := n; end > 0; {
		nd := best[end]
		if k := len(spans) - 1; nd.id == m.unk && k >= 0 && spans[k].id == m.unk {
			spans[k].start = int(nd.start)
		} else {
			spans = append(spans, unigramSpan{int(nd.start), end, nd.id})
		}
		end = int(nd.start)
	}
	for k := len(spans) - 1; k >= 0; k-- {
		sp := spans[k]
		if sp.id != m.unk {
			dst = append(dst, sp.id)
			continue
		}
		// HF looks the fused text up as a token, then tries byte fallback.
		text := w[sp.start:sp.end]
		if id, ok := m.ids[text]; ok {
			dst = append(dst, id)
		} else if m.byteFallback && m.byteIDs.cover(text) {
			for c := 0; c < len(text); c++ {
				dst = append(dst, m.byteIDs[text[c]])
			}
		} else {
			dst = append(dst, m.unk)
		}
	}
	return dst
}

// unigramScratch is the reusable memory of one tokenize call.
type unigramScratch struct {
	best  []unigramNode
	spans []unigramSpan
}

var unigramScratchPool = sync.Pool{New: func() any { return new(unigramScratch) }}

// unigramSpan is a token of the best path: w[start:end] with its id.
type unigramSpan struct {
	start, end int
	id         int32
}
