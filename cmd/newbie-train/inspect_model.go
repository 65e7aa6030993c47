package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/train"
)

// modelReport describes a NewBie-image-Exp0.1 model folder (or one of its
// components given alone): every component found and what is missing.
type modelReport struct {
	Layout      string            `json:"layout"`
	Description string            `json:"description"`
	Components  []componentReport `json:"components"`
	Missing     []missingReport   `json:"missing"`
	// Problems are the files found that are wrong (another component, a
	// tokenizer that does not fit its encoder, damaged): inspect exits 1
	// after the report when there are any.
	Problems []string `json:"problems,omitempty"`
}

// componentReport is one part found.
type componentReport struct {
	Part  string `json:"part"`
	Title string `json:"title"`
	Path  string `json:"path"`
	// Weights parts.
	Files        []string        `json:"files,omitempty"`
	Format       string          `json:"format,omitempty"`
	DType        string          `json:"dtype,omitempty"`
	DTypes       map[string]int  `json:"dtypes,omitempty"`
	Tensors      int             `json:"tensors,omitempty"`
	Parameters   int64           `json:"parameters,omitempty"`
	Bytes        int64           `json:"bytes,omitempty"`
	FileBytes    int64           `json:"file_bytes,omitempty"`
	Skipped      int             `json:"skipped_tensors,omitempty"`
	ConfigFrom   string          `json:"config_from,omitempty"`
	Preset       string          `json:"preset,omitempty"`
	Architecture json.RawMessage `json:"architecture,omitempty"`
	// Tokenizer parts.
	Kind          string `json:"tokenizer_kind,omitempty"`
	ModelType     string `json:"model_type,omitempty"`
	Vocab         int    `json:"vocab_size,omitempty"`
	EmbeddingRows int    `json:"embedding_rows,omitempty"`
	Fits          *bool  `json:"fits_embedding,omitempty"`
}

// missingReport is one part not found.
type missingReport struct {
	Part     string   `json:"part"`
	Title    string   `json:"title"`
	Purpose  string   `json:"purpose"`
	LookedIn []string `json:"looked_in"`
}

