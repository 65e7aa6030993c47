package textenc

import (
	"fmt"
	"strings"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
)

// JinaOptions choose how LoadJina builds the text tower.
type JinaOptions struct {
	// DType is the storage and compute dtype of the weights and hidden
	// states: BF16 (the default when zero; LayerNorm and softmax still
	// compute in float32, as PyTorch does for a bf16 model), F32, or F64
	// for float64 parity checks.
	DType kernels.DType
	// Config, when set, is the architecture to use instead of the one
	// LoadJina finds (see LoadJina).
	Config *JinaConfig
	// Task is the LoRA adaptation merged into the weights; empty means the
	// config's default_lora_task (retrieval.query for jina-clip-v2: what
	// NewBie's get_text_features uses).
	Task string
	// BaseWeights runs the base weights with no adaptation at all (Jina's
	// encode with task=None). NewBie never does; checks do.
	BaseWeights bool
}

// The file's module names: jina-clip-v2's model.safetensors keeps the text
// tower under text_model.transformer.roberta. (the XLMRobertaModel inside
// HFTextEncoder's XLMRobertaLoRA); a text-only file may drop
// text_model.transformer. (keys start roberta.) or everything (embeddings.…).
// Weights with LoRA are torch parametrizations: .parametrizations.weight.
// original is the base, .0.lora_A / .0.lora_B the stacked adapters.
const (
	jinaOriginal = ".parametrizations.weight.original"
	jinaLoRAA    = ".parametrizations.weight.0.lora_A"
	jinaLoRAB    = ".parametrizations.weight.0.lora_B"
	jinaWord     = "embeddings.word_embeddings"
	jinaType     = "embeddings.token_type_embeddings"
)

var jinaPrefixes = []string{"text_model.transformer.roberta.", "roberta.", ""}

// jinaLinear is one adapted linear layer of a Jina encoder layer.
type jinaLinear struct {
	module  string // under encoder.layers.N.
	out, in int
}

func (c JinaConfig) linears() []jinaLinear {
	h := c.HiddenSize
	return []jinaLinear{
		{"mixer.Wqkv", 3 * h, h},
		{"mixer.out_proj", h, h},
		{"mlp.fc1", c.IntermediateSize, h},
		{"mlp.fc2", h, c.IntermediateSize},
	}
}

// Params lists every tensor of the text tower under the file's names
// (without the prefix), in a fixed order.
func (c JinaConfig) Params() []ParamShape {
	h, n, r := c.HiddenSize, len(c.Adaptations), c.LoRARank
	var ps []ParamShape
	for _, emb := range []struct {
		module string
		rows   int
	}{{jinaWord, c.VocabSize}, {jinaType, c.TypeVocabSize}} {
		ps = append(ps,
			ParamShape{emb.module + jinaOriginal, []int{emb.rows, h}},
			ParamShape{emb.module + jinaLoRAA, []int{n, emb.rows, r}},
			ParamShape{emb.module + jinaLoRAB, []int{n, r, h}},
		)
	}
	ps = append(ps, ParamShape{"emb_ln.weight", []int{h}}, ParamShape{"emb_ln.bias", []int{h}})
	for i := range c.NumLayers {
		p := fmt.Sprintf("encoder.layers.%d.", i)
		for _, l := range c.linears() {
			ps = append(ps,
				ParamShape{p + l.module + jinaOriginal, []int{l.out, l.in}},
				ParamShape{p + l.module + jinaLoRAA, []int{n, r, l.in}},
				ParamShape{p + l.module + jinaLoRAB, []int{n, l.out, r}},
				ParamShape{p + l.module + ".bias", []int{l.out}},
			)
		}
		for _, norm := range []string{"norm1", "norm2"} {
			ps = append(ps, ParamShape{p + norm + ".weight", []int{h}}, ParamShape{p + norm + ".bias", []int{h}})
		}
	}
	return ps
}

