package tokenizers

import "strings"

// piece is a stretch of normalized text on its way to the model. atStart
// tells whether it begins at the first byte of the original text (what
// Metaspace's prepend_scheme "first" asks).
type piece struct {
	text    string
	atStart bool
}

// preTokenizer splits pieces into words. It appends to dst the words of
// src, dropping empty ones.
type preTokenizer interface {
	preTokenize(dst []piece, src piece) []piece
}

// preTokenizerSequence applies its pre-tokenizers in order, each to every
// word the previous one made.
type preTokenizerSequence []preTokenizer

func (q preTokenizerSequence) preTokenize(dst []piece, src piece) []piece {
	words := []piece{src}
	for _, p := range q {
		var next []piece
		for _, w := range words {
			next = p.preTokenize(next, w)
		}
		words = next
	}
	return append(dst, words...)
}

// prependScheme says when Metaspace puts its replacement in front of a
// piece that does not start with one.
type prependScheme uint8

const (
	prependAlways prependScheme = iota
	prependFirst                // only on the piece at the start of the text
	prependNever
)

// metaspace replaces every " " by the replacement character (▁), prepends
// one as its scheme says, and with split set cuts the piece before every
// replacement character.
type metaspace struct {
	replacement string
	scheme      prependScheme
	split       bool
}

func (m metaspace) preTokenize(dst []piece, src piece) []piece {
	s := strings.ReplaceAll(src.text, " ", m.replacement)
	if s == "" {
		return dst
	}
	if !strings.HasPrefix(s, m.replacement) && (m.scheme == prependAlways || m.scheme == prependFirst && src.atStart) {
		s = m.replacement + s
	}
	if !m.split {
		return append(dst, piece{s, src.atStart})
	}
	start := 0
	for {
		i := strings.Index(s[start+1:], m.replacement)
		if i < 0 {
			break
		}
		end := start + 1 + i
		dst = append(dst, piece{s[start:end], src.atStart && start == 0})
		start = end
	}
	return append(dst, piece{s[start:], src.atStart && start == 0})
}

// splitBehavior is what Split does with the delimiters it finds.
type splitBehavior uint8

const (
	splitRemoved splitBehavior = iota
	splitIsolated
	splitMergedWithPrevious
	splitMergedWithNext
	splitContiguous
)

// splitPreTokenizer cuts a piece at every occurrence of a literal string
// (Split with a String pattern), treating the occurrences as behavior says;
// invert makes the text between occurrences the delimiters instead.
type splitPreTokenizer struct {
	pattern  string
	behavior splitBehavior
	invert   bool
}

// span is a stretch [start, end) of a piece and whether it is a match.
type span struct {
	start, end int
	match      bool
}

func (p splitPreTokenizer) preTokenize(dst []piece, src piece) []piece {
	s := src.text
	if s == "" {
		return dst
	}
	// The piece as alternating non-matches and matches, covering all of it.
	var spans []span
	if p.pattern == "" {
		spans = []span{{0, len(s), false}}
	} else {
		prev := 0
		for i := 0; i <= len(s)-len(p.pattern); {
			j := strings.Index(s[i:], p.pattern)
			if j < 0 {
				break
			}
			at := i + j
			if at > prev {
				spans = append(spans, span{prev, at, false})
			}
			spans = append(spans, span{at, at + len(p.pattern), true})
			prev = at + len(p.pattern)
			i = prev
		}
		if prev < len(s) {
			spans = append(spans, span{prev, len(s), false})
		}
	}
	if p.invert {
		for i := range spans {
			spans[i].match = !spans[i].match
		}
	}
	var keep []span // the stretches that become words (match now means "drop")
	switch p.behavior {
	case splitRemoved:
		keep = spans
	case splitIsolated:
		for _, sp := range spans {
			keep = append(keep, span{sp.start, sp.end, false})
		}
	case splitContiguous:
		prevMatch := false
		for i, sp := range spans {
			if i > 0 && sp.match == prevMatch {
				keep[len(keep)-1].end = sp.end
			} else {
				keep = append(keep, span{sp.start, sp.end, false})
			}
			prevMatch = sp.match
		}
	case splitMergedWithPrevious:
		prevMatch := false
		for _, sp := range spans {
			if sp.match && !prevMatch && len(keep) > 0 {
				keep[len(keep)-1].end = sp.end
			} else {
				keep = append(keep, span{sp.start, sp.end, false})
			}
			prevMatch = sp.match
		}
	case splitMergedWithNext:
		prevMatch := false
		for i := len(spans) - 1; i >= 0; i-- {
			sp := spans[i]
			if sp.match && !prevMatch && len(keep) > 0 {
				keep[len(keep)-1].start = sp.start
			} else {
				keep = append(keep, span{sp.start, sp.end, false})
			}
			prevMatch = sp.match
		}
		for i, j := 0, len(keep)-1; i < j; i, j = i+1, j-1 {
			keep[i], keep[j] = keep[j], keep[i]
		}
	}
	for _, sp := range keep {
		if sp.match || sp.end == sp.start {
			continue
		}
		dst = append(dst, piece{s[sp.start:sp.end], src.atStart && sp.start == 0})
	}
	return dst
}
