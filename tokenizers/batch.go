package tokenizers

import "fmt"

// BatchOptions say how EncodeBatch truncates and pads.
type BatchOptions struct {
	// MaxLength is the most ids a text keeps, special tokens included;
	// 0 for no limit. As in Hugging Face, the text's own ids are cut to
	// MaxLength − NumSpecialTokens (the end goes) and the special tokens
	// are added after, so </s> stays last.
	MaxLength int
	// PadID fills the rows up to the batch's length.
	PadID int32
	// PadToMultipleOf rounds the batch's length (its longest row) up to a
	// multiple of it; 0 or 1 pads to the longest row. As in HF the rounded
	// length may pass MaxLength when MaxLength is not a multiple.
	PadToMultipleOf int
}

// GemmaBatch is how NewBie calls Gemma 3's tokenizer: <bos> first, at most
// 512 ids, right padding with id 0 to the longest row rounded up to a
// multiple of 8.
var GemmaBatch = BatchOptions{MaxLength: 512, PadID: 0, PadToMultipleOf: 8}

// JinaBatch is how Jina CLIP v2's text tower is called: <s> … </s>, at
// most 2048 ids, right padding with <pad> (1) to the longest row.
var JinaBatch = BatchOptions{MaxLength: 2048, PadID: 1}

// Batch is a padded batch of encoded texts.
type Batch struct {
	// IDs is [len(texts)][Length], right-padded with the pad id.
	IDs [][]int32
	// Mask is 1 at real tokens and 0 at padding, the same shape as IDs: the
	// attention mask (NewBie's cap_mask).
	Mask [][]int32
	// Lengths are the rows' real lengths.
	Lengths []int
	// Length is the padded length of every row.
	Length int
	// Truncated lists the texts that were cut, in order.
	Truncated []Truncation
}

// Truncation tells that texts[Index] had Tokens ids (special tokens
// included) and kept MaxLength of them, so that a caller can warn once
// with a count.
type Truncation struct {
	Index  int
	Tokens int
	Kept   int
}

// EncodeBatch encodes texts, truncates and pads them as o says.
func (t *Tokenizer) EncodeBatch(texts []string, o BatchOptions) (Batch, error) {
	specials := t.NumSpecialTokens()
	if o.MaxLength < 0 || o.MaxLength > 0 && o.MaxLength < specials {
		return Batch{}, fmt.Errorf("encode batch: MaxLength %d leaves no room for the text beside %d special tokens", o.MaxLength, specials)
	}
	if o.PadToMultipleOf < 0 {
		return Batch{}, fmt.Errorf("encode batch: PadToMultipleOf %d is negative", o.PadToMultipleOf)
	}
	b := Batch{IDs: make([][]int32, len(texts)), Mask: make([][]int32, len(texts)), Lengths: make([]int, len(texts))}
	var content []int32
	for i, text := range texts {
		content = t.encodeContent(content[:0], text)
		n := len(content) + specials
		if o.MaxLength > 0 && n > o.MaxLength {
			b.Truncated = append(b.Truncated, Truncation{Index: i, Tokens: n, Kept: o.MaxLength})
			content = content[:o.MaxLength-specials]
			n = o.MaxLength
		}
		row := make([]int32, 0, n)
		row = append(row, t.prefix...)
		row = append(row, content...)
		row = append(row, t.suffix...)
		b.IDs[i] = row
		b.Lengths[i] = n
		b.Length = max(b.Length, n)
	}
	if m := o.PadToMultipleOf; m > 1 && b.Length%m != 0 {
		b.Length += m - b.Length%m
	}
	for i, row := range b.IDs {
		mask := make([]int32, b.Length)
		for k := range row {
			mask[k] = 1
		}
		for len(row) < b.Length {
			row = append(row, o.PadID)
		}
		b.IDs[i], b.Mask[i] = row, mask
	}
	return b, nil
}
