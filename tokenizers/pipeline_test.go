package tokenizers

import (
	"reflect"
	"testing"
)

func TestGraphemeClusters(t *testing.T) {
	for _, c := range []struct {
		text string
		want []string
	}{
		{"", nil},
		{"ab", []string{"a", "b"}},
		{"e\u0301x", []string{"e\u0301", "x"}},                                             // GB9: combining mark
		{"\r\n\n", []string{"\r\n", "\n"}},                                                 // GB3, GB4
		{"a\u0001\u0301", []string{"a", "\u0001", "\u0301"}},                               // GB4/GB5: controls stand alone
		{"🇯🇵🇺🇸🇫", []string{"🇯🇵", "🇺🇸", "🇫"}},                                               // GB12/13: flag pairs
		{"👩\u200d👩\u200d👧x", []string{"👩\u200d👩\u200d👧", "x"}},                             // GB11: ZWJ sequence
		{"a\u200d👩", []string{"a\u200d", "👩"}},                                             // GB11 needs a pictograph before the ZWJ
		{"👍🏽", []string{"👍🏽"}},                                                             // skin tone: Extend
		{"1\ufe0f\u20e3", []string{"1\ufe0f\u20e3"}},                                       // keycap
		{"\u1100\u1161\u11a8\uac00\u11a8", []string{"\u1100\u1161\u11a8", "\uac00\u11a8"}}, // GB6–8: Hangul L V T, LV T
		{"\u0915\u094d\u0937", []string{"\u0915\u094d\u0937"}},                             // GB9c: क्ष
		{"\u0915\u093c\u0937", []string{"\u0915\u093c", "\u0937"}},                         // a nukta is no linker
		{"\u0915\u093e", []string{"\u0915\u093e"}},                                         // GB9a: spacing mark
		{"\u06001", []string{"\u06001"}},                                                   // GB9b: prepend
		{"ｶﾞｷ", []string{"ｶﾞ", "ｷ"}},                                                       // halfwidth voiced mark: Extend
	} {
		g := graphemeSplitter{s: c.text}
		var got []string
		for s := g.next(); s != ""; s = g.next() {
			got = append(got, s)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("clusters of %+q: %+q, want %+q", c.text, got, c.want)
		}
	}
}

func TestAddedTokenMatching(t *testing.T) {
	tokens := []addedToken{
		{ID: 10, Content: "<a>"}, {ID: 11, Content: "<ab>"}, {ID: 12, Content: "ab", SingleWord: true},
		{ID: 13, Content: "<m>", LStrip: true}, {ID: 14, Content: "<r>", RStrip: true},
	}
	contents := make([]string, len(tokens))
	for i, a := range tokens {
		contents[i] = a.Content
	}
	m := newAddedMatcher(tokens, contents)
	type seg struct {
		text string
		id   int32
	}
	for _, c := range []struct {
		text string
		want []seg
	}{
		{"", []seg{{"", -1}}},
		{"x<ab>y", []seg{{"x", -1}, {"<ab>", 11}, {"y", -1}}},               // the longest at the leftmost start
		{"<a<a>", []seg{{"<a", -1}, {"<a>", 10}}},                           // the search goes on after a failed start
		{"ab cd", []seg{{"ab", 12}, {" cd", -1}}},                           // single word
		{"xab ab", []seg{{"xab ", -1}, {"ab", 12}}},                         // not inside a word
		{"a \u3000 <m>b", []seg{{"a", -1}, {" \u3000 <m>", 13}, {"b", -1}}}, // lstrip takes Unicode white space
		{"<a>  <m>", []seg{{"<a>", 10}, {"  <m>", 13}}},
		{"<r> \n x", []seg{{"<r> \n ", 14}, {"x", -1}}},
	} {
		var got []seg
		for _, s := range m.split(nil, c.text, true) {
			got = append(got, seg{s.text, s.id})
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("split %q: %q, want %q", c.text, got, c.want)
		}
	}
}

// TestSplitBehaviors: the five delimiter behaviours on the example of
// Hugging Face's documentation.
func TestSplitBehaviors(t *testing.T) {
	for _, c := range []struct {
		behavior splitBehavior
		want     []string
	}{
		{splitRemoved, []string{"the", "final", "countdown"}},
		{splitIsolated, []string{"the", "-", "final", "-", "-", "countdown"}},
		{splitMergedWithPrevious, []string{"the-", "final-", "-", "countdown"}},
		{splitMergedWithNext, []string{"the", "-final", "-", "-countdown"}},
		{splitContiguous, []string{"the", "-", "final", "--", "countdown"}},
	} {
		p := splitPreTokenizer{pattern: "-", behavior: c.behavior}
		var got []string
		for _, w := range p.preTokenize(nil, piece{"the-final--countdown", true}) {
			got = append(got, w.text)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("behavior %d: %q, want %q", c.behavior, got, c.want)
		}
	}
	inv := splitPreTokenizer{pattern: "-", behavior: splitRemoved, invert: true}
	var got []string
	for _, w := range inv.preTokenize(nil, piece{"a-b", true}) {
		got = append(got, w.text)
	}
	if !reflect.DeepEqual(got, []string{"-"}) {
		t.Errorf("inverted Removed: %q, want [\"-\"]", got)
	}
}

func TestMetaspace(t *testing.T) {
	for _, c := range []struct {
		m       metaspace
		text    string
		atStart bool
		want    []string
	}{
		{metaspace{"▁", prependAlways, true}, "hello  world", true, []string{"▁hello", "▁", "▁world"}},
		{metaspace{"▁", prependAlways, true}, "▁x", false, []string{"▁x"}},
		{metaspace{"▁", prependAlways, true}, "x ", false, []string{"▁x", "▁"}},
		{metaspace{"▁", prependFirst, true}, "x", false, []string{"x"}},
		{metaspace{"▁", prependFirst, true}, "x", true, []string{"▁x"}},
		{metaspace{"▁", prependNever, false}, "a b", true, []string{"a▁b"}},
		{metaspace{"▁", prependAlways, true}, "", true, nil},
	} {
		var got []string
		for _, w := range c.m.preTokenize(nil, piece{c.text, c.atStart}) {
			got = append(got, w.text)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%+v on %q (at start %v): %q, want %q", c.m, c.text, c.atStart, got, c.want)
		}
	}
}
