package tokenizers

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"unicode/utf8"
)

// A SentencePiece .model becomes the tokenizer transformers'
// convert_slow_tokenizer builds from it for the model it belongs to, so
// that it gives the same ids as that model's tokenizer.json:
//   - a Unigram model in XLM-RoBERTa's layout (<unk> <s> </s> first):
//     XLMRobertaConverter, with the special tokens XLMRobertaTokenizer
//     registers;
//   - a BPE model in Gemma's layout (<pad> <eos> <bos> first):
//     GemmaConverter, with the special tokens GemmaTokenizer registers.

// tokenizerConfig is what is read of a tokenizer_config.json found beside
// a .model: the added tokens it registers and whether BOS/EOS are added.
type tokenizerConfig struct {
	AddBOS      *bool                   `json:"add_bos_token"`
	AddEOS      *bool                   `json:"add_eos_token"`
	AddedTokens map[string]hfAddedToken `json:"added_tokens_decoder"` // key: the id
}

// readTokenizerConfig reads path if it exists; nil, nil when it does not.
func readTokenizerConfig(path string) (*tokenizerConfig, []byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var c tokenizerConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, nil, fmt.Errorf("%s (read beside the .model): %w", path, err)
	}
	return &c, data, nil
}

func convertSentencePiece(mp *modelProto, cfg *tokenizerConfig) (*Tokenizer, error) {
	switch mp.modelType {
	case spmUnigram:
		return convertXLMRoberta(mp, cfg)
	case spmBPE:
		return convertGemma(mp, cfg)
	case spmWord, spmChar:
		return nil, unsupported("trainer_spec", fmt.Sprintf("model_type %d (WORD or CHAR)", mp.modelType))
	}
	return nil, fmt.Errorf("trainer_spec.model_type %d is not a SentencePiece model type", mp.modelType)
}

// convertXLMRoberta builds XLMRobertaConverter's tokenizer: the fairseq
// vocabulary <s> <pad> </s> <unk>, then piece i at id i+1 for i ≥ 3, then
// <mask>; the normalizers Precompiled(charsmap), Strip(right) and
// Replace(/ {2,}/ → ▁); Metaspace; <s> $A </s>.
func convertXLMRoberta(mp *modelProto, cfg *tokenizerConfig) (*Tokenizer, error) {
	if mp.unkID != 0 || mp.bosID != 1 || mp.eosID != 2 || len(mp.pieces) < 3 {
		return nil, fmt.Errorf("a Unigram model with unk/bos/eos ids %d/%d/%d: only XLM-RoBERTa's layout (0/1/2: <unk> <s> </s> first) is converted", mp.unkID, mp.bosID, mp.eosID)
	}
	vocab := []unigramPiece{{"<s>", 0}, {"<pad>", 0}, {"</s>", 0}, {"<unk>", 0}}
	for _, p := range mp.pieces[3:] {
		vocab = append(vocab, unigramPiece{p.piece, float64(p.score)})
	}
	vocab = append(vocab, unigramPiece{"<mask>", 0})
	u, err := newUnigram(vocab, 3, false)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{model: u, kind: "SentencePiece model (Unigram, XLM-RoBERTa layout)"}
	var norms normalizerSequence
	if len(mp.charsmap) > 0 {
		pc, err := parsePrecompiled(mp.charsmap)
		if err != nil {
			return nil, fmt.Errorf("normalizer_spec: %w", err)
		}
		norms = append(norms, pc)
	}
	spaces, err := compileSimpleRegex(" {2,}")
	if err != nil {
		return nil, err
	}
	t.norm = append(norms, stripNormalizer{right: true}, replaceNormalizer{re: spaces, content: "▁"})
	scheme := prependAlways
	if !mp.addDummyPrefix {
		scheme = prependNever
	}
	t.pre = metaspace{replacement: "▁", scheme: scheme, split: true}
	// The pieces' own added tokens (control and user-defined), then the
	// tokenizer class's special tokens.
	added := spmAddedTokens(mp, nil)
	for _, c := range []string{"<s>", "<pad>", "</s>", "<unk>"} {
		added = append(added, addedToken{Content: c, Special: true})
	}
	added = append(added, addedToken{Content: "<mask>", Special: true, LStrip: true})
	added = applyConfigTokens(added, cfg)
	t.setAddedTokens(added)
	t.prefix, t.suffix = []int32{0}, []int32{2}
	t.finish()
	return t, nil
}

