package tokenizers

import (
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// checkRows checks that every row is the text's Encode cut as HF cuts
// (the text's own ids to maxLen − specials, then the special tokens),
// padded with pad to length, and that the mask marks the real ids.
func checkRows(t *testing.T, tok *Tokenizer, texts []string, b Batch, o BatchOptions) {
	t.Helper()
	nsp, pre := tok.NumSpecialTokens(), len(tok.prefix)
	for i, text := range texts {
		full := tok.Encode(text)
		want := full
		if o.MaxLength > 0 && len(full) > o.MaxLength {
			content := full[pre : len(full)-len(tok.suffix)]
			want = append(append(append([]int32(nil), tok.prefix...), content[:o.MaxLength-nsp]...), tok.suffix...)
		}
		row, mask := b.IDs[i], b.Mask[i]
		if len(row) != b.Length || len(mask) != b.Length || b.Lengths[i] != len(want) {
			t.Fatalf("row %d: %d ids, %d mask, length %d; want %d, %d, %d", i, len(row), len(mask), b.Lengths[i], b.Length, b.Length, len(want))
		}
		if !reflect.DeepEqual(row[:len(want)], want) {
			t.Errorf("row %d: ids %v…, want %v…", i, window(row, 0), window(want, 0))
		}
		for k := range row {
			real := k < len(want)
			if real != (mask[k] == 1) || !real && (row[k] != o.PadID || mask[k] != 0) {
				t.Fatalf("row %d position %d: id %d mask %d (real token: %v, pad id %d)", i, k, row[k], mask[k], real, o.PadID)
			}
		}
	}
}

func TestGemmaBatch(t *testing.T) {
	tok := gemmaTokenizer(t)
	long := strings.Repeat("<character_1><n>hatsune_miku</n></character_1> ", 60)
	texts := []string{"a girl", "", "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> <n>miku</n>", long}
	b, err := tok.EncodeBatch(texts[:3], GemmaBatch)
	if err != nil {
		t.Fatal(err)
	}
	longest := max(len(tok.Encode(texts[0])), len(tok.Encode(texts[2])))
	if b.Length%8 != 0 || b.Length < longest || b.Length >= longest+8 || len(b.Truncated) != 0 {
		t.Errorf("length %d for a longest row of %d, truncated %v: want the next multiple of 8, nothing cut", b.Length, longest, b.Truncated)
	}
	if !reflect.DeepEqual(b.IDs[1][:2], []int32{2, 0}) || b.Mask[1][0] != 1 || b.Mask[1][1] != 0 {
		t.Errorf("the empty caption: ids %v mask %v, want <bos> then padding", b.IDs[1][:2], b.Mask[1][:2])
	}
	checkRows(t, tok, texts[:3], b, GemmaBatch)

	b, err = tok.EncodeBatch(texts, GemmaBatch)
	if err != nil {
		t.Fatal(err)
	}
	n := len(tok.Encode(long))
	if b.Length != 512 || !reflect.DeepEqual(b.Truncated, []Truncation{{Index: 3, Tokens: n, Kept: 512}}) || n <= 512 {
		t.Errorf("with a %d-id caption: length %d, truncated %v; want 512 and that caption cut to 512", n, b.Length, b.Truncated)
	}
	checkRows(t, tok, texts, b, GemmaBatch)
}

func TestJinaBatch(t *testing.T) {
	tok, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("masterpiece, best quality, 1girl, aqua hair ", 300)
	texts := []string{"1girl, solo", long, "<mask> <mask>", "x"}
	b, err := tok.EncodeBatch(texts, JinaBatch)
	if err != nil {
		t.Fatal(err)
	}
	n := len(tok.Encode(long))
	if b.Length != 2048 || !reflect.DeepEqual(b.Truncated, []Truncation{{Index: 1, Tokens: n, Kept: 2048}}) || n <= 2048 {
		t.Errorf("with a %d-id text: length %d, truncated %v; want 2048 and that text cut", n, b.Length, b.Truncated)
	}
	if row := b.IDs[1]; row[0] != 0 || row[2047] != 2 {
		t.Errorf("the cut row starts with %d and ends with %d; want <s> (0) … </s> (2)", row[0], row[2047])
	}
	checkRows(t, tok, texts, b, JinaBatch)

	short, err := tok.EncodeBatch(texts[2:], JinaBatch)
	if err != nil {
		t.Fatal(err)
	}
	if short.Length != len(tok.Encode("<mask> <mask>")) || short.IDs[1][short.Length-1] != 1 {
		t.Errorf("length %d, last row %v: want the longest row's length and <pad> (1) after x", short.Length, short.IDs[1])
	}
	checkRows(t, tok, texts[2:], short, JinaBatch)
}

func TestBatchOptions(t *testing.T) {
	tok, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    BatchOptions
		ok   bool
		want int // padded length of ["hello world", "x"]
	}{
		{BatchOptions{}, true, len(tok.Encode("hello world"))},
		{BatchOptions{MaxLength: 3}, true, 3},
		{BatchOptions{MaxLength: 2}, true, 2}, // room for <s> </s> alone
		{BatchOptions{MaxLength: 1}, false, 0},
		{BatchOptions{MaxLength: 3, PadToMultipleOf: 8}, true, 8}, // as in HF, the multiple wins
		{BatchOptions{PadToMultipleOf: -1}, false, 0},
	} {
		b, err := tok.EncodeBatch([]string{"hello world", "x"}, c.o)
		if (err == nil) != c.ok {
			t.Errorf("%+v: error %v, want ok %v", c.o, err, c.ok)
			continue
		}
		if err != nil {
			continue
		}
		if b.Length != c.want {
			t.Errorf("%+v: length %d, want %d", c.o, b.Length, c.want)
		}
		checkRows(t, tok, []string{"hello world", "x"}, b, c.o)
	}
	b, err := tok.EncodeBatch(nil, JinaBatch)
	if err != nil || b.Length != 0 || len(b.IDs) != 0 {
		t.Errorf("empty batch: %+v, %v", b, err)
	}
}
