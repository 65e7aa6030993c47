package textenc

import (
	"encoding/json"
	"sort"
	"strings"
)

// This file tells what a checkpoint is without loading it: which of the two
// encoders its names belong to, and — read exactly as the loaders read it —
// its architecture, key prefix, size and dtypes.

// Checkpoint describes a text-encoder checkpoint as a loader reads it.
type Checkpoint struct {
	// Path is the checkpoint as given; Files are the safetensors files it
	// stands for (the shards of an index).
	Path  string
	Files []string
	// Prefix is what the model's keys carry in the file
	// ("language_model.model.", "text_model.transformer.roberta.", …).
	Prefix string
	// Config says where the architecture came from.
	Config string
	// Tensors, Params and Bytes count the model's own tensors (those the
	// loader reads); DTypes counts them by file dtype.
	Tensors int
	Params  int64
	Bytes   int64
	DTypes  map[string]int
	// Other counts the tensors outside the prefix that the loader skips (a
	// vision tower, a multi-modal projector, a tokenizer blob).
	Other int
}

// gemmaMarkers are the keys (under the prefix) that make a checkpoint a
// Gemma 3 text model: the embedding Load looks for, and the per-head q
// norm that Gemma 3 has and other Llama-style models lack (ComfyUI tells
// Gemma 3 by the same key).
var gemmaMarkers = []string{"embed_tokens.weight", "layers.0.self_attn.q_norm.weight"}

// jinaMarkers make a checkpoint Jina CLIP v2's text tower: the
// LoRA-parametrized word embedding LoadJina looks for.
var jinaMarkers = []string{jinaWord + jinaOriginal}

// detect returns the first prefix under which every marker is one of
// names.
func detect(names []string, prefixes, markers []string) (string, bool) {
	have := make(map[string]bool, len(names))
	for _, n := range names {
		have[n] = true
	}
	for _, p := range prefixes {
		all := true
		for _, m := range markers {
			all = all && have[p+m]
		}
		if all {
			return p, true
		}
	}
	return "", false
}

// DetectGemma tells from a checkpoint's tensor names alone whether it holds
// a Gemma 3 text model, and under which key prefix.
func DetectGemma(names []string) (prefix string, ok bool) {
	return detect(names, gemmaPrefixes, gemmaMarkers)
}

// DetectJina tells from a checkpoint's tensor names alone whether it holds
// Jina CLIP v2's text tower, and under which key prefix.
func DetectJina(names []string) (prefix string, ok bool) {
	return detect(names, jinaPrefixes, jinaMarkers)
}

// InspectGemma reads a Gemma 3 checkpoint as Load does — files, key
// prefix, architecture (opts.Config, else the metadata, else a config.json
// beside it, else Gemma 3 4B's) — checks every key against the
// architecture, and describes it, without loading a weight. A nil error
// means Load accepts it.
func InspectGemma(path string, opts Options) (Config, Checkpoint, error) {
	src, prefix, err := openModel(path, "Gemma 3 text model", "embed_tokens.weight", gemmaPrefixes)
	if err != nil {
		return Config{}, Checkpoint{}, err
	}
	defer src.Close()
	cfg, from, err := gemmaConfig(src, path, opts.Config)
	if err != nil {
		return Config{}, Checkpoint{}, err
	}
	if err := src.checkKeys(cfg.Params(), prefix, "Gemma 3", from); err != nil {
		return Config{}, Checkpoint{}, err
	}
	return cfg, src.checkpoint(path, prefix, from, cfg.Params()), nil
}

// InspectJina reads a Jina CLIP v2 text-tower checkpoint as LoadJina does,
// checks every key and the LoRA task, and describes it, without loading a
// weight. A nil error means LoadJina accepts it.
func InspectJina(path string, opts JinaOptions) (JinaConfig, Checkpoint, error) {
	const model = "Jina CLIP v2 text tower"
	src, prefix, err := openModel(path, model, jinaWord+jinaOriginal, jinaPrefixes)
	if err != nil {
		return JinaConfig{}, Checkpoint{}, err
	}
	defer src.Close()
	cfg, from, err := jinaConfig(src, path, opts.Config)
	if err != nil {
		return JinaConfig{}, Checkpoint{}, err
	}
	task := opts.Task
	if task == "" {
		task = cfg.DefaultTask
	}
	if _, err := cfg.TaskIndex(task); err != nil {
		return JinaConfig{}, Checkpoint{}, err
	}
	if err := src.checkKeys(cfg.Params(), prefix, model, from); err != nil {
		return JinaConfig{}, Checkpoint{}, err
	}
	return cfg, src.checkpoint(path, prefix, from, cfg.Params()), nil
}

// checkpoint describes the source's tensors of want (already checked).
func (s *source) checkpoint(path, prefix, from string, want []ParamShape) Checkpoint {
	c := Checkpoint{Path: path, Prefix: prefix, Config: from, DTypes: map[string]int{}}
	for _, f := range s.files {
		c.Files = append(c.Files, f.Path())
	}
	sort.Strings(c.Files)
	for _, p := range want {
		info, _ := s.owner[prefix+p.Name].Info(prefix + p.Name)
		n := int64(info.NumElements())
		c.Tensors++
		c.Params += n
		c.Bytes += n * int64(info.DType.Size())
		c.DTypes[string(info.DType)]++
	}
	for n := range s.owner {
		if !strings.HasPrefix(n, prefix) {
			c.Other++
		}
	}
	return c
}

// JSON is the config as a Gemma3TextConfig config.json spells it
// (transformers 5: layer_types and rope_parameters per layer type), which
// ParseConfig reads back to the same config.
func (c Config) JSON() string {
	rope := func(r Rope) map[string]any {
		if r.Factor == 1 {
			return map[string]any{"rope_type": "default", "rope_theta": r.Theta}
		}
		return map[string]any{"rope_type": "linear", "rope_theta": r.Theta, "factor": r.Factor}
	}
	js, _ := json.Marshal(map[string]any{ // plain values always marshal
		"model_type": "gemma3_text", "vocab_size": c.VocabSize, "hidden_size": c.HiddenSize,
		"intermediate_size": c.IntermediateSize, "num_hidden_layers": c.NumLayers,
		"num_attention_heads": c.NumHeads, "num_key_value_heads": c.NumKVHeads, "head_dim": c.HeadDim,
		"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": c.RMSNormEps,
		"query_pre_attn_scalar": c.QueryPreAttnScalar, "sliding_window": c.SlidingWindow,
		"layer_types": c.LayerTypes,
		"rope_parameters": map[string]any{
			SlidingAttention: rope(c.LocalRope),
			FullAttention:    rope(c.GlobalRope),
		},
		"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
	})
	return string(js)
}
