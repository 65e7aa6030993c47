package tokenizers

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// hfFile is the part of a Hugging Face tokenizer.json that decides ids.
// The decoder is not read (nothing here decodes); truncation and padding
// are not read either: Encode never truncates or pads, EncodeBatch does
// what its options say.
type hfFile struct {
	Version       *string         `json:"version"`
	AddedTokens   []hfAddedToken  `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Model         *hfModel        `json:"model"`
}

type hfAddedToken struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type hfModel struct {
	Type         string     `json:"type"`
	Vocab        hfVocab    `json:"vocab"`
	Merges       *bpeMerges `json:"merges"`
	UnkToken     *string    `json:"unk_token"`
	UnkID        *int       `json:"unk_id"`
	Dropout      *float64   `json:"dropout"`
	Prefix       *string    `json:"continuing_subword_prefix"`
	Suffix       *string    `json:"end_of_word_suffix"`
	FuseUnk      bool       `json:"fuse_unk"`
	ByteFallback bool       `json:"byte_fallback"`
	IgnoreMerges bool       `json:"ignore_merges"`
}

// hfVocab is a model's vocab: an object for BPE, a list for Unigram.
type hfVocab struct {
	bpe     bpeVocab
	unigram unigramVocab
	kind    byte // '{' or '['; 0 when absent
}

func (v *hfVocab) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	v.kind = b[0]
	switch b[0] {
	case '{':
		return v.bpe.UnmarshalJSON(b)
	case '[':
		return v.unigram.UnmarshalJSON(b)
	}
	return fmt.Errorf("vocab: want an object or a list, got %.20s", b)
}

// componentType returns the "type" every pipeline component has, or ""
// when raw is absent or null.
func componentType(raw json.RawMessage, where string) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var c struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", fmt.Errorf("%s: %w", where, err)
	}
	if c.Type == "" {
		return "", fmt.Errorf("%s: no type", where)
	}
	return c.Type, nil
}

// parseSequence parses the components a Sequence lists under key, each
// with parse; base names the Sequence in errors about one of them.
func parseSequence[T comparable](raw json.RawMessage, key, base, where string, parse func(json.RawMessage, string) (T, error)) ([]T, error) {
	var fields map[string]json.RawMessage
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &fields); err == nil {
		err = json.Unmarshal(fields[key], &list)
	}
	if list == nil {
		return nil, fmt.Errorf("%s: want a list %q", where, key)
	}
	var seq []T
	var none T
	for i, r := range list {
		c, err := parse(r, fmt.Sprintf("%s.%s[%d]", base, key, i))
		if err != nil {
			return nil, err
		}
		if c != none {
			seq = append(seq, c)
		}
	}
	return seq, nil
}

// unsupported is the error for a component this package does not run.
func unsupported(where, what string) error {
	return fmt.Errorf("%s: %s is not supported by this tokenizer implementation", where, what)
}

// isNull reports whether a raw field is absent or null.
func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// parseTokenizerJSON builds a Tokenizer from the bytes of a tokenizer.json.
func parseTokenizerJSON(data []byte) (*Tokenizer, error) {
	var f hfFile
	if err := json.Unmarshal(data, &f); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			if strings.Contains(err.Error(), "unexpected end") {
				return nil, fmt.Errorf("truncated: the JSON ends after %d bytes, inside a value", len(data))
			}
			return nil, fmt.Errorf("not valid JSON at byte %d: %w", syn.Offset, err)
		}
		return nil, err
	}
	if f.Model == nil {
		return nil, notATokenizerJSON(data)
	}
	if f.Version != nil && *f.Version != "1.0" {
		return nil, fmt.Errorf("version %q: only \"1.0\" is known", *f.Version)
	}
	t := &Tokenizer{}
	var err error
	if t.model, t.kind, err = buildModel(f.Model); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if t.norm, err = parseNormalizer(f.Normalizer, "normalizer"); err != nil {
		return nil, err
	}
	if t.pre, err = parsePreTokenizer(f.PreTokenizer, "pre_tokenizer"); err != nil {
		return nil, err
	}
	tokens := make([]addedToken, len(f.AddedTokens))
	for i, a := range f.AddedTokens {
		tokens[i] = addedToken{ID: a.ID, Content: a.Content, SingleWord: a.SingleWord, LStrip: a.LStrip,
			RStrip: a.RStrip, Normalized: a.Normalized, Special: a.Special}
	}
	t.setAddedTokens(tokens)
	if t.prefix, t.suffix, err = parsePostProcessor(f.PostProcessor); err != nil {
		return nil, err
	}
	t.finish()
	return t, nil
}

// notATokenizerJSON says what a JSON file without a "model" is.
func notATokenizerJSON(data []byte) error {
	var keys map[string]json.RawMessage
	_ = json.Unmarshal(data, &keys)
	has := func(k string) bool { _, ok := keys[k]; return ok }
	switch {
	case has("added_tokens_decoder") || has("tokenizer_class"):
		return errors.New("a tokenizer_config.json, not a tokenizer.json: it holds no vocabulary (the tokenizer is the tokenizer.json or .model beside it)")
	case has("architectures") || has("model_type") || has("hidden_size"):
		return errors.New("a model config.json, not a tokenizer.json (no \"model\" field)")
	case has("__metadata__"):
		return errors.New("a safetensors header, not a tokenizer.json")
	}
	return errors.New("JSON without a \"model\" field: not a tokenizer.json")
}

func buildModel(m *hfModel) (model, string, error) {
	typ := m.Type
	if typ == "" { // files from before "type" was written: tell by the fields
		switch {
		case m.Merges != nil:
			typ = "BPE"
		case m.Vocab.kind == '[':
			typ = "Unigram"
		}
	}
	switch typ {
	case "BPE":
		if m.Vocab.kind != '{' {
			return nil, "", errors.New("BPE: vocab is not an object of token → id")
		}
		if m.Merges == nil {
			return nil, "", errors.New("BPE: no merges")
		}
		if m.Dropout != nil && *m.Dropout != 0 {
			return nil, "", unsupported("BPE", fmt.Sprintf("dropout %g (random segmentation)", *m.Dropout))
		}
		if m.Prefix != nil && *m.Prefix != "" {
			return nil, "", unsupported("BPE", fmt.Sprintf("continuing_subword_prefix %q", *m.Prefix))
		}
		if m.Suffix != nil && *m.Suffix != "" {
			return nil, "", unsupported("BPE", fmt.Sprintf("end_of_word_suffix %q", *m.Suffix))
		}
		unk := ""
		if m.UnkToken != nil {
			unk = *m.UnkToken
		}
		b, err := newBPE(m.Vocab.bpe, *m.Merges, unk, m.ByteFallback, m.FuseUnk, m.IgnoreMerges)
		if err != nil {
			return nil, "", fmt.Errorf("BPE: %w", err)
		}
		return b, "tokenizer.json (BPE)", nil
	case "Unigram":
		if m.Vocab.kind != '[' {
			return nil, "", errors.New("Unigram: vocab is not a list of [piece, score]")
		}
		unk := -1
		if m.UnkID != nil {
			unk = *m.UnkID
		}
		u, err := newUnigram(m.Vocab.unigram, unk, m.ByteFallback)
		if err != nil {
			return nil, "", fmt.Errorf("Unigram: %w", err)
		}
		return u, "tokenizer.json (Unigram)", nil
	case "":
		return nil, "", errors.New("no type, and neither BPE's merges nor Unigram's list vocab")
	}
	return nil, "", fmt.Errorf("type %q is not supported by this tokenizer implementation (only BPE and Unigram)", typ)
}

// hfPattern is a Replace or Split pattern: {"String": s} or {"Regex": r}.
type hfPattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func parseNormalizer(raw json.RawMessage, where string) (normalizer, error) {
	typ, err := componentType(raw, where)
	if typ == "" || err != nil {
		return nil, err
	}
	base := where
	where = fmt.Sprintf("%s (%s)", where, typ)
	switch typ {
	case "Sequence":
		seq, err := parseSequence(raw, "normalizers", base, where, parseNormalizer)
		return normalizerSequence(seq), err
	case "Precompiled":
		var p struct {
			Charsmap *string `json:"precompiled_charsmap"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if p.Charsmap == nil || *p.Charsmap == "" {
			return nil, nil // an empty charsmap normalizes nothing
		}
		blob, err := base64.StdEncoding.DecodeString(*p.Charsmap)
		if err != nil {
			return nil, fmt.Errorf("%s: precompiled_charsmap is not base64: %w", where, err)
		}
		pc, err := parsePrecompiled(blob)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		return pc, nil
	case "Strip":
		var s struct {
			Left  bool `json:"strip_left"`
			Right bool `json:"strip_right"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		return stripNormalizer{left: s.Left, right: s.Right}, nil
	case "Replace":
		var r struct {
			Pattern hfPattern `json:"pattern"`
			Content string    `json:"content"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		switch {
		case r.Pattern.String != nil:
			return replaceNormalizer{literal: *r.Pattern.String, content: r.Content}, nil
		case r.Pattern.Regex != nil:
			re, err := compileSimpleRegex(*r.Pattern.Regex)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			return replaceNormalizer{re: re, content: r.Content}, nil
		}
		return nil, fmt.Errorf("%s: pattern has neither String nor Regex", where)
	}
	return nil, unsupported(where, "this normalizer")
}