// LoadJina opens Jina CLIP v2's text tower — jina-clip-v2's
// model.safetensors (its vision tower and everything outside
// text_model.transformer.roberta. are skipped), a text-only file with the
// same names less that prefix, a sharded index, or a folder holding one —
// merges the chosen LoRA adaptation into the weights (linear W' = W +
// scale·B·A, embedding E' = E + scale·A·B, scale = lora_alpha/lora_rank,
// in float64 before rounding to the storage dtype) and uploads them to e's
// backend. The architecture is opts.Config when given, else the file's
// __metadata__["config"], else a config.json beside the weights
// (jina-clip-v2's or jina-embeddings-v3's), else jina-clip-v2's
// (JinaCLIPv2Config). Every key is checked before anything is uploaded;
// missing, unexpected and mis-shaped keys come back together as a
// *KeyError.
func LoadJina(e *ag.Engine, path string, opts JinaOptions) (*Jina, error) {
	d, err := storageDType(opts.DType)
	if err != nil {
		return nil, err
	}
	opts.DType = d
	src, prefix, err := openModel(path, "Jina CLIP v2 text tower", jinaWord+jinaOriginal, jinaPrefixes)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	cfg, from, err := jinaConfig(src, path, opts.Config)
	if err != nil {
		return nil, err
	}
	task := opts.Task
	if task == "" {
		task = cfg.DefaultTask
	}
	k, err := cfg.TaskIndex(task)
	if err != nil {
		return nil, err
	}
	if opts.BaseWeights {
		task = ""
	}
	const model = "Jina CLIP v2 text tower"
	if err := src.checkKeys(cfg.Params(), prefix, model, from); err != nil {
		return nil, err
	}
	j := &Jina{e: e, cfg: cfg, dtype: opts.DType, task: task, w: map[string]*ag.Tensor{}}
	l := jinaLoader{src: src, prefix: prefix, k: k, scale: cfg.LoRAScale(), adapt: !opts.BaseWeights, rank: cfg.LoRARank}
	reserveWeights(e, cfg.Params(), func(name string) kernels.DType {
		if strings.HasSuffix(name, jinaLoRAA) || strings.HasSuffix(name, jinaLoRAB) {
			return 0 // merged into the weights at load
		}
		return opts.DType
	})
	up := func(name string, shape []int, v []float64) {
		j.w[name] = e.Constant(name, opts.DType, shape, v)
	}
	upBytes := func(name string, shape []int, raw []byte) {
		j.w[name] = e.ConstantBytes(name, opts.DType, shape, raw)
	}
	sz := opts.DType.Size()
	h := cfg.HiddenSize

	word, err := l.embedding(jinaWord, cfg.VocabSize, h, opts.DType)
	if err != nil {
		return nil, err
	}
	upBytes("word_embeddings", []int{cfg.VocabSize, h}, word)
	types, err := l.embedding(jinaType, cfg.TypeVocabSize, h, opts.DType)
	if err != nil {
		j.Release()
		return nil, err
	}
	// Jina's text tower is called without token_type_ids: every token
	// reads row 0.
	upBytes("token_type_0", []int{h}, types[:h*sz])
	for _, name := range []string{"emb_ln.weight", "emb_ln.bias"} {
		v, err := src.read(prefix + name)
		if err != nil {
			j.Release()
			return nil, err
		}
		up(name, []int{h}, v)
	}
	for i := range cfg.NumLayers {
		p := fmt.Sprintf("encoder.layers.%d.", i)
		for _, lin := range cfg.linears() {
			w, err := l.linear(p+lin.module, lin.out, lin.in, opts.DType)
			if err != nil {
				j.Release()
				return nil, err
			}
			b, err := src.read(prefix + p + lin.module + ".bias")
			if err != nil {
				j.Release()
				return nil, err
			}
			if lin.module != "mixer.Wqkv" {
				upBytes(p+lin.module+".weight", []int{lin.out, lin.in}, w)
				up(p+lin.module+".bias", []int{lin.out}, b)
				continue
			}
			// Wqkv's rows are q | k | v (Jina's MHA splits its output
			// "(three h d)"): three products of one size instead of
			// one product and three strided copies.
			for part, name := range []string{"q", "k", "v"} {
				upBytes(p+"mixer."+name+".weight", []int{h, h}, w[part*h*h*sz:(part+1)*h*h*sz])
				up(p+"mixer."+name+".bias", []int{h}, b[part*h:(part+1)*h])
			}
		}
		for _, name := range []string{"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"} {
			v, err := src.read(prefix + p + name)
			if err != nil {
				j.Release()
				return nil, err
			}
			up(p+name, []int{h}, v)
		}
		if err := e.Err(); err != nil {
			j.Release()
			return nil, fmt.Errorf("textenc: uploading layer %d of %s: %w", i, path, err)
		}
	}
	if err := e.Err(); err != nil {
		j.Release()
		return nil, fmt.Errorf("textenc: uploading %s: %w", path, err)
	}
	return j, nil
}

