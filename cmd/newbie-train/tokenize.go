package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/tokenizers"
)

// tokenizeOptions are the flags of `newbie-train tokenize`.
type tokenizeOptions struct {
	tokenizer string
	jsonl     bool
}

func newTokenizeCmd(stdout io.Writer) *cobra.Command {
	o := &tokenizeOptions{}
	cmd := &cobra.Command{
		Use:   "tokenize --tokenizer PATH --jsonl",
		Short: "Turn text into token ids with a text encoder's tokenizer",
		Long: `tokenize reads one JSON string per line on stdin and writes, per line, the
JSON array of its token ids, with exactly the special tokens the encoder's
pipeline adds (Gemma 3: <bos> first; XLM-RoBERTa / Jina CLIP v2: <s> … </s>),
without padding or truncation: the ids Hugging Face's tokenizer(text)
gives.

PATH is a tokenizer.json, a SentencePiece .model (Gemma's tokenizer.model,
XLM-RoBERTa's sentencepiece.bpe.model) or a folder holding one. A line that
is not one JSON string stops the run with an error naming the line.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTokenize(o, cmd.InOrStdin(), stdout) },
	}
	f := cmd.Flags()
	f.StringVar(&o.tokenizer, "tokenizer", "", "tokenizer.json, .model file or a folder holding one (required)")
	f.BoolVar(&o.jsonl, "jsonl", false, "read one JSON string per line, write one JSON array of ids per line (required: the one format)")
	return cmd
}

func runTokenize(o *tokenizeOptions, stdin io.Reader, stdout io.Writer) error {
	if o.tokenizer == "" {
		return usageError{errors.New("tokenize needs --tokenizer PATH (a tokenizer.json, a .model file or a folder holding one)")}
	}
	if !o.jsonl {
		return usageError{errors.New("tokenize needs --jsonl: it reads one JSON string per line and writes one JSON array of ids per line")}
	}
	tok, err := tokenizers.Load(o.tokenizer)
	if err != nil {
		return err
	}
	in := bufio.NewReaderSize(stdin, 1<<16)
	out := bufio.NewWriterSize(stdout, 1<<16)
	var buf []byte
	for line := 1; ; line++ {
		raw, readErr := in.ReadBytes('\n')
		if len(raw) > 0 {
			text, err := parseJSONLine(raw)
			if err != nil {
				out.Flush()
				return fmt.Errorf("tokenize: stdin line %d: %w", line, err)
			}
			buf = appendIDs(buf[:0], tok.Encode(text))
			if _, err := out.Write(buf); err != nil {
				return fmt.Errorf("tokenize: write: %w", err)
			}
		}
		if readErr == io.EOF {
			break
		}
		if readErr != nil {
			out.Flush()
			return fmt.Errorf("tokenize: read stdin: %w", readErr)
		}
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("tokenize: write: %w", err)
	}
	return nil
}

// parseJSONLine reads a line holding one JSON string.
func parseJSONLine(raw []byte) (string, error) {
	raw = bytes.TrimRight(raw, "\r\n")
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '"' {
		return "", fmt.Errorf("want one JSON string, got %.40q", raw)
	}
	var s string
	if err := json.Unmarshal(trimmed, &s); err != nil {
		return "", fmt.Errorf("want one JSON string: %v", err)
	}
	return s, nil
}

// appendIDs appends ids as a JSON array and a newline.
func appendIDs(b []byte, ids []int32) []byte {
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(id), 10)
	}
	return append(b, ']', '\n')
}
