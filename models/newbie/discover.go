package newbie

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/models/vae"
	"github.com/newbie-train/newbie-train/tokenizers"
)

// slots are the folders each layout keeps a part in, in the order they
// are tried (a diffusers tokenizer may also sit beside its encoder).
var slots = map[Layout]map[Part][]string{
	LayoutHF: {
		PartDiT: {"transformer"}, PartVAE: {"vae"},
		PartGemma: {"text_encoder"}, PartGemmaTokenizer: {"text_encoder"},
		PartJina: {"clip_model"}, PartJinaTokenizer: {"clip_model"},
	},
	LayoutDiffusers: {
		PartDiT: {"transformer"}, PartVAE: {"vae"},
		PartGemma: {"text_encoder"}, PartGemmaTokenizer: {"tokenizer", "text_encoder"},
		PartJina: {"text_encoder_2"}, PartJinaTokenizer: {"tokenizer_2", "text_encoder_2"},
	},
}

// Discover finds the parts of NewBie-image-Exp0.1 in the model folder root
// (empty for none: every part then comes from src) and in the single files
// of src, which override the folder's. The layout is told from the
// folder's subfolders: clip_model/ is the official Hugging Face layout,
// text_encoder_2/ or tokenizer_2/ the diffusers port's, other subfolders
// (transformer/, vae/, text_encoder/ alone) the official layout with parts
// missing, and a folder without them a flat folder of single files.
//
// Every weights file is classified by content (Identify) and then checked
// by its component package exactly as its loader will read it (keys,
// shapes, architecture); every tokenizer is loaded and checked against its
// encoder (model type, special ids, vocabulary within the embedding). The
// returned error joins every problem found — a file in the wrong slot, a
// damaged file, a tokenizer that does not fit — each naming the file. A
// part not found is not an error here: it is listed in Model.Missing, and
// Model.Require turns the parts a caller needs into one error.
func Discover(root string, src Sources) (*Model, error) {
	m := &Model{Root: root, Layout: LayoutFiles, keys: src.Keys}
	if root != "" {
		st, err := os.Stat(root)
		if err != nil {
			return nil, fmt.Errorf("newbie: model folder: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("newbie: model folder %s is a file, not a folder; name single files one by one (%s, %s, …)", root, m.sourceKey(PartDiT), m.sourceKey(PartVAE))
		}
		m.Layout = folderLayout(root)
	}
	d := &discovery{m: m, src: src}
	var flat map[Part][]string
	if m.Layout == LayoutFlat {
		var err error
		if flat, err = classifyFlat(root); err != nil {
			return nil, err
		}
	}
	for _, p := range []Part{PartDiT, PartVAE, PartGemma, PartJina} {
		path, ok := d.weightsPath(p, flat)
		if !ok {
			continue
		}
		if err := d.describe(p, path); err != nil {
			d.errs = append(d.errs, err)
		}
	}
	for _, p := range []Part{PartGemmaTokenizer, PartJinaTokenizer} {
		d.tokenizer(p)
	}
	d.crossCheck()
	return m, errors.Join(d.errs...)
}

// discovery is Discover's state: the model being filled and the problems
// found so far.
type discovery struct {
	m    *Model
	src  Sources
	errs []error
}

// folderLayout tells a model folder's layout from its subfolders.
func folderLayout(root string) Layout {
	switch {
	case isDir(filepath.Join(root, "clip_model")):
		return LayoutHF
	case isDir(filepath.Join(root, "text_encoder_2")), isDir(filepath.Join(root, "tokenizer_2")):
		return LayoutDiffusers
	}
	for _, sub := range []string{"transformer", "vae", "text_encoder"} {
		if isDir(filepath.Join(root, sub)) {
			return LayoutHF
		}
	}
	return LayoutFlat
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// missing records a part as not found, looked for in places.
func (d *discovery) missing(p Part, places ...string) {
	d.m.Missing = append(d.m.Missing, Missing{Part: p, LookedIn: places})
}

// weightsPath finds the source of a weights part: the file src names, else
// the layout's folder, else the flat folder's file classified as the part.
// A source that holds another component is an error (recorded); ok is
// false when there is nothing to describe.
func (d *discovery) weightsPath(p Part, flat map[Part][]string) (string, bool) {
	if path := d.src.get(p); path != "" {
		return d.expect(p, path, d.m.sourceKey(p)+" "+path)
	}
	root := d.m.Root
	switch d.m.Layout {
	case LayoutFiles:
		d.missing(p, "no model folder given")
		return "", false
	case LayoutFlat:
		found := flat[p]
		switch len(found) {
		case 0:
			d.missing(p, fmt.Sprintf("%s (no file there holds one)", root))
			return "", false
		case 1:
			return found[0], true
		}
		d.errs = append(d.errs, fmt.Errorf("newbie: %d files in %s hold a %s (%s); name the one to use with %s",
			len(found), root, p.Title(), strings.Join(found, ", "), d.m.sourceKey(p)))
		return "", false
	}
	dir := filepath.Join(root, slots[d.m.Layout][p][0])
	if !isDir(dir) {
		d.missing(p, dir+" (no such folder)")
		return "", false
	}
	path, err := weightsIn(dir, p)
	if err != nil {
		d.errs = append(d.errs, err)
		return "", false
	}
	if path == "" {
		d.missing(p, dir+" (no .safetensors file in it)")
		return "", false
	}
	return d.expect(p, path, fmt.Sprintf("%s (the %s folder of %s)", path, filepath.Base(dir), d.m.Layout.Describe()))
}

// expect identifies path and records an error when it is not part p; what
// names the source in that error.
func (d *discovery) expect(p Part, path, what string) (string, bool) {
	id, err := Identify(path)
	if err != nil {
		d.errs = append(d.errs, fmt.Errorf("newbie: %s: %w", what, err))
		return "", false
	}
	if id.Part != p {
		d.errs = append(d.errs, fmt.Errorf("newbie: %s should be a %s but holds %s", what, p.Title(), id.What()))
		return "", false
	}
	return path, true
}

// weightsIn picks a part's weights in its folder: the one shard index, else
// the one .safetensors file, else (the DiT) the folder as a set of shards
// or (the others) the one file of several that holds the part. It returns
// "" when the folder holds no weights.
func weightsIn(dir string, p Part) (string, error) {
	idx, _ := filepath.Glob(filepath.Join(dir, "*.safetensors.index.json"))
	switch len(idx) {
	case 1:
		return idx[0], nil
	case 0:
	default:
		return "", fmt.Errorf("newbie: %s holds %d shard indexes (%s); name the one to use", dir, len(idx), strings.Join(idx, ", "))
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	switch {
	case len(files) == 0:
		return "", nil
	case len(files) == 1:
		return files[0], nil
	case p == PartDiT:
		return dir, nil
	}
	var match []string
	for _, f := range files {
		if id, err := Identify(f); err == nil && id.Part == p {
			match = append(match, f)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	return "", fmt.Errorf("newbie: %s holds %d .safetensors files (%s) and no index, %d of them a %s; keep one or name it", dir, len(files), strings.Join(files, ", "), len(match), p.Title())
}

// classifyFlat classifies every weights file of a flat folder.
func classifyFlat(root string) (map[Part][]string, error) {
	out := map[Part][]string{}
	files, _ := filepath.Glob(filepath.Join(root, "*.safetensors"))
	idx, _ := filepath.Glob(filepath.Join(root, "*.safetensors.index.json"))
	sharded := map[string]bool{}
	for _, ix := range idx {
		_, shards, err := indexShards(ix)
		if err != nil {
			return nil, fmt.Errorf("newbie: %w", err)
		}
		for _, s := range shards {
			sharded[s] = true
		}
		files = append(files, ix)
	}
	sort.Strings(files)
	for _, f := range files {
		if sharded[f] {
			continue // read through its index
		}
		id, err := Identify(f)
		if err != nil {
			continue // not a weights file this package reads; never a component
		}
		if id.Part != "" {
			out[id.Part] = append(out[id.Part], f)
		}
	}
	return out, nil
}

// describe checks a weights source with its component package and fills
// the model's part.
func (d *discovery) describe(p Part, path string) error {
	switch p {
	case PartDiT:
		dit, err := describeDiT(path)
		if err != nil {
			return err
		}
		d.m.DiT = dit
	case PartVAE:
		cfg, layout, err := vae.Check(path, vae.Options{})
		if err != nil {
			return fmt.Errorf("newbie: %s: %w", p.Title(), err)
		}
		w, err := fileWeights(path)
		if err != nil {
			return err
		}
		w.Format = layout + " keys"
		w.Config = configSource(path, "FLUX.1's")
		d.m.VAE = &VAEPart{Weights: w, Arch: cfg}
	case PartGemma:
		cfg, ck, err := textenc.InspectGemma(path, textenc.Options{})
		if err != nil {
			return fmt.Errorf("newbie: %s: %w", p.Title(), err)
		}
		d.m.Gemma = &GemmaPart{Weights: checkpointWeights(path, ck), Arch: cfg}
	case PartJina:
		cfg, ck, err := textenc.InspectJina(path, textenc.JinaOptions{})
		if err != nil {
			return fmt.Errorf("newbie: %s: %w", p.Title(), err)
		}
		d.m.Jina = &JinaPart{Weights: checkpointWeights(path, ck), Arch: cfg}
	}
	return nil
}

// checkpointWeights turns textenc's description into Weights.
func checkpointWeights(path string, ck textenc.Checkpoint) Weights {
	w := Weights{Path: path, Files: ck.Files, Format: prefixText(ck.Prefix), Config: ck.Config,
		Tensors: ck.Tensors, Params: ck.Params, Bytes: ck.Bytes, DTypes: ck.DTypes, Other: ck.Other}
	w.FileBytes = filesSize(w.Files)
	return w
}

// fileWeights counts every tensor of one safetensors file.
func fileWeights(path string) (Weights, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return Weights{}, fmt.Errorf("newbie: %w", err)
	}
	defer f.Close()
	w := Weights{Path: path, Files: []string{path}, DTypes: map[string]int{}, FileBytes: filesSize([]string{path})}
	for _, t := range f.Tensors() {
		w.count(t)
	}
	return w, nil
}

// count adds a tensor to the component's counts.
func (w *Weights) count(t safetensors.TensorInfo) {
	n := int64(t.NumElements())
	w.Tensors++
	w.Params += n
	w.Bytes += n * int64(t.DType.Size())
	w.DTypes[string(t.DType)]++
}

// filesSize sums the files' sizes on disk.
func filesSize(files []string) int64 {
	var n int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			n += st.Size()
		}
	}
	return n
}

// configSource says where a VAE's architecture comes from, as
// vae.ResolveConfig picks it (a file's metadata is reported by the check's
// success; a config.json beside it; else the default).
func configSource(path, def string) string {
	if f, err := safetensors.Open(path); err == nil {
		_, meta := f.Metadata()["config"]
		f.Close()
		if meta {
			return "from the metadata of " + path
		}
	}
	cj := filepath.Join(filepath.Dir(path), "config.json")
	if _, err := os.Stat(cj); err == nil {
		return "from " + cj
	}
	return def + " (no config in the file's metadata and no config.json beside it)"
}

// describeDiT opens the transformer as the trainer will, resolves its
// architecture (the metadata's, else a config.json beside it, else the
// preset its shapes fit) and checks every key.
func describeDiT(path string) (*DiTPart, error) {
	w, err := checkpoints.OpenWeights(path)
	if err != nil {
		return nil, fmt.Errorf("newbie: %s: %w", PartDiT.Title(), err)
	}
	defer w.Close()
	cfg, from, err := ditConfig(w, path)
	if err != nil {
		return nil, err
	}
	if err := nextdit.CheckKeys(w, cfg); err != nil {
		if ke, ok := nextdit.IsKeyError(err); ok {
			ke.Path = path
		}
		return nil, fmt.Errorf("newbie: %s (architecture %s): %w", PartDiT.Title(), from, err)
	}
	files, err := ditFiles(path)
	if err != nil {
		return nil, err
	}
	out := &DiTPart{Arch: cfg, Preset: nextdit.MatchPreset(w, &cfg), Weights: Weights{
		Path: path, Files: files, FileBytes: filesSize(files), Format: string(w.Layout()) + " keys",
		Config: from, DTypes: map[string]int{}, Other: len(w.Map.Ignored)}}
	for _, n := range w.Names() {
		info, _ := w.Info(n)
		out.count(info)
	}
	return out, nil
}

// ditFiles lists the files a DiT source stands for, as
// checkpoints.OpenWeights resolves it.
func ditFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(path, ".json"):
		_, files, err := indexShards(path)
		return files, err
	case !st.IsDir():
		return []string{path}, nil
	}
	if sub := filepath.Join(path, "transformer"); isDir(sub) {
		path = sub
	}
	if idx, _ := filepath.Glob(filepath.Join(path, "*.safetensors.index.json")); len(idx) == 1 {
		_, files, err := indexShards(idx[0])
		return files, err
	}
	files, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
	return files, nil
}

