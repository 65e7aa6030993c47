package tokenizers

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
)

// xmlCaptions makes n NewBie-style XML captions (deterministic, about 600
// to 1,000 characters), each behind the Gemma system prompt when system.
func xmlCaptions(n int, system bool) []string {
	pick := func(r *rand.Rand, words ...string) string {
		k := 1 + r.IntN(3)
		out := make([]string, 0, k)
		for range k {
			out = append(out, words[r.IntN(len(words))])
		}
		return strings.Join(out, ", ")
	}
	r := rand.New(rand.NewPCG(1, 2))
	caps := make([]string, n)
	for i := range caps {
		var b strings.Builder
		if system {
			b.WriteString("You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> ")
		}
		fmt.Fprintf(&b, "<character_1>\n<n>%s</n>\n<gender>1girl</gender>\n", pick(r, "hatsune_miku", "kagamine_rin", "original_character", "megurine_luka", "saber_\\(fate\\)"))
		fmt.Fprintf(&b, "<appearance>%s, %s</appearance>\n", pick(r, "aqua_hair", "blonde_hair", "long_hair", "twintails", "short_hair", "ahoge"), pick(r, "blue_eyes", "red_eyes", "heterochromia", "aqua_eyes"))
		fmt.Fprintf(&b, "<clothing>%s</clothing>\n", pick(r, "detached_sleeves", "necktie", "pleated_skirt", "school_uniform", "thighhighs", "hoodie", "kimono"))
		fmt.Fprintf(&b, "<expression>%s</expression>\n<action>%s</action>\n", pick(r, "smile", "open_mouth", "blush", ":d", "closed_eyes"), pick(r, "singing", "holding_microphone", "waving", "sitting", "looking_at_viewer"))
		fmt.Fprintf(&b, "<position>%s</position>\n</character_1>\n<general_tags>\n<count>1girl</count>\n", pick(r, "center", "upper_body", "full_body", "cowboy_shot"))
		fmt.Fprintf(&b, "<style>%s</style>\n<background>%s</background>\n", pick(r, "anime_coloring", "watercolor_\\(medium\\)", "cel_shading"), pick(r, "stage", "spotlight", "night_sky", "cherry_blossoms", "city_lights", "simple_background"))
		fmt.Fprintf(&b, "<atmosphere>%s</atmosphere>\n<quality>masterpiece, best_quality, %d</quality>\n</general_tags>", pick(r, "energetic", "calm", "melancholic"), 2020+i%6)
		caps[i] = b.String()
	}
	return caps
}

// benchEncode reports strings/s and ids/s for encoding texts one by one.
func benchEncode(b *testing.B, tok *Tokenizer, texts []string) {
	ids := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ids += len(tok.Encode(texts[i%len(texts)]))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "strings/s")
	b.ReportMetric(float64(ids)/b.Elapsed().Seconds(), "ids/s")
}

func BenchmarkEncodeGemmaXML(b *testing.B) {
	benchEncode(b, gemmaTokenizer(b), xmlCaptions(256, true))
}

func BenchmarkEncodeXLMRXML(b *testing.B) {
	tok, err := Load(goldentest.Path(b, "tokenizers", "xlmr_tiny", "tokenizer.json"))
	if err != nil {
		b.Fatal(err)
	}
	benchEncode(b, tok, xmlCaptions(256, false))
}

// BenchmarkEncodeGemmaLong times one caption of 2,000 and of 20,000
// characters with no added token in it, so that BPE runs over it as one
// word: time per character stays flat when merging is O(n log n).
func BenchmarkEncodeGemmaLong(b *testing.B) {
	tok := gemmaTokenizer(b)
	unit := "masterpiece, best quality, 1girl, solo, aqua hair, twintails, "
	for _, n := range []int{2000, 20000} {
		text := strings.Repeat(unit, n/len(unit)+1)[:n]
		b.Run(fmt.Sprintf("chars=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				tok.Encode(text)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/char")
		})
	}
}

func BenchmarkLoadGemmaJSON(b *testing.B) {
	gemmaTokenizer(b) // decompressed once
	path := gemma.tok.Path()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Load(path); err != nil {
			b.Fatal(err)
		}
	}
}
