package newbie

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/models/vae"
)

// Size is the scale of a random model.
type Size string

// The sizes WriteRandom writes.
const (
	// SizeTiny is small enough for tests and the demo on the CPU: the tiny
	// Next-DiT preset with encoders of its widths (under 2 MB in all).
	SizeTiny Size = "tiny"
	// SizeFull is NewBie-image-Exp0.1's real architecture throughout
	// (about 16 GB).
	SizeFull Size = "full"
)

// Archs are the architectures of a model folder's components.
type Archs struct {
	DiT   nextdit.Config
	VAE   vae.Config
	Gemma textenc.Config
	Jina  textenc.JinaConfig
}

// RandomArchs returns the architectures WriteRandom writes at a size. The
// tiny encoders' widths are the tiny DiT's (cap_feat_dim 64, clip_text_dim
// 32) and their vocabularies hold the generated tokenizers' ids.
func RandomArchs(s Size) (Archs, error) {
	switch s {
	case SizeFull:
		dit, _ := nextdit.Preset("newbie-exp0.1")
		return Archs{DiT: dit, VAE: vae.FLUX(), Gemma: textenc.Gemma4BConfig(), Jina: textenc.JinaCLIPv2Config()}, nil
	case SizeTiny:
		dit, _ := nextdit.Preset("tiny")
		v := vae.FLUX()
		v.BlockOutChannels, v.LayersPerBlock = []int{32, 32, 32, 32}, 1
		g := textenc.Config{VocabSize: 1024, HiddenSize: dit.CapFeatDim, IntermediateSize: 128, NumLayers: 3,
			NumHeads: 2, NumKVHeads: 1, HeadDim: 32, RMSNormEps: 1e-6, QueryPreAttnScalar: 32, SlidingWindow: 16,
			LayerTypes: []string{textenc.SlidingAttention, textenc.FullAttention, textenc.SlidingAttention},
			LocalRope:  textenc.Rope{Theta: 1e4, Factor: 1}, GlobalRope: textenc.Rope{Theta: 1e6, Factor: 8}}
		j := textenc.JinaCLIPv2Config()
		j.VocabSize, j.HiddenSize, j.NumLayers, j.NumHeads, j.IntermediateSize = 1024, dit.ClipTextDim, 2, 2, 64
		return Archs{DiT: dit, VAE: v, Gemma: g, Jina: j}, nil
	}
	return Archs{}, fmt.Errorf("newbie: model size %q: want %q or %q", s, SizeTiny, SizeFull)
}

// RandomOptions choose what WriteRandom writes.
type RandomOptions struct {
	// Layout is LayoutHF (the official repository's) or LayoutDiffusers.
	Layout Layout
	// Size is SizeTiny or SizeFull.
	Size Size
	// Seed fixes every weight: the same seed gives the same numbers in
	// both layouts.
	Seed uint64
	// Workers generating numbers in parallel (0: every core).
	Workers int
	// Log, when set, gets one line per file written.
	Log io.Writer
}

// WriteReport says what WriteRandom wrote.
type WriteReport struct {
	Dir     string
	Files   []WrittenFile
	Bytes   int64
	Elapsed time.Duration
}

// WrittenFile is one file written.
type WrittenFile struct {
	Path  string
	Bytes int64
}

// gemmaMerges is how many BPE merges the generated Gemma tokenizer learns.
const gemmaMerges = 400

// WriteRandom writes a complete NewBie-image-Exp0.1 model folder into dir
// with random weights in the real file layouts (see Layout): the
// transformer in upstream keys (official layout) or diffusers keys with
// split q/k/v (diffusers layout), the FLUX VAE in diffusers keys, Gemma 3
// as the multimodal checkpoint (language_model.model. keys in the official
// text_encoder/gemma3-4b-it.safetensors, language_model. keys in two
// shards and an index in the diffusers port's text_encoder/), beside a
// small vision tensor the loader must skip, Jina CLIP v2 under
// text_model.transformer.roberta. with its stacked LoRA parametrizations
// beside a vision tensor, every config.json, model_index.json, and small
// generated tokenizers (their vocabularies fit both sizes' embeddings).
//
// Weights are bf16 (the VAE fp32, as FLUX's own file): uniform values with
// each tensor's initialisation scale, drawn from Philox counters so any
// tensor's numbers are fixed by the seed and its name alone, generated in
// parallel and streamed to disk a chunk at a time; files are written
// concurrently.
func WriteRandom(dir string, o RandomOptions) (*WriteReport, error) {
	if o.Layout != LayoutHF && o.Layout != LayoutDiffusers {
		return nil, fmt.Errorf("newbie: random model layout %q: want %q or %q", o.Layout, LayoutHF, LayoutDiffusers)
	}
	a, err := RandomArchs(o.Size)
	if err != nil {
		return nil, err
	}
	return writeRandom(dir, o, a)
}