// tokenizer finds, loads and checks a tokenizer part.
func (d *discovery) tokenizer(p Part) {
	path := d.src.get(p)
	what := ""
	if path != "" {
		what = d.m.sourceKey(p) + " " + path
	} else {
		var looked []string
		switch d.m.Layout {
		case LayoutFiles:
			looked = append(looked, "no model folder given")
		case LayoutFlat:
			path = flatTokenizer(d.m.Root, p)
			looked = append(looked, d.m.Root+" (no tokenizer file there is a "+p.Title()+")")
		default:
			for _, sub := range slots[d.m.Layout][p] {
				dir := filepath.Join(d.m.Root, sub)
				if hasTokenizer(dir) {
					path = dir
					break
				}
				looked = append(looked, dir+" (no tokenizer.json, tokenizer.model or sentencepiece.bpe.model)")
			}
		}
		if path == "" {
			d.missing(p, looked...)
			return
		}
		what = path
	}
	tok, err := tokenizers.Load(path)
	if err != nil {
		d.errs = append(d.errs, fmt.Errorf("newbie: %s %s: %w", p.Title(), what, err))
		return
	}
	if err := checkTokenizer(p, tok); err != nil {
		d.errs = append(d.errs, fmt.Errorf("newbie: %s: %w", what, err))
		return
	}
	tp := &TokenizerPart{Path: tok.Path(), Kind: tok.Kind(), ModelType: tok.ModelType(), VocabSize: tok.VocabSize(), Identity: tok.Identity(), Tokenizer: tok}
	if p == PartGemmaTokenizer {
		d.m.GemmaTokenizer = tp
	} else {
		d.m.JinaTokenizer = tp
	}
}

