package configs

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/newbie-train/newbie-train/data"
)

// Load reads, completes and checks the config file at path, with the
// command line's --set overrides ("train.learning_rate=5e-4") applied on
// top. Relative paths in it resolve against the file's folder. A file with
// problems returns a nil config and an *Error listing all of them.
func Load(path string, sets ...string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, raw, sets...)
}

// Parse reads a config from data. name is the file's path: it prefixes
// messages, and relative paths in the config resolve against its folder (a
// bare name like "lora.yaml" resolves them against the working directory).
// sets are --set overrides, applied as if the file said them (see
// applySets); their problems name them. A file with problems returns a nil
// config and an *Error listing all of them, sorted by line.
func Parse(name string, raw []byte, sets ...string) (*Config, error) {
	c := Defaults()
	c.file = name
	d := &decoder{lines: map[string]int{}, bad: map[string]bool{}, sets: map[string]string{}}
	root, syntax := parseYAML(raw)
	if len(syntax) > 0 {
		return nil, &Error{File: name, Problems: syntax}
	}
	root = applySets(root, sets, d)
	if root != nil {
		d.decodeStruct(root, reflect.ValueOf(&c).Elem(), "")
	}
	c.lines = d.lines
	if d.bad[""] {
		// The file is not a mapping of sections: nothing else can be said.
		return nil, &Error{File: name, Problems: d.problems}
	}
	return finish(&c, d, filepath.Dir(name))
}

// Finish completes and checks a config built in code (Defaults() with some
// fields changed) as Parse does a file's: relative paths resolve against
// dir, derived fields left zero are filled, and every problem is reported,
// without line numbers.
func Finish(c Config, dir string) (*Config, error) {
	c.lines = map[string]int{}
	if c.file == "" {
		c.file = "config"
	}
	return finish(&c, &decoder{lines: c.lines, bad: map[string]bool{}, sets: map[string]string{}, fromCode: true}, dir)
}

// finish is the part of Parse after decoding: derived defaults, paths and
// the checks.
func finish(c *Config, d *decoder, dir string) (*Config, error) {
	c.complete(dir)
	k := &checker{c: c, d: d}
	k.check()
	if len(d.problems) == 0 {
		k.crossCheck()
	}
	if len(d.problems) > 0 {
		// In the file's order; problems about settings the file lacks
		// (line 0) come last.
		sort.SliceStable(d.problems, func(i, j int) bool {
			a, b := d.problems[i].Line, d.problems[j].Line
			return a != 0 && (b == 0 || a < b)
		})
		return nil, &Error{File: c.file, Problems: d.problems}
	}
	return c, nil
}

// complete resolves relative paths against dir and fills the derived
// defaults (the fields documented "0 = derived" or "" = derived). It runs
// on values that may still be out of range: the checks come after it.
func (c *Config) complete(dir string) {
	resolve := func(p *string) {
		if *p != "" {
			*p = resolvePath(dir, *p)
		}
	}
	resolve(&c.Model.Path)
	resolve(&c.Model.Weights)
	resolve(&c.Model.VAE)
	resolve(&c.Model.Gemma)
	resolve(&c.Model.GemmaTokenizer)
	resolve(&c.Model.Jina)
	resolve(&c.Model.JinaTokenizer)
	resolve(&c.Model.Config)
	resolve(&c.LoRA.InitFrom)
	for i := range c.Data.Folders {
		resolve(&c.Data.Folders[i].Path)
	}
	resolve(&c.Save.Output)
	resolve(&c.Data.Cache)
	resolve(&c.Logging.LogFile)
	if c.Data.Cache == "" {
		c.Data.Cache = filepath.Join(c.Save.Output, "cache")
	}
	if c.Logging.LogFile == "" && c.Save.Name != "" {
		c.Logging.LogFile = filepath.Join(c.Save.Output, c.Save.Name+".jsonl")
	}

	if c.LoRA.Alpha == 0 && !c.IsSet("lora.alpha") {
		c.LoRA.Alpha = float64(c.LoRA.Rank)
	}
	// The warmup default (100 steps) gives way to a ratio given instead.
	if !c.IsSet("train.warmup_steps") && c.Train.WarmupRatio > 0 {
		c.Train.WarmupSteps = 0
	}

	d := &c.Data
	step := d.Bucket.Step
	if step <= 0 {
		step = 16 // a bad step is reported; derive from the default meanwhile
	}
	if d.Bucket.MinSide == 0 {
		d.Bucket.MinSide = max(step, d.Resolution/2/step*step)
	}
	if d.Bucket.MaxSide == 0 {
		d.Bucket.MaxSide = (2*d.Resolution + step - 1) / step * step
	}
	if d.MinSide == 0 {
		d.MinSide = min(256, d.Resolution/4)
	}
	if !d.Caption.Shuffle && d.Caption.TagDropout == 0 {
		d.Caption.Variants = 1 // one caption is all there is to encode
	}
	if d.Crop != "random" {
		d.CropVariants = 1
	}
	if d.Caption.SystemPrompt == "" {
		d.Caption.SystemPrompt = data.GemmaSystemPrompt
	}
	if d.Caption.Extension != "" && !strings.HasPrefix(d.Caption.Extension, ".") {
		d.Caption.Extension = "." + d.Caption.Extension
	}
	if c.Sample.Resolution == 0 {
		c.Sample.Resolution = d.Resolution
	}
}

// resolvePath expands a leading "~/" to the home folder and makes p
// absolute, relative to dir, so that the config means the same files
// whatever the working directory of a later run (a resume) is.
func resolvePath(dir, p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, p[1:])
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return filepath.Clean(p)
}

// CheckPaths checks that the files and folders the config reads exist: the
// base weights, the architecture override, the LoRA to start from and
// every dataset folder. It is
// separate from Parse so that a config can be parsed, printed and hashed on
// a machine without the data; the trainer calls it before starting. All
// missing paths are reported together, with their lines.
func (c *Config) CheckPaths() error {
	var ps []Problem
	check := func(path, p string, wantDir bool) {
		if p == "" {
			return
		}
		st, err := os.Stat(p)
		switch {
		case err != nil:
			ps = append(ps, Problem{Line: c.lineOf(path), Path: path, Msg: fmt.Sprintf("%s: %v", p, unwrapPathError(err))})
		case wantDir && !st.IsDir():
			ps = append(ps, Problem{Line: c.lineOf(path), Path: path, Msg: fmt.Sprintf("%s is a file, want a folder", p)})
		}
	}
	check("model.path", c.Model.Path, true)
	check("model.weights", c.Model.Weights, false)
	check("model.vae", c.Model.VAE, false)
	check("model.gemma", c.Model.Gemma, false)
	check("model.gemma_tokenizer", c.Model.GemmaTokenizer, false)
	check("model.jina", c.Model.Jina, false)
	check("model.jina_tokenizer", c.Model.JinaTokenizer, false)
	check("model.config", c.Model.Config, false)
	check("lora.init_from", c.LoRA.InitFrom, false)
	for i, f := range c.Data.Folders {
		check(fmt.Sprintf("data.folders[%d].path", i), f.Path, true)
	}
	if len(ps) == 0 {
		return nil
	}
	return &Error{File: c.file, Problems: ps}
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// lineOf is the line of path in the file, or of the nearest enclosing key
// the file gives (a defaulted value is reported at its section), or 0.
func (c *Config) lineOf(path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if l, ok := c.lines[p]; ok {
			return l
		}
	}
	return 0
}

// parentPath strips the last ".key" or "[i]" of a key path.
func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i >= 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}
