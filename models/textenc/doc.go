// Package textenc holds the two text encoders NewBie conditions on, built
// from autograd ops over any kernels backend and run frozen (no tape; every
// intermediate is released as soon as it is used):
//
//   - Gemma 3's text tower (transformers' Gemma3TextModel; Gemma, Load),
//     whose penultimate hidden state (hidden_states[-2]: the output of the
//     second-to-last decoder layer, before the final norm) is NewBie's
//     caption feature;
//   - Jina CLIP v2's text tower (Jina's XLM-RoBERTa with its
//     retrieval.query LoRA merged in; Jina, LoadJina), whose mean-pooled
//     last hidden state is the pooled vector NewBie's clip_text_pooled_proj
//     reads.
//
// Gemma, in transformers' terms: token embeddings scaled by √hidden_size
// (rounded to the weights' dtype, as transformers does); then per decoder
// layer a sandwich of Gemma RMSNorms (x·(1+w)) around grouped-query
// self-attention with per-head q/k RMSNorm, rotate-half RoPE (a local base on
// sliding-window layers, a global base with linear scaling on full-attention
// layers, as the config's layer_types say), scores scaled by
// query_pre_attn_scalar^-½, a causal mask narrowed to the sliding window on
// sliding layers and a key-padding mask for right padding; and a GeGLU MLP
// (gelu_pytorch_tanh(gate)·up → down). A final RMSNorm gives
// last_hidden_state.
//
// Jina's text tower is described in jina.go.
//
// Tokenization is not part of this package: callers pass token ids and an
// attention mask (right padding).
package textenc