// tokenizerFiles are the file names a folder's tokenizer may have
// (tokenizers.Load reads the first present).
var tokenizerFiles = []string{"tokenizer.json", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model"}

// hasTokenizer reports whether a folder holds a tokenizer file.
func hasTokenizer(dir string) bool {
	for _, n := range tokenizerFiles {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return true
		}
	}
	return false
}

// flatTokenizer finds the tokenizer of part p among a flat folder's
// tokenizer files (tokenizer.json, *tokenizer*.json, *.model) by its model
// type, or "" when none or several fit.
func flatTokenizer(root string, p Part) string {
	var cands []string
	for _, pat := range []string{"*tokenizer*.json", "*.model"} {
		m, _ := filepath.Glob(filepath.Join(root, pat))
		cands = append(cands, m...)
	}
	var found []string
	for _, c := range cands {
		if strings.HasSuffix(c, "tokenizer_config.json") {
			continue
		}
		tok, err := tokenizers.Load(c)
		if err == nil && tok.ModelType() == wantModelType[p] {
			found = append(found, c)
		}
	}
	if len(found) == 1 {
		return found[0]
	}
	return ""
}

// wantModelType is each encoder's tokenization model.
var wantModelType = map[Part]string{PartGemmaTokenizer: tokenizers.ModelBPE, PartJinaTokenizer: tokenizers.ModelUnigram}

