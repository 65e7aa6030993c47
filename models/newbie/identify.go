package newbie

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/models/textenc"
	"github.com/newbie-train/newbie-train/models/vae"
)

// Identified is what a weights source holds, told from its tensor names by
// each component package's own recogniser.
type Identified struct {
	// Part is the component, or "" when the names are none of the four.
	Part Part
	// Format is the key layout (see Weights.Format) or, for a file that is
	// no component, what it looks like instead.
	Format string
}

// What describes the identification for a message: "a Gemma 3 text
// encoder (key prefix language_model.model.)".
func (id Identified) What() string {
	if id.Part == "" {
		return id.Format
	}
	return fmt.Sprintf("a %s (%s)", id.Part.Title(), id.Format)
}

// Identify reads the tensor names of a weights source — a .safetensors
// file, a sharded checkpoint's *.index.json, or a folder of .safetensors
// shards — and says which component it holds. The text encoders are
// recognised first (textenc.DetectGemma, DetectJina), then the VAE
// (vae.DetectLayout), then the Next-DiT (checkpoints.DetectLayout), so a
// file of one is never taken for another. A readable file that is none of
// them is not an error: Part is empty and Format says what it seems to be.
func Identify(path string) (Identified, error) {
	names, err := tensorNames(path)
	if err != nil {
		return Identified{}, err
	}
	return identifyNames(names), nil
}

// identifyNames classifies a set of tensor names.
func identifyNames(names []string) Identified {
	if p, ok := textenc.DetectGemma(names); ok {
		return Identified{PartGemma, prefixText(p)}
	}
	if p, ok := textenc.DetectJina(names); ok {
		return Identified{PartJina, prefixText(p)}
	}
	if l, ok := vae.DetectLayout(names); ok {
		return Identified{PartVAE, l + " keys"}
	}
	if l, err := checkpoints.DetectLayout(names); err == nil {
		return Identified{PartDiT, string(l) + " keys"}
	}
	if len(names) == 0 {
		return Identified{Format: "a safetensors file with no tensors"}
	}
	if f, err := checkpoints.DetectLoRAFormat(names); err == nil {
		return Identified{Format: fmt.Sprintf("a LoRA (%s format), not base weights", f)}
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	return Identified{Format: fmt.Sprintf("none of the NewBie components (its first keys: %s)", strings.Join(sorted[:min(3, len(sorted))], ", "))}
}

// prefixText names a key prefix for reports.
func prefixText(p string) string {
	if p == "" {
		return "no key prefix"
	}
	return "key prefix " + p
}

// tensorNames lists a weights source's tensor names without reading any
// tensor: a file's header, an index's weight_map, or every file of a
// folder of shards.
func tensorNames(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var files []string
	switch {
	case st.IsDir():
		files, _ = filepath.Glob(filepath.Join(path, "*.safetensors"))
		if len(files) == 0 {
			return nil, fmt.Errorf("%s holds no .safetensors file", path)
		}
	case strings.HasSuffix(path, ".json"):
		names, _, err := indexShards(path)
		return names, err
	default:
		files = []string{path}
	}
	var names []string
	for _, p := range files {
		f, err := safetensors.Open(p)
		if err != nil {
			return nil, err
		}
		names = append(names, f.Names()...)
		f.Close()
	}
	return names, nil
}

// indexShards reads a shard index: its tensor names, and the shard files
// it names (beside it, sorted).
func indexShards(path string) (names, files []string, err error) {
	weightMap, err := checkpoints.ReadIndex(path)
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	for n, f := range weightMap {
		names = append(names, n)
		if !seen[f] {
			seen[f] = true
			files = append(files, filepath.Join(filepath.Dir(path), f))
		}
	}
	sort.Strings(files)
	return names, files, nil
}
