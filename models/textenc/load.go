package textenc

import (
	"fmt"
	"strings"

	"github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
)

// Options choose how a Gemma stores its weights.
type Options struct {
	// DType is the storage and compute dtype of the weights and hidden
	// states: BF16 (the default when zero), F32, or F64 for float64 parity
	// checks. Norm weights are kept as 1+w in F32 (F64 for an F64 model),
	// as transformers computes them.
	DType kernels.DType
	// Config, when set, is the architecture to use instead of the one
	// Load finds (see Load).
	Config *Config
}

// Params lists every weight of the architecture in a fixed order.
func (c Config) Params() []ParamShape {
	h, q, kv := c.HiddenSize, c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	ps := []ParamShape{{"embed_tokens.weight", []int{c.VocabSize, h}}}
	for i := range c.NumLayers {
		p := fmt.Sprintf("layers.%d.", i)
		ps = append(ps,
			ParamShape{p + "input_layernorm.weight", []int{h}},
			ParamShape{p + "self_attn.q_proj.weight", []int{q, h}},
			ParamShape{p + "self_attn.k_proj.weight", []int{kv, h}},
			ParamShape{p + "self_attn.v_proj.weight", []int{kv, h}},
			ParamShape{p + "self_attn.o_proj.weight", []int{h, q}},
			ParamShape{p + "self_attn.q_norm.weight", []int{c.HeadDim}},
			ParamShape{p + "self_attn.k_norm.weight", []int{c.HeadDim}},
			ParamShape{p + "post_attention_layernorm.weight", []int{h}},
			ParamShape{p + "pre_feedforward_layernorm.weight", []int{h}},
			ParamShape{p + "mlp.gate_proj.weight", []int{c.IntermediateSize, h}},
			ParamShape{p + "mlp.up_proj.weight", []int{c.IntermediateSize, h}},
			ParamShape{p + "mlp.down_proj.weight", []int{h, c.IntermediateSize}},
			ParamShape{p + "post_feedforward_layernorm.weight", []int{h}},
		)
	}
	return append(ps, ParamShape{"norm.weight", []int{h}})
}

// isNorm reports whether a parameter is a Gemma RMSNorm weight (stored as
// 1+w).
func isNorm(name string) bool { return strings.HasSuffix(name, "norm.weight") }

// gemmaPrefixes are where checkpoints keep the text model's keys: a bare
// Gemma3TextModel; Gemma3ForCausalLM and ComfyUI's text-encoder files
// (gemma_3_4b*.safetensors: model.layers.…, beside a spiece_model tensor
// holding the tokenizer, as ComfyUI's comfy/sd.py detects Gemma 3 by
// model.layers.0.self_attn.q_norm.weight); and the multimodal
// Gemma3ForConditionalGeneration (google/gemma-3-4b-it) in its transformers
// 4.x (language_model.model.) and 5 (model.language_model.) layouts, whose
// vision tower and multi-modal projector sit outside the prefix.
var gemmaPrefixes = []string{"", "model.", "language_model.model.", "model.language_model.", "language_model."}

// Load opens Gemma 3 text weights — a .safetensors file, a sharded
// checkpoint's index.json, or a folder holding either — and uploads them to
// e's backend. The architecture is opts.Config when given, else the file's
// __metadata__["config"], else a config.json beside the weights (a
// Gemma3ForConditionalGeneration config's text_config is used), else
// Gemma 3 4B's (Gemma4BConfig: ComfyUI's single files carry no config).
// Every key is checked before anything is uploaded; missing, unexpected and
// mis-shaped keys come back together as a *KeyError, which says where the
// architecture came from.
func Load(e *autograd.Engine, path string, opts Options) (*Gemma, error) {
	d, err := storageDType(opts.DType)
	if err != nil {
		return nil, err
	}
	opts.DType = d
	src, prefix, err := openModel(path, "Gemma 3 text model", "embed_tokens.weight", gemmaPrefixes)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	cfg, from, err := gemmaConfig(src, path, opts.Config)
	if err != nil {
		return nil, err
	}
	if err := src.checkKeys(cfg.Params(), prefix, "Gemma 3", from); err != nil {
		return nil, err
	}
	g := &Gemma{e: e, cfg: cfg, opts: opts, w: map[string]*autograd.Tensor{}}
	normDType := kernels.F32
	if opts.DType == kernels.F64 {
		normDType = kernels.F64
	}
	reserveWeights(e, cfg.Params(), func(name string) kernels.DType {
		if isNorm(name) {
			return normDType
		}
		return opts.DType
	})
	for _, p := range cfg.Params() {
		name := prefix + p.Name
		if opts.DType == kernels.BF16 && !isNorm(p.Name) {
			// Straight to bf16 (rounding an F32 file to nearest even, as
			// .to(torch.bfloat16) does): the 262208×2560 embedding would
			// otherwise pass through a 5 GB float64 copy.
			// A bf16 file's tensor is uploaded from the file's own bytes.
			raw, err := src.owner[name].Encoded(name, safetensors.BF16)
			if err != nil {
				g.Release()
				return nil, fmt.Errorf("textenc: reading %s from %s: %w", name, src.path, err)
			}
			g.w[p.Name] = e.ConstantBytes(p.Name, kernels.BF16, p.Shape, raw)
		} else {
			v, err := src.read(name)
			if err != nil {
				g.Release()
				return nil, err
			}
			d := opts.DType
			if isNorm(p.Name) {
				// Gemma's RMSNorm multiplies by (1 + w) computed in float32;
				// adding once here (in float64, then rounded to the norm
				// dtype) gives those values without an elementwise pass per
				// forward.
				for i := range v {
					v[i]++
				}
				d = normDType
			}
			g.w[p.Name] = e.Constant(p.Name, d, p.Shape, v)
		}
		if err := e.Err(); err != nil {
			g.Release()
			return nil, fmt.Errorf("textenc: uploading %s: %w", p.Name, err)
		}
	}
	return g, nil
}

// gemmaConfig resolves the architecture as Load documents and says where it
// came from.
func gemmaConfig(src *source, path string, given *Config) (Config, string, error) {
	return resolveConfig(src, path, given, Config.Validate, ParseConfig, Gemma4BConfig, "Gemma 3 4B")
}