// checkTokenizer checks that a tokenizer is the kind its encoder was
// trained with and that NewBie's batching of it holds: Gemma's BPE with
// <bos> prepended and <pad> = 0, Jina's Unigram with <s> … </s> and
// <pad> = 1.
func checkTokenizer(p Part, tok *tokenizers.Tokenizer) error {
	want := wantModelType[p]
	if tok.ModelType() != want {
		other := map[string]string{tokenizers.ModelBPE: "a BPE tokenizer (Gemma's kind)", tokenizers.ModelUnigram: "a Unigram tokenizer (XLM-RoBERTa's, Jina CLIP's kind)"}
		return fmt.Errorf("%s is %s, but the %s needs %s", tok.Path(), other[tok.ModelType()], p.Title(), other[want])
	}
	sp := tok.Special()
	var batch tokenizers.BatchOptions
	var specials int
	if p == PartGemmaTokenizer {
		batch, specials = tokenizers.GemmaBatch, 1
	} else {
		batch, specials = tokenizers.JinaBatch, 2
	}
	if sp.PAD != batch.PadID {
		return fmt.Errorf("%s has <pad> = %d, but NewBie pads %s batches with id %d", tok.Path(), sp.PAD, p.Title(), batch.PadID)
	}
	if n := tok.NumSpecialTokens(); n != specials {
		return fmt.Errorf("%s adds %d special tokens to a text, the %s's adds %d", tok.Path(), n, p.Title(), specials)
	}
	return nil
}

