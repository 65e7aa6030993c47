// Package tokenizers turns text into token ids exactly as Hugging Face's
// tokenizers library does for the two text encoders NewBie conditions on:
// Gemma 3 (BPE with byte fallback) and XLM-RoBERTa as Jina CLIP v2 uses it
// (SentencePiece Unigram with the nmt_nfkc charsmap). It is pure Go and
// knows nothing of models.
//
// Load reads a tokenizer.json, a SentencePiece .model (converted as
// transformers converts Gemma's and XLM-RoBERTa's) or a folder holding
// one. The pipeline — added tokens, normalizer, pre-tokenizer, model,
// post-processor — is built from what the file declares; a component this
// package does not implement is refused with an error naming the file and
// the component, never approximated.
//
// Encode gives one text's ids with the special tokens the pipeline adds
// (Gemma: <bos> first; XLM-R: <s> … </s>), no truncation, no padding;
// EncodeBatch truncates and pads a batch the way the encoders are called
// (GemmaBatch, JinaBatch) and reports which texts were cut.
//
// ../shared/golden/tokenizers holds the reference: every case of both
// cases.jsonl gives exactly Hugging Face's ids (the tests check).
package tokenizers
