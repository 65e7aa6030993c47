package tokenizers

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// folderFiles are the tokenizer files a model folder may hold, in the
// order Load prefers them.
var folderFiles = []string{"tokenizer.json", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model"}

// Load reads a tokenizer from path: a Hugging Face tokenizer.json, a
// SentencePiece .model (converted as transformers converts Gemma's and
// XLM-RoBERTa's; a tokenizer_config.json beside it adds its
// added_tokens_decoder and add_bos_token/add_eos_token), or a folder
// holding one of them (tokenizer.json preferred). What the file is comes
// from its content, not its name; a file of another kind is an error
// saying what it is.
func Load(path string) (*Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	if st.IsDir() {
		found := ""
		for _, name := range folderFiles {
			if _, err := os.Stat(filepath.Join(path, name)); err == nil {
				found = filepath.Join(path, name)
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("load tokenizer: folder %s holds none of %s", path, strings.Join(folderFiles, ", "))
		}
		path = found
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	t, err := parseFile(path, data)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	return t, nil
}

// parseFile tells what data is and builds the tokenizer from it.
func parseFile(path string, data []byte) (*Tokenizer, error) {
	sum := sha256.New()
	sum.Write(data)
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	var t *Tokenizer
	var err error
	switch {
	case len(data) == 0:
		return nil, errors.New("empty file: want a tokenizer.json or a SentencePiece .model")
	case len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b:
		return nil, errors.New("a gzip-compressed file: decompress it first (want a tokenizer.json or a SentencePiece .model)")
	case isSafetensors(data):
		return nil, errors.New("a safetensors weights file, not a tokenizer (want a tokenizer.json or a SentencePiece .model)")
	case len(trimmed) > 0 && trimmed[0] == '{':
		t, err = parseTokenizerJSON(data)
		if err != nil {
			return nil, fmt.Errorf("as tokenizer.json: %w", err)
		}
	default:
		var mp *modelProto
		mp, err = parseModelProto(data)
		if err != nil {
			return nil, fmt.Errorf("neither a tokenizer.json nor a SentencePiece .model: %w", err)
		}
		cfgPath := filepath.Join(filepath.Dir(path), "tokenizer_config.json")
		cfg, cfgData, err := readTokenizerConfig(cfgPath)
		if err != nil {
			return nil, err
		}
		if cfgData != nil {
			sum.Write(cfgData)
		}
		t, err = convertSentencePiece(mp, cfg)
		if err != nil {
			return nil, fmt.Errorf("SentencePiece model: %w", err)
		}
		if cfg != nil {
			t.kind += " + " + cfgPath
		}
	}
	t.path = path
	t.identity = "sha256:" + hex.EncodeToString(sum.Sum(nil))
	return t, nil
}

// isSafetensors reports whether data starts like a safetensors file: a
// little-endian u64 header length, then that many bytes of JSON.
func isSafetensors(data []byte) bool {
	if len(data) < 10 {
		return false
	}
	n := binary.LittleEndian.Uint64(data)
	return n > 1 && n <= uint64(len(data)-8) && data[8] == '{'
}
