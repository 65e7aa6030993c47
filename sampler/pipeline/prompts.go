package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// PromptSpec is one prompt to make images of; what it leaves unset the
// run's Defaults fill in.
type PromptSpec struct {
	Prompt string `yaml:"prompt"`
	// Negative, when set, replaces the run's negative prompt.
	Negative *string `yaml:"negative"`
	// Seed, when set, makes this prompt's one image with it instead of the
	// run's seeds.
	Seed *uint64 `yaml:"seed"`
	// Width and Height, when set, replace the run's size.
	Width  int `yaml:"width"`
	Height int `yaml:"height"`
}

// Defaults are a run's settings for what prompts leave unset.
type Defaults struct {
	Negative string
	// Seeds: every prompt without its own seed is made once per seed.
	Seeds         []uint64
	Width, Height int
	// Trigger is put first in every prompt that lacks it (PreparePrompt).
	Trigger string
}

// ReadPrompts reads a prompts file: YAML (.yaml, .yml) holding a list whose
// entries are prompt strings or PromptSpec mappings (prompt, negative,
// seed, width, height), or else text with one prompt a line, blank lines
// and lines starting with # skipped.
func ReadPrompts(path string) ([]PromptSpec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("prompts: %w", err)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		return parsePromptsYAML(path, raw)
	}
	var out []PromptSpec
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, PromptSpec{Prompt: line})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("prompts: %s holds no prompt", path)
	}
	return out, nil
}

// parsePromptsYAML reads the YAML form, naming the line of a bad entry.
func parsePromptsYAML(path string, raw []byte) ([]PromptSpec, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("prompts: %s: %w", path, err)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("prompts: %s: want a list of prompts (strings, or mappings with prompt, negative, seed, width, height)", path)
	}
	var out []PromptSpec
	for _, n := range doc.Content[0].Content {
		var p PromptSpec
		switch n.Kind {
		case yaml.ScalarNode:
			p.Prompt = n.Value
		case yaml.MappingNode:
			var buf bytes.Buffer
			enc := yaml.NewEncoder(&buf)
			if err := enc.Encode(n); err != nil {
				return nil, fmt.Errorf("prompts: %s:%d: %w", path, n.Line, err)
			}
			dec := yaml.NewDecoder(&buf)
			dec.KnownFields(true)
			if err := dec.Decode(&p); err != nil {
				return nil, fmt.Errorf("prompts: %s:%d: %w", path, n.Line, err)
			}
		default:
			return nil, fmt.Errorf("prompts: %s:%d: an entry must be a prompt or a mapping", path, n.Line)
		}
		if strings.TrimSpace(p.Prompt) == "" {
			return nil, fmt.Errorf("prompts: %s:%d: empty prompt", path, n.Line)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("prompts: %s holds no prompt", path)
	}
	return out, nil
}

// Images expands prompts into the images to make, in order: each prompt
// prepared as training prepares captions (PreparePrompt), once per seed of
// the defaults unless it has its own, at its size or the default one (both
// checked by CheckSize). Index is the prompt's place in the list.
func Images(specs []PromptSpec, d Defaults) ([]Image, error) {
	if len(specs) == 0 {
		return nil, errors.New("no prompts")
	}
	var out []Image
	for i, p := range specs {
		name := fmt.Sprintf("prompt %d", i+1)
		if strings.TrimSpace(p.Prompt) == "" {
			return nil, fmt.Errorf("%s is empty", name)
		}
		text, err := PreparePrompt(name, p.Prompt, d.Trigger)
		if err != nil {
			return nil, err
		}
		negative := d.Negative
		if p.Negative != nil {
			negative = *p.Negative
		}
		if negative, err = PreparePrompt(name+" (negative)", negative, ""); err != nil {
			return nil, err
		}
		w, h := d.Width, d.Height
		if p.Width != 0 {
			w = p.Width
		}
		if p.Height != 0 {
			h = p.Height
		}
		if err := CheckSize(w, h); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		seeds := d.Seeds
		if p.Seed != nil {
			seeds = []uint64{*p.Seed}
		}
		if len(seeds) == 0 {
			return nil, fmt.Errorf("%s: no seed", name)
		}
		for _, s := range seeds {
			out = append(out, Image{Index: i, Prompt: text, Negative: negative, Seed: s, Width: w, Height: h})
		}
	}
	return out, nil
}