// crossCheck checks that the parts found fit each other: each tokenizer's
// ids within its encoder's embedding, and the encoders' widths the DiT's.
func (d *discovery) crossCheck() {
	m := d.m
	fit := func(tok *TokenizerPart, enc *Weights, rows int, what string) {
		if tok != nil && enc != nil && tok.VocabSize > rows {
			d.errs = append(d.errs, fmt.Errorf("newbie: the %s tokenizer %s has ids up to %d, but the embedding of %s has %d rows: they are not a pair",
				what, tok.Path, tok.VocabSize-1, enc.Path, rows))
		}
	}
	if m.Gemma != nil {
		fit(m.GemmaTokenizer, &m.Gemma.Weights, m.Gemma.Arch.VocabSize, "Gemma 3")
	}
	if m.Jina != nil {
		fit(m.JinaTokenizer, &m.Jina.Weights, m.Jina.Arch.VocabSize, "Jina CLIP v2")
	}
	if m.DiT == nil {
		return
	}
	c := m.DiT.Arch
	width := func(got int, enc *Weights, what string, want int, field string) {
		if got != want {
			d.errs = append(d.errs, fmt.Errorf("newbie: %s %s gives %d-wide %s, but the transformer %s takes %d (%s)", what, enc.Path, got, field, m.DiT.Path, want, field))
		}
	}
	if m.Gemma != nil {
		width(m.Gemma.Arch.HiddenSize, &m.Gemma.Weights, "the Gemma 3 text encoder", c.CapFeatDim, "cap_feat_dim")
	}
	if m.Jina != nil {
		width(m.Jina.Arch.HiddenSize, &m.Jina.Weights, "the Jina CLIP v2 text encoder", c.ClipTextDim, "clip_text_dim")
	}
	if m.VAE != nil {
		width(m.VAE.Arch.LatentChannels, &m.VAE.Weights, "the VAE", c.InChannels, "in_channels")
	}
}
