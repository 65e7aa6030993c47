package pipeline

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/newbie-train/newbie-train/sampler"
)

// ModelInfo is what an image's parameters say about how it was made
// besides its prompt and settings.
type ModelInfo struct {
	// Name and Hash identify the base model (Hash: the first 10 hex digits
	// of the file's SHA-256, A1111's "AutoV2"; empty when not known).
	Name, Hash string
	LoRAs      []LoRAInfo
	// Precision is bf16, fp16 or fp32.
	Precision string
	// Encoders and Decoder say what encoded the text and decoded the
	// latent (the stand-ins of the tiny model say so).
	Encoders, Decoder string
	// Version is the program's version.
	Version string
}

// LoRAInfo names one applied LoRA.
type LoRAInfo struct {
	Name, Hash string
	Strength   float64
}

// samplerNames are A1111's names for the methods ("DPM++ 2M" is
// DPM-Solver++ multistep, second order).
var samplerNames = map[sampler.Method]string{sampler.Midpoint: "Midpoint", sampler.Euler: "Euler", sampler.DPM: "DPM++ 2M"}

// Parameters is an image's "parameters" text in the A1111 / Forge form:
// the prompt, "Negative prompt: …" when there is one, then one line of
// "Key: value" pairs (values with a comma, colon or newline JSON-quoted, as
// A1111 quotes them). Steps is upstream's num_sampling_steps, as --steps.
func Parameters(img Image, s Settings, mi ModelInfo) string {
	var b strings.Builder
	b.WriteString(img.Prompt)
	if img.Negative != "" {
		b.WriteString("\nNegative prompt: " + img.Negative)
	}
	method := s.Sampler.Method
	if method == "" {
		method = sampler.Midpoint
	}
	kv := [][2]string{
		{"Steps", strconv.Itoa(s.Sampler.Steps)},
		{"Sampler", samplerNames[method]},
		{"CFG scale", fmtFloat(s.Guidance.Scale)},
		{"Seed", strconv.FormatUint(img.Seed, 10)},
		{"Size", fmt.Sprintf("%dx%d", img.Width, img.Height)},
	}
	if mi.Hash != "" {
		kv = append(kv, [2]string{"Model hash", mi.Hash})
	}
	if mi.Name != "" {
		kv = append(kv, [2]string{"Model", mi.Name})
	}
	if len(mi.LoRAs) > 0 {
		hashes := make([]string, len(mi.LoRAs))
		strengths := make([]string, len(mi.LoRAs))
		for i, l := range mi.LoRAs {
			hashes[i] = l.Name + ": " + l.Hash
			strengths[i] = l.Name + ": " + fmtFloat(l.Strength)
		}
		kv = append(kv, [2]string{"Lora hashes", strings.Join(hashes, ", ")}, [2]string{"Lora strengths", strings.Join(strengths, ", ")})
	}
	kv = append(kv,
		[2]string{"Shift", fmtFloat(s.Sampler.Shift)},
		[2]string{"CFG truncation", fmtFloat(truncation(s.Guidance))},
		[2]string{"CFG renorm", fmtFloat(s.Guidance.Renorm)},
		[2]string{"System prompt", s.SystemPrompt},
	)
	for _, p := range [][2]string{{"Precision", mi.Precision}, {"Text encoders", mi.Encoders}, {"Decoder", mi.Decoder}, {"Version", mi.Version}} {
		if p[1] != "" {
			kv = append(kv, p)
		}
	}
	b.WriteString("\n")
	for i, p := range kv {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p[0] + ": " + quote(p[1]))
	}
	return b.String()
}

// truncation is the cfg_trunc a guidance setting means (0 meaning 1).
func truncation(g sampler.Guidance) float64 {
	if g.Trunc == 0 {
		return 1
	}
	return g.Trunc
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// quote is A1111's infotext quoting: a value with a comma, colon or newline
// becomes a JSON string (non-ASCII kept as it is); so does one that starts
// with a quote or has spaces at either end, which readers would trim.
func quote(s string) string {
	if !strings.ContainsAny(s, ",:\n") && strings.TrimSpace(s) == s && !strings.HasPrefix(s, `"`) {
		return s
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

// ParseParameters splits a parameters text back into its prompt, negative
// prompt and settings (A1111's parse_generation_parameters, for the simple
// form Parameters writes): the last line holds the settings.
func ParseParameters(text string) (prompt, negative string, settings map[string]string, err error) {
	lines := strings.Split(text, "\n")
	if len(lines) < 2 {
		return "", "", nil, fmt.Errorf("pipeline: parameters %q have no settings line", text)
	}
	last := lines[len(lines)-1]
	body := lines[:len(lines)-1]
	for i, l := range body {
		if neg, ok := strings.CutPrefix(l, "Negative prompt: "); ok {
			negative = strings.Join(append([]string{neg}, body[i+1:]...), "\n")
			body = body[:i]
			break
		}
	}
	prompt = strings.Join(body, "\n")
	settings = map[string]string{}
	for rest := last; rest != ""; {
		key, after, ok := strings.Cut(rest, ": ")
		if !ok {
			return "", "", nil, fmt.Errorf("pipeline: settings %q: no value after %q", last, rest)
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			dec := json.NewDecoder(strings.NewReader(after))
			if err := dec.Decode(&val); err != nil {
				return "", "", nil, fmt.Errorf("pipeline: settings %q: value of %s: %w", last, key, err)
			}
			after = strings.TrimPrefix(after[dec.InputOffset():], ",")
		} else {
			val, after, _ = strings.Cut(after, ",")
		}
		settings[key] = val
		rest = strings.TrimPrefix(after, " ")
	}
	return prompt, negative, settings, nil
}
