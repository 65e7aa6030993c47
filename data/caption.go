package data

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Element is one XML element of a NewBie prompt. A leaf holds comma-separated
// tags; an inner element (a character block, general_tags) holds children.
type Element struct {
	Name     string
	Children []*Element
	// Tags of a leaf, in order. A leaf without commas (a sentence inside
	// an element) is a single tag and is never reordered.
	Tags []string
	// Line is where the element opens in the caption file, for messages.
	Line int
}

func (e *Element) leaf() bool { return len(e.Children) == 0 }

func (e *Element) clone() *Element {
	c := &Element{Name: e.Name, Tags: append([]string(nil), e.Tags...), Line: e.Line}
	for _, ch := range e.Children {
		c.Children = append(c.Children, ch.clone())
	}
	return c
}

// Caption is a parsed caption.
type Caption struct {
	// Format is the resolved format: FormatXML, FormatTags or FormatText.
	Format CaptionFormat
	// Elements are the top-level XML elements (FormatXML).
	Elements []*Element
	// Tags are the comma-separated tags (FormatTags).
	Tags []string
	// Text is the natural-language caption (FormatText).
	Text string
}

// rootName wraps a caption so several top-level elements parse as one
// document; it is chosen never to clash with a prompt element.
const rootName = "newbie-caption-root"

// ParseCaption parses caption text read from file (used in messages). With
// FormatAuto the format is decided from the text itself. Malformed XML is an
// error of the form "file:line: …".
func ParseCaption(file, text string, format CaptionFormat) (*Caption, error) {
	text = strings.TrimPrefix(text, "\ufeff") // a BOM from Windows editors
	trimmed := strings.TrimSpace(text)
	if format == FormatAuto || format == "" {
		format = detectFormat(trimmed)
	}
	switch format {
	case FormatXML:
		els, err := parseXML(file, text)
		if err != nil {
			return nil, err
		}
		return &Caption{Format: FormatXML, Elements: els}, nil
	case FormatTags:
		return &Caption{Format: FormatTags, Tags: splitTags(trimmed)}, nil
	case FormatText:
		return &Caption{Format: FormatText, Text: trimmed}, nil
	}
	return nil, fmt.Errorf("%s: unknown caption format %q", file, format)
}

// detectFormat: XML when the caption starts with '<'; tags when every
// comma-separated piece is a short phrase (tag lists are "1girl, long hair,
// …"; prose has long clauses); natural language otherwise.
func detectFormat(s string) CaptionFormat {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "<") {
		return FormatXML
	}
	if !strings.Contains(s, ",") {
		if len(strings.Fields(s)) <= 3 {
			return FormatTags
		}
		return FormatText
	}
	for _, p := range strings.Split(s, ",") {
		if len(strings.Fields(p)) > 4 {
			return FormatText
		}
	}
	return FormatTags
}