// DemoModelSeed fixes the random weights of the demo's model folder.
const DemoModelSeed = 7

// WriteDemoModel writes the demo's model folder into dir: the tiny size in
// the official layout, its weights from DemoModelSeed, so every demo (and
// every test that trains like one) has the same base model.
func WriteDemoModel(dir string) (*WriteReport, error) {
	return WriteRandom(dir, RandomOptions{Layout: LayoutHF, Size: SizeTiny, Seed: DemoModelSeed, Workers: 1})
}

// writeRandom is WriteRandom for any architectures (tests vary them).
func writeRandom(dir string, o RandomOptions, a Archs) (*WriteReport, error) {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	start := time.Now()
	plan, err := planFolder(dir, o.Layout, a)
	if err != nil {
		return nil, err
	}
	rep := &WriteReport{Dir: dir}
	for _, f := range plan.small {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return nil, fmt.Errorf("newbie: %w", err)
		}
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			return nil, fmt.Errorf("newbie: %w", err)
		}
		rep.Files = append(rep.Files, WrittenFile{f.path, int64(len(f.data))})
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for _, f := range plan.weights {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return nil, fmt.Errorf("newbie: %w", err)
		}
		wg.Go(func() {
			t0 := time.Now()
			err := safetensors.Write(f.path, f.tensors(o.Seed, o.Workers), nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("newbie: writing random weights: %w", err)
				}
				return
			}
			n := filesSize([]string{f.path})
			rep.Files = append(rep.Files, WrittenFile{f.path, n})
			if o.Log != nil {
				fmt.Fprintf(o.Log, "wrote %s: %s in %.1fs\n", f.path, bytesText(n), time.Since(t0).Seconds())
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	sort.Slice(rep.Files, func(i, j int) bool { return rep.Files[i].Path < rep.Files[j].Path })
	for _, f := range rep.Files {
		rep.Bytes += f.Bytes
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// smallFile is a config or tokenizer file to write.
type smallFile struct {
	path string
	data []byte
}

// weightFile is a safetensors file of random tensors.
type weightFile struct {
	path  string
	specs []tensorSpec
}

// folderPlan is every file of a model folder.
type folderPlan struct {
	small   []smallFile
	weights []weightFile
}

// tensorSpec is one tensor of a random file: its numbers are elements
// [offset, offset+size) of the draw named by (part, source) — a fused
// tensor's rows split over several file tensors draw from the fused
// tensor's own stream, so both layouts hold the same numbers.
type tensorSpec struct {
	name   string
	shape  []int
	dtype  safetensors.DType
	part   Part
	source string // the model's own name of the tensor the values belong to
	offset int64
	init   initRule
}

// initRule is a uniform draw with this mean and standard deviation.
type initRule struct{ mean, std float64 }

// tensors turns a file's specs into safetensors tensors whose bytes are
// generated while they stream.
func (f weightFile) tensors(seed uint64, workers int) []safetensors.Tensor {
	out := make([]safetensors.Tensor, len(f.specs))
	for i, s := range f.specs {
		out[i] = safetensors.Tensor{Name: s.name, DType: s.dtype, Shape: s.shape,
			Source: func(w io.Writer) error { return streamRandom(w, s, seed, workers) }}
	}
	return out
}

// randomChunk is how many elements are generated per write.
const randomChunk = 1 << 22

// streamRandom writes a tensor's random values to w, a chunk at a time,
// each chunk filled by workers in parallel.
func streamRandom(w io.Writer, s tensorSpec, seed uint64, workers int) error {
	n := int64(1)
	for _, d := range s.shape {
		n *= int64(d)
	}
	size := int64(s.dtype.Size())
	buf := make([]byte, min(n, randomChunk)*size)
	stream := streamKey(seed, s.part, s.source)
	for start := int64(0); start < n; start += randomChunk {
		count := min(randomChunk, n-start)
		chunk := buf[:count*size]
		per := (count + int64(workers) - 1) / int64(workers)
		var wg sync.WaitGroup
		for lo := int64(0); lo < count; lo += per {
			hi := min(lo+per, count)
			wg.Go(func() { fillUniform(chunk[lo*size:hi*size], s.dtype, stream, s.offset+start+lo, s.init) })
		}
		wg.Wait()
		if _, err := w.Write(chunk); err != nil {
			return err
		}
	}
	return nil
}

// streamKey is the Philox key of one tensor's draw.
func streamKey(seed uint64, p Part, source string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(string(p) + ":" + source))
	return seed ^ h.Sum64()
}

// fillUniform writes elements [first, first+len) of a uniform draw with the
// rule's mean and standard deviation into dst, encoded as dt: element g
// is word g%4 of Philox block g/4, so four values come from each block.
func fillUniform(dst []byte, dt safetensors.DType, stream uint64, first int64, r initRule) {
	size := dt.Size()
	n := int64(len(dst) / size)
	half := r.std * math.Sqrt(3) // U(−a, a) has std a/√3
	for i := int64(0); i < n; {
		g := first + i
		words := kernels.RandomWords(stream, uint64(g/4))
		for k := g % 4; k < 4 && i < n; k, i = k+1, i+1 {
			u := (float64(words[k]) + 0.5) / 4294967296.0
			v := float32(r.mean + half*(2*u-1))
			switch dt {
			case safetensors.BF16:
				binary.LittleEndian.PutUint16(dst[i*2:], kernels.BF16FromF32(v))
			default:
				binary.LittleEndian.PutUint32(dst[i*4:], math.Float32bits(v))
			}
		}
	}
}

// The file dtypes: bf16 as the released checkpoints, the VAE fp32.
const (
	weightDType = safetensors.BF16
	vaeDType    = safetensors.F32
)

// planFolder lists every file of a model folder in a layout.
func planFolder(dir string, l Layout, a Archs) (*folderPlan, error) {
	p := &folderPlan{}
	js := func(path string, v any) {
		b, _ := json.MarshalIndent(v, "", "  ") // maps of plain values always marshal
		p.small = append(p.small, smallFile{filepath.Join(dir, path), append(b, '\n')})
	}
	gemmaTok, gemmaVocab := gemmaTokenizerJSON(gemmaMerges)
	jinaTok, jinaVocab := jinaTokenizerJSON()
	if gemmaVocab > a.Gemma.VocabSize || jinaVocab > a.Jina.VocabSize {
		return nil, fmt.Errorf("newbie: generated tokenizers need %d and %d ids, the embeddings have %d and %d rows", gemmaVocab, jinaVocab, a.Gemma.VocabSize, a.Jina.VocabSize)
	}
	var gemmaCfg, jinaCfg map[string]any
	json.Unmarshal([]byte(a.Gemma.JSON()), &gemmaCfg)
	json.Unmarshal([]byte(a.Jina.JSON()), &jinaCfg)
	var vaeCfg map[string]any
	json.Unmarshal([]byte(a.VAE.JSON()), &vaeCfg)
	vaeCfg["_class_name"] = "AutoencoderKL"
	vaeCfg["sample_size"] = 1024

	dit := ditSpecs(a.DiT, l)
	vaeT := componentSpecs(PartVAE, "", vaeShapes(a.VAE.Params()), vaeDType, vaeInit)
	gemma := componentSpecs(PartGemma, map[Layout]string{LayoutHF: "language_model.model.", LayoutDiffusers: "language_model."}[l], toShapes(a.Gemma.Params()), weightDType, gemmaInit)
	gemma = append(gemma, fakeSpec(PartGemma, "vision_tower.vision_model.embeddings.patch_embedding.weight", 8, 3, 2, 2))
	jina := componentSpecs(PartJina, "text_model.transformer.roberta.", toShapes(a.Jina.Params()), weightDType, jinaInit)
	jina = append(jina, fakeSpec(PartJina, "vision_model.patch_embed.proj.weight", 8, 3, 2, 2))

	gemmaModel := map[string]any{"architectures": []string{"Gemma3ForConditionalGeneration"}, "model_type": "gemma3",
		"text_config": gemmaCfg, "vision_config": map[string]any{"model_type": "siglip_vision_model", "hidden_size": 8}}
	jinaModel := map[string]any{"architectures": []string{"JinaCLIPModel"}, "model_type": "jina_clip",
		"text_config": map[string]any{"hf_model_name_or_path": "jinaai/jina-embeddings-v3", "default_lora_task": a.Jina.DefaultTask,
			"hf_model_config_kwargs": jinaCfg}, "vision_config": map[string]any{"embed_dim": 8}}
	gemmaTokCfg := map[string]any{"tokenizer_class": "GemmaTokenizer", "add_bos_token": true, "add_eos_token": false,
		"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "right"}
	jinaTokCfg := map[string]any{"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
		"pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 8194}
	tok := func(sub string, b []byte, cfg map[string]any) {
		p.small = append(p.small, smallFile{filepath.Join(dir, sub, "tokenizer.json"), b})
		js(filepath.Join(sub, "tokenizer_config.json"), cfg)
	}

	switch l {
	case LayoutHF:
		js("model_index.json", map[string]any{"_class_name": "NewbiePipeline", "transformer": []string{"newbie", "NextDiT_CLIP"},
			"vae": []string{"diffusers", "AutoencoderKL"}, "text_encoder": []string{"transformers", "Gemma3ForConditionalGeneration"},
			"clip_model": []string{"transformers", "JinaCLIPModel"}})
		js("transformer/config.json", map[string]any{"_class_name": "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP",
			"in_channels": a.DiT.InChannels, "clip_text_dim": a.DiT.ClipTextDim, "clip_img_dim": 1024})
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "transformer", "diffusion_pytorch_model.safetensors"), dit})
		js("vae/config.json", vaeCfg)
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "vae", "diffusion_pytorch_model.safetensors"), vaeT})
		js("text_encoder/config.json", gemmaModel)
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "text_encoder", "gemma3-4b-it.safetensors"), gemma})
		tok("text_encoder", gemmaTok, gemmaTokCfg)
		js("clip_model/config.json", jinaModel)
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "clip_model", "jina-clip-v2.safetensors"), jina})
		tok("clip_model", jinaTok, jinaTokCfg)
	case LayoutDiffusers:
		js("model_index.json", map[string]any{"_class_name": "NewbiePipeline", "_diffusers_version": "0.36.0.dev0",
			"scheduler": []string{"diffusers", "FlowMatchEulerDiscreteScheduler"}, "text_encoder": []string{"transformers", "Gemma3Model"},
			"text_encoder_2": []string{"transformers", "PreTrainedModel"}, "tokenizer": []string{"transformers", "GemmaTokenizerFast"},
			"tokenizer_2": []string{"transformers", "XLMRobertaTokenizerFast"}, "transformer": []string{"diffusers", "Lumina2Transformer2DModel"},
			"vae": []string{"diffusers", "AutoencoderKL"}})
		js("transformer/config.json", diffusersDiTConfig(a.DiT))
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "transformer", "diffusion_pytorch_model.safetensors"), dit})
		js("vae/config.json", vaeCfg)
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "vae", "diffusion_pytorch_model.safetensors"), vaeT})
		gemmaModel["architectures"] = []string{"Gemma3Model"}
		js("text_encoder/config.json", gemmaModel)
		shards, index := shard(filepath.Join(dir, "text_encoder"), gemma, 2)
		p.weights = append(p.weights, shards...)
		js("text_encoder/model.safetensors.index.json", index)
		js("text_encoder_2/config.json", jinaModel)
		p.weights = append(p.weights, weightFile{filepath.Join(dir, "text_encoder_2", "model.safetensors"), jina})
		tok("tokenizer", gemmaTok, gemmaTokCfg)
		tok("tokenizer_2", jinaTok, jinaTokCfg)
	}
	return p, nil
}

