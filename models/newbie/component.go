package newbie

import (
	"fmt"
	"strings"

	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/models/vae"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// Part is one piece of the pipeline: a weights component or a tokenizer.
type Part string

// The parts of NewBie-image-Exp0.1.
const (
	PartDiT            Part = "transformer"
	PartVAE            Part = "vae"
	PartGemma          Part = "gemma"
	PartGemmaTokenizer Part = "gemma-tokenizer"
	PartJina           Part = "jina"
	PartJinaTokenizer  Part = "jina-tokenizer"
)

// Parts lists every part, in the order reports give them.
var Parts = []Part{PartDiT, PartVAE, PartGemma, PartGemmaTokenizer, PartJina, PartJinaTokenizer}

// EncoderParts are what the cache step needs: everything but the DiT.
var EncoderParts = []Part{PartVAE, PartGemma, PartGemmaTokenizer, PartJina, PartJinaTokenizer}

// partInfo is how reports name a part and say what it is for.
var partInfo = map[Part]struct{ title, purpose string }{
	PartDiT:            {"Next-DiT transformer", "the 3.5B model that is fine-tuned"},
	PartVAE:            {"FLUX VAE", "encodes training images to latents and decodes previews"},
	PartGemma:          {"Gemma 3 text encoder", "gives the caption features (cap_feats) the DiT attends to"},
	PartGemmaTokenizer: {"Gemma 3 tokenizer", "turns captions into Gemma 3 token ids"},
	PartJina:           {"Jina CLIP v2 text encoder", "gives the pooled caption vector (clip_text_pooled)"},
	PartJinaTokenizer:  {"Jina CLIP v2 tokenizer", "turns captions into XLM-RoBERTa token ids for Jina CLIP"},
}

// Title is the part's name in reports ("Gemma 3 text encoder").
func (p Part) Title() string { return partInfo[p].title }

// Purpose says what the part is for.
func (p Part) Purpose() string { return partInfo[p].purpose }

// Weights describes one weights component as found on disk.
type Weights struct {
	// Path is what the component's loader opens: a .safetensors file, a
	// sharded checkpoint's index, or (the DiT only) a folder of shards.
	Path string
	// Files are the safetensors files it stands for; FileBytes their size
	// on disk.
	Files     []string
	FileBytes int64
	// Format is the key layout: the DiT's "upstream", "diffusers" or
	// "comfyui"; the VAE's "diffusers" or "bfl"; a text encoder's key
	// prefix.
	Format string
	// Config says where the architecture came from.
	Config string
	// Tensors, Params and Bytes count the component's own tensors;
	// DTypes counts them by file dtype. Other counts the tensors of the
	// files that belong to something else and are skipped (a vision tower).
	Tensors int
	Params  int64
	Bytes   int64
	DTypes  map[string]int
	Other   int
}

// DType is the component's dominant file dtype (the one most of its
// bytes are in).
func (w *Weights) DType() string {
	best, n := "", -1
	for d, c := range w.DTypes {
		if c > n || c == n && d < best {
			best, n = d, c
		}
	}
	return best
}

// DiTPart is the Next-DiT found.
type DiTPart struct {
	Weights
	Arch nextdit.Config
	// Preset names the preset Arch equals ("newbie-exp0.1", "tiny", …) or
	// is "custom".
	Preset string
}

// VAEPart is the FLUX VAE found.
type VAEPart struct {
	Weights
	Arch vae.Config
}

// GemmaPart is the Gemma 3 text encoder found.
type GemmaPart struct {
	Weights
	Arch textenc.Config
}

// JinaPart is Jina CLIP v2's text tower found.
type JinaPart struct {
	Weights
	Arch textenc.JinaConfig
}

// TokenizerPart is a tokenizer found for one of the text encoders.
type TokenizerPart struct {
	// Path is the file read; Kind what it is (tokenizers.Tokenizer.Kind),
	// ModelType its model (tokenizers.ModelBPE or ModelUnigram).
	Path, Kind, ModelType string
	// VocabSize is the embedding rows its ids need; Identity its content
	// hash (tokenizers.Tokenizer.Identity).
	VocabSize int
	Identity  string
	Tokenizer *tokenizers.Tokenizer
}

// Layout is how a model folder is laid out.
type Layout string

// The layouts Discover reads.
const (
	// LayoutHF is the official repository NewBie-AI/NewBie-image-Exp0.1:
	// transformer/, vae/, text_encoder/ (Gemma 3 and its tokenizer),
	// clip_model/ (Jina CLIP v2 and its tokenizer), model_index.json.
	LayoutHF Layout = "hf"
	// LayoutDiffusers is the diffusers port
	// (Disty0/NewBie-image-Exp0.1-Diffusers): transformer/, vae/,
	// text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/.
	LayoutDiffusers Layout = "diffusers"
	// LayoutFlat is a folder of single files (ComfyUI's models folder
	// style), each classified by its content.
	LayoutFlat Layout = "flat"
	// LayoutFiles is no folder at all: every part named in Sources.
	LayoutFiles Layout = "files"
)

// Describe names the layout in words.
func (l Layout) Describe() string {
	switch l {
	case LayoutHF:
		return "the official Hugging Face layout (NewBie-AI/NewBie-image-Exp0.1)"
	case LayoutDiffusers:
		return "the diffusers port's layout"
	case LayoutFlat:
		return "a flat folder of single files"
	}
	return "single files"
}

// Model is what Discover found: the parts present (nil when missing) and
// what is missing.
type Model struct {
	Root   string
	Layout Layout

	DiT            *DiTPart
	VAE            *VAEPart
	Gemma          *GemmaPart
	Jina           *JinaPart
	GemmaTokenizer *TokenizerPart
	JinaTokenizer  *TokenizerPart

	// Missing lists the parts not found, with where each was looked for.
	Missing []Missing

	keys map[Part]string // how the caller names each source, for hints
}

// PartWeights is the description of a weights part found (the DiT, the
// VAE, Gemma or Jina), nil for a tokenizer or a part not found.
func (m *Model) PartWeights(p Part) *Weights {
	switch {
	case p == PartDiT && m.DiT != nil:
		return &m.DiT.Weights
	case p == PartVAE && m.VAE != nil:
		return &m.VAE.Weights
	case p == PartGemma && m.Gemma != nil:
		return &m.Gemma.Weights
	case p == PartJina && m.Jina != nil:
		return &m.Jina.Weights
	}
	return nil
}

// Missing is a part Discover did not find.
type Missing struct {
	Part Part
	// LookedIn says where it was looked for.
	LookedIn []string
}

// Has reports whether the part was found.
func (m *Model) Has(p Part) bool {
	for _, x := range m.Missing {
		if x.Part == p {
			return false
		}
	}
	return true
}

// Require returns an error listing every one of parts that is missing,
// each with what it is for and where it was looked for, or nil when all
// are present.
func (m *Model) Require(parts ...Part) error {
	var miss []Missing
	for _, x := range m.Missing {
		for _, p := range parts {
			if x.Part == p {
				miss = append(miss, x)
			}
		}
	}
	if len(miss) == 0 {
		return nil
	}
	where := "the model"
	if m.Root != "" {
		where = m.Root
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s lacks %d of the components needed:", where, len(miss))
	for _, x := range miss {
		fmt.Fprintf(&b, "\n  %s (%s): looked in %s; or name it with %s",
			x.Part.Title(), x.Part.Purpose(), strings.Join(x.LookedIn, ", "), m.sourceKey(x.Part))
	}
	return &MissingError{Parts: miss, text: b.String()}
}

// MissingError is Require's error: the missing parts, listed together.
type MissingError struct {
	Parts []Missing
	text  string
}

func (e *MissingError) Error() string { return e.text }

// sourceKey is how the caller names the single-file source of a part.
func (m *Model) sourceKey(p Part) string {
	if k, ok := m.keys[p]; ok {
		return k
	}
	return sourceField[p]
}

// sourceField names each part's Sources field, for messages when the
// caller gives no names of its own.
var sourceField = map[Part]string{
	PartDiT: "Sources.DiT", PartVAE: "Sources.VAE", PartGemma: "Sources.Gemma",
	PartGemmaTokenizer: "Sources.GemmaTokenizer", PartJina: "Sources.Jina", PartJinaTokenizer: "Sources.JinaTokenizer",
}

// Sources names single files, each overriding what the model folder gives
// for its part. Empty fields are taken from the folder.
type Sources struct {
	// DiT is the transformer: upstream, diffusers or ComfyUI keys; a file,
	// an index, or a folder of shards.
	DiT string
	// VAE is the FLUX autoencoder (ae.safetensors in Black Forest Labs'
	// keys, or diffusers keys).
	VAE string
	// Gemma is the Gemma 3 text model (multimodal or text-only, any prefix
	// textenc reads); GemmaTokenizer its tokenizer.json, tokenizer.model or
	// a folder holding one.
	Gemma, GemmaTokenizer string
	// Jina is Jina CLIP v2 (or its text tower alone); JinaTokenizer its
	// tokenizer.json, sentencepiece.bpe.model or a folder holding one.
	Jina, JinaTokenizer string
	// Keys, when set, is how the caller names each field in messages (for
	// example "model.gemma" for the config key that fills Gemma).
	Keys map[Part]string
}

// get returns the source given for a part.
func (s Sources) get(p Part) string {
	switch p {
	case PartDiT:
		return s.DiT
	case PartVAE:
		return s.VAE
	case PartGemma:
		return s.Gemma
	case PartGemmaTokenizer:
		return s.GemmaTokenizer
	case PartJina:
		return s.Jina
	case PartJinaTokenizer:
		return s.JinaTokenizer
	}
	return ""
}
