package checkpoints

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Layout is the naming scheme of a Next-DiT weights file.
type Layout string

// The layouts MapWeightKeys recognises.
const (
	// LayoutUpstream is the reference code's state dict: `layers.N.attention.qkv.weight`, …
	LayoutUpstream Layout = "upstream"
	// LayoutComfyUI is a ComfyUI single file: upstream names behind
	// `model.diffusion_model.`, possibly beside VAE and text-encoder weights.
	LayoutComfyUI Layout = "comfyui"
	// LayoutDiffusers is diffusers' Lumina2Transformer2DModel: split
	// to_q/to_k/to_v, renamed norms and embedders.
	LayoutDiffusers Layout = "diffusers"
)

// comfyModelPrefix is where a ComfyUI checkpoint keeps the diffusion model.
const comfyModelPrefix = "model.diffusion_model."

// Part is one source tensor of an upstream weight.
type Part struct {
	// Key is the tensor's name in the file.
	Key string
}

// Recipe says how to build one upstream-named tensor from a file: a single
// Part is a rename; several Parts are concatenated along the first axis
// (rows) in order — the diffusers to_q, to_k, to_v become qkv, because the
// upstream Linear computes [q; k; v] = qkv·x and splits its output rows in
// that order.
type Recipe struct {
	Name  string
	Parts []Part
}

// KeyMap is the result of mapping a file's keys to upstream names.
type KeyMap struct {
	Layout Layout
	// Recipes by upstream name.
	Recipes map[string]Recipe
	// Unmapped are file keys that belong to the diffusion model but have no
	// known upstream name; a loader reports them as unexpected.
	Unmapped []string
	// Ignored are keys of other models in an all-in-one file (ComfyUI's
	// `vae.`, `text_encoders.`, `cond_stage_model.` …), skipped on purpose.
	Ignored []string
}

