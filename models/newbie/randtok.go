package newbie

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"sort"

	"github.com/newbie-train/newbie-train/data"
)

// Small real-format tokenizers, generated at run time (nothing large is
// committed): a Gemma-style BPE tokenizer.json with byte fallback and a
// Jina-style (XLM-RoBERTa) Unigram tokenizer.json, both learned
// deterministically from a corpus of NewBie XML captions and the Gemma
// system prompt. They are what WriteRandom puts beside the random encoders;
// the tokenizers package loads them like the real files (same JSON
// structure, same pipeline components) and they give a few ids per word
// of a caption rather than one per character.

// tokenizerCorpus is the text the tokenizers are learned from.
func tokenizerCorpus() []string {
	texts := []string{data.GemmaSystemPrompt}
	for i := range 200 {
		texts = append(texts, SampleCaption(i))
	}
	for _, t := range xmlTags {
		texts = append(texts, "<"+t+">", "</"+t+">")
	}
	return texts
}

// metaspace is the "▁" both tokenizers put for a space.
const metaspace = "▁"

// corpusWords splits the corpus into the words the tokenizers learn: XML
// tags, runs of other characters, and commas, each with "▁" in front when
// a space precedes it (both tokenizers turn spaces into "▁"); it returns
// each word's count.
func corpusWords() map[string]int {
	counts := map[string]int{}
	for _, t := range tokenizerCorpus() {
		for _, m := range corpusWord.FindAllStringIndex(t, -1) {
			w := t[m[0]:m[1]]
			if m[0] > 0 && t[m[0]-1] == ' ' {
				w = metaspace + w
			}
			counts[w]++
		}
	}
	return counts
}

// corpusWord matches one learning word: a tag, a comma, or a run of
// anything else but spaces.
var corpusWord = regexp.MustCompile(`<[^<> ]*>|,|[^<>, ]+`)

// gemmaTokenizerJSON builds a Gemma-3-style tokenizer.json: the special
// tokens at Gemma's ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4,
// [multimodal] 5, <start_of_turn> 6, <end_of_turn> 7, "\n" 8), the 256
// byte tokens <0x00>…<0xFF>, the corpus's characters, then merges BPE
// learns from the corpus (merges of them), with Gemma's pipeline:
// normalizer " " → "▁", a Split on " " that then does nothing, BPE with
// byte fallback and fused unknowns, "<bos> $A".
func gemmaTokenizerJSON(merges int) ([]byte, int) {
	specials := []struct {
		tok     string
		special bool
	}{{"<pad>", true}, {"<eos>", true}, {"<bos>", true}, {"<unk>", true}, {"<mask>", false}, {"[multimodal]", false},
		{"<start_of_turn>", true}, {"<end_of_turn>", true}, {"\n", false}}
	vocab := map[string]int{}
	var order []string
	add := func(tok string) {
		if _, ok := vocab[tok]; !ok {
			vocab[tok] = len(order)
			order = append(order, tok)
		}
	}
	var added []map[string]any
	for _, s := range specials {
		added = append(added, map[string]any{"id": len(order), "content": s.tok, "single_word": false, "lstrip": false,
			"rstrip": false, "normalized": false, "special": s.special})
		add(s.tok)
	}
	for b := range 256 {
		add(fmt.Sprintf("<0x%02X>", b))
	}
	words := corpusWords()
	chars := map[string]bool{}
	for w := range words {
		for _, r := range w {
			chars[string(r)] = true
		}
	}
	for _, c := range slices.Sorted(maps.Keys(chars)) {
		add(c)
	}
	pairs := learnBPE(words, merges)
	mergeList := make([][2]string, 0, len(pairs))
	for _, p := range pairs {
		add(p[0] + p[1])
		mergeList = append(mergeList, p)
	}
	vocabJSON := make(map[string]int, len(vocab))
	for k, v := range vocab {
		vocabJSON[k] = v
	}
	doc := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": added,
		"normalizer":    map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": metaspace},
		"pre_tokenizer": map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
		"post_processor": map[string]any{"type": "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<bos>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair":           []any{map[string]any{"SpecialToken": map[string]any{"id": "<bos>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, map[string]any{"SpecialToken": map[string]any{"id": "<bos>", "type_id": 1}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{"<bos>": map[string]any{"id": "<bos>", "ids": []int{2}, "tokens": []string{"<bos>"}}}},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": metaspace}, "content": " "},
			map[string]any{"type": "ByteFallback"}, map[string]any{"type": "Fuse"}}},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": "<unk>", "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
			"vocab": vocabJSON, "merges": mergeList},
	}
	js, _ := json.Marshal(doc) // maps, slices and strings always marshal
	return js, len(order)
}

