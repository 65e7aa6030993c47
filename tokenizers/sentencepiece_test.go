package tokenizers

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// protoWriter writes protocol-buffer fields, to build .model files in tests.
type protoWriter struct{ b []byte }

func (w *protoWriter) varint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }

func (w *protoWriter) key(field, wire int) { w.varint(uint64(field<<3 | wire)) }

func (w *protoWriter) varintField(field int, v int64) {
	w.key(field, 0)
	w.varint(uint64(v))
}

func (w *protoWriter) bytesField(field int, b []byte) {
	w.key(field, 2)
	w.varint(uint64(len(b)))
	w.b = append(w.b, b...)
}

func (w *protoWriter) float32Field(field int, f float32) {
	w.key(field, 5)
	w.b = binary.LittleEndian.AppendUint32(w.b, math.Float32bits(f))
}

// spmTrainer is the TrainerSpec of a test model.
type spmTrainer struct {
	modelType                  int
	unkID, bosID, eosID, padID int
}

// encodeModelProto writes a ModelProto.
func encodeModelProto(pieces []spPiece, tr spmTrainer, charsmap []byte, addDummyPrefix bool) []byte {
	var m protoWriter
	for _, p := range pieces {
		var pw protoWriter
		pw.bytesField(1, []byte(p.piece))
		pw.float32Field(2, p.score)
		pw.varintField(3, int64(p.typ))
		m.bytesField(1, pw.b)
	}
	var t protoWriter
	t.varintField(3, int64(tr.modelType))
	t.varintField(35, 1)
	t.varintField(40, int64(tr.unkID))
	t.varintField(41, int64(tr.bosID))
	t.varintField(42, int64(tr.eosID))
	t.varintField(43, int64(tr.padID)) // -1 is written as the 10-byte varint of its two's complement
	m.bytesField(2, t.b)
	var n protoWriter
	if charsmap != nil {
		n.bytesField(2, charsmap)
	}
	dummy := int64(0)
	if addDummyPrefix {
		dummy = 1
	}
	n.varintField(3, dummy)
	m.bytesField(3, n.b)
	return m.b
}

var gemmaLayout = spmTrainer{modelType: spmBPE, padID: 0, eosID: 1, bosID: 2, unkID: 3}

// gemmaModelFromJSON builds the SentencePiece model the Gemma 3
// tokenizer.json was converted from, as far as the json tells: every
// piece in id order; the added tokens as control (special) or
// user-defined pieces, <unk> as the unknown piece, <0xXX> as byte pieces;
// score 0 for all of those, and −(id − 494) for the normal pieces (ids
// 494…255967), the first normal piece scoring 0. That scoring is the one
// under which transformers' generate_merges gives the json's 514,906
// merges in the json's order; TestGemmaModelRoundTrip checks that our
// conversion does.
func gemmaModelFromJSON(t *testing.T, tok *Tokenizer) []byte {
	t.Helper()
	b := tok.model.(*bpe)
	byID := make([]string, b.vocabSize)
	for s, id := range b.vocab {
		byID[id] = s
	}
	added := map[string]addedToken{}
	for _, a := range tok.added {
		added[a.Content] = a
	}
	pieces := make([]spPiece, len(byID))
	for id, s := range byID {
		if s == "" {
			t.Fatalf("tokenizer.json has no token with id %d", id)
		}
		p := spPiece{piece: s, typ: pieceNormal, score: float32(-(id - 494))}
		if a, ok := added[s]; ok {
			p.typ, p.score = pieceUserDefined, 0
			if a.Special {
				p.typ = pieceControl
			}
			if s == "<unk>" {
				p.typ = pieceUnknown
			}
		} else if id >= 238 && id <= 493 {
			p.typ, p.score = pieceByte, 0
		}
		if p.typ == pieceNormal && (id < 494 || id > 255967) {
			t.Fatalf("piece %d %q: a normal piece outside 494…255967, not the layout this test assumes", id, s)
		}
		pieces[id] = p
	}
	return encodeModelProto(pieces, gemmaLayout, nil, false)
}