// Names lists the upstream names in sorted order.
func (m *KeyMap) Names() []string {
	out := make([]string, 0, len(m.Recipes))
	for k := range m.Recipes {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// DetectLayout tells the layout from key names alone.
func DetectLayout(keys []string) (Layout, error) {
	if len(keys) == 0 {
		return "", fmt.Errorf("no tensors to tell the layout from")
	}
	var comfy, diff, up bool
	for _, k := range keys {
		switch {
		case strings.HasPrefix(k, comfyModelPrefix):
			comfy = true
		case isDiffusersKey(k):
			diff = true
		case isUpstreamKey(k):
			up = true
		}
	}
	switch {
	case comfy:
		return LayoutComfyUI, nil
	case diff:
		return LayoutDiffusers, nil
	case up:
		return LayoutUpstream, nil
	}
	return "", fmt.Errorf("key %q is neither upstream Next-DiT (`layers.0.attention.qkv.weight`), ComfyUI (`%s…`) nor diffusers Lumina2 (`layers.0.attn.to_q.weight`)", keys[0], comfyModelPrefix)
}

// Upstream module names the detector looks for.
var (
	upstreamTop  = regexp.MustCompile(`^(?:x_embedder|cap_embedder|t_embedder|clip_text_pooled_proj|time_text_embed|final_layer|norm_final|x_pad_token|cap_pad_token)(?:\.|$)`)
	upstreamBlk  = regexp.MustCompile(`^(?:layers|noise_refiner|context_refiner)\.\d+\.(?:attention\.|attention_norm[12]\.|ffn_norm[12]\.|feed_forward\.w[123]\.|adaLN_modulation\.)`)
	diffusersBlk = regexp.MustCompile(`^(?:layers|noise_refiner|context_refiner)\.\d+\.(?:attn\.|norm1\.|norm2\.|feed_forward\.linear_[123]\.)`)
)

func isUpstreamKey(k string) bool { return upstreamTop.MatchString(k) || upstreamBlk.MatchString(k) }

func isDiffusersKey(k string) bool {
	return strings.HasPrefix(k, "time_caption_embed.") || strings.HasPrefix(k, "norm_out.") || diffusersBlk.MatchString(k)
}

// diffusersBlock renames the inside of a diffusers block to upstream; the
// inverse of convert_lumina2_to_diffusers in diffusers'
// src/diffusers/loaders/single_file_utils.py (read at commit 58eb52c0):
// `attention` → `attn`, `.out.` → `.to_out.0.`, q_norm/k_norm →
// norm_q/norm_k, w1/w2/w3 → linear_1/2/3, adaLN_modulation.1 →
// norm1.linear, attention_norm1 → norm1.norm (norm1 in the unmodulated
// context refiner), attention_norm2 → norm2. ffn_norm1/2 keep their names.
var diffusersBlock = []struct{ from, to string }{
	{"attn.to_out.0.", "attention.out."},
	{"attn.norm_q.", "attention.q_norm."},
	{"attn.norm_k.", "attention.k_norm."},
	{"feed_forward.linear_1.", "feed_forward.w1."},
	{"feed_forward.linear_2.", "feed_forward.w2."},
	{"feed_forward.linear_3.", "feed_forward.w3."},
	{"norm1.linear.", "adaLN_modulation.1."},
	{"norm1.norm.", "attention_norm1."},
	{"norm1.", "attention_norm1."},
	{"norm2.", "attention_norm2."},
}

// diffusersTop renames diffusers' top-level modules; names not listed
// (x_embedder) are the same in both. NewBie's clip_text_pooled_proj and
// time_text_embed sit under time_caption_embed. in diffusers' NewBie port
// (huggingface/diffusers pull 12803 adds both to convert_lumina2_to_diffusers;
// Disty0/NewBie-image-Exp0.1-Diffusers is saved that way).
var diffusersTop = []struct{ from, to string }{
	{"time_caption_embed.caption_embedder.", "cap_embedder."},
	{"time_caption_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."},
	{"time_caption_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."},
	{"time_caption_embed.clip_text_pooled_proj.", "clip_text_pooled_proj."},
	{"time_caption_embed.time_text_embed.", "time_text_embed."},
	{"norm_out.linear_1.", "final_layer.adaLN_modulation.1."},
	{"norm_out.linear_2.", "final_layer.linear."},
}

// DiffusersKeys returns the diffusers key(s) an upstream weight name is
// stored under — the inverse of the mapping MapWeightKeys applies: one key
// for a rename, the to_q, to_k, to_v keys (in row order: a fused qkv is
// their rows stacked) for a fused qkv, none for norm_final.weight, which
// diffusers drops.
func DiffusersKeys(name string) []string {
	if name == "norm_final.weight" {
		return nil
	}
	if m := blockHead.FindStringSubmatch(name); m != nil {
		head, rest := m[1], m[2]
		if q := upstreamQKV.FindStringSubmatch(rest); q != nil {
			return []string{head + "attn.to_q." + q[1], head + "attn.to_k." + q[1], head + "attn.to_v." + q[1]}
		}
		unmodulated := strings.HasPrefix(head, "context_refiner.")
		for _, r := range diffusersBlock {
			// attention_norm1 is norm1.norm in modulated blocks, plain
			// norm1 in the context refiner.
			if r.to == "attention_norm1." && (r.from == "norm1.") != unmodulated {
				continue
			}
			if strings.HasPrefix(rest, r.to) {
				return []string{head + r.from + rest[len(r.to):]}
			}
		}
		return []string{name}
	}
	for _, r := range diffusersTop {
		if strings.HasPrefix(name, r.to) {
			return []string{r.from + name[len(r.to):]}
		}
	}
	return []string{name}
}

var upstreamQKV = regexp.MustCompile(`^attention\.qkv\.(weight|bias)$`)

var blockHead = regexp.MustCompile(`^((?:layers|noise_refiner|context_refiner)\.\d+\.)(.*)$`)
var qkvPart = regexp.MustCompile(`^attn\.to_([qkv])\.(weight|bias)$`)

// ComfyUI all-in-one checkpoints put other models beside the DiT.
var comfyOther = []string{"vae.", "first_stage_model.", "text_encoders.", "cond_stage_model.", "conditioner.", "clip.", "model_ema.", "text_encoder."}

// MapWeightKeys detects the layout of a file's keys and maps every
// diffusion-model key to its upstream name. Split q/k/v become one Recipe
// with three Parts; a q without its k or v is an error naming the missing
// key.
func MapWeightKeys(keys []string) (*KeyMap, error) {
	layout, err := DetectLayout(keys)
	if err != nil {
		return nil, err
	}
	m := &KeyMap{Layout: layout, Recipes: map[string]Recipe{}}
	add := func(name, key string) error {
		if r, dup := m.Recipes[name]; dup {
			return fmt.Errorf("keys %q and %q both map to %q", r.Parts[0].Key, key, name)
		}
		m.Recipes[name] = Recipe{Name: name, Parts: []Part{{Key: key}}}
		return nil
	}
	// qkv collects split projections: upstream name → q, k, v keys.
	qkv := map[string]*[3]string{}
	for _, k := range keys {
		switch layout {
		case LayoutUpstream:
			if !isUpstreamKey(k) {
				m.Unmapped = append(m.Unmapped, k)
				continue
			}
			if err := add(k, k); err != nil {
				return nil, err
			}
		case LayoutComfyUI:
			if !strings.HasPrefix(k, comfyModelPrefix) {
				if hasAnyPrefix(k, comfyOther) {
					m.Ignored = append(m.Ignored, k)
				} else {
					m.Unmapped = append(m.Unmapped, k)
				}
				continue
			}
			if err := add(k[len(comfyModelPrefix):], k); err != nil {
				return nil, err
			}
		case LayoutDiffusers:
			name, part, ok := diffusersToUpstream(k)
			if !ok {
				m.Unmapped = append(m.Unmapped, k)
				continue
			}
			if part < 0 {
				if err := add(name, k); err != nil {
					return nil, err
				}
				continue
			}
			slot := qkv[name]
			if slot == nil {
				slot = &[3]string{}
				qkv[name] = slot
			}
			slot[part] = k
		}
	}
	for _, name := range sortedKeys(qkv) {
		s := qkv[name]
		for i, k := range s {
			if k == "" {
				return nil, fmt.Errorf("%s needs to_q, to_k and to_v; %q is missing", name, missingQKV(i, s))
			}
		}
		if _, dup := m.Recipes[name]; dup {
			return nil, fmt.Errorf("%s is given both fused and as to_q/to_k/to_v", name)
		}
		m.Recipes[name] = Recipe{Name: name, Parts: []Part{{Key: s[0]}, {Key: s[1]}, {Key: s[2]}}}
	}
	sort.Strings(m.Unmapped)
	sort.Strings(m.Ignored)
	return m, nil
}

// missingQKV names the diffusers key that should have been present in
// slot i, built from a sibling that is (`….attn.to_q.weight` → `….attn.to_k.weight`).
func missingQKV(i int, s *[3]string) string {
	for _, k := range s {
		if k != "" {
			j := strings.LastIndex(k, ".attn.to_")
			return k[:j] + ".attn.to_" + string("qkv"[i]) + k[j+len(".attn.to_")+1:]
		}
	}
	return ""
}

func hasAnyPrefix(s string, ps []string) bool {
	for _, p := range ps {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// diffusersToUpstream maps one diffusers key. part is 0, 1 or 2 for the q,
// k, v pieces of a fused qkv (name is then the fused name) and -1 for a
// plain rename; ok is false for a key with no upstream counterpart.
func diffusersToUpstream(k string) (name string, part int, ok bool) {
	if m := blockHead.FindStringSubmatch(k); m != nil {
		head, rest := m[1], m[2]
		if q := qkvPart.FindStringSubmatch(rest); q != nil {
			return head + "attention.qkv." + q[2], strings.Index("qkv", q[1]), true
		}
		for _, r := range diffusersBlock {
			if strings.HasPrefix(rest, r.from) {
				return head + r.to + rest[len(r.from):], -1, true
			}
		}
		if strings.HasPrefix(rest, "ffn_norm1.") || strings.HasPrefix(rest, "ffn_norm2.") {
			return k, -1, true
		}
		return "", 0, false
	}
	for _, r := range diffusersTop {
		if strings.HasPrefix(k, r.from) {
			return r.to + k[len(r.from):], -1, true
		}
	}
	if isUpstreamKey(k) {
		return k, -1, true
	}
	return "", 0, false
}