// compileSimpleRegex compiles a pattern whose meaning is the same in
// Oniguruma (what HF runs) and Go's RE2: literals, classes written out in
// brackets, repetition, alternation and groups. Escapes that name a class
// (\w, \s, \p{…}: their Unicode sets differ) and (?…) constructs are
// refused.
func compileSimpleRegex(p string) (*regexp.Regexp, error) {
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+1 < len(p) {
			c := p[i+1]
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
				if !strings.ContainsRune("ntrfv", rune(c)) {
					return nil, unsupported(fmt.Sprintf("regex %q", p), fmt.Sprintf("the escape \\%c", c))
				}
			}
			i++
			continue
		}
		if p[i] == '(' && i+1 < len(p) && p[i+1] == '?' {
			return nil, unsupported(fmt.Sprintf("regex %q", p), "a (?…) group")
		}
	}
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", p, err)
	}
	return re, nil
}

func parsePreTokenizer(raw json.RawMessage, where string) (preTokenizer, error) {
	typ, err := componentType(raw, where)
	if typ == "" || err != nil {
		return nil, err
	}
	base := where
	where = fmt.Sprintf("%s (%s)", where, typ)
	switch typ {
	case "Sequence":
		seq, err := parseSequence(raw, "pretokenizers", base, where, parsePreTokenizer)
		return preTokenizerSequence(seq), err
	case "Metaspace":
		var m struct {
			Replacement    string  `json:"replacement"`
			PrependScheme  *string `json:"prepend_scheme"`
			AddPrefixSpace *bool   `json:"add_prefix_space"`
			Split          *bool   `json:"split"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len([]rune(m.Replacement)) != 1 {
			return nil, fmt.Errorf("%s: replacement %q is not one character", where, m.Replacement)
		}
		ms := metaspace{replacement: m.Replacement, scheme: prependAlways, split: m.Split == nil || *m.Split}
		if m.PrependScheme != nil {
			switch *m.PrependScheme {
			case "always":
			case "first":
				ms.scheme = prependFirst
			case "never":
				ms.scheme = prependNever
			default:
				return nil, fmt.Errorf("%s: prepend_scheme %q: want always, first or never", where, *m.PrependScheme)
			}
		}
		if m.AddPrefixSpace != nil && !*m.AddPrefixSpace {
			if m.PrependScheme != nil && ms.scheme != prependNever {
				return nil, fmt.Errorf("%s: add_prefix_space false contradicts prepend_scheme %q", where, *m.PrependScheme)
			}
			ms.scheme = prependNever
		}
		return ms, nil
	case "Split":
		var s struct {
			Pattern  hfPattern `json:"pattern"`
			Behavior string    `json:"behavior"`
			Invert   bool      `json:"invert"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if s.Pattern.String == nil {
			if s.Pattern.Regex != nil {
				return nil, unsupported(where, fmt.Sprintf("a Regex pattern (%q; only String patterns)", *s.Pattern.Regex))
			}
			return nil, fmt.Errorf("%s: pattern has neither String nor Regex", where)
		}
		behaviors := map[string]splitBehavior{"Removed": splitRemoved, "Isolated": splitIsolated,
			"MergedWithPrevious": splitMergedWithPrevious, "MergedWithNext": splitMergedWithNext, "Contiguous": splitContiguous}
		b, ok := behaviors[s.Behavior]
		if !ok {
			return nil, fmt.Errorf("%s: behavior %q is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous", where, s.Behavior)
		}
		return splitPreTokenizer{pattern: *s.Pattern.String, behavior: b, invert: s.Invert}, nil
	}
	return nil, unsupported(where, "this pre-tokenizer")
}

// parsePostProcessor returns the ids the post-processor puts before and
// after a single sequence.
func parsePostProcessor(raw json.RawMessage) (prefix, suffix []int32, err error) {
	typ, err := componentType(raw, "post_processor")
	if typ == "" || err != nil {
		return nil, nil, err
	}
	where := fmt.Sprintf("post_processor (%s)", typ)
	switch typ {
	case "TemplateProcessing":
		var tp struct {
			Single []struct {
				SpecialToken *struct {
					ID string `json:"id"`
				} `json:"SpecialToken"`
				Sequence *struct {
					ID string `json:"id"`
				} `json:"Sequence"`
			} `json:"single"`
			SpecialTokens map[string]struct {
				IDs []int32 `json:"ids"`
			} `json:"special_tokens"`
		}
		if err := json.Unmarshal(raw, &tp); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", where, err)
		}
		seen := 0
		for i, item := range tp.Single {
			switch {
			case item.Sequence != nil:
				if item.Sequence.ID != "A" {
					return nil, nil, fmt.Errorf("%s: single template item %d is sequence %q; a single sequence is A", where, i, item.Sequence.ID)
				}
				seen++
			case item.SpecialToken != nil:
				st, ok := tp.SpecialTokens[item.SpecialToken.ID]
				if !ok {
					return nil, nil, fmt.Errorf("%s: single template names %q, which special_tokens lacks", where, item.SpecialToken.ID)
				}
				if seen == 0 {
					prefix = append(prefix, st.IDs...)
				} else {
					suffix = append(suffix, st.IDs...)
				}
			default:
				return nil, nil, fmt.Errorf("%s: single template item %d is neither SpecialToken nor Sequence", where, i)
			}
		}
		if seen != 1 {
			return nil, nil, fmt.Errorf("%s: the single template holds $A %d times, want once", where, seen)
		}
		return prefix, suffix, nil
	case "RobertaProcessing", "BertProcessing":
		var rp struct {
			Sep []json.RawMessage `json:"sep"`
			Cls []json.RawMessage `json:"cls"`
		}
		if err := json.Unmarshal(raw, &rp); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", where, err)
		}
		var sep, cls int32
		if len(rp.Sep) != 2 || json.Unmarshal(rp.Sep[1], &sep) != nil || len(rp.Cls) != 2 || json.Unmarshal(rp.Cls[1], &cls) != nil {
			return nil, nil, fmt.Errorf("%s: want sep and cls as [token, id]", where)
		}
		return []int32{cls}, []int32{sep}, nil
	}
	return nil, nil, unsupported(where, "this post-processor")
}
