// Package textenc holds the text encoders NewBie conditions on. This file's
// model is Gemma 3's text tower (transformers' Gemma3TextModel), built from
// autograd ops over any kernels backend, whose penultimate hidden state
// (hidden_states[-2]: the output of the second-to-last decoder layer, before
// the final norm) is NewBie's caption feature.
//
// The network, in transformers' terms: token embeddings scaled by
// √hidden_size (rounded to the weights' dtype, as transformers does); then
// per decoder layer a sandwich of Gemma RMSNorms (x·(1+w)) around
// grouped-query self-attention with per-head q/k RMSNorm, rotate-half RoPE
// (a local base on sliding-window layers, a global base with linear scaling
// on full-attention layers, as the config's layer_types say), scores scaled by
// query_pre_attn_scalar^-½, a causal mask narrowed to the sliding window on
// sliding layers and a key-padding mask for right padding; and a GeGLU MLP
// (gelu_pytorch_tanh(gate)·up → down). A final RMSNorm gives
// last_hidden_state.
//
// Tokenization is not part of this package: callers pass token ids (BOS
// first, right-padded). A Gemma 3 SentencePiece tokenizer is still needed to
// turn captions into those ids.
//
// The encoder is frozen (NewBie never trains it): Forward runs without
// recording a tape and releases every intermediate as soon as it is used.
package textenc
