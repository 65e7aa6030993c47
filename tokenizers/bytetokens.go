package tokenizers

import "fmt"

// byteTokens are the ids of the byte-fallback tokens <0x00>…<0xFF>, -1
// where the vocabulary lacks one.
type byteTokens [256]int32

func newByteTokens(lookup func(string) (int32, bool)) byteTokens {
	var t byteTokens
	for b := range t {
		id, ok := lookup(fmt.Sprintf("<0x%02X>", b))
		if !ok {
			id = -1
		}
		t[b] = id
	}
	return t
}

// cover reports whether every byte of s has a token, as byte fallback
// needs (HF falls back only when all of them do).
func (t *byteTokens) cover(s string) bool {
	for i := 0; i < len(s); i++ {
		if t[s[i]] < 0 {
			return false
		}
	}
	return true
}
