package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a config file.
type Problem struct {
	// Line is the 1-based line of the offending key, or 0 when the problem
	// is about a value the file does not set (a default that conflicts
	// with a setting) and its section is not in the file either.
	Line int
	// Path is the key path, e.g. "train.learning_rate" or
	// "data.folders[0].path"; empty for a YAML syntax error.
	Path string
	// Msg says what is wrong and, where it can, what would be right.
	Msg string
	// Set is the command line's --set override the problem is about ("" for
	// the file's own keys); the message names it instead of a line.
	Set string
}

// Error is every problem found in one config file. Its message has one line
// per problem, "file:line: path: message", in the order of the file.
type Error struct {
	File     string
	Problems []Problem
}

// Error formats the problems one per line.
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Set != "" {
			fmt.Fprintf(&b, ": --set %s", p.Set)
		} else if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		if p.Path != "" {
			b.WriteString(p.Path)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// decoder walks a yaml.Node tree into a Config, recording the line of every
// key it sets and every problem it meets instead of stopping at the first.
type decoder struct {
	lines    map[string]int
	problems []Problem
	// bad holds the paths whose value could not be decoded, so that the
	// checks after decoding do not pile a second message on them.
	bad map[string]bool
	// fromCode marks a config built in code (Finish): nothing is "set in
	// the file", so messages do not call values defaults.
	fromCode bool
	// sets maps the key path of each --set override to its text.
	sets map[string]string
}

func (d *decoder) problem(line int, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{Line: line, Path: path, Msg: fmt.Sprintf(format, args...), Set: d.setFor(path)})
}

// setFor is the --set override that gave the value at path (or at a key
// above it), or "".
func (d *decoder) setFor(path string) string {
	for p := path; p != ""; p = parentPath(p) {
		if s, ok := d.sets[p]; ok {
			return s
		}
	}
	return ""
}

var syntaxLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML reads the first document of data into a node tree. A syntax
// error becomes a Problem with the line the YAML library reports; a second
// document is a problem too (a file is one config).
func parseYAML(data []byte) (*yaml.Node, []Problem) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // an empty file: all defaults
		}
		return nil, []Problem{syntaxProblem(err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, []Problem{{Line: extra.Line, Msg: "a second YAML document (---): a config file holds one"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, []Problem{syntaxProblem(err)}
	}
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		return root.Content[0], nil
	}
	return &root, nil
}

// syntaxProblem turns a YAML library error into a Problem. The line is the
// library's: for an unclosed list or mapping it is where that collection
// began, not where the parser gave up.
func syntaxProblem(err error) Problem {
	msg := err.Error()
	if m := syntaxLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{Line: line, Msg: "YAML syntax: " + m[2]}
	}
	return Problem{Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
}

// isNull reports whether n is an empty or null value ("key:", "key: ~",
// "key: null"), which leaves the key's default in place.
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// kindName names a node kind for messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unexpected node"
}

// structFields lists the yaml keys of a struct type and their field indices.
func structFields(t reflect.Type) (keys []string, index map[string]int) {
	index = map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		keys = append(keys, tag)
		index[tag] = i
	}
	return keys, index
}

var folderType = reflect.TypeOf(Folder{})

// decodeStruct fills the struct v from the mapping n. Keys the struct does
// not have are reported with the nearest known key; keys given twice are
// reported at their second occurrence.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	n = resolveAlias(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		if v.Type() == folderType && n.Kind == yaml.ScalarNode {
			// A folder given as its bare path.
			v.Field(0).SetString(n.Value)
			d.lines[join(path, "path")] = n.Line
			return
		}
		d.fail(n.Line, path, "want a mapping of keys, got %s", kindName(n))
		return
	}
	keys, index := structFields(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge" {
			// A YAML merge key: the referenced mapping's keys (or those of
			// each mapping of a list) apply here.
			if val = resolveAlias(val); val.Kind == yaml.SequenceNode {
				for _, m := range val.Content {
					d.decodeStruct(m, v, path)
				}
			} else {
				d.decodeStruct(val, v, path)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.problem(k.Line, path, "a key must be a plain name, got %s", kindName(k))
			continue
		}
		name := k.Value
		p := join(path, name)
		if first, dup := seen[name]; dup {
			d.fail(k.Line, p, "duplicate key (first given on line %d)", first)
			continue
		}
		seen[name] = k.Line
		fi, ok := index[name]
		if !ok {
			d.fail(k.Line, p, "unknown key%s", suggestKey(name, path, keys))
			continue
		}
		d.lines[p] = k.Line
		d.decodeValue(val, k.Line, v.Field(fi), p)
	}
}