func splitTags(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.Join(strings.Fields(p), " "); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseXML reads the elements with encoding/xml, tracking lines so every
// message points into the caption file.
func parseXML(file, text string) ([]*Element, error) {
	dec := xml.NewDecoder(strings.NewReader("<" + rootName + ">" + text + "</" + rootName + ">"))
	dec.Strict = true
	// The first element is the wrapper; it becomes root.
	var root *Element
	var stack []*Element
	var textBuf []*strings.Builder
	for {
		line, _ := dec.InputPos()
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var syn *xml.SyntaxError
			if errors.As(err, &syn) {
				msg := strings.ReplaceAll(syn.Msg, "</"+rootName+">", "the end of the caption")
				if strings.Contains(msg, rootName) {
					msg = "text is not inside a single XML document: " + msg
				}
				return nil, fmt.Errorf("%s:%d: malformed XML caption: %s", file, syn.Line, msg)
			}
			return nil, fmt.Errorf("%s:%d: malformed XML caption: %v", file, line, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			line, _ = dec.InputPos()
			if root == nil {
				root = &Element{Name: rootName}
				stack = append(stack, root)
				textBuf = append(textBuf, &strings.Builder{})
				continue
			}
			if len(t.Attr) > 0 {
				return nil, fmt.Errorf("%s:%d: element <%s> has attributes, which the prompt format does not use", file, line, t.Name.Local)
			}
			parent := stack[len(stack)-1]
			if s := strings.TrimSpace(textBuf[len(textBuf)-1].String()); s != "" && parent != root {
				return nil, fmt.Errorf("%s:%d: element <%s> mixes text (%q) and child elements", file, line, parent.Name, clip(s))
			}
			el := &Element{Name: t.Name.Local, Line: line}
			parent.Children = append(parent.Children, el)
			stack = append(stack, el)
			textBuf = append(textBuf, &strings.Builder{})
		case xml.EndElement:
			el := stack[len(stack)-1]
			s := textBuf[len(textBuf)-1].String()
			if el != root && strings.TrimSpace(s) != "" {
				if !el.leaf() {
					line, _ = dec.InputPos()
					return nil, fmt.Errorf("%s:%d: element <%s> mixes text (%q) and child elements", file, line, el.Name, clip(strings.TrimSpace(s)))
				}
				el.Tags = splitTags(s)
			}
			if el == root && strings.TrimSpace(s) != "" {
				return nil, fmt.Errorf("%s: text outside any element: %q", file, clip(strings.TrimSpace(s)))
			}
			stack = stack[:len(stack)-1]
			textBuf = textBuf[:len(textBuf)-1]
		case xml.CharData:
			if len(textBuf) > 0 {
				textBuf[len(textBuf)-1].Write(t)
			}
		case xml.Comment, xml.ProcInst, xml.Directive:
			// Comments are the user's notes, not prompt text.
		}
	}
	if root == nil || len(root.Children) == 0 {
		return nil, fmt.Errorf("%s:1: XML caption has no elements", file)
	}
	return root.Children, nil
}

// clip shortens text quoted in messages, on a character boundary.
func clip(s string) string {
	if r := []rune(s); len(r) > 40 {
		return string(r[:37]) + "..."
	}
	return s
}

// Render writes the caption as text for the encoders. XML is written in the
// canonical layout of NewBie's prompts: inner elements on their own lines,
// leaf tags joined by ", ".
func (c *Caption) Render() string {
	switch c.Format {
	case FormatXML:
		var b strings.Builder
		for i, e := range c.Elements {
			if i > 0 {
				b.WriteByte('\n')
			}
			renderElement(&b, e)
		}
		return b.String()
	case FormatTags:
		return strings.Join(c.Tags, ", ")
	}
	return c.Text
}

func renderElement(b *strings.Builder, e *Element) {
	b.WriteString("<" + e.Name + ">")
	if e.leaf() {
		xml.EscapeText(b, []byte(strings.Join(e.Tags, ", ")))
	} else {
		for _, ch := range e.Children {
			b.WriteByte('\n')
			renderElement(b, ch)
		}
		b.WriteByte('\n')
	}
	b.WriteString("</" + e.Name + ">")
}

// leaves lists the leaf elements in document order.
func leaves(els []*Element) []*Element {
	var out []*Element
	var walk func(e *Element)
	walk = func(e *Element) {
		if e.leaf() {
			out = append(out, e)
			return
		}
		for _, c := range e.Children {
			walk(c)
		}
	}
	for _, e := range els {
		walk(e)
	}
	return out
}

// AllTags lists the caption's tags as kohya's tag statistics count them:
// every leaf's tags of an XML caption, the tag list of a tags caption, and
// the comma-separated phrases of natural language.
func (c *Caption) AllTags() []string {
	switch c.Format {
	case FormatXML:
		var out []string
		for _, e := range leaves(c.Elements) {
			out = append(out, e.Tags...)
		}
		return out
	case FormatTags:
		return append([]string(nil), c.Tags...)
	}
	return splitTags(c.Text)
}

// WithTrigger returns a copy with the trigger word first (see
// CaptionOptions.TriggerWord) and how many leading tags of the first leaf
// (or tag list) it occupies, so augmentation keeps it. A caption already
// holding the trigger word as a tag is left as is.
func (c *Caption) WithTrigger(trigger string) (*Caption, int) {
	out := c.clone()
	trigger = strings.TrimSpace(trigger)
	if trigger == "" {
		return out, 0
	}
	switch out.Format {
	case FormatXML:
		ls := leaves(out.Elements)
		for _, l := range ls {
			if slices.Contains(l.Tags, trigger) {
				return out, 0
			}
		}
		ls[0].Tags = append([]string{trigger}, ls[0].Tags...)
		return out, 1
	case FormatTags:
		if slices.Contains(out.Tags, trigger) {
			return out, 0
		}
		out.Tags = append([]string{trigger}, out.Tags...)
		return out, 1
	}
	if !strings.HasPrefix(out.Text, trigger) {
		if out.Text == "" {
			out.Text = trigger
		} else {
			out.Text = trigger + ", " + out.Text
		}
	}
	return out, 0
}

func (c *Caption) clone() *Caption {
	out := &Caption{Format: c.Format, Tags: append([]string(nil), c.Tags...), Text: c.Text}
	for _, e := range c.Elements {
		out.Elements = append(out.Elements, e.clone())
	}
	return out
}

// augment returns a shuffled / tag-dropped copy drawn from r. In each
// augmentable tag list the first keep tags (KeepTokens plus the trigger
// word when it sits there) stay first and are never dropped. Natural
// language is returned unchanged: it has no tags to move.
func (c *Caption) augment(o CaptionOptions, triggerSlots int, r *rng) *Caption {
	out := c.clone()
	mix := func(tags []string, keep int) []string {
		if keep > len(tags) {
			keep = len(tags)
		}
		head := append([]string(nil), tags[:keep]...)
		tail := append([]string(nil), tags[keep:]...)
		if o.ShuffleTags {
			r.shuffle(len(tail), func(i, j int) { tail[i], tail[j] = tail[j], tail[i] })
		}
		if o.TagDropout > 0 {
			kept := tail[:0]
			for _, t := range tail {
				if r.float64() >= o.TagDropout {
					kept = append(kept, t)
				}
			}
			tail = kept
		}
		return append(head, tail...)
	}
	switch out.Format {
	case FormatXML:
		for i, l := range leaves(out.Elements) {
			if slices.Contains(o.FixedElements, l.Name) || len(l.Tags) < 2 && o.TagDropout == 0 {
				continue
			}
			keep := o.KeepTokens
			if i == 0 {
				keep += triggerSlots
			}
			l.Tags = mix(l.Tags, keep)
		}
	case FormatTags:
		out.Tags = mix(out.Tags, o.KeepTokens+triggerSlots)
	}
	return out
}

// Variants returns the caption texts encoded for one image: variant 0 is the
// caption as written (with the trigger word), the others are augmented with
// draws keyed by seed and key (the image's content hash), so the same image
// gets the same variants in every run and on every machine.
func (c *Caption) Variants(o CaptionOptions, seed uint64, key string) []string {
	base, slots := c.WithTrigger(o.TriggerWord)
	out := []string{base.Render()}
	if c.Format == FormatText {
		return out // nothing to augment
	}
	for v := 1; v < o.Variants; v++ {
		r := newRNG(seed, "caption", key, fmt.Sprint(v))
		out = append(out, base.augment(o, slots, r).Render())
	}
	return out
}

// FeatureText is what the token-feature encoder (Gemma) reads for a caption:
// the system prompt, then the caption.
func FeatureText(systemPrompt, caption string) string { return systemPrompt + caption }

// PooledText is what the pooled encoder (Jina CLIP) reads: the caption alone.
func PooledText(caption string) string { return caption }
