package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// inspectOptions are the flags of `newbie-train inspect`.
type inspectOptions struct {
	json bool
}

func newInspectCmd(stdout io.Writer) *cobra.Command {
	o := &inspectOptions{}
	cmd := &cobra.Command{
		Use:   "inspect FILE|FOLDER",
		Short: "Tell what a model folder, weights or LoRA file is",
		Long: `inspect reads a NewBie-image-Exp0.1 model folder, a safetensors file, a
sharded checkpoint (its index or folder) or a PEFT adapter folder and says
what it is:

  model:   a model folder in the official Hugging Face layout (transformer/,
           vae/, text_encoder/, clip_model/), the diffusers port's
           (text_encoder_2/, tokenizer/, tokenizer_2/) or a flat folder of
           single files: every component found — the transformer, the FLUX
           VAE, Gemma 3, Jina CLIP v2 and their tokenizers — with its file,
           key layout, dtypes, parameters and size, where its architecture
           came from, each tokenizer's kind and vocabulary and whether it
           fits its encoder's embedding, and what is missing (exit 1 when a
           file is wrong: another component, a tokenizer that does not fit);
  weights: the layout (upstream, ComfyUI, diffusers; sharded or not), the
           preset the architecture matches (newbie-exp0.1, lumina2, tiny, or
           custom), parameter count, dtypes and the config in its metadata
           (a VAE or text-encoder file is reported as a model component);
  LoRA:    the format (peft, comfyui, kohya), rank, alpha, targets, number of
           adapted layers, parameter count, dtypes and metadata (steps, base
           model hash, …).

Anything else (an image, a truncated file, another model) is an error that
says what was found. --json prints the same as JSON.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("inspect takes one FILE or FOLDER, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error { return runInspect(o, args[0], stdout) },
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print machine-readable JSON")
	return cmd
}

// inspectReport is what inspect finds; it is also the --json output.
type inspectReport struct {
	Path    string         `json:"path"`
	Kind    string         `json:"kind"` // "model", "component", "weights" or "lora"
	Model   *modelReport   `json:"model,omitempty"`
	Weights *weightsReport `json:"weights,omitempty"`
	LoRA    *loraReport    `json:"lora,omitempty"`
}

// weightsReport describes a Next-DiT weights source.
type weightsReport struct {
	Layout     string         `json:"layout"`
	Files      int            `json:"files"`
	Sharded    bool           `json:"sharded"`
	Preset     string         `json:"preset"`
	Parameters int64          `json:"parameters"`
	Tensors    int            `json:"tensors"`
	DTypes     map[string]int `json:"dtypes"`
	// Config is the architecture from the metadata, or null.
	Config *nextdit.Config `json:"config"`
	// Fits is empty when the tensors match the config (the metadata's or
	// the matched preset's) and otherwise the loader's key report.
	Fits     string            `json:"key_problems,omitempty"`
	Ignored  int               `json:"ignored_tensors,omitempty"`
	Unmapped []string          `json:"unmapped_tensors,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// loraReport describes a LoRA.
type loraReport struct {
	Format     string            `json:"format"`
	Rank       int               `json:"rank"`
	Alpha      float64           `json:"alpha"`
	Ranks      []int             `json:"layer_ranks"`
	Targets    []string          `json:"targets"`
	Layers     int               `json:"layers"`
	Parameters int64             `json:"parameters"`
	DTypes     map[string]int    `json:"dtypes"`
	Metadata   map[string]string `json:"metadata"`
}

func runInspect(o *inspectOptions, path string, stdout io.Writer) error {
	rep, err := inspectPath(path)
	if err != nil {
		return err
	}
	if o.json {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(stdout, "%s\n", b); err != nil {
			return err
		}
	} else {
		printInspect(stdout, rep)
	}
	if rep.Model != nil && len(rep.Model.Problems) > 0 {
		return errModelProblems
	}
	return nil
}

// inspectPath tells a LoRA from weights: a PEFT folder or a file whose
// keys are LoRA keys is a LoRA; anything checkpoints.OpenWeights reads is
// weights; the rest is an error carrying both readers' reasons.
func inspectPath(path string) (*inspectReport, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	isPEFT := func(dir string) bool {
		_, err := os.Stat(filepath.Join(dir, checkpoints.PEFTConfigFile))
		return err == nil
	}
	switch {
	case st.IsDir() && isPEFT(path), filepath.Base(path) == checkpoints.PEFTConfigFile:
		return inspectLoRA(path)
	case st.IsDir() && isModelFolder(path):
		return inspectModel(path)
	case st.IsDir(), strings.HasSuffix(path, ".index.json"):
		if id, err := newbie.Identify(path); err == nil && id.Part != "" && id.Part != newbie.PartDiT {
			return inspectComponent(path, id.Part)
		}
		return inspectWeights(path)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err // says what the file is when it is a known other format
	}
	_, lerr := checkpoints.DetectLoRAFormat(f.Names())
	f.Close()
	if lerr == nil {
		return inspectLoRA(path)
	}
	if id, err := newbie.Identify(path); err == nil && id.Part != "" && id.Part != newbie.PartDiT {
		return inspectComponent(path, id.Part)
	}
	rep, werr := inspectWeights(path)
	if werr != nil {
		return nil, fmt.Errorf("%s is a safetensors file but neither a LoRA (%v) nor Next-DiT weights (%v)", path, lerr, werr)
	}
	return rep, nil
}

func inspectWeights(path string) (*inspectReport, error) {
	w, err := checkpoints.OpenWeights(path)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	wr := &weightsReport{Layout: string(w.Layout()), DTypes: map[string]int{}, Ignored: len(w.Map.Ignored), Unmapped: w.Map.Unmapped}
	if wr.Files, err = countShards(path); err != nil {
		return nil, err
	}
	wr.Sharded = wr.Files > 1
	for _, n := range w.Names() {
		info, _ := w.Info(n)
		wr.Parameters += int64(info.NumElements())
		wr.DTypes[string(info.DType)]++
		wr.Tensors++
	}
	meta := w.Metadata()
	if _, ok := meta["config"]; ok {
		c, err := nextdit.ConfigFromFile(w)
		if err != nil {
			return nil, err
		}
		wr.Config = &c
	}
	wr.Metadata = map[string]string{}
	for k, v := range meta {
		if k != "config" {
			wr.Metadata[k] = v
		}
	}
	wr.Preset = nextdit.MatchPreset(w, wr.Config)
	check := wr.Config
	if check == nil && wr.Preset != "custom" {
		c, _ := nextdit.Preset(wr.Preset)
		check = &c
	}
	if check != nil {
		if err := nextdit.CheckKeys(w, *check); err != nil {
			wr.Fits = err.Error()
		}
	}
	return &inspectReport{Path: path, Kind: "weights", Weights: wr}, nil
}

// countShards counts the safetensors files a weights path stands for, the
// way checkpoints.OpenWeights resolves it (an index names its shards; a
// folder holds an index or the files themselves).
func countShards(path string) (int, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if !st.IsDir() && !strings.HasSuffix(path, ".index.json") {
		return 1, nil
	}
	idx := path
	if st.IsDir() {
		if sub := filepath.Join(path, "transformer"); isDir(sub) {
			path = sub
		}
		found, _ := filepath.Glob(filepath.Join(path, "*.safetensors.index.json"))
		if len(found) != 1 {
			files, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
			return len(files), nil
		}
		idx = found[0]
	}
	raw, err := os.ReadFile(idx)
	if err != nil {
		return 0, err
	}
	var ix struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &ix); err != nil {
		return 0, fmt.Errorf("%s: %w", idx, err)
	}
	files := map[string]bool{}
	for _, f := range ix.WeightMap {
		files[f] = true
	}
	return len(files), nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func inspectLoRA(path string) (*inspectReport, error) {
	l, format, err := checkpoints.ReadLoRA(path)
	if err != nil {
		return nil, err
	}
	lr := &loraReport{Format: string(format), Rank: l.Rank, Alpha: l.Alpha, Targets: l.Targets, Layers: len(l.Layers), DTypes: map[string]int{}, Metadata: l.Meta}
	if lr.Metadata == nil {
		lr.Metadata = map[string]string{}
	}
	ranks := map[int]bool{}
	for _, ly := range l.Layers {
		lr.Parameters += int64(len(ly.A) + len(ly.B))
		ranks[ly.Rank] = true
	}
	for r := range ranks {
		lr.Ranks = append(lr.Ranks, r)
	}
	sort.Ints(lr.Ranks)
	// The canonical form is float32; the stored dtypes come from the file.
	file := path
	if format == checkpoints.FormatPEFT {
		dir := path
		if !isDir(dir) {
			dir = filepath.Dir(path)
		}
		file = filepath.Join(dir, checkpoints.PEFTWeightsFile)
	}
	f, err := safetensors.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for _, t := range f.Tensors() {
		lr.DTypes[string(t.DType)]++
	}
	return &inspectReport{Path: path, Kind: "lora", LoRA: lr}, nil
}

// printInspect writes the human-readable report.
func printInspect(w io.Writer, r *inspectReport) {
	kv := func(k, format string, args ...any) {
		fmt.Fprintf(w, "  %-12s %s\n", k+":", fmt.Sprintf(format, args...))
	}
	switch r.Kind {
	case "model", "component":
		printModel(w, r)
	case "weights":
		x := r.Weights
		fmt.Fprintf(w, "%s: Next-DiT weights\n", r.Path)
		layout := x.Layout
		if x.Sharded {
			layout += fmt.Sprintf(", sharded (%d files)", x.Files)
		}
		kv("layout", "%s", layout)
		kv("preset", "%s", x.Preset)
		kv("parameters", "%s (%d tensors)", groupDigits(x.Parameters), x.Tensors)
		kv("dtypes", "%s", countsString(x.DTypes))
		if x.Config != nil {
			kv("config", "%s (from metadata)", x.Config.JSON())
		} else {
			kv("config", "none in metadata")
		}
		if x.Ignored > 0 {
			kv("ignored", "%d tensors of other models (VAE, text encoders)", x.Ignored)
		}
		if x.Fits != "" {
			fmt.Fprintf(w, "  key problems:\n    %s\n", strings.ReplaceAll(x.Fits, "\n", "\n    "))
		}
		printMeta(w, x.Metadata)
	case "lora":
		x := r.LoRA
		fmt.Fprintf(w, "%s: LoRA\n", r.Path)
		kv("format", "%s", x.Format)
		ranks := fmt.Sprint(x.Rank)
		if len(x.Ranks) > 1 {
			ranks += fmt.Sprintf(" (layers have ranks %v)", x.Ranks)
		}
		kv("rank", "%s", ranks)
		kv("alpha", "%g (scale %g)", x.Alpha, x.Alpha/float64(x.Rank))
		kv("targets", "%s", strings.Join(x.Targets, ", "))
		kv("layers", "%d", x.Layers)
		kv("parameters", "%s", groupDigits(x.Parameters))
		kv("dtypes", "%s", countsString(x.DTypes))
		printMeta(w, x.Metadata)
	}
}

// printMeta lists metadata, long values (a whole training config) by size.
func printMeta(w io.Writer, meta map[string]string) {
	if len(meta) == 0 {
		return
	}
	keys := make([]string, 0, len(meta))
	for k := range meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "  metadata:\n")
	for _, k := range keys {
		v := meta[k]
		if len(v) > 100 || strings.Contains(v, "\n") {
			v = fmt.Sprintf("(%d bytes; see --json)", len(v))
		}
		fmt.Fprintf(w, "    %s: %s\n", k, v)
	}
}

// countsString is "F32 ×12, BF16 ×3", largest first.
func countsString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// groupDigits writes 3486636096 as 3,486,636,096.
func groupDigits(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + groupDigits(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