// convertGemma builds GemmaConverter's tokenizer: the pieces as they are
// (with <0x09> read as "\t" when the vocabulary lacks "\t"), merges
// derived from the pieces' scores, byte fallback, fused unknowns;
// Replace(" " → ▁); Split(" ", merged with previous); <bos> $A.
// transformers names ids 0–2 after the tokenizer class's pad/eos/bos
// tokens rather than the pieces; here they keep the pieces' names, the
// same for Gemma's files (a Gemma 3 -it config calls <end_of_turn> its eos
// token, which would rename piece 1 there and lose <eos>).
func convertGemma(mp *modelProto, cfg *tokenizerConfig) (*Tokenizer, error) {
	if mp.padID != 0 || mp.eosID != 1 || mp.bosID != 2 || len(mp.pieces) < 4 {
		return nil, fmt.Errorf("a BPE model with pad/eos/bos ids %d/%d/%d: only Gemma's layout (0/1/2: <pad> <eos> <bos> first) is converted", mp.padID, mp.eosID, mp.bosID)
	}
	type scored struct {
		piece string
		score float64
	}
	vocabScores := make([]scored, len(mp.pieces))
	hasTab := false
	for i, p := range mp.pieces {
		vocabScores[i] = scored{p.piece, float64(p.score)}
		if i < 3 {
			vocabScores[i].score = 0
		}
		hasTab = hasTab || p.piece == "\t"
	}
	// sp: the pieces' own ids, for which splits exist and their order.
	sp := make(map[string]int32, len(mp.pieces)+1)
	for i, p := range mp.pieces {
		sp[p.piece] = int32(i)
	}
	if !hasTab {
		if id, ok := sp["<0x09>"]; ok {
			vocabScores[id] = scored{"\t", 0}
			sp["\t"] = id
		}
	}
	vocab := make(map[string]int32, len(vocabScores))
	for i, v := range vocabScores {
		vocab[v.piece] = int32(i)
	}
	// generate_merges: every split of every piece into two pieces; ranked
	// by the merged piece's score, then the left part's and the right part's
	// length in code points, all descending, stably over the pieces' order
	// (a piece listed twice counting at its first place with its last score)
	// and, within a piece, by the parts' ids.
	order := make([]int, 0, len(vocabScores))
	lastScore := make(map[string]float64, len(vocabScores))
	for i, v := range vocabScores {
		if _, seen := lastScore[v.piece]; !seen {
			order = append(order, i)
		}
		lastScore[v.piece] = v.score
	}
	type merge struct {
		left, right       string
		score             float64
		leftID, rightID   int32
		leftLen, rightLen int
	}
	var merges []merge
	for _, i := range order {
		w := vocabScores[i].piece
		score := lastScore[w]
		first := len(merges)
		for k := range w {
			if k == 0 {
				continue
			}
			l, r := w[:k], w[k:]
			lid, ok := sp[l]
			if !ok {
				continue
			}
			rid, ok := sp[r]
			if !ok {
				continue
			}
			merges = append(merges, merge{l, r, score, lid, rid, utf8.RuneCountInString(l), utf8.RuneCountInString(r)})
		}
		slices.SortStableFunc(merges[first:], func(a, b merge) int {
			return cmp.Or(cmp.Compare(a.leftID, b.leftID), cmp.Compare(a.rightID, b.rightID))
		})
	}
	slices.SortStableFunc(merges, func(a, b merge) int { // descending
		return cmp.Or(cmp.Compare(b.score, a.score), cmp.Compare(b.leftLen, a.leftLen), cmp.Compare(b.rightLen, a.rightLen))
	})
	pairs := make([][2]string, len(merges))
	for i, m := range merges {
		pairs[i] = [2]string{m.left, m.right}
	}
	b, err := newBPE(vocab, pairs, mp.unkPiece, true, true, false)
	if err != nil {
		return nil, fmt.Errorf("as Gemma's BPE: %w", err)
	}
	t := &Tokenizer{model: b, kind: "SentencePiece model (BPE, Gemma layout)"}
	t.norm = replaceNormalizer{literal: " ", content: "▁"}
	t.pre = splitPreTokenizer{pattern: " ", behavior: splitMergedWithPrevious}
	added := spmAddedTokens(mp, map[string]bool{"<start_of_turn>": true, "<end_of_turn>": true})
	for _, c := range []string{mp.pieces[0].piece, mp.pieces[1].piece, mp.pieces[2].piece, mp.unkPiece} {
		added = append(added, addedToken{Content: c, Special: true})
	}
	added = applyConfigTokens(added, cfg)
	t.setAddedTokens(added)
	gemmaTemplate(t, mp, cfg)
	t.finish()
	return t, nil
}

// spmAddedTokens are the control (special) and user-defined pieces, in
// piece order, as SpmConverter adds them; names in special are special too.
func spmAddedTokens(mp *modelProto, special map[string]bool) []addedToken {
	var out []addedToken
	for _, p := range mp.pieces {
		if p.typ == pieceControl || p.typ == pieceUserDefined {
			out = append(out, addedToken{Content: p.piece, Special: p.typ == pieceControl || special[p.piece]})
		}
	}
	return out
}

// applyConfigTokens adds a tokenizer_config.json's added_tokens_decoder:
// an entry whose content is already an added token sets its flags, others
// are added with the config's id (the vocabulary's id where it has the
// content).
func applyConfigTokens(added []addedToken, cfg *tokenizerConfig) []addedToken {
	if cfg == nil {
		return added
	}
	ids := make([]int, 0, len(cfg.AddedTokens))
	for k := range cfg.AddedTokens {
		if id, err := strconv.Atoi(k); err == nil {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	for _, id := range ids {
		f := cfg.AddedTokens[strconv.Itoa(id)]
		tok := addedToken{ID: int32(id), Content: f.Content, SingleWord: f.SingleWord, LStrip: f.LStrip,
			RStrip: f.RStrip, Normalized: f.Normalized, Special: f.Special}
		replaced := false
		for i := range added {
			if added[i].Content == f.Content {
				added[i] = tok
				replaced = true
			}
		}
		if !replaced {
			added = append(added, tok)
		}
	}
	return added
}

// gemmaTemplate is GemmaTokenizer's post-processor: <bos> $A, and
// $A <eos> too where the config's add_eos_token says so (add_bos_token
// can turn the <bos> off).
func gemmaTemplate(t *Tokenizer, mp *modelProto, cfg *tokenizerConfig) {
	bos, eos := true, false
	if cfg != nil && cfg.AddBOS != nil {
		bos = *cfg.AddBOS
	}
	if cfg != nil && cfg.AddEOS != nil {
		eos = *cfg.AddEOS
	}
	if bos {
		t.prefix = []int32{int32(mp.bosID)}
	}
	if eos {
		t.suffix = []int32{int32(mp.eosID)}
	}
}
