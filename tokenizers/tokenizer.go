package tokenizers

// Tokenizer is a loaded tokenizer: added tokens, normalizer,
// pre-tokenizer, model and post-processor, run in that order as Hugging
// Face's Tokenizer.encode(text, add_special_tokens=True) runs them. It is
// safe for concurrent use.
type Tokenizer struct {
	path     string
	kind     string
	identity string

	raw        *addedMatcher // added tokens matched in the raw text
	normalized *addedMatcher // added tokens matched in the normalized text
	norm       normalizer    // nil: none
	pre        preTokenizer  // nil: the piece is one word
	model      model
	added      []addedToken // all of them, special first

	prefix, suffix []int32 // what the post-processor puts around the ids
	vocabSize      int
	special        SpecialIDs
}

// SpecialIDs are a tokenizer's special token ids, -1 where it has none.
type SpecialIDs struct {
	BOS, EOS, PAD, UNK int32
}

// Path is the file the tokenizer was read from.
func (t *Tokenizer) Path() string { return t.path }

// Kind says what was read: the file format and the model type, e.g.
// "tokenizer.json (BPE)" or "SentencePiece model (Unigram, XLM-RoBERTa layout)".
func (t *Tokenizer) Kind() string { return t.kind }

// Identity is "sha256:" and the hex SHA-256 of the file read (of the
// tokenizer_config.json read beside a .model too), for cache keys: two
// tokenizers with the same identity give the same ids.
func (t *Tokenizer) Identity() string { return t.identity }

// Model types, as ModelType reports them.
const (
	ModelBPE     = "BPE"     // Gemma 3's tokenizer
	ModelUnigram = "Unigram" // XLM-RoBERTa's (Jina CLIP v2's)
)

// ModelType is the tokenization model the file declares: ModelBPE or
// ModelUnigram. A caller pairing a tokenizer with an encoder checks it,
// since each encoder was trained on one.
func (t *Tokenizer) ModelType() string {
	if _, ok := t.model.(*bpe); ok {
		return ModelBPE
	}
	return ModelUnigram
}

// VocabSize is one more than the highest id the tokenizer can produce
// (model vocabulary and added tokens): the embedding rows a model needs.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// Special returns the special token ids.
func (t *Tokenizer) Special() SpecialIDs { return t.special }

// NumSpecialTokens is how many ids Encode adds around the text's own (1
// for Gemma's <bos>, 2 for XLM-R's <s> … </s>).
func (t *Tokenizer) NumSpecialTokens() int { return len(t.prefix) + len(t.suffix) }

// Encode returns text's ids with the special tokens the post-processor
// adds, without truncation or padding. Bytes of text that are not UTF-8
// (Hugging Face takes only valid strings) go through one at a time: with
// byte fallback each becomes its <0xXX> token.
func (t *Tokenizer) Encode(text string) []int32 {
	ids := append([]int32(nil), t.prefix...)
	ids = t.encodeContent(ids, text)
	return append(ids, t.suffix...)
}

// encodeContent appends the ids of text without special tokens.
func (t *Tokenizer) encodeContent(dst []int32, text string) []int32 {
	segs := t.raw.split(nil, text, true)
	var words []piece
	for _, s := range segs {
		if s.id >= 0 {
			dst = append(dst, s.id)
			continue
		}
		norm := s.text
		if t.norm != nil {
			norm = t.norm.normalize(norm)
		}
		for _, n := range t.normalized.split(nil, norm, s.atStart) {
			if n.id >= 0 {
				dst = append(dst, n.id)
				continue
			}
			if n.text == "" {
				continue
			}
			words = words[:0]
			if t.pre != nil {
				words = t.pre.preTokenize(words, piece{n.text, n.atStart})
			} else {
				words = append(words, piece{n.text, n.atStart})
			}
			for _, w := range words {
				dst = t.model.tokenize(dst, w.text)
			}
		}
	}
	return dst
}

// setAddedTokens installs the added tokens. A token whose content the
// model's vocabulary holds takes the model's id, as in HF. A content given
// twice keeps its first entry (HF skips a token it already has); special
// tokens are matched before the others.
func (t *Tokenizer) setAddedTokens(tokens []addedToken) {
	ordered := make([]addedToken, 0, len(tokens))
	seen := make(map[string]bool, len(tokens))
	for _, special := range []bool{true, false} {
		for _, a := range tokens {
			if a.Special == special && a.Content != "" && !seen[a.Content] {
				seen[a.Content] = true
				if id, ok := t.model.tokenID(a.Content); ok {
					a.ID = id
				}
				ordered = append(ordered, a)
			}
		}
	}
	var raw, norm []addedToken
	var rawPatterns, normPatterns []string
	for _, a := range ordered {
		if a.Normalized {
			p := a.Content
			if t.norm != nil {
				p = t.norm.normalize(p)
			}
			norm, normPatterns = append(norm, a), append(normPatterns, p)
		} else {
			raw, rawPatterns = append(raw, a), append(rawPatterns, a.Content)
		}
	}
	t.raw = newAddedMatcher(raw, rawPatterns)
	t.normalized = newAddedMatcher(norm, normPatterns)
	t.added = ordered
}

// finish derives the vocabulary size and the special ids, once the model
// and the added tokens are in place. BOS, EOS and PAD are found by their
// usual names (<bos> or <s>, <eos> or </s>, <pad>); UNK is the model's.
func (t *Tokenizer) finish() {
	t.vocabSize = t.model.size()
	for _, a := range t.added {
		t.vocabSize = max(t.vocabSize, int(a.ID)+1)
	}
	find := func(names ...string) int32 {
		for _, n := range names {
			for _, a := range t.added {
				if a.Content == n {
					return a.ID
				}
			}
			if id, ok := t.model.tokenID(n); ok {
				return id
			}
		}
		return -1
	}
	t.special = SpecialIDs{BOS: find("<bos>", "<s>"), EOS: find("<eos>", "</s>"), PAD: find("<pad>"), UNK: t.model.unknownID()}
}
