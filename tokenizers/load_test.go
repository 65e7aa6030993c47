package tokenizers

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// TestLoadBadFiles: a file of another kind, a damaged file or a pipeline
// component this package does not run is an error naming the file and
// saying what is wrong.
func TestLoadBadFiles(t *testing.T) {
	dir := t.TempDir()
	xlmrJSON, err := os.ReadFile(goldentest.Path(t, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	xlmrModel, err := os.ReadFile(goldentest.Path(t, "tokenizers", "xlmr_tiny", "sentencepiece.bpe.model"))
	if err != nil {
		t.Fatal(err)
	}
	safetensors := binary.LittleEndian.AppendUint64(nil, 20)
	safetensors = append(safetensors, `{"__metadata__":{}} `...)
	safetensors = append(safetensors, make([]byte, 64)...)
	// with replaces a top-level field of the xlmr tokenizer.json (a
	// "model." prefix: a field of its model) by raw JSON.
	with := func(key, raw string) []byte {
		var top map[string]json.RawMessage
		if err := json.Unmarshal(xlmrJSON, &top); err != nil {
			t.Fatal(err)
		}
		if k, ok := strings.CutPrefix(key, "model."); ok {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(top["model"], &m); err != nil {
				t.Fatal(err)
			}
			m[k] = json.RawMessage(raw)
			b, _ := json.Marshal(m)
			top["model"] = b
		} else {
			top[key] = json.RawMessage(raw)
		}
		b, err := json.Marshal(top)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		data []byte // nil: name is a path already made
		want string
	}{
		{"empty.json", []byte{}, "empty file"},
		{"weights.safetensors", safetensors, "a safetensors weights file, not a tokenizer"},
		{"config.json", []byte(`{"architectures": ["Gemma3ForCausalLM"], "hidden_size": 2560, "model_type": "gemma3_text"}`), "a model config.json, not a tokenizer.json"},
		{"tokenizer_config.json", []byte(`{"add_bos_token": true, "tokenizer_class": "GemmaTokenizer", "added_tokens_decoder": {}}`), "a tokenizer_config.json, not a tokenizer.json"},
		{"truncated.json", xlmrJSON[:len(xlmrJSON)/2], "truncated"},
		{"garbage.json", []byte(`{"model": nope}`), "not valid JSON"},
		{"tokenizer.json.gz", nil, "gzip-compressed file: decompress it first"},
		{"truncated.model", xlmrModel[:len(xlmrModel)/2], "truncated"},
		{"random.model", []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"), "neither a tokenizer.json nor a SentencePiece .model"},
		{"text.model", []byte("hello, I am a text file\n"), "neither a tokenizer.json nor a SentencePiece .model"},
		{"nfkc.json", with("normalizer", `{"type": "NFKC"}`), "normalizer (NFKC): this normalizer is not supported"},
		{"nested.json", with("normalizer", `{"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": false, "strip_right": true}, {"type": "Lowercase"}]}`), "normalizer.normalizers[1] (Lowercase): this normalizer is not supported"},
		{"bytelevel.json", with("pre_tokenizer", `{"type": "ByteLevel", "add_prefix_space": false}`), "pre_tokenizer (ByteLevel): this pre-tokenizer is not supported"},
		{"splitregex.json", with("pre_tokenizer", `{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false}`), "a Regex pattern"},
		{"wordpiece.json", with("model.type", `"WordPiece"`), `model: type "WordPiece" is not supported`},
		{"classregex.json", with("normalizer", `{"type": "Replace", "pattern": {"Regex": "\\s{2,}"}, "content": "x"}`), `the escape \s is not supported`},
		{"nounk.json", with("model.unk_id", `null`), "Unigram: no unk_id"},
		{"version.json", with("version", `"2.0"`), `version "2.0"`},
		{"charsmap64.json", with("normalizer", `{"type": "Precompiled", "precompiled_charsmap": "not base64!"}`), "precompiled_charsmap is not base64"},
		{"charsmapsize.json", with("normalizer", `{"type": "Precompiled", "precompiled_charsmap": "/////wAAAAA="}`), "trie size 4294967295 does not fit the 4 bytes that follow it"},
		{"bytelevelpost.json", with("post_processor", `{"type": "ByteLevel", "trim_offsets": false}`), "post_processor (ByteLevel): this post-processor is not supported"},
		{"nothing-here", nil, "holds none of tokenizer.json, tokenizer.model"},
		{"missing.json", nil, "no such file"},
	}
	if err := os.Mkdir(filepath.Join(dir, "nothing-here"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name)
			switch {
			case c.data != nil:
				if err := os.WriteFile(path, c.data, 0o644); err != nil {
					t.Fatal(err)
				}
			case c.name == "tokenizer.json.gz":
				path = goldentest.Path(t, "tokenizers", "gemma3", "tokenizer.json.gz")
			}
			tok, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%s) = %s, want an error mentioning %q", path, tok.Kind(), c.want)
			}
			t.Log(err)
			if msg := err.Error(); !strings.Contains(msg, c.want) || !strings.Contains(msg, path) {
				t.Errorf("Load(%s): %q; want the path and %q", path, msg, c.want)
			}
		})
	}
}

// TestLoadFolder: a folder is read through the file it holds, tokenizer.json first.
func TestLoadFolder(t *testing.T) {
	src := goldentest.Path(t, "tokenizers", "xlmr_tiny")
	tok, err := Load(src)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Path() != filepath.Join(src, "tokenizer.json") || tok.Kind() != "tokenizer.json (Unigram)" {
		t.Errorf("Load(folder) read %s as %s; want its tokenizer.json", tok.Path(), tok.Kind())
	}
	model, err := os.ReadFile(filepath.Join(src, "sentencepiece.bpe.model"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sentencepiece.bpe.model"), model, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err = Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok.Kind(), "SentencePiece model (Unigram, XLM-RoBERTa layout)") {
		t.Errorf("Load(folder with only the .model) read it as %s", tok.Kind())
	}
}

// TestSentencePieceLayouts: .model files in layouts no converter here
// handles are refused, saying which layout was expected.
func TestSentencePieceLayouts(t *testing.T) {
	pieces := []spPiece{{"<unk>", 0, pieceUnknown}, {"<s>", 0, pieceControl}, {"</s>", 0, pieceControl}, {"a", -1, pieceNormal}}
	for _, c := range []struct {
		name string
		tr   spmTrainer
		want string
	}{
		{"unigram-llama", spmTrainer{modelType: spmUnigram, unkID: 0, bosID: 1, eosID: 2, padID: 3}, ""},
		{"unigram-t5", spmTrainer{modelType: spmUnigram, unkID: 2, bosID: -1, eosID: 1, padID: 0}, "only XLM-RoBERTa's layout"},
		{"bpe-llama", spmTrainer{modelType: spmBPE, unkID: 0, bosID: 1, eosID: 2, padID: -1}, "only Gemma's layout"},
		{"word", spmTrainer{modelType: spmWord, unkID: 0, bosID: 1, eosID: 2, padID: -1}, "model_type 3 (WORD or CHAR) is not supported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), c.name+".model")
			if err := os.WriteFile(path, encodeModelProto(pieces, c.tr, nil, true), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("Load: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("Load: %v; want an error mentioning %q", err, c.want)
			}
		})
	}
}
