package data

import (
	"slices"
	"strings"
	"testing"
)

func TestDetectFormat(t *testing.T) {
	cases := []struct {
		text string
		want CaptionFormat
	}{
		{"  <character_1><n>a</n></character_1>", FormatXML},
		{"1girl, solo, long hair, looking at viewer", FormatTags},
		{"1girl", FormatTags},
		{"A girl with long silver hair stands in the rain.", FormatText},
		{"a girl standing in a field of flowers, looking at the viewer", FormatText},
		{"", FormatTags},
	}
	for _, c := range cases {
		if got := detectFormat(c.text); got != c.want {
			t.Errorf("detectFormat(%q) = %s, want %s", c.text, got, c.want)
		}
	}
}

func TestParseXMLCaption(t *testing.T) {
	c, err := ParseCaption("a.txt", goodXML, FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if c.Format != FormatXML || len(c.Elements) != 2 {
		t.Fatalf("format %s, %d elements", c.Format, len(c.Elements))
	}
	ls := leaves(c.Elements)
	var names []string
	for _, l := range ls {
		names = append(names, l.Name)
	}
	if got := strings.Join(names, ","); got != "n,gender,appearance,style,background" {
		t.Errorf("leaves %s", got)
	}
	if got := strings.Join(ls[2].Tags, "|"); got != "long hair|blue eyes|red ribbon" || ls[2].Line != 4 {
		t.Errorf("appearance tags %q at line %d", got, ls[2].Line)
	}
	// Rendering the canonical layout and parsing it again is the identity.
	again, err := ParseCaption("b.txt", c.Render(), FormatXML)
	if err != nil {
		t.Fatal(err)
	}
	if again.Render() != c.Render() || c.Render() != goodXML {
		t.Errorf("render is not canonical:\n%s\n---\n%s", c.Render(), goodXML)
	}
}

func TestBadXMLCaptions(t *testing.T) {
	cases := []struct {
		name, text, msg string
	}{
		{"mismatched close", "<character_1>\n<n>bob</n>\n<gender>1boy</appearance>\n</character_1>", "cap.txt:3: malformed XML caption: element <gender> closed by </appearance>"},
		{"unclosed", "<character_1>\n<n>bob</n>\n", "cap.txt:3: malformed XML caption: element <character_1> closed by the end of the caption"},
		{"bad entity", "<general_tags>\n<style>a & b</style>\n</general_tags>", "cap.txt:2: malformed XML caption"},
		{"mixed content", "<character_1>bob\n<n>bob</n></character_1>", "cap.txt:2: element <character_1> mixes text"},
		{"attributes", "<general_tags>\n<style weight=\"2\">a</style></general_tags>", "cap.txt:2: element <style> has attributes"},
		{"text outside", "<n>bob</n> and more", "cap.txt: text outside any element"},
		{"no elements", "<!-- only a comment -->", "cap.txt:1: XML caption has no elements"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseCaption("cap.txt", c.text, FormatXML)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %v, want %q", err, c.msg)
			}
		})
	}
}

func TestTriggerAndAugmentation(t *testing.T) {
	xmlCap, _ := ParseCaption("a.txt", goodXML, FormatXML)
	tags, _ := ParseCaption("b.txt", "1girl, solo, smile, long hair, blue eyes, hat, outdoors, sky", FormatTags)
	text, _ := ParseCaption("c.txt", "A girl in a hat.", FormatText)

	t.Run("trigger", func(t *testing.T) {
		cases := []struct {
			c    *Caption
			want string
		}{
			{xmlCap, "<n>ohwx, alice</n>"},
			{tags, "ohwx, 1girl, solo"},
			{text, "ohwx, A girl in a hat."},
		}
		for _, c := range cases {
			got, _ := c.c.WithTrigger("ohwx")
			if !strings.Contains(got.Render(), c.want) {
				t.Errorf("%s caption with trigger: %q lacks %q", c.c.Format, got.Render(), c.want)
			}
			again, slots := got.WithTrigger("ohwx")
			if again.Render() != got.Render() || slots != 0 {
				t.Errorf("trigger inserted twice: %q", again.Render())
			}
		}
	})

	o := CaptionOptions{TriggerWord: "ohwx", ShuffleTags: true, KeepTokens: 1, TagDropout: 0.3, Variants: 8, FixedElements: []string{"n", "gender"}}
	t.Run("tags", func(t *testing.T) {
		vs := tags.Variants(o, 7, "hash-b")
		if len(vs) != 8 || vs[0] != "ohwx, 1girl, solo, smile, long hair, blue eyes, hat, outdoors, sky" {
			t.Fatalf("variant 0 %q (of %d)", vs[0], len(vs))
		}
		distinct := map[string]bool{}
		for _, v := range vs[1:] {
			distinct[v] = true
			ts := splitTags(v)
			if len(ts) < 2 || ts[0] != "ohwx" || ts[1] != "1girl" {
				t.Errorf("variant %q does not keep the trigger and the first tag", v)
			}
			for _, tag := range ts {
				if !slices.Contains(tags.Tags, tag) && tag != "ohwx" {
					t.Errorf("variant %q invents tag %q", v, tag)
				}
			}
		}
		if len(distinct) < 4 {
			t.Errorf("only %d distinct variants of 7", len(distinct))
		}
		if again := tags.Variants(o, 7, "hash-b"); !slices.Equal(again, vs) {
			t.Errorf("variants not deterministic")
		}
		if other := tags.Variants(o, 8, "hash-b"); slices.Equal(other, vs) {
			t.Errorf("variants ignore the seed")
		}
	})
	t.Run("xml", func(t *testing.T) {
		vs := xmlCap.Variants(o, 7, "hash-a")
		for _, v := range vs {
			c, err := ParseCaption("v.txt", v, FormatXML)
			if err != nil {
				t.Fatalf("variant does not parse: %v\n%s", err, v)
			}
			ls := leaves(c.Elements)
			if strings.Join(ls[0].Tags, ",") != "ohwx,alice" || strings.Join(ls[1].Tags, ",") != "1girl" {
				t.Errorf("fixed elements changed: %v %v", ls[0].Tags, ls[1].Tags)
			}
			if len(ls[2].Tags) == 0 || ls[2].Tags[0] != "long hair" {
				t.Errorf("appearance does not keep its first tag: %v", ls[2].Tags)
			}
		}
	})
	t.Run("text", func(t *testing.T) {
		if vs := text.Variants(o, 7, "hash-c"); len(vs) != 1 {
			t.Errorf("natural language got %d variants", len(vs))
		}
	})
	if got := FeatureText(GemmaSystemPrompt, "x"); got != GemmaSystemPrompt+"x" || PooledText("x") != "x" {
		t.Errorf("encoder texts %q", got)
	}
}

// FuzzParseCaption: any text parses or fails with a "file:" message, and
// whatever parses renders to text that parses again to the same rendering.
func FuzzParseCaption(f *testing.F) {
	f.Add(goodXML)
	f.Add("1girl, solo")
	f.Add("<a><b>x</b>")
	f.Add("<a>x<b/></a>")
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseCaption("f.txt", text, FormatAuto)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.txt") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		r := c.Render()
		again, err := ParseCaption("g.txt", r, c.Format)
		if err != nil {
			t.Fatalf("rendering %q does not parse: %v", r, err)
		}
		if again.Render() != r {
			t.Fatalf("render not stable: %q → %q", r, again.Render())
		}
	})
}
