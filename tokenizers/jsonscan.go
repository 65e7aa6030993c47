package tokenizers

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// The vocabulary and merges of a large tokenizer.json (Gemma 3: 262,144
// tokens, 514,906 merges) are read by this small scanner instead of
// encoding/json's reflection, which takes several times longer. It reads
// only the shapes those fields have; encoding/json has already checked
// that the document is valid JSON.

type jsonScanner struct {
	b []byte
	i int
}

func (s *jsonScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next byte after white space, or 0 at the end.
func (s *jsonScanner) peek() byte {
	s.space()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *jsonScanner) errorf(format string, a ...any) error {
	return fmt.Errorf("at byte %d of the value: %s", s.i, fmt.Sprintf(format, a...))
}

func (s *jsonScanner) expect(c byte) error {
	if s.peek() != c {
		return s.errorf("want %q", c)
	}
	s.i++
	return nil
}

// more consumes a ',' and reports true, or consumes the closing byte and
// reports false.
func (s *jsonScanner) more(closing byte) (bool, error) {
	switch s.peek() {
	case ',':
		s.i++
		return true, nil
	case closing:
		s.i++
		return false, nil
	}
	return false, s.errorf("want ',' or %q", closing)
}

// str reads a JSON string.
func (s *jsonScanner) str() (string, error) {
	if s.peek() != '"' {
		return "", s.errorf("want a string")
	}
	start := s.i
	s.i++
	escaped := false
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case '\\':
			escaped = true
			s.i += 2
			continue
		case '"':
			s.i++
			raw := s.b[start+1 : s.i-1]
			if !escaped && utf8.Valid(raw) {
				return string(raw), nil
			}
			var v string // escapes and invalid UTF-8: as encoding/json reads them
			if err := json.Unmarshal(s.b[start:s.i], &v); err != nil {
				return "", s.errorf("%v", err)
			}
			return v, nil
		}
		s.i++
	}
	return "", s.errorf("unterminated string")
}

// number returns the text of a JSON number.
func (s *jsonScanner) number() (string, error) {
	s.space()
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		if c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			s.i++
			continue
		}
		break
	}
	if s.i == start {
		return "", s.errorf("want a number")
	}
	return string(s.b[start:s.i]), nil
}

// bpeVocab is a BPE vocabulary: {"token": id, ...}.
type bpeVocab map[string]int32

func (v *bpeVocab) UnmarshalJSON(b []byte) error {
	s := &jsonScanner{b: b}
	if err := s.expect('{'); err != nil {
		return fmt.Errorf("vocab: %w", err)
	}
	m := make(bpeVocab, len(b)/16)
	if s.peek() == '}' {
		*v = m
		return nil
	}
	for {
		tok, err := s.str()
		if err != nil {
			return fmt.Errorf("vocab: %w", err)
		}
		if err := s.expect(':'); err != nil {
			return fmt.Errorf("vocab: %w", err)
		}
		num, err := s.number()
		if err != nil {
			return fmt.Errorf("vocab %q: %w", tok, err)
		}
		id, err := strconv.ParseInt(num, 10, 32)
		if err != nil || id < 0 {
			return fmt.Errorf("vocab %q: id %s is not a non-negative 32-bit integer", tok, num)
		}
		m[tok] = int32(id)
		more, err := s.more('}')
		if err != nil {
			return fmt.Errorf("vocab: %w", err)
		}
		if !more {
			*v = m
			return nil
		}
	}
}

// bpeMerges are a BPE model's merges, ranked by position: [["a", "b"], ...]
// or, in older files, ["a b", ...].
type bpeMerges [][2]string

func (v *bpeMerges) UnmarshalJSON(b []byte) error {
	s := &jsonScanner{b: b}
	if err := s.expect('['); err != nil {
		return fmt.Errorf("merges: %w", err)
	}
	out := make(bpeMerges, 0, len(b)/16)
	if s.peek() == ']' {
		*v = out
		return nil
	}
	for {
		var pair [2]string
		switch s.peek() {
		case '"': // legacy "a b"
			line, err := s.str()
			if err != nil {
				return fmt.Errorf("merge %d: %w", len(out), err)
			}
			k := -1
			for j := 0; j < len(line); j++ {
				if line[j] == ' ' {
					if k >= 0 {
						k = -2
						break
					}
					k = j
				}
			}
			if k < 0 {
				return fmt.Errorf("merge %d %q: want two tokens separated by one space", len(out), line)
			}
			pair = [2]string{line[:k], line[k+1:]}
		case '[':
			s.i++
			var err error
			if pair[0], err = s.str(); err == nil {
				if err = s.expect(','); err == nil {
					if pair[1], err = s.str(); err == nil {
						err = s.expect(']')
					}
				}
			}
			if err != nil {
				return fmt.Errorf("merge %d: want a pair of strings: %w", len(out), err)
			}
		default:
			return fmt.Errorf("merge %d: %w", len(out), s.errorf("want a pair of strings"))
		}
		out = append(out, pair)
		more, err := s.more(']')
		if err != nil {
			return fmt.Errorf("merges: %w", err)
		}
		if !more {
			*v = out
			return nil
		}
	}
}

// unigramVocab is a Unigram vocabulary: [["piece", score], ...].
type unigramVocab []unigramPiece

func (v *unigramVocab) UnmarshalJSON(b []byte) error {
	s := &jsonScanner{b: b}
	if err := s.expect('['); err != nil {
		return fmt.Errorf("vocab: %w", err)
	}
	out := make(unigramVocab, 0, len(b)/24)
	if s.peek() == ']' {
		*v = out
		return nil
	}
	for {
		var p unigramPiece
		err := s.expect('[')
		if err == nil {
			if p.piece, err = s.str(); err == nil {
				if err = s.expect(','); err == nil {
					var num string
					if num, err = s.number(); err == nil {
						if p.score, err = strconv.ParseFloat(num, 64); err == nil {
							err = s.expect(']')
						}
					}
				}
			}
		}
		if err != nil {
			return fmt.Errorf("vocab entry %d: want [piece, score]: %w", len(out), err)
		}
		out = append(out, p)
		more, err := s.more(']')
		if err != nil {
			return fmt.Errorf("vocab: %w", err)
		}
		if !more {
			*v = out
			return nil
		}
	}
}
