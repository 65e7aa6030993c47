package tokenizers

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// precompiled is SentencePiece's compiled normalization rules (the
// precompiled_charsmap of a .model, also stored base64 in tokenizer.json's
// Precompiled normalizer): a darts-clone double-array trie over UTF-8 byte
// strings whose values are offsets into a blob of NUL-terminated
// replacement strings.
//
// Blob layout: a little-endian u32 with the trie's size in bytes, the trie
// as little-endian u32 units, then the replacement strings.
type precompiled struct {
	units []uint32
	repl  string
}

func parsePrecompiled(blob []byte) (*precompiled, error) {
	if len(blob) < 4 {
		return nil, fmt.Errorf("precompiled charsmap of %d bytes: too short for its trie size", len(blob))
	}
	size := binary.LittleEndian.Uint32(blob)
	if size%4 != 0 || uint64(size) > uint64(len(blob)-4) {
		return nil, fmt.Errorf("precompiled charsmap: trie size %d does not fit the %d bytes that follow it", size, len(blob)-4)
	}
	if size == 0 {
		return nil, fmt.Errorf("precompiled charsmap: empty trie")
	}
	units := make([]uint32, size/4)
	for i := range units {
		units[i] = binary.LittleEndian.Uint32(blob[4+4*i:])
	}
	repl := blob[4+size:]
	if !utf8.Valid(repl) {
		return nil, fmt.Errorf("precompiled charsmap: replacement strings are not UTF-8")
	}
	return &precompiled{units: units, repl: string(repl)}, nil
}

// A double-array unit packs, from the low bit: an 8-bit label (with bit 31
// marking a value unit), a has-leaf bit (8), an offset-scale bit (9) and a
// 22-bit offset (10–31), the offset shifted left by 8 when bit 9 is set.
func unitOffset(u uint32) uint32 { return (u >> 10) << ((u & (1 << 9)) >> 6) }
func unitLabel(u uint32) uint32  { return u & (1<<31 | 0xFF) }
func unitHasLeaf(u uint32) bool  { return u>>8&1 == 1 }
func unitValue(u uint32) uint32  { return u & (1<<31 - 1) }

// firstMatch returns the replacement for the shortest key that is a prefix
// of s (SentencePiece's common-prefix search, first result), or ok false.
// A NUL byte ends the key, as in darts.
func (p *precompiled) firstMatch(s string) (repl string, ok bool) {
	units := p.units
	pos := unitOffset(units[0])
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0 {
			return "", false
		}
		pos ^= uint32(c)
		if int(pos) >= len(units) {
			return "", false
		}
		u := units[pos]
		if unitLabel(u) != uint32(c) {
			return "", false
		}
		pos ^= unitOffset(u)
		if unitHasLeaf(u) {
			if int(pos) >= len(units) {
				return "", false
			}
			start := int(unitValue(units[pos]))
			if start > len(p.repl) {
				return "", false
			}
			end := strings.IndexByte(p.repl[start:], 0)
			if end < 0 {
				end = len(p.repl) - start
			}
			return p.repl[start : start+end], true
		}
	}
	return "", false
}

// normalize applies the rules the way Hugging Face's Precompiled
// normalizer does: over extended grapheme clusters, a cluster shorter than
// 6 bytes is replaced whole by its first prefix match (what follows that
// prefix in the cluster is dropped); otherwise, and when nothing matches,
// each code point is looked up on its own.
func (p *precompiled) normalize(s string) string {
	var b []byte // nil until something changes
	write := func(done int, repl string) {
		if b == nil {
			b = append(make([]byte, 0, len(s)+16), s[:done]...)
		}
		b = append(b, repl...)
	}
	for i := 0; i < len(s); {
		// An ASCII character followed by another (CR LF aside) is a cluster
		// of its own: the common case, without the segmenter.
		if c := s[i]; c < utf8.RuneSelf && (i+1 == len(s) || s[i+1] < utf8.RuneSelf && !(c == '\r' && s[i+1] == '\n')) {
			if r, ok := p.firstMatch(s[i : i+1]); ok {
				write(i, r)
			} else if b != nil {
				b = append(b, c)
			}
			i++
			continue
		}
		g := graphemeSplitter{s: s, pos: i}
		c := g.next()
		if len(c) < 6 {
			if r, ok := p.firstMatch(c); ok {
				write(i, r)
				i += len(c)
				continue
			}
		}
		for k := 0; k < len(c); {
			_, n := utf8.DecodeRuneInString(c[k:])
			if r, ok := p.firstMatch(c[k : k+n]); ok {
				write(i+k, r)
			} else if b != nil {
				b = append(b, c[k:k+n]...)
			}
			k += n
		}
		i += len(c)
	}
	if b == nil {
		return s
	}
	return string(b)
}
