package main

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// runCLIStdin runs the command line with stdin reading input.
func runCLIStdin(t *testing.T, input string, args ...string) (int, string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stdin")
	if err := os.WriteFile(path, []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stdin
	os.Stdin = f // cobra reads os.Stdin when nothing else is set
	defer func() { os.Stdin = saved }()
	return runCLI(t, args...)
}

// TestTokenizeJSONL: the command gives the reference ids of the XLM-R
// cases, line by line, from the tokenizer.json and from the .model.
func TestTokenizeJSONL(t *testing.T) {
	dir := goldentest.Path(t, "tokenizers", "xlmr_tiny")
	cases, err := os.ReadFile(filepath.Join(dir, "cases.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var input strings.Builder
	var want []string
	sc := bufio.NewScanner(strings.NewReader(string(cases)))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var c struct {
			Text string  `json:"text"`
			IDs  []int32 `json:"ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		line, _ := json.Marshal(c.Text)
		input.Write(line)
		input.WriteByte('\n')
		ids, _ := json.Marshal(c.IDs)
		want = append(want, string(ids))
	}
	for _, path := range []string{dir, filepath.Join(dir, "sentencepiece.bpe.model")} {
		code, out, stderr := runCLIStdin(t, input.String(), "tokenize", "--tokenizer", path, "--jsonl")
		if code != 0 {
			t.Fatalf("tokenize --tokenizer %s: exit %d: %s", path, code, stderr)
		}
		got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(got) != len(want) {
			t.Fatalf("%s: %d output lines for %d inputs", path, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: line %d: %s, want %s", path, i+1, got[i], want[i])
				break
			}
		}
	}
	// No final newline, a CRLF line, spaces around the string.
	code, out, stderr := runCLIStdin(t, "\"\"\r\n  \"\"  ", "tokenize", "--tokenizer", dir, "--jsonl")
	if code != 0 || out != "[0,2]\n[0,2]\n" {
		t.Errorf("two empty strings: exit %d, %q, %s; want [0,2] twice", code, out, stderr)
	}
}

func TestTokenizeErrors(t *testing.T) {
	dir := goldentest.Path(t, "tokenizers", "xlmr_tiny")
	notTok := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(notTok, []byte(`{"architectures": ["XLMRobertaModel"], "hidden_size": 1024}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		input string
		args  []string
		code  int
		want  string
		lines int // output lines written before the error
	}{
		{"no tokenizer", "", []string{"tokenize", "--jsonl"}, exitUsage, "--tokenizer", 0},
		{"no jsonl", "", []string{"tokenize", "--tokenizer", dir}, exitUsage, "--jsonl", 0},
		{"stray argument", "", []string{"tokenize", "--tokenizer", dir, "--jsonl", "x.txt"}, exitUsage, "unknown command", 0},
		{"not a tokenizer", "", []string{"tokenize", "--tokenizer", notTok, "--jsonl"}, exitFailure, "config.json: as tokenizer.json: a model config.json", 0},
		{"a number", "\"a\"\n\"b\"\n42\n\"c\"\n", []string{"tokenize", "--tokenizer", dir, "--jsonl"}, exitFailure, "stdin line 3: want one JSON string", 2},
		{"bad escape", "\"\\x\"\n", []string{"tokenize", "--tokenizer", dir, "--jsonl"}, exitFailure, "stdin line 1: want one JSON string: invalid character 'x'", 0},
		{"empty line", "\"a\"\n\n", []string{"tokenize", "--tokenizer", dir, "--jsonl"}, exitFailure, "stdin line 2", 1},
		{"two values", "\"a\" \"b\"\n", []string{"tokenize", "--tokenizer", dir, "--jsonl"}, exitFailure, "stdin line 1", 0},
		{"null", "null\n", []string{"tokenize", "--tokenizer", dir, "--jsonl"}, exitFailure, "stdin line 1", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := runCLIStdin(t, c.input, c.args...)
			if code != c.code || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, c.code, c.want)
			}
			if n := strings.Count(out, "\n"); n != c.lines {
				t.Errorf("%d lines written before the error (%q), want %d", n, out, c.lines)
			}
		})
	}
}
