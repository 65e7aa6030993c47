package configs

import (
	"errors"
	"strings"
	"testing"
)

// TestSetOverrides: --set values replace or add keys as if the file said
// them, through the same checks, and a bad one is reported by the override
// itself.
func TestSetOverrides(t *testing.T) {
	file := minimal + "sample:\n  prompts: [one]\n"
	c, err := Parse("/a/lora.yaml", []byte(file), "train.learning_rate=5e-4", "lora.rank=8",
		"sample.prompts=[a girl, \"b, c\"]", "data.folders[0]=other", "save.every=0")
	if err != nil {
		t.Fatal(err)
	}
	if c.Train.LearningRate != 5e-4 || c.LoRA.Rank != 8 || c.LoRA.Alpha != 8 || c.Save.Every != 0 {
		t.Errorf("lr %v rank %d alpha %v save.every %d", c.Train.LearningRate, c.LoRA.Rank, c.LoRA.Alpha, c.Save.Every)
	}
	if len(c.Sample.Prompts) != 2 || c.Sample.Prompts[1] != "b, c" || c.Data.Folders[0].Path != "/a/other" {
		t.Errorf("prompts %q, folder %q", c.Sample.Prompts, c.Data.Folders[0].Path)
	}
	if !c.IsSet("lora.rank") {
		t.Error("an overridden key does not count as set")
	}
	withMapping := "model: {weights: w}\ntrain: {max_steps: 1000}\ndata:\n  folders:\n    - path: x\n      repeats: 2\n"
	if c, err := Parse("/a/lora.yaml", []byte(withMapping), "data.folders[0].repeats=5"); err != nil || c.Data.Folders[0].Repeats != 5 {
		t.Errorf("indexed override: %v", err)
	}

	for _, tc := range []struct {
		set, want string
	}{
		{"train.lerning_rate=1", "/a/lora.yaml: --set train.lerning_rate=1: train.lerning_rate: unknown key; did you mean learning_rate?"},
		{"train.max_steps=abc", `/a/lora.yaml: --set train.max_steps=abc: train.max_steps: "abc" is not a whole number`},
		{"train.epochs=3", "/a/lora.yaml: --set train.epochs=3: train.epochs: give train.max_steps or train.epochs, not both"},
		{"lora.rank", "/a/lora.yaml: --set lora.rank: want key=value"},
		{"data.folders[3].path=x", "/a/lora.yaml: --set data.folders[3].path=x: data.folders[3].path: data.folders has no item 3"},
		{"train.max_steps=[1", "/a/lora.yaml: --set train.max_steps=[1: train.max_steps: value \"[1\" is not YAML"},
		{"train.learning_rate=-1", "/a/lora.yaml: --set train.learning_rate=-1: train.learning_rate: -1 must be positive"},
	} {
		_, err := Parse("/a/lora.yaml", []byte(minimal), tc.set)
		var ce *Error
		if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("--set %s:\n got %v\nwant %s", tc.set, err, tc.want)
		}
	}
}