// TestGemmaModelRoundTrip: a tokenizer.model rebuilt from the Gemma 3
// tokenizer.json converts back to the json's merges (every pair, every
// rank) and vocabulary, and gives every case's ids.
func TestGemmaModelRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("converts a 262,144-piece model (a few seconds); skipped with -short")
	}
	ref := gemmaTokenizer(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.model")
	if err := os.WriteFile(path, gemmaModelFromJSON(t, ref), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := readCases(t, "tokenizers", "gemma3", "cases.jsonl")
	start := time.Now()
	bare, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("converted the %d-piece .model in %v", bare.VocabSize(), time.Since(start))
	want, got := ref.model.(*bpe), bare.model.(*bpe)
	if got.merges.n != want.merges.n || want.merges.n != 514906 {
		t.Fatalf("%d merges from the .model, %d in tokenizer.json (want 514,906)", got.merges.n, want.merges.n)
	}
	bad := 0
	for _, s := range want.merges.slots {
		if s.key == emptyPair {
			continue
		}
		if m, ok := got.merges.get(s.key); !ok || m != s.merge {
			bad++
			if bad < 5 {
				t.Errorf("merge of ids %d %d: rank/id %v (present %v) from the .model, %v in tokenizer.json", s.key>>32, uint32(s.key), m, ok, s.merge)
			}
		}
	}
	if !reflect.DeepEqual(got.vocab, want.vocab) || got.byteIDs != want.byteIDs || got.unk != want.unk {
		t.Errorf("the .model's vocabulary, byte pieces or unknown token differ from tokenizer.json's")
	}
	// Without the config the one token it alone registers, <image_soft_token>
	// (id 262144), is missing; no case holds it.
	if bare.VocabSize() != 262144 || ref.VocabSize() != 262145 {
		t.Errorf("VocabSize %d from the bare .model (want 262144), %d from tokenizer.json (want 262145)", bare.VocabSize(), ref.VocabSize())
	}
	checkCases(t, bare, cases)
}

// TestGemmaModelTabAlias: a Gemma-layout model without a "\t" piece reads
// its <0x09> byte piece as "\t", so tabs merge (GemmaConverter's fix for
// older Gemma files), and the merges follow the scores.
func TestGemmaModelTabAlias(t *testing.T) {
	pieces := []spPiece{
		{"<pad>", 0, pieceControl}, {"<eos>", 0, pieceControl}, {"<bos>", 0, pieceControl}, {"<unk>", 0, pieceUnknown},
	}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, spPiece{fmt.Sprintf("<0x%02X>", b), 0, pieceByte})
	}
	base := len(pieces) // 260
	for i, s := range []string{"a", "b", "▁", "\t\t", "ab", "▁a", "▁ab", "ba"} {
		pieces = append(pieces, spPiece{s, float32(-i), pieceNormal})
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.model")
	if err := os.WriteFile(path, encodeModelProto(pieces, gemmaLayout, nil, false), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	tab := int32(4 + 9) // <0x09>, read as "\t"
	for _, c := range []struct {
		text string
		want []int32
	}{
		{"", []int32{2}},
		{"\t\t", []int32{2, int32(base + 3)}},
		{"\t", []int32{2, tab}},
		// "ab" (score −4) is merged before "▁a" (−5): ▁ ab, then ▁ab (−6).
		{" ab", []int32{2, int32(base + 6)}},
		{"bab", []int32{2, int32(base + 1), int32(base + 4)}}, // b ab: "ab" outranks "ba" (−7)
		{"c", []int32{2, 4 + 'c'}},                            // byte fallback
		{"é", []int32{2, 4 + 0xC3, 4 + 0xA9}},
		{"<bos>x<unk>", []int32{2, 2, 4 + 'x', 3}}, // control and unknown pieces are added tokens
	} {
		if got := tok.Encode(c.text); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}

	// A tokenizer_config.json beside the .model adds its added tokens, may
	// change an existing one's flags, and sets add_bos_token/add_eos_token.
	cfg := `{"add_bos_token": false, "add_eos_token": true, "added_tokens_decoder": {
		"3": {"content": "<unk>", "lstrip": true, "normalized": false, "rstrip": false, "single_word": false, "special": true},
		"300": {"content": "<image>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}}}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	withCfg, err := Load(dir) // the folder: no tokenizer.json, so tokenizer.model
	if err != nil {
		t.Fatal(err)
	}
	if got, want := withCfg.Encode("ab <unk><image>"), []int32{int32(base + 4), 3, 300, 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("with the config: %v, want %v (no <bos>, <unk> taking the space before it, <image> added, <eos> last)", got, want)
	}
	if withCfg.VocabSize() != 301 || withCfg.Identity() == tok.Identity() || !strings.Contains(withCfg.Kind(), "tokenizer_config.json") {
		t.Errorf("with the config: VocabSize %d (want 301), identity %s (the bare model's: %s), kind %s", withCfg.VocabSize(), withCfg.Identity(), tok.Identity(), withCfg.Kind())
	}
}

// TestXLMRModelMatchesJSON: converting sentencepiece.bpe.model gives
// tokenizer.json's vocabulary, scores (exactly: the json holds the
// float32 scores written out in full), added tokens and special ids.
func TestXLMRModelMatchesJSON(t *testing.T) {
	fromJSON, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	fromModel, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "sentencepiece.bpe.model"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := fromJSON.model.(*unigram), fromModel.model.(*unigram)
	if !reflect.DeepEqual(a.scores, b.scores) || !reflect.DeepEqual(a.ids, b.ids) || a.unk != b.unk || a.minScore != b.minScore {
		t.Errorf("the .model's Unigram vocabulary differs from tokenizer.json's")
	}
	byID := func(a []addedToken) []addedToken {
		a = slices.Clone(a)
		slices.SortFunc(a, func(x, y addedToken) int { return int(x.ID - y.ID) })
		return a
	}
	if !reflect.DeepEqual(byID(fromJSON.added), byID(fromModel.added)) {
		t.Errorf("added tokens: %+v from the json, %+v from the .model", fromJSON.added, fromModel.added)
	}
	want := SpecialIDs{BOS: 0, EOS: 2, PAD: 1, UNK: 3}
	for _, tok := range []*Tokenizer{fromJSON, fromModel} {
		if tok.Special() != want || tok.VocabSize() != 4002 || tok.NumSpecialTokens() != 2 {
			t.Errorf("%s: special %+v, VocabSize %d, %d special tokens; want %+v, 4002, 2", tok.Kind(), tok.Special(), tok.VocabSize(), tok.NumSpecialTokens(), want)
		}
	}
}