// shard splits specs over n files named as transformers names shards, and
// returns them with their index.
func shard(dir string, specs []tensorSpec, n int) ([]weightFile, map[string]any) {
	files := make([]weightFile, n)
	for i := range files {
		files[i].path = filepath.Join(dir, fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n))
	}
	var total int64
	for _, s := range specs {
		total += specBytes(s)
	}
	weightMap := map[string]string{}
	var done int64
	for _, s := range specs {
		i := min(int(done*int64(n)/max(total, 1)), n-1)
		files[i].specs = append(files[i].specs, s)
		weightMap[s.name] = filepath.Base(files[i].path)
		done += specBytes(s)
	}
	return files, map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}
}

func specBytes(s tensorSpec) int64 {
	n := int64(s.dtype.Size())
	for _, d := range s.shape {
		n *= int64(d)
	}
	return n
}

// ditSpecs lists the transformer's tensors: upstream names in the official
// layout, diffusers keys (q/k/v as row ranges of the fused qkv's draw,
// norm_final dropped) in the diffusers one.
func ditSpecs(c nextdit.Config, l Layout) []tensorSpec {
	var out []tensorSpec
	hd := c.HeadDim()
	for _, p := range c.Params() {
		r := ditInit(p.Name, p.Shape)
		if l == LayoutHF {
			out = append(out, tensorSpec{name: p.Name, shape: p.Shape, dtype: weightDType, part: PartDiT, source: p.Name, init: r})
			continue
		}
		keys := checkpoints.DiffusersKeys(p.Name)
		if len(keys) == 1 {
			out = append(out, tensorSpec{name: keys[0], shape: p.Shape, dtype: weightDType, part: PartDiT, source: p.Name, init: r})
			continue
		}
		rows := []int{c.NHeads * hd, c.NKVHeads * hd, c.NKVHeads * hd}
		cols := 1
		for _, d := range p.Shape[1:] {
			cols *= d
		}
		off := int64(0)
		for i, k := range keys {
			shape := append([]int{rows[i]}, p.Shape[1:]...)
			out = append(out, tensorSpec{name: k, shape: shape, dtype: weightDType, part: PartDiT, source: p.Name, offset: off, init: r})
			off += int64(rows[i] * cols)
		}
	}
	return out
}

