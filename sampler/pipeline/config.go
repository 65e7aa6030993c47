package pipeline

import (
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/sampler"
)

// PreparePrompt turns a prompt into the text the encoders read, as training
// turns a caption file into it: parsed as NewBie XML, a tag list or prose
// (data.ParseCaption, decided from the text), the trigger word put first
// when one is given and missing, and rendered in the canonical layout
// (data.Caption.Render), so that an XML prompt written on one line encodes
// as the training captions did. name is used in messages. The empty prompt
// stays empty.
func PreparePrompt(name, text, trigger string) (string, error) {
	if text == "" {
		return "", nil
	}
	c, err := data.ParseCaption(name, text, data.FormatAuto)
	if err != nil {
		return "", err
	}
	c, _ = c.WithTrigger(trigger)
	return c.Render(), nil
}

// ConfigSettings are a training config's sample: section as sampling
// settings (guidance untruncated and without renorm, which the section
// does not set) with the config's Gemma system prompt.
func ConfigSettings(c *configs.Config) Settings {
	s := c.Sample
	sys := c.Data.Caption.SystemPrompt
	if sys == "" {
		sys = data.GemmaSystemPrompt
	}
	return Settings{
		Sampler:      sampler.Options{Method: sampler.Method(s.Sampler), Steps: s.Steps, Shift: s.TimeShift},
		Guidance:     sampler.Guidance{Scale: s.CFG, Trunc: s.CFGTrunc, Renorm: s.Renorm},
		SystemPrompt: sys,
	}
}

// ConfigImages are a training config's sample: prompts as images (see
// Images): the section's negative prompt and seed, square at its
// resolution (the data resolution when unset), the config's trigger word.
func ConfigImages(c *configs.Config) ([]Image, error) {
	s := c.Sample
	res := s.Resolution
	if res == 0 {
		res = c.Data.Resolution
	}
	specs := make([]PromptSpec, len(s.Prompts))
	for i, p := range s.Prompts {
		specs[i].Prompt = p
	}
	return Images(specs, Defaults{Negative: s.NegativePrompt, Seeds: []uint64{s.Seed}, Width: res, Height: res, Trigger: c.Data.Caption.TriggerWord})
}
