package tokenizers

import (
	"unicode"
	"unicode/utf8"
)

// addedToken is a token matched as whole text before the model runs, as
// tokenizer.json's added_tokens declare them.
type addedToken struct {
	ID      int32
	Content string
	// SingleWord: only where no word character touches either side.
	SingleWord bool
	// LStrip, RStrip: the match takes the white space on its left / right.
	LStrip, RStrip bool
	// Normalized: matched in the normalized text rather than the raw text.
	Normalized bool
	Special    bool
}

// addedMatcher finds added tokens in text, leftmost-longest, the way Hugging
// Face's AddedVocabulary does with its Aho-Corasick automaton: the match
// that starts first wins, among those the longest, and the search goes on
// after it.
type addedMatcher struct {
	tokens []addedToken
	trie   byteTrie // values index tokens
	first  [256]bool
}

func newAddedMatcher(tokens []addedToken, contents []string) *addedMatcher {
	m := &addedMatcher{tokens: tokens}
	var b trieBuilder
	for i, c := range contents {
		if c == "" {
			continue
		}
		b.add(c, int32(i))
		m.first[c[0]] = true
	}
	m.trie = b.build(true) // a repeated pattern keeps its first token
	return m
}

// segment is a stretch of text that is either an added token (id ≥ 0) or
// text left for the normalizer and the model (id < 0).
type segment struct {
	text    string
	id      int32
	atStart bool
}

// split appends to dst the segments of s: its added tokens and the text
// between them. atStart tells whether s begins the original text.
func (m *addedMatcher) split(dst []segment, s string, atStart bool) []segment {
	if len(m.tokens) == 0 || s == "" {
		return append(dst, segment{s, -1, atStart})
	}
	done := 0 // the end of the last match: text before it is emitted
	for i := 0; i < len(s); i++ {
		if !m.first[s[i]] {
			continue
		}
		ti, n := m.trie.longestPrefix(s[i:])
		if ti < 0 {
			continue
		}
		tok := &m.tokens[ti]
		start, stop := i, i+n
		if tok.SingleWord && (start > 0 && endsWithWord(s[:start]) || stop < len(s) && startsWithWord(s[stop:])) {
			i = stop - 1 // the automaton's search goes on after a match it drops
			continue
		}
		if tok.LStrip {
			start = max(trailingSpaceStart(s[:start]), done)
		}
		if tok.RStrip {
			stop += leadingSpaceLen(s[stop:])
		}
		if done < start {
			dst = append(dst, segment{s[done:start], -1, atStart && done == 0})
		}
		dst = append(dst, segment{s[start:stop], tok.ID, atStart && start == 0})
		done = stop
		i = stop - 1
	}
	if done < len(s) {
		dst = append(dst, segment{s[done:], -1, atStart && done == 0})
	}
	return dst
}

// trailingSpaceStart is where the white space at the end of s begins.
func trailingSpaceStart(s string) int {
	for len(s) > 0 {
		r, n := utf8.DecodeLastRuneInString(s)
		if !unicode.IsSpace(r) {
			break
		}
		s = s[:len(s)-n]
	}
	return len(s)
}

// leadingSpaceLen is the length of the white space at the start of s.
func leadingSpaceLen(s string) int {
	n := 0
	for n < len(s) {
		r, k := utf8.DecodeRuneInString(s[n:])
		if !unicode.IsSpace(r) {
			break
		}
		n += k
	}
	return n
}

// isWordChar is the regular-expression class \w as Rust's regex crate
// defines it: Alphabetic, marks, decimal digits, connector punctuation and
// the join controls.
func isWordChar(r rune) bool {
	return unicode.IsLetter(r) || unicode.Is(unicode.Nl, r) || unicode.Is(unicode.Other_Alphabetic, r) ||
		unicode.IsMark(r) || unicode.Is(unicode.Nd, r) || unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Join_Control, r)
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && isWordChar(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && isWordChar(r)
}