// shaped is a tensor name and shape, as every config's Params lists them.
type shaped struct {
	name  string
	shape []int
}

func toShapes(ps []textenc.ParamShape) []shaped {
	out := make([]shaped, len(ps))
	for i, p := range ps {
		out[i] = shaped{p.Name, p.Shape}
	}
	return out
}

// componentSpecs lists a component's tensors under a key prefix.
func componentSpecs(part Part, prefix string, ps []shaped, dt safetensors.DType, init func(string, []int) initRule) []tensorSpec {
	var out []tensorSpec
	for _, s := range ps {
		out = append(out, tensorSpec{name: prefix + s.name, shape: s.shape, dtype: dt, part: part, source: s.name, init: init(s.name, s.shape)})
	}
	return out
}

// vaeShapes lists the VAE's parameters as shaped.
func vaeShapes(ps []vae.Param) []shaped {
	out := make([]shaped, len(ps))
	for i, p := range ps {
		out[i] = shaped{p.Name, p.Shape}
	}
	return out
}

// fakeSpec is a small tensor of another module (a vision tower) that the
// loaders must skip.
func fakeSpec(part Part, name string, shape ...int) tensorSpec {
	return tensorSpec{name: name, shape: shape, dtype: weightDType, part: part, source: name, init: initRule{0, 0.02}}
}

