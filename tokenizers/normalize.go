package tokenizers

import (
	"regexp"
	"strings"
	"unicode"
)

// normalizer rewrites a piece of text before pre-tokenization.
type normalizer interface {
	normalize(s string) string
}

// normalizerSequence applies its normalizers in order.
type normalizerSequence []normalizer

func (q normalizerSequence) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

// stripNormalizer removes leading and/or trailing Unicode White_Space
// (Rust's char::is_whitespace, Go's unicode.IsSpace: the same set).
type stripNormalizer struct{ left, right bool }

func (n stripNormalizer) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// replaceNormalizer replaces every non-overlapping match, left to right,
// of a literal string or of a regular expression by a literal string.
type replaceNormalizer struct {
	literal string
	re      *regexp.Regexp
	content string
}

func (n replaceNormalizer) normalize(s string) string {
	if n.re != nil {
		return n.re.ReplaceAllLiteralString(s, n.content)
	}
	if n.literal == "" { // an empty pattern matches nothing, as in Hugging Face
		return s
	}
	return strings.ReplaceAll(s, n.literal, n.content)
}