// jinaConfig resolves the architecture as LoadJina documents and says
// where it came from.
func jinaConfig(src *source, path string, given *JinaConfig) (JinaConfig, string, error) {
	return resolveConfig(src, path, given, JinaConfig.Validate, ParseJinaConfig, JinaCLIPv2Config, "jina-clip-v2")
}

// jinaLoader reads base weights and folds adaptation k into them.
type jinaLoader struct {
	src    *source
	prefix string
	k      int
	rank   int
	scale  float64
	adapt  bool
}

// slice returns adaptation k of a stacked lora_A or lora_B tensor.
func (l jinaLoader) slice(name string, n int) ([]float64, error) {
	v, err := l.src.read(l.prefix + name)
	if err != nil {
		return nil, err
	}
	return v[l.k*n : (l.k+1)*n], nil
}

// linear returns W + scale·B·A for a linear layer's W [out, in], encoded
// in dtype d.
func (l jinaLoader) linear(module string, out, in int, d kernels.DType) ([]byte, error) {
	if !l.adapt {
		return l.merged(module+jinaOriginal, out, in, nil, nil, d)
	}
	a, err := l.slice(module+jinaLoRAA, l.rank*in)
	if err != nil {
		return nil, err
	}
	b, err := l.slice(module+jinaLoRAB, out*l.rank)
	if err != nil {
		return nil, err
	}
	return l.merged(module+jinaOriginal, out, in, b, a, d)
}

// embedding returns E + scale·A·B for an embedding table E [rows, dim],
// encoded in dtype d: Jina's parametrization swaps the factors for
// embeddings, so A is [rows, rank] and B [rank, dim].
func (l jinaLoader) embedding(module string, rows, dim int, d kernels.DType) ([]byte, error) {
	if !l.adapt {
		return l.merged(module+jinaOriginal, rows, dim, nil, nil, d)
	}
	a, err := l.slice(module+jinaLoRAA, rows*l.rank)
	if err != nil {
		return nil, err
	}
	b, err := l.slice(module+jinaLoRAB, l.rank*dim)
	if err != nil {
		return nil, err
	}
	return l.merged(module+jinaOriginal, rows, dim, a, b, d)
}

// merged returns the file's tensor name, W [rows, cols], plus scale·L·R
// for L [rows, rank] and R [rank, cols] (none when lf is nil), encoded in
// dtype d. Row by row over the host's cores, each row is decoded to
// float64, gets its low-rank term in Jina's order (the product, then its
// scale, then the sum) and is rounded once to d, as Constant would round
// it: no float64 copy of the whole tensor is made (the real word embedding
// is 250002 × 1024, 2 GB in float64).
func (l jinaLoader) merged(name string, rows, cols int, lf, rf []float64, d kernels.DType) ([]byte, error) {
	full := l.prefix + name
	f := l.src.owner[full]
	raw, err := f.Bytes(full)
	if err != nil {
		return nil, fmt.Errorf("textenc: reading %s from %s: %w", full, l.src.path, err)
	}
	info, _ := f.Info(full)
	kd, ok := info.DType.Kernel()
	if !ok || !kd.IsFloat() || len(raw) != rows*cols*kd.Size() {
		return nil, fmt.Errorf("textenc: %s in %s is %s %v, not a float [%d, %d]", full, l.src.path, info.DType, info.Shape, rows, cols)
	}
	in, outSize := kd.Size()*cols, d.Size()*cols
	out := make([]byte, rows*outSize)
	kernels.ParallelFor(rows, 256, func(lo, hi int) {
		w, lr := make([]float64, cols), make([]float64, cols)
		for i := lo; i < hi; i++ {
			kernels.DecodeInto(kd, raw[i*in:(i+1)*in], w)
			if lf != nil {
				clear(lr)
				for t := range l.rank {
					c := lf[i*l.rank+t]
					for j, r := range rf[t*cols : (t+1)*cols] {
						lr[j] += c * r
					}
				}
				for j, v := range lr {
					w[j] += v * l.scale
				}
			}
			kernels.EncodeInto(d, w, out[i*outSize:(i+1)*outSize])
		}
	})
	return out, nil
}