// learnBPE learns up to n merges from word counts, the classic way: every
// word starts as its characters; the most frequent adjacent pair (ties
// broken by the pair's text, so the result is deterministic) is merged
// everywhere, n times or until no pair occurs twice.
func learnBPE(words map[string]int, n int) [][2]string {
	type word struct {
		syms  []string
		count int
	}
	var ws []word
	for _, w := range slices.Sorted(maps.Keys(words)) {
		var syms []string
		for _, r := range w {
			syms = append(syms, string(r))
		}
		ws = append(ws, word{syms, words[w]})
	}
	var merges [][2]string
	for len(merges) < n {
		counts := map[[2]string]int{}
		for _, w := range ws {
			for i := 0; i+1 < len(w.syms); i++ {
				counts[[2]string{w.syms[i], w.syms[i+1]}] += w.count
			}
		}
		var best [2]string
		bestN := 1
		for p, c := range counts {
			if c > bestN || c == bestN && bestN > 1 && p[0]+"\x00"+p[1] < best[0]+"\x00"+best[1] {
				best, bestN = p, c
			}
		}
		if bestN < 2 {
			break
		}
		merges = append(merges, best)
		for i := range ws {
			s := ws[i].syms
			out := s[:0:0]
			for j := 0; j < len(s); j++ {
				if j+1 < len(s) && s[j] == best[0] && s[j+1] == best[1] {
					out = append(out, best[0]+best[1])
					j++
					continue
				}
				out = append(out, s[j])
			}
			ws[i].syms = out
		}
	}
	return merges
}

// jinaTokenizerJSON builds an XLM-RoBERTa-style Unigram tokenizer.json as
// Jina CLIP v2 uses it: <s> 0, <pad> 1, </s> 2, <unk> 3, then the corpus's
// whole words ("▁" first where a space precedes them), its characters and
// "▁", scored by log frequency, and <mask> last; XLM-R's pipeline less the
// NFKC charsmap: Strip(right), runs of spaces → "▁", Metaspace (always
// prepend, split), "<s> $A </s>".
func jinaTokenizerJSON() ([]byte, int) {
	words := corpusWords()
	freq := map[string]int{}
	total := 0
	for w, c := range words {
		freq[w] += c
		total += c
		for _, r := range w {
			freq[string(r)] += c
			total += c
		}
	}
	freq[metaspace] += total / 10
	type piece struct {
		tok   string
		score float64
	}
	var pieces []piece
	for _, t := range slices.Sorted(maps.Keys(freq)) {
		pieces = append(pieces, piece{t, math.Log(float64(freq[t]) / float64(total))})
	}
	sort.SliceStable(pieces, func(i, j int) bool { return pieces[i].score > pieces[j].score })
	vocab := []any{[]any{"<s>", 0.0}, []any{"<pad>", 0.0}, []any{"</s>", 0.0}, []any{"<unk>", 0.0}}
	for _, p := range pieces {
		vocab = append(vocab, []any{p.tok, p.score})
	}
	mask := len(vocab)
	vocab = append(vocab, []any{"<mask>", 0.0})
	tok := func(id int, content string, lstrip bool) map[string]any {
		return map[string]any{"id": id, "content": content, "single_word": false, "lstrip": lstrip, "rstrip": false, "normalized": false, "special": true}
	}
	meta := map[string]any{"type": "Metaspace", "replacement": metaspace, "prepend_scheme": "always", "split": true}
	doc := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil,
		"added_tokens": []any{tok(0, "<s>", false), tok(1, "<pad>", false), tok(2, "</s>", false), tok(3, "<unk>", false), tok(mask, "<mask>", true)},
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Strip", "strip_left": false, "strip_right": true},
			map[string]any{"type": "Replace", "pattern": map[string]any{"Regex": " {2,}"}, "content": metaspace}}},
		"pre_tokenizer": meta,
		"post_processor": map[string]any{"type": "TemplateProcessing",
			"single": []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, map[string]any{"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}}},
			"pair": []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, map[string]any{"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 0}}, map[string]any{"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}}},
			"special_tokens": map[string]any{
				"<s>":  map[string]any{"id": "<s>", "ids": []int{0}, "tokens": []string{"<s>"}},
				"</s>": map[string]any{"id": "</s>", "ids": []int{2}, "tokens": []string{"</s>"}}}},
		"decoder": meta,
		"model":   map[string]any{"type": "Unigram", "unk_id": 3, "vocab": vocab, "byte_fallback": false},
	}
	js, _ := json.Marshal(doc)
	return js, len(vocab)
}