// fanInStd is 1/√fan_in for a weight of at least two dimensions.
func fanInStd(shape []int) float64 {
	f := 1
	for _, d := range shape[1:] {
		f *= d
	}
	return 1 / math.Sqrt(float64(f))
}

// ditInit: linear weights at 1/√fan_in, biases small, norm scales near 1.
func ditInit(name string, shape []int) initRule {
	switch {
	case strings.HasSuffix(name, ".bias"):
		return initRule{0, 0.02}
	case len(shape) == 1:
		return initRule{1, 0.05}
	}
	return initRule{0, fanInStd(shape)}
}

// vaeInit is vae.NewRandom's scheme: N(0, 1/fan_in) weights, biases
// N(0, 0.02²), norm scales 1 + N(0, 0.1²), with uniform draws of the same
// spread.
func vaeInit(name string, shape []int) initRule {
	switch {
	case len(shape) > 1:
		return initRule{0, fanInStd(shape)}
	case strings.HasSuffix(name, ".bias"):
		return initRule{0, 0.02}
	}
	return initRule{1, 0.1}
}

// gemmaInit: Gemma stores RMSNorm scales as w in (1 + w), so they start
// near 0; embeddings at transformers' initializer_range (0.02: times
// √hidden at the input, about unit scale); projections at 1/√fan_in.
func gemmaInit(name string, shape []int) initRule {
	switch {
	case strings.HasSuffix(name, "norm.weight"):
		return initRule{0, 0.05}
	case name == "embed_tokens.weight":
		return initRule{0, 0.02}
	}
	return initRule{0, fanInStd(shape)}
}

// jinaInit: LayerNorm scales near 1, biases small, embeddings and the LoRA
// factors at 0.02, projections at 1/√fan_in.
func jinaInit(name string, shape []int) initRule {
	switch {
	case strings.HasSuffix(name, ".bias"):
		return initRule{0, 0.02}
	case len(shape) == 1:
		return initRule{1, 0.05}
	case strings.Contains(name, "embeddings"), strings.Contains(name, "lora_"):
		return initRule{0, 0.02}
	}
	return initRule{0, fanInStd(shape)}
}

// bytesText is n in GiB, MiB or KiB, as the trainer's logs write sizes.
func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}