// isModelFolder tells a NewBie model folder (a model_index.json, the
// encoders' subfolders, or top-level files that are the encoders or the
// VAE) from a transformer-only or shard folder.
func isModelFolder(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "model_index.json")); err == nil {
		return true
	}
	for _, sub := range []string{"vae", "text_encoder", "clip_model", "text_encoder_2", "tokenizer_2"} {
		if isDir(filepath.Join(dir, sub)) {
			return true
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	for _, f := range files {
		if id, err := newbie.Identify(f); err == nil && id.Part != "" && id.Part != newbie.PartDiT {
			return true
		}
	}
	return false
}

// inspectModel reports a model folder.
func inspectModel(path string) (*inspectReport, error) {
	m, err := newbie.Discover(path, newbie.Sources{})
	if m == nil {
		return nil, err
	}
	return &inspectReport{Path: path, Kind: "model", Model: modelReportOf(m, err)}, nil
}

// inspectComponent reports a single file that is a VAE or a text encoder.
func inspectComponent(path string, part newbie.Part) (*inspectReport, error) {
	var src newbie.Sources
	switch part {
	case newbie.PartVAE:
		src.VAE = path
	case newbie.PartGemma:
		src.Gemma = path
	case newbie.PartJina:
		src.Jina = path
	}
	m, err := newbie.Discover("", src)
	if m == nil {
		return nil, err
	}
	r := modelReportOf(m, err)
	r.Missing = nil // a single file lacks the rest by design
	return &inspectReport{Path: path, Kind: "component", Model: r}, nil
}

// modelReportOf turns what Discover found into the report.
func modelReportOf(m *newbie.Model, problems error) *modelReport {
	r := &modelReport{Layout: string(m.Layout), Description: m.Layout.Describe(), Components: []componentReport{}, Missing: []missingReport{}}
	weights := func(p newbie.Part, w *newbie.Weights, arch string) componentReport {
		return componentReport{Part: string(p), Title: p.Title(), Path: w.Path, Files: w.Files, Format: w.Format, DType: w.DType(),
			DTypes: w.DTypes, Tensors: w.Tensors, Parameters: w.Params, Bytes: w.Bytes, FileBytes: w.FileBytes, Skipped: w.Other,
			ConfigFrom: w.Config, Architecture: json.RawMessage(arch)}
	}
	tokenizer := func(p newbie.Part, t *newbie.TokenizerPart, rows int) componentReport {
		c := componentReport{Part: string(p), Title: p.Title(), Path: t.Path, Kind: t.Kind, ModelType: t.ModelType, Vocab: t.VocabSize}
		if rows > 0 {
			fits := t.VocabSize <= rows
			c.EmbeddingRows, c.Fits = rows, &fits
		}
		return c
	}
	if d := m.DiT; d != nil {
		c := weights(newbie.PartDiT, &d.Weights, d.Arch.JSON())
		c.Preset = d.Preset
		r.Components = append(r.Components, c)
	}
	if v := m.VAE; v != nil {
		r.Components = append(r.Components, weights(newbie.PartVAE, &v.Weights, v.Arch.JSON()))
	}
	gemmaRows, jinaRows := 0, 0
	if g := m.Gemma; g != nil {
		r.Components = append(r.Components, weights(newbie.PartGemma, &g.Weights, g.Arch.JSON()))
		gemmaRows = g.Arch.VocabSize
	}
	if t := m.GemmaTokenizer; t != nil {
		r.Components = append(r.Components, tokenizer(newbie.PartGemmaTokenizer, t, gemmaRows))
	}
	if j := m.Jina; j != nil {
		r.Components = append(r.Components, weights(newbie.PartJina, &j.Weights, j.Arch.JSON()))
		jinaRows = j.Arch.VocabSize
	}
	if t := m.JinaTokenizer; t != nil {
		r.Components = append(r.Components, tokenizer(newbie.PartJinaTokenizer, t, jinaRows))
	}
	for _, x := range m.Missing {
		r.Missing = append(r.Missing, missingReport{Part: string(x.Part), Title: x.Part.Title(), Purpose: x.Part.Purpose(), LookedIn: x.LookedIn})
	}
	if problems != nil {
		r.Problems = strings.Split(problems.Error(), "\n")
	}
	return r
}

// errModelProblems is returned after a report that lists problems, so
// inspect exits 1 (the report itself says what is wrong).
var errModelProblems = errors.New("the model has problems (listed above)")

// printModel writes a model or component report.
func printModel(w io.Writer, r *inspectReport) {
	x := r.Model
	if r.Kind == "model" {
		fmt.Fprintf(w, "%s: NewBie-image-Exp0.1 model folder, %s\n", r.Path, x.Description)
	} else {
		fmt.Fprintf(w, "%s: a NewBie-image-Exp0.1 component\n", r.Path)
	}
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-16s %s\n", label, fmt.Sprintf(format, args...))
	}
	for _, c := range x.Components {
		line(c.Part, "%s: %s", c.Title, c.Path)
		if c.Kind != "" {
			fit := ""
			if c.Fits != nil {
				fit = fmt.Sprintf(", fits the encoder's %s embedding rows", groupDigits(int64(c.EmbeddingRows)))
				if !*c.Fits {
					fit = fmt.Sprintf(", MORE than the encoder's %s embedding rows", groupDigits(int64(c.EmbeddingRows)))
				}
			}
			line("", "%s, %s ids%s", c.Kind, groupDigits(int64(c.Vocab)), fit)
			continue
		}
		files := ""
		if len(c.Files) > 1 {
			files = fmt.Sprintf(" in %d files", len(c.Files))
		}
		line("", "%s, %s, %s parameters%s (%s on disk)", c.Format, countsString(c.DTypes), groupDigits(c.Parameters), files, train.BytesText(c.FileBytes))
		if c.Preset != "" {
			line("", "preset %s; architecture %s", c.Preset, c.ConfigFrom)
		} else {
			line("", "architecture %s", c.ConfigFrom)
		}
		if c.Skipped > 0 {
			line("", "skips %d %s of other modules (a vision tower) in its files", c.Skipped, map[bool]string{true: "tensor", false: "tensors"}[c.Skipped == 1])
		}
	}
	if r.Kind == "model" {
		if len(x.Missing) == 0 {
			fmt.Fprintln(w, "  missing:         nothing")
		}
		for _, m := range x.Missing {
			line("missing", "%s (%s): looked in %s", m.Title, m.Purpose, strings.Join(m.LookedIn, ", "))
		}
	}
	for _, p := range x.Problems {
		line("problem", "%s", p)
	}
}
