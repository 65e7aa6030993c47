package configs

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// setSegment is one element of an override's key path: a key, optionally
// followed by list indices ("folders[0]").
var setSegment = regexp.MustCompile(`^([A-Za-z0-9_-]+)((?:\[\d+\])*)$`)

var setIndex = regexp.MustCompile(`\[(\d+)\]`)

// applySets writes the command line's --set overrides ("key.path=value",
// the value in YAML: 5e-4, true, [a, b], "a string") into the parsed file
// before it is decoded, so an override goes through every check a value
// in the file does and its problems name the override. A key the file
// lacks is added; a list item is addressed by index (data.folders[0].path)
// and must exist. It records each override's key path in d.sets.
func applySets(root *yaml.Node, sets []string, d *decoder) *yaml.Node {
	if len(sets) == 0 {
		return root
	}
	if root == nil {
		root = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	}
	for _, s := range sets {
		key, value, ok := strings.Cut(s, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			d.problems = append(d.problems, Problem{Set: s, Msg: "want key=value (for example train.learning_rate=5e-4)"})
			continue
		}
		val, err := setValue(value)
		if err != nil {
			d.problems = append(d.problems, Problem{Set: s, Path: key, Msg: err.Error()})
			continue
		}
		path, err := setPath(root, key, val)
		if err != nil {
			d.problems = append(d.problems, Problem{Set: s, Path: key, Msg: err.Error()})
			continue
		}
		d.sets[path] = s
	}
	return root
}

// setValue parses an override's value as one YAML value, with no line
// numbers (they would point into the file).
func setValue(text string) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return nil, fmt.Errorf("value %q is not YAML: %s", text, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		n = doc.Content[0]
	}
	var clearLines func(*yaml.Node)
	clearLines = func(n *yaml.Node) {
		n.Line, n.Column = 0, 0
		for _, c := range n.Content {
			clearLines(c)
		}
	}
	clearLines(n)
	return n, nil
}

// setPath puts val at key under root, creating the mappings on the way,
// and returns the key path in the form the decoder records.
func setPath(root *yaml.Node, key string, val *yaml.Node) (string, error) {
	segs := strings.Split(key, ".")
	node := root
	var path string
	for i, seg := range segs {
		m := setSegment.FindStringSubmatch(seg)
		if m == nil {
			return "", fmt.Errorf("%q is not a key (want names joined by dots, list items as name[0])", seg)
		}
		name, idx := m[1], setIndex.FindAllStringSubmatch(m[2], -1)
		last := i == len(segs)-1
		node = resolveAlias(node)
		if node.Kind != yaml.MappingNode {
			return "", fmt.Errorf("%s is not a section of keys", orTop(path))
		}
		path = join(path, name)
		var slot *yaml.Node
		for j := 0; j+1 < len(node.Content); j += 2 {
			if node.Content[j].Value == name {
				slot = node.Content[j+1]
				if last && len(idx) == 0 {
					node.Content[j+1] = val
				}
				break
			}
		}
		if slot == nil {
			if len(idx) > 0 {
				return "", fmt.Errorf("%s is not in the file, so it has no item %s to set", path, idx[0][0])
			}
			slot = val
			if !last {
				slot = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			}
			node.Content = append(node.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name}, slot)
		}
		for k, ix := range idx {
			n, _ := strconv.Atoi(ix[1])
			slot = resolveAlias(slot)
			if slot.Kind != yaml.SequenceNode || n >= len(slot.Content) {
				return "", fmt.Errorf("%s has no item %d", path, n)
			}
			path = fmt.Sprintf("%s[%d]", path, n)
			if last && k == len(idx)-1 {
				slot.Content[n] = val
			}
			slot = slot.Content[n]
		}
		node = slot
	}
	return path, nil
}

func orTop(path string) string {
	if path == "" {
		return "the file"
	}
	return path
}
