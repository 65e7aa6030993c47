package tokenizers

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// gemmaJSONSHA256 is the hash public repositories pin for google/gemma-3-*
// tokenizer.json (../shared/golden/tokenizers/README.md).
const gemmaJSONSHA256 = "sha256:4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"

// goldenCase is one line of a cases.jsonl.
type goldenCase struct {
	Text string  `json:"text"`
	IDs  []int32 `json:"ids"`
}

func readCases(t testing.TB, parts ...string) []goldenCase {
	t.Helper()
	f, err := os.Open(goldentest.Path(t, parts...))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []goldenCase
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 1; sc.Scan(); n++ {
		var c goldenCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("%s line %d: %v", f.Name(), n, err)
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cases
}

// The Gemma 3 tokenizer is decompressed and parsed once for all tests.
var gemma struct {
	once sync.Once
	tok  *Tokenizer
	dir  string // holds tokenizer.json; removed when the tests end
	load time.Duration
	err  error
}

func gemmaTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	gz := goldentest.Path(t, "tokenizers", "gemma3", "tokenizer.json.gz")
	gemma.once.Do(func() {
		gemma.dir, gemma.err = os.MkdirTemp("", "gemma3-tokenizer-")
		if gemma.err != nil {
			return
		}
		path := filepath.Join(gemma.dir, "tokenizer.json")
		if gemma.err = gunzip(gz, path); gemma.err != nil {
			return
		}
		start := time.Now()
		gemma.tok, gemma.err = Load(path)
		gemma.load = time.Since(start)
	})
	if gemma.err != nil {
		t.Fatal(gemma.err)
	}
	return gemma.tok
}

func TestMain(m *testing.M) {
	code := m.Run()
	if gemma.dir != "" {
		os.RemoveAll(gemma.dir)
	}
	os.Exit(code)
}

func gunzip(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, zr); err != nil {
		out.Close()
		return fmt.Errorf("decompress %s: %w", src, err)
	}
	return out.Close()
}

// checkCases encodes every case and reports, for each that differs, the
// first differing position.
func checkCases(t *testing.T, tok *Tokenizer, cases []goldenCase) {
	t.Helper()
	bad := 0
	for i, c := range cases {
		got := tok.Encode(c.Text)
		if k := firstDiff(got, c.IDs); k >= 0 {
			bad++
			if bad <= 10 {
				t.Errorf("case %d %q: ids differ first at position %d: got %v, want %v (lengths %d, %d)",
					i, clip(c.Text, 80), k, window(got, k), window(c.IDs, k), len(got), len(c.IDs))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d cases differ", bad, len(cases))
	} else {
		t.Logf("all %d cases give exactly the reference ids", len(cases))
	}
}

// firstDiff is the first position where a and b differ, or -1.
func firstDiff(a, b []int32) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// window is a[k-3 : k+5], clipped.
func window(a []int32, k int) []int32 { return a[max(0, k-3):min(len(a), k+5)] }

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

func TestGemma3Cases(t *testing.T) {
	tok := gemmaTokenizer(t)
	t.Logf("loaded %s (%s) in %v", tok.Path(), tok.Kind(), gemma.load)
	if got := tok.Identity(); got != gemmaJSONSHA256 {
		t.Errorf("Identity %s, want the published hash %s", got, gemmaJSONSHA256)
	}
	if got := tok.ModelType(); got != ModelBPE {
		t.Errorf("ModelType %q, want %q", got, ModelBPE)
	}
	checkCases(t, tok, readCases(t, "tokenizers", "gemma3", "cases.jsonl"))
}

func TestXLMRCasesJSON(t *testing.T) {
	tok, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.ModelType(); got != ModelUnigram {
		t.Errorf("ModelType %q, want %q", got, ModelUnigram)
	}
	checkCases(t, tok, readCases(t, "tokenizers", "xlmr_tiny", "cases.jsonl"))
}

func TestXLMRCasesModel(t *testing.T) {
	tok, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "sentencepiece.bpe.model"))
	if err != nil {
		t.Fatal(err)
	}
	checkCases(t, tok, readCases(t, "tokenizers", "xlmr_tiny", "cases.jsonl"))
}
