package tokenizers

import (
	"reflect"
	"sync"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// TestEncodeConcurrent: a Tokenizer is shared by goroutines (run it with
// -race too) and gives each the ids it gives alone.
func TestEncodeConcurrent(t *testing.T) {
	xlmr, err := Load(goldentest.Path(t, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []*Tokenizer{xlmr, gemmaTokenizer(t)} {
		texts := xmlCaptions(64, tok == xlmr)
		want := make([][]int32, len(texts))
		for i, s := range texts {
			want[i] = tok.Encode(s)
		}
		var wg sync.WaitGroup
		errs := make(chan string, 4)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range texts {
					k := (i + 16*g) % len(texts)
					if got := tok.Encode(texts[k]); !reflect.DeepEqual(got, want[k]) {
						errs <- texts[k]
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for s := range errs {
			t.Errorf("%s: concurrent Encode(%q) differs from the serial one", tok.Kind(), clip(s, 60))
		}
	}
}