// fail records a problem and marks the path as undecodable.
func (d *decoder) fail(line int, path, format string, args ...any) {
	d.bad[path] = true
	d.problem(line, path, format, args...)
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decodeValue sets v from n. keyLine is the line of the key, used for
// messages about scalars (the value sits on the same line) so that a
// message points where the user looks.
func (d *decoder) decodeValue(n *yaml.Node, keyLine int, v reflect.Value, path string) {
	n = resolveAlias(n)
	if isNull(n) {
		return
	}
	line := n.Line
	if n.Kind == yaml.ScalarNode {
		line = keyLine
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(line, path, "want a single value, got %s", kindName(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode {
			d.fail(line, path, "want true or false, got %s", kindName(n))
			return
		}
		switch strings.ToLower(n.Value) {
		case "true", "yes", "on":
			v.SetBool(true)
		case "false", "no", "off":
			v.SetBool(false)
		default:
			d.fail(line, path, "%q is not true or false", n.Value)
		}
	case reflect.Int:
		if n.Kind != yaml.ScalarNode {
			d.fail(line, path, "want a whole number, got %s", kindName(n))
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if err != nil {
			d.fail(line, path, "%s", numberError(n.Value, "a whole number"))
			return
		}
		v.SetInt(i)
	case reflect.Uint64:
		if n.Kind != yaml.ScalarNode {
			d.fail(line, path, "want a whole number ≥ 0, got %s", kindName(n))
			return
		}
		u, err := strconv.ParseUint(n.Value, 10, 64)
		if err != nil {
			d.fail(line, path, "%s", numberError(n.Value, "a whole number ≥ 0"))
			return
		}
		v.SetUint(u)
	case reflect.Float64:
		if n.Kind != yaml.ScalarNode {
			d.fail(line, path, "want a number, got %s", kindName(n))
			return
		}
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil && n.ShortTag() == "!!float" {
			// YAML's own spellings of infinity and NaN (.inf, -.Inf, .nan).
			d.fail(line, path, "%q is not a finite number", n.Value)
			return
		}
		if err != nil {
			d.fail(line, path, "%q is not a number", n.Value)
			return
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(line, path, "%q is not a finite number", n.Value)
			return
		}
		v.SetFloat(f)
	default:
		// Only the kinds above appear in Config; reaching here is a bug in
		// this package, reported rather than panicking.
		d.fail(line, path, "internal: no decoder for Go kind %v", v.Kind())
	}
}

// numberError explains why s is not the whole number wanted.
func numberError(s, want string) string {
	if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
		if f < 0 && strings.Contains(want, "≥ 0") && f == math.Trunc(f) {
			return fmt.Sprintf("%s is negative: want %s", s, want)
		}
		if f != math.Trunc(f) {
			return fmt.Sprintf("%s is not a whole number", s)
		}
		// 1e3 or 10.0: a whole number written as a float.
		if math.Abs(f) < 1<<53 {
			return fmt.Sprintf("%s: write the whole number as %d", s, int64(f))
		}
	}
	return fmt.Sprintf("%q is not %s", s, want)
}

// decodeSlice replaces the slice v with the items of the sequence n. A
// single value instead of a list stands for a list of one.
func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	if len(items) == 0 {
		// An empty list: nil, like a slice never set, so that a config and
		// its printed form compare equal.
		v.Set(reflect.Zero(v.Type()))
		return
	}
	out := reflect.MakeSlice(v.Type(), len(items), len(items))
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.lines[p] = resolveAlias(it).Line
		if isNull(resolveAlias(it)) {
			d.fail(it.Line, p, "empty list item")
			continue
		}
		d.decodeValue(it, it.Line, out.Index(i), p)
	}
	v.Set(out)
}

// aliases maps names other trainers use (kohya's sd-scripts, the upstream
// NewBie trainer, diffusers' scripts) to ours, for suggestions only.
var aliases = map[string]string{
	"lr":                          "learning_rate",
	"learning-rate":               "learning_rate",
	"lr_scheduler":                "schedule",
	"scheduler":                   "schedule",
	"lr_warmup_steps":             "warmup_steps",
	"warmup":                      "warmup_steps",
	"num_epochs":                  "epochs",
	"max_train_steps":             "max_steps",
	"steps":                       "max_steps",
	"train_batch_size":            "batch_size",
	"batch":                       "batch_size",
	"gradient_accumulation_steps": "gradient_accumulation",
	"grad_accum":                  "gradient_accumulation",
	"gradient_checkpointing":      "activation_checkpointing",
	"checkpointing":               "activation_checkpointing",
	"gradient_clip_norm":          "grad_clip",
	"max_grad_norm":               "grad_clip",
	"clip_grad_norm":              "grad_clip",
	"mixed_precision":             "precision",
	"lora_rank":                   "rank",
	"r":                           "rank",
	"network_dim":                 "rank",
	"lora_alpha":                  "alpha",
	"network_alpha":               "alpha",
	"lora_dropout":                "dropout",
	"lora_target_modules":         "targets",
	"target_modules":              "targets",
	"output_dir":                  "output",
	"output_name":                 "name",
	"train_data_dir":              "folders",
	"base_model_path":             "weights",
	"pretrained_model":            "weights",
	"path_to_weights":             "weights",
	"guidance_scale":              "cfg",
	"cfg_scale":                   "cfg",
	"num_inference_steps":         "steps",
	"shuffle_caption":             "shuffle",
	"caption_extension":           "extension",
	"cache_dir":                   "cache",
	"save_every_n_steps":          "every",
	"save_last_n_steps":           "keep_last",
	"keep":                        "keep_last",
	"adam_beta1":                  "betas",
	"adam_beta2":                  "betas",
	"adam_epsilon":                "eps",
	"epsilon":                     "eps",
	"wd":                          "weight_decay",
	"gemma3_prompt":               "system_prompt",
	"metrics":                     "metrics_addr",
	"log":                         "log_file",
}

// suggestKey builds the "; did you mean X?" tail for an unknown key, trying
// in turn: the nearest sibling by edit distance; the sibling another
// trainer's name for it stands for; the same key, or the key another
// trainer's name stands for, or the nearest key, in another section (a key
// put under the wrong heading); else it lists the keys the section has.
func suggestKey(name, section string, siblings []string) string {
	if s := nearest(name, siblings); s != "" {
		return "; did you mean " + s + "?"
	}
	alias, hasAlias := aliases[strings.ToLower(name)]
	if hasAlias {
		for _, s := range siblings {
			if s == alias {
				return "; did you mean " + s + "?"
			}
		}
	}
	// Keys of other sections, by their last element.
	others := map[string][]string{}
	var lasts []string
	for _, p := range allKeyPaths() {
		if parentPath(p) == section {
			continue
		}
		last := p[strings.LastIndexByte(p, '.')+1:]
		if others[last] == nil {
			lasts = append(lasts, last)
		}
		others[last] = append(others[last], p)
	}
	for _, want := range []string{name, alias, nearest(name, lasts)} {
		if ps := others[want]; want != "" && len(ps) == 1 {
			return "; did you mean " + ps[0] + "?"
		} else if len(ps) > 1 {
			return "; it belongs in " + orList(ps)
		}
	}
	where := "here"
	if section != "" {
		where = "in " + section
	}
	return fmt.Sprintf(" (known keys %s: %s)", where, strings.Join(siblings, ", "))
}

// nearest returns the candidate closest to s by edit distance (ignoring
// case and the difference between '-' and '_'), when it is close enough to
// be a misspelling: at most 2 edits, or a third of the longer name's length.
func nearest(s string, candidates []string) string {
	norm := func(x string) string { return strings.ReplaceAll(strings.ToLower(x), "-", "_") }
	best, bestD := "", math.MaxInt
	for _, c := range candidates {
		dist := editDistance(norm(s), norm(c))
		if dist < bestD {
			best, bestD = c, dist
		}
	}
	limit := max(2, max(len(s), len(best))/3)
	if best == "" || bestD > limit || bestD >= len(s) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (in bytes: keys and
// enum values are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// allKeyPaths lists every key path of the schema ("train.optimizer.eps"),
// sorted, for suggestions that cross sections.
func allKeyPaths() []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		keys, index := structFields(t)
		for _, k := range keys {
			p := join(prefix, k)
			out = append(out, p)
			ft := t.Field(index[k]).Type
			if ft.Kind() == reflect.Struct {
				walk(ft, p)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	sort.Strings(out)
	return out
}
