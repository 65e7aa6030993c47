package configs

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
)

// minimal is the smallest valid file: the three things without a default.
const minimal = `model:
  weights: base.safetensors
data:
  folders: [images]
train:
  max_steps: 1000
`

func mustParse(t *testing.T, name, text string) *Config {
	t.Helper()
	c, err := Parse(name, []byte(text))
	if err != nil {
		t.Fatalf("Parse(%s): %v", name, err)
	}
	return c
}

// TestExamplesParse checks that both shipped examples parse and validate,
// from the embedded copy and from disk, and that they say what their
// comments promise.
func TestExamplesParse(t *testing.T) {
	for _, name := range ExampleNames {
		t.Run(name, func(t *testing.T) {
			emb, err := Example(name)
			if err != nil {
				t.Fatal(err)
			}
			disk, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			if string(emb) != string(disk) {
				t.Fatalf("embedded %s differs from the file", name)
			}
			c, err := Load(name)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			dir, _ := filepath.Abs(".")
			switch name {
			case "demo.yaml":
				want := []Folder{{Path: filepath.Join(dir, "demo-data"), Repeats: 1}}
				if !reflect.DeepEqual(c.Data.Folders, want) {
					t.Errorf("folders = %+v, want %+v", c.Data.Folders, want)
				}
				if c.Model.Preset != "tiny" || c.Device != "cpu" || c.Precision != optim.FP32 ||
					c.Train.MaxSteps != 300 || c.Train.BatchSize != 2 || c.Data.Resolution != 64 ||
					c.Save.Every != 100 || c.Save.Output != filepath.Join(dir, "demo-out") {
					t.Errorf("demo.yaml does not say what the demo needs:\n%s", c.YAML())
				}
			case "lora.yaml":
				if c.LoRA.Rank != 32 || c.LoRA.Alpha != 32 || c.Train.LearningRate != 1e-4 ||
					c.Train.Schedule != "cosine" || c.Train.GradClip != 1 || c.Model.Preset != "newbie-exp0.1" {
					t.Errorf("lora.yaml lost the upstream defaults:\n%s", c.YAML())
				}
			}
			// The mappings onto the packages' own options validate too.
			if err := c.DataOptions().Validate(); err != nil {
				t.Errorf("DataOptions: %v", err)
			}
			oc, err := c.OptimConfig(optim.Capability{Major: 9}, c.TotalSteps(0, 1))
			if err != nil {
				t.Fatalf("OptimConfig: %v", err)
			}
			if err := oc.Schedule.Validate(); err != nil {
				t.Errorf("schedule: %v", err)
			}
		})
	}
}

// TestExamplesCommentEveryKey checks that lora.yaml shows every key of the
// schema (it is the reference a user copies from).
func TestExamplesCommentEveryKey(t *testing.T) {
	c, err := Load("lora.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range allKeyPaths() {
		if !c.IsSet(p) {
			t.Errorf("lora.yaml does not show key %s", p)
		}
	}
}

// TestDefaults checks the documented defaults and the derived ones.
func TestDefaults(t *testing.T) {
	c := mustParse(t, "/runs/a/lora.yaml", minimal)
	checks := []struct {
		name      string
		got, want any
	}{
		{"preset", c.Model.Preset, "newbie-exp0.1"},
		{"dtype", c.Model.DType, "bf16"},
		{"weights", c.Model.Weights, "/runs/a/base.safetensors"},
		{"device", c.Device, "auto"},
		{"precision", c.Precision, optim.Auto},
		{"loss scale", c.LossScale, LossScale{Mode: "default", Init: 65536, GrowthInterval: 2000}},
		{"rank", c.LoRA.Rank, 32},
		{"alpha", c.LoRA.Alpha, 32.0},
		{"dropout", c.LoRA.Dropout, 0.0},
		{"targets", c.LoRA.Targets, DefaultTargets},
		{"init", c.LoRA.Init, "peft"},
		{"folders", c.Data.Folders, []Folder{{Path: "/runs/a/images"}}},
		{"resolution", c.Data.Resolution, 1024},
		{"bucket", c.Data.Bucket, Bucket{Step: 16, MinSide: 512, MaxSide: 2048}},
		{"min side", c.Data.MinSide, 256},
		{"crop", c.Data.Crop, "center"},
		{"cache", c.Data.Cache, "/runs/a/output/cache"},
		{"caption ext", c.Data.Caption.Extension, ".txt"},
		{"variants without augmentation", c.Data.Caption.Variants, 1},
		{"system prompt", c.Data.Caption.SystemPrompt, data.GemmaSystemPrompt},
		{"batch", c.Train.BatchSize, 1},
		{"accumulation", c.Train.GradientAccumulation, 1},
		{"lr", c.Train.LearningRate, 1e-4},
		{"schedule", c.Train.Schedule, "cosine"},
		{"warmup", c.Train.WarmupSteps, 100},
		{"optimizer", c.Train.Optimizer, Optimizer{Betas: []float64{0.9, 0.999}, Eps: 1e-8, WeightDecay: 0.01}},
		{"grad clip", c.Train.GradClip, 1.0},
		{"seed", c.Train.Seed, uint64(42)},
		{"checkpointing", c.Train.ActivationCheckpointing, true},
		{"timesteps", c.Train.Timesteps, Timesteps{Sampling: "lognorm_shift", Std: 1}},
		{"save formats", c.Save.Formats, []string{"comfyui", "peft"}},
		{"save output", c.Save.Output, "/runs/a/output"},
		{"save every", c.Save.Every, 500},
		{"sample", [4]any{c.Sample.Steps, c.Sample.CFG, c.Sample.Sampler, c.Sample.Resolution}, [4]any{28, 4.5, "midpoint", 1024}},
		{"log file", c.Logging.LogFile, "/runs/a/output/newbie_lora.jsonl"},
		{"log every", c.Logging.Every, 10},
		{"dist timeout", c.Dist.Timeout, 600},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %#v, want %#v", ch.name, ch.got, ch.want)
		}
	}
}

// TestDerivedDefaults checks the defaults that follow other settings.
func TestDerivedDefaults(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		check func(c *Config) (got, want any)
	}{
		{"alpha follows rank", "lora: {rank: 16}", func(c *Config) (any, any) { return c.LoRA.Alpha, 16.0 }},
		{"explicit alpha stays", "lora: {rank: 16, alpha: 8}", func(c *Config) (any, any) { return c.LoRA.Alpha, 8.0 }},
		{"warmup ratio replaces default steps", "train: {max_steps: 1000, warmup_ratio: 0.1}",
			func(c *Config) (any, any) { return [2]any{c.Train.WarmupSteps, c.Train.WarmupRatio}, [2]any{0, 0.1} }},
		{"buckets follow resolution", "data: {folders: [images], resolution: 512}",
			func(c *Config) (any, any) {
				return [2]any{c.Data.Bucket, c.Data.MinSide}, [2]any{Bucket{16, 256, 1024}, 128}
			}},
		{"sample resolution follows data", "data: {folders: [images], resolution: 768}",
			func(c *Config) (any, any) { return c.Sample.Resolution, 768 }},
		{"variants kept with shuffle", "data: {folders: [images], caption: {shuffle: true}}",
			func(c *Config) (any, any) { return c.Data.Caption.Variants, 4 }},
		{"extension gets its dot", "data: {folders: [images], caption: {extension: caption}}",
			func(c *Config) (any, any) { return c.Data.Caption.Extension, ".caption" }},
		{"crop variants forced to 1 when centred", "data: {folders: [images], crop_variants: 5}",
			func(c *Config) (any, any) { return c.Data.CropVariants, 1 }},
		{"log file follows name", "save: {name: x, output: /o}",
			func(c *Config) (any, any) { return c.Logging.LogFile, "/o/x.jsonl" }},
		{"tiny needs no weights", "model: {preset: tiny, weights: null}",
			func(c *Config) (any, any) { return c.Model.Weights, "" }},
		{"folder mapping form", "data: {folders: [{path: a, repeats: 3}, b]}",
			func(c *Config) (any, any) { return c.Data.Folders, []Folder{{"/r/a", 3}, {"/r/b", 0}} }},
		{"anchors and aliases", "lora: {rank: &r 16, alpha: *r}",
			func(c *Config) (any, any) { return [2]any{c.LoRA.Rank, c.LoRA.Alpha}, [2]any{16, 16.0} }},
		{"merge keys", "lora: {<<: [{rank: 8}, {dropout: 0.1}]}",
			func(c *Config) (any, any) { return [2]any{c.LoRA.Rank, c.LoRA.Dropout}, [2]any{8, 0.1} }},
		{"single format without a list", "save: {formats: kohya}",
			func(c *Config) (any, any) { return c.Save.Formats, []string{"kohya"} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Later top-level keys would be duplicates: merge by replacing
			// the section of minimal that the case rewrites.
			text := withSection(minimal, tc.extra)
			c := mustParse(t, "/r/lora.yaml", text)
			if got, want := tc.check(c); !reflect.DeepEqual(got, want) {
				t.Errorf("got %#v, want %#v", got, want)
			}
		})
	}
}

// withSection replaces (or adds) the top-level section of base that line
// ("section: {...}") sets.
func withSection(base, line string) string {
	name := line[:strings.IndexByte(line, ':')]
	var out []string
	skip := false
	for l := range strings.SplitSeq(strings.TrimSuffix(base, "\n"), "\n") {
		top := !strings.HasPrefix(l, " ")
		if top {
			skip = strings.HasPrefix(l, name+":")
		}
		if !skip {
			out = append(out, l)
		}
	}
	return strings.Join(append(out, line), "\n") + "\n"
}

// TestBadFiles checks each kind of mistake against its exact message: the
// key path, the line and, where there is one, the suggestion.
func TestBadFiles(t *testing.T) {
	cases := []struct {
		name, text string
		want       string
	}{
		{"misspelled key", minimal + "lora:\n  rnak: 16\n",
			"f.yaml:8: lora.rnak: unknown key; did you mean rank?"},
		{"another trainer's name", "train:\n  max_steps: 10\n  warmup_steps: 1\n  lr: 1e-4\nmodel: {weights: w}\ndata: {folders: [d]}\n",
			"f.yaml:4: train.lr: unknown key; did you mean learning_rate?"},
		{"key in the wrong section", minimal + "learning_rate: 1e-4\n",
			"f.yaml:7: learning_rate: unknown key; did you mean train.learning_rate?"},
		{"key of two sections", minimal + "seed: 3\n",
			"f.yaml:7: seed: unknown key; it belongs in sample.seed or train.seed"},
		{"another trainer's name in the wrong section", minimal + "gradient_checkpointing: true\n",
			"f.yaml:7: gradient_checkpointing: unknown key; did you mean train.activation_checkpointing?"},
		{"misspelled key in the wrong section", minimal + "learning_rat: 1e-4\n",
			"f.yaml:7: learning_rat: unknown key; did you mean train.learning_rate?"},
		{"key of a subsection", withSection(minimal, "train: {max_steps: 1000, eps: 1e-6}"),
			"f.yaml:5: train.eps: unknown key; did you mean train.optimizer.eps?"},
		{"a list, not a mapping", "- model\n- data\n",
			"f.yaml:1: want a mapping of keys, got a list"},
		{"misspelled key in a list item", withSection(minimal, "data: {folders: [{path: a, repeat: 2}]}"),
			"f.yaml:5: data.folders[0].repeat: unknown key; did you mean repeats?"},
		{"unknown key without a near one", minimal + "save:\n  zzz: 1\n",
			"f.yaml:8: save.zzz: unknown key (known keys in save: every, keep_last, keep_last_loras, formats, output, name)"},
		{"not a number", "model: {weights: w}\ndata: {folders: [d]}\ntrain:\n  max_steps: 10\n  warmup_steps: 1\n  learning_rate: 1e-4x\n",
			`f.yaml:6: train.learning_rate: "1e-4x" is not a number`},
		{"not a whole number", withSection(minimal, "lora: {rank: 3.5}"),
			"f.yaml:7: lora.rank: 3.5 is not a whole number"},
		{"whole number as float", withSection(minimal, "lora: {rank: 1e2}"),
			"f.yaml:7: lora.rank: 1e2: write the whole number as 100"},
		{"negative seed", withSection(minimal, "sample: {seed: -1}"),
			"f.yaml:7: sample.seed: -1 is negative: want a whole number ≥ 0"},
		{"not a bool", withSection(minimal, "data: {folders: [d], strict: maybe}"),
			`f.yaml:5: data.strict: "maybe" is not true or false`},
		{"infinite number", withSection(minimal, "lora: {dropout: .inf}"),
			`f.yaml:7: lora.dropout: ".inf" is not a finite number`},
		{"list for a scalar", withSection(minimal, "lora: {init: [peft]}"),
			"f.yaml:7: lora.init: want a single value, got a list"},
		{"scalar for a section", minimal + "lora: 32\n",
			`f.yaml:7: lora: want a mapping of keys, got "32"`},
		{"duplicate key", minimal + "lora:\n  rank: 8\n  rank: 16\n",
			"f.yaml:9: lora.rank: duplicate key (first given on line 8)"},
		{"syntax error", "model:\n  weights: a\n  preset: @x\n",
			"f.yaml:3: YAML syntax: found character that cannot start any token"},
		{"two documents", minimal + "---\nlora: {rank: 4}\n",
			"f.yaml:7: a second YAML document (---): a config file holds one"},
		{"mapping for a number", withSection(minimal, "lora: {rank: {a: 1}}"),
			"f.yaml:7: lora.rank: want a whole number, got a mapping"},
		{"sample steps 0", minimal + "sample: {steps: 0}\n",
			"f.yaml:7: sample.steps: 0 must be in [1, 1000]"},
		{"dist timeout 0", minimal + "dist: {timeout: 0}\n",
			"f.yaml:7: dist.timeout: 0 must be at least 1"},
		{"min lr ratio 2", withSection(minimal, "train: {max_steps: 1000, min_lr_ratio: 2}"),
			"f.yaml:5: train.min_lr_ratio: 2 must be in [0, 1]"},
		{"empty target", withSection(minimal, `lora: {targets: [attention.qkv, ""]}`),
			"f.yaml:7: lora.targets[1]: empty target"},
		{"negative rank", withSection(minimal, "lora: {rank: -4}"),
			"f.yaml:7: lora.rank: -4 must be at least 1"},
		{"alpha 0", withSection(minimal, "lora: {alpha: 0}"),
			"f.yaml:7: lora.alpha: 0 must be positive (the update is scaled by alpha/rank)"},
		{"dropout 1", withSection(minimal, "lora: {dropout: 1}"),
			"f.yaml:7: lora.dropout: 1 must be in [0, 1)"},
		{"repeated target", withSection(minimal, "lora: {targets: [attention.qkv, attention.qkv]}"),
			`f.yaml:7: lora.targets[1]: "attention.qkv" is already lora.targets[0]`},
		{"lr 0", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 10, warmup_steps: 0, learning_rate: 0}\n",
			"f.yaml:3: train.learning_rate: 0 must be positive"},
		{"batch 0", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 1000, batch_size: 0}\n",
			"f.yaml:3: train.batch_size: 0 must be at least 1"},
		{"resolution not a multiple of 16", withSection(minimal, "data: {folders: [d], resolution: 1000}"),
			"f.yaml:5: data.resolution: 1000 must be a positive multiple of 16 (the VAE divides by 8 and the transformer patches by 2)"},
		{"warmup ratio 1", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 10, warmup_ratio: 1}\n",
			"f.yaml:3: train.warmup_ratio: 1 must be in [0, 1)"},
		{"default warmup too long", "model: {weights: w}\ndata: {folders: [d]}\ntrain:\n  max_steps: 60\n",
			"f.yaml:3: train.warmup_steps: 100 is not shorter than the run's 60 steps (not set in the file: this is the default)"},
		{"warmup steps and ratio", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 1000, warmup_steps: 10, warmup_ratio: 0.1}\n",
			"f.yaml:3: train.warmup_ratio: give warmup_steps or warmup_ratio, not both"},
		{"unknown preset", "model: {weights: w, preset: newbie-exp01}\ndata: {folders: [d]}\ntrain: {max_steps: 1000}\n",
			`f.yaml:1: model.preset: unknown preset "newbie-exp01"; did you mean newbie-exp0.1? want newbie-exp0.1, lumina2 or tiny`},
		{"unknown precision", minimal + "precision: bf32\n",
			`f.yaml:7: precision: unknown precision "bf32"; did you mean bf16? want auto, bf16, fp16 or fp32`},
		{"unknown device", minimal + "device: gpu\n",
			`f.yaml:7: device: unknown device "gpu"; did you mean cpu? want auto, cuda or cpu`},
		{"unknown schedule", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 1000, schedule: cosin}\n",
			`f.yaml:3: train.schedule: unknown schedule "cosin"; did you mean cosine? want cosine, linear or constant`},
		{"checkpoint blocks word", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 1000, checkpoint_blocks: aut}\n",
			`f.yaml:3: train.checkpoint_blocks: unknown block count "aut"; did you mean auto? want all or auto`},
		{"checkpoint blocks zero", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {max_steps: 1000, checkpoint_blocks: 0}\n",
			`f.yaml:3: train.checkpoint_blocks: 0 blocks: want at least 1 (train.activation_checkpointing: false checkpoints none)`},
		{"unknown format", withSection(minimal, "save: {formats: [comfyui, diffusers]}"),
			`f.yaml:7: save.formats[1]: unknown format "diffusers"; want comfyui, peft or kohya`},
		{"unknown loss scale mode", minimal + "loss_scale: {mode: dynamc}\n",
			`f.yaml:7: loss_scale.mode: unknown loss scale mode "dynamc"; did you mean dynamic? want default, dynamic, static or off`},
		{"save every negative", withSection(minimal, "save: {every: -1}"),
			"f.yaml:7: save.every: -1 must be at least 0"},
		{"missing folders", "model: {weights: w}\ntrain: {max_steps: 1000}\n",
			"f.yaml: data.folders: required: at least one dataset folder (data: {folders: [{path: my-images, repeats: 1}]})"},
		{"empty folder list", "model: {weights: w}\ndata:\n  folders: []\ntrain: {max_steps: 1000}\n",
			"f.yaml:3: data.folders: required: at least one dataset folder (data: {folders: [{path: my-images, repeats: 1}]})"},
		{"negative repeats", withSection(minimal, "data: {folders: [{path: d, repeats: -2}]}"),
			"f.yaml:5: data.folders[0].repeats: -2 must be at least 0"},
		{"missing weights", "data: {folders: [d]}\ntrain: {max_steps: 1000}\n",
			"f.yaml: model.path: required: a NewBie-image-Exp0.1 model folder, or model.weights with model.vae, model.gemma and model.jina (only the tiny preset may start from random weights)"},
		{"no run length", "model: {weights: w}\ndata: {folders: [d]}\ntrain: {batch_size: 2}\n",
			"f.yaml:3: train.max_steps: the run has no length: give train.max_steps or train.epochs"},
		{"steps and epochs", withSection(minimal, "train: {max_steps: 1000, epochs: 3}"),
			"f.yaml:5: train.epochs: give train.max_steps or train.epochs, not both"},
		{"three betas", withSection(minimal, "train: {max_steps: 1000, optimizer: {betas: [0.9, 0.99, 0.999]}}"),
			"f.yaml:5: train.optimizer.betas: want two numbers [beta1, beta2], got 3"},
		{"beta 1", withSection(minimal, "train: {max_steps: 1000, optimizer: {betas: [0.9, 1]}}"),
			"f.yaml:5: train.optimizer.betas[1]: 1 must be in [0, 1)"},
		{"uniform with std", withSection(minimal, "train: {max_steps: 1000, timesteps: {sampling: uniform, std: 2}}"),
			"f.yaml:5: train.timesteps.std: 2: only logit_normal sampling takes a std"},
		{"default sampling with mean", withSection(minimal, "train: {max_steps: 1000, timesteps: {mean: 0.5}}"),
			"f.yaml:5: train.timesteps.mean: 0.5: only logit_normal sampling takes a mean (lognorm_shift draws from N(0, 1))"},
		{"logit normal std 0", withSection(minimal, "train: {max_steps: 1000, timesteps: {sampling: logit_normal, std: 0}}"),
			"f.yaml:5: train.timesteps.std: 0 must be positive"},
		{"caption default without allow_missing", withSection(minimal, "data: {folders: [d], caption: {default: a girl}}"),
			"f.yaml:5: data.caption.default: is set but data.caption.allow_missing is false, so it would never be used"},
		{"bucket min above resolution", withSection(minimal, "data: {folders: [d], resolution: 256, bucket: {min_side: 512}}"),
			"f.yaml:5: data.bucket.min_side: 512 must not exceed resolution 256 (buckets approach resolution² from below)"},
		{"metrics address", minimal + "logging: {metrics_addr: localhost}\n",
			`f.yaml:7: logging.metrics_addr: "localhost": want host:port (e.g. 127.0.0.1:9090 or :9090)`},
		{"save name is a path", withSection(minimal, "save: {name: a/b}"),
			`f.yaml:7: save.name: "a/b" must be a file name, not a path (save.output is the folder)`},
		{"sample every without prompts", minimal + "sample: {every: 100}\n",
			"f.yaml:7: sample.every: 100, but sample.prompts is empty: nothing to render"},
		{"gpu with cpu", minimal + "device: cpu\ngpu: 1\n",
			"f.yaml:8: gpu: device is cpu: a GPU index applies to cuda or auto"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("f.yaml", []byte(tc.text))
			if err == nil {
				t.Fatalf("no error; parsed:\n%s", c.YAML())
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error: %v", err, err)
			}
			if err.Error() != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", err, tc.want)
			}
		})
	}
}

// TestAllProblemsReported checks that one file's problems are reported
// together, in line order, each with its line.
func TestAllProblemsReported(t *testing.T) {
	text := `model:
  weights: w
  preset: tiny2
lora:
  rank: -1
  alpha: 0
data:
  folders: [d]
  resolution: 100
  caption:
    shufle: true
train:
  max_steps: 1000
  learning_rate: fast
  batch_size: 0
save:
  every: -5
`
	_, err := Parse("lora.yaml", []byte(text))
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`lora.yaml:3: model.preset: unknown preset "tiny2"; did you mean tiny? want newbie-exp0.1, lumina2 or tiny`,
		`lora.yaml:5: lora.rank: -1 must be at least 1`,
		`lora.yaml:6: lora.alpha: 0 must be positive (the update is scaled by alpha/rank)`,
		`lora.yaml:9: data.resolution: 100 must be a positive multiple of 16 (the VAE divides by 8 and the transformer patches by 2)`,
		`lora.yaml:11: data.caption.shufle: unknown key; did you mean shuffle?`,
		`lora.yaml:14: train.learning_rate: "fast" is not a number`,
		`lora.yaml:15: train.batch_size: 0 must be at least 1`,
		`lora.yaml:17: save.every: -5 must be at least 0`,
	}
	got := strings.Split(err.Error(), "\n")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var e *Error
	if errors.As(err, &e) && len(e.Problems) != len(want) {
		t.Errorf("%d problems, want %d", len(e.Problems), len(want))
	}
}

// TestRelativePaths checks that paths resolve against the file's folder,
// whatever the working directory, and that absolute and ~ paths stay put.
func TestRelativePaths(t *testing.T) {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home folder:", err)
	}
	text := `model: {weights: ../models/w.safetensors}
data:
  folders: [imgs, /abs/imgs, ~/imgs]
  cache: cache
train: {max_steps: 1000}
save: {output: out}
logging: {log_file: logs/run.jsonl}
`
	c := mustParse(t, "/proj/cfg/lora.yaml", text)
	want := map[string]string{
		"weights":  "/proj/models/w.safetensors",
		"folder 0": "/proj/cfg/imgs",
		"folder 1": "/abs/imgs",
		"folder 2": filepath.Join(home, "imgs"),
		"cache":    "/proj/cfg/cache",
		"output":   "/proj/cfg/out",
		"log":      "/proj/cfg/logs/run.jsonl",
	}
	got := map[string]string{
		"weights":  c.Model.Weights,
		"folder 0": c.Data.Folders[0].Path,
		"folder 1": c.Data.Folders[1].Path,
		"folder 2": c.Data.Folders[2].Path,
		"cache":    c.Data.Cache,
		"output":   c.Save.Output,
		"log":      c.Logging.LogFile,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

// TestHash checks that the hash depends on values only (order, comments,
// spelling of numbers, defaults written out) and on every training-relevant
// value, and not on cadence, paths or the device.
func TestHash(t *testing.T) {
	base := mustParse(t, "/a/lora.yaml", minimal).Hash()
	same := []struct{ name, text string }{
		{"reordered and commented", `# a comment
train:
  max_steps: 1000   # steps
data:
  folders:
    - images
model:
  weights: base.safetensors
`},
		{"defaults written out", minimal + "lora: {rank: 32, alpha: 32.0}\n"},
		{"numbers spelled differently", withSection(minimal, "train: {max_steps: 1000, learning_rate: 0.0001, grad_clip: 1e0}")},
		{"cadence and paths", withSection(minimal, "save: {every: 7, output: elsewhere, keep_last: 9}") +
			"logging: {every: 3}\nsample: {steps: 10}\ndevice: cpu\n"},
		{"dataset moved", withSection(minimal, "data: {folders: [/mnt/other/images]}")},
		{"validation cadence", withSection(minimal, "train: {max_steps: 1000, validation: {every: 7}}")},
	}
	for _, tc := range same {
		if h := mustParse(t, "/b/lora.yaml", tc.text).Hash(); h != base {
			t.Errorf("%s: hash changed", tc.name)
		}
	}
	differ := []struct{ name, section string }{
		{"lr", "train: {max_steps: 1000, learning_rate: 2e-4}"},
		{"rank", "lora: {rank: 16}"},
		{"alpha", "lora: {alpha: 16}"},
		{"targets", "lora: {targets: [attention.qkv]}"},
		{"max steps", "train: {max_steps: 1001}"},
		{"seed", "train: {max_steps: 1000, seed: 1}"},
		{"precision", "precision: bf16"},
		{"resolution", "data: {folders: [images], resolution: 512}"},
		{"repeats", "data: {folders: [{path: images, repeats: 2}]}"},
		{"caption dropout", "data: {folders: [images], caption: {caption_dropout: 0.1}}"},
		{"timesteps", "train: {max_steps: 1000, timesteps: {sampling: uniform}}"},
		{"validation split", "train: {max_steps: 1000, validation: {split: 0.1}}"},
		{"preset", "model: {weights: base.safetensors, preset: lumina2}"},
	}
	seen := map[string]string{base: "base"}
	for _, tc := range differ {
		h := mustParse(t, "/a/lora.yaml", withSection(minimal, tc.section)).Hash()
		if other, dup := seen[h]; dup {
			t.Errorf("%s: hash equals that of %s", tc.name, other)
		}
		seen[h] = tc.name
	}
}

// TestYAMLRoundTrip checks that the printed effective config parses back
// to the same config and hash, for both examples and the minimal file.
func TestYAMLRoundTrip(t *testing.T) {
	for _, name := range []string{"lora.yaml", "demo.yaml", "minimal"} {
		var c *Config
		if name == "minimal" {
			c = mustParse(t, "/x/lora.yaml", minimal)
		} else {
			var err error
			if c, err = Load(name); err != nil {
				t.Fatal(err)
			}
		}
		out := c.YAML()
		back, err := Parse("printed.yaml", out)
		if err != nil {
			t.Fatalf("%s: printed config does not parse: %v\n%s", name, err, out)
		}
		if back.Hash() != c.Hash() {
			t.Errorf("%s: hash changed through YAML()", name)
		}
		a, b := *c, *back
		a.file, a.lines, b.file, b.lines = "", nil, "", nil
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: config changed through YAML():\n%s\nvs\n%s", name, c.YAML(), back.YAML())
		}
	}
}

// TestConversions checks the mappings onto data and optim options.
func TestConversions(t *testing.T) {
	text := `model: {weights: w}
data:
  folders: [{path: d, repeats: 3}]
  resolution: 512
  crop: random
  crop_variants: 2
  cache_bf16: true
  caption: {shuffle: true, keep_tokens: 1, tag_dropout: 0.1, trigger_word: tw, allow_missing: true, default: x}
train:
  epochs: 4
  batch_size: 3
  gradient_accumulation: 2
  learning_rate: 3e-4
  warmup_ratio: 0.05
  min_lr_ratio: 0.1
  grad_clip: 0.5
  seed: 9
  optimizer: {betas: [0.8, 0.99], eps: 1e-6, weight_decay: 0.1}
loss_scale: {init: 1024, growth_interval: 50}
`
	c := mustParse(t, "/d/lora.yaml", text)
	do := c.DataOptions()
	if do.Folders[0] != (data.Folder{Path: "/d/d", Repeats: 3}) || do.Buckets.TargetArea != 512*512 ||
		!do.Buckets.RandomCrop || do.Buckets.CropVariants != 2 || !do.CacheBF16 || do.Loader.BatchSize != 3 ||
		do.Seed != 9 || !do.Caption.ShuffleTags || do.Caption.KeepTokens != 1 || do.Caption.TagDropout != 0.1 ||
		do.Caption.TriggerWord != "tw" || !do.Caption.AllowMissing || do.Caption.Default != "x" ||
		do.CacheDir != "/d/output/cache" || do.SkipDeepValidate {
		t.Errorf("DataOptions = %+v", do)
	}
	if err := do.Validate(); err != nil {
		t.Errorf("DataOptions.Validate: %v", err)
	}
	if h := c.Hyper(); h != (optim.Hyper{LR: 3e-4, WeightDecay: 0.1, Beta1: 0.8, Beta2: 0.99, Eps: 1e-6}) {
		t.Errorf("Hyper = %+v", h)
	}
	// 4 epochs of 13 batches, 2 per step: 4·⌈13/2⌉ = 28 steps; on 3
	// ranks, 6 per step: 4·⌈13/6⌉ = 12.
	if n := c.TotalSteps(13, 1); n != 28 {
		t.Errorf("TotalSteps(13, 1) = %d, want 28", n)
	}
	if n := c.TotalSteps(13, 3); n != 12 {
		t.Errorf("TotalSteps(13, 3) = %d, want 12", n)
	}
	precs := []struct {
		name string
		prec string
		cap  optim.Capability
		want optim.Precision
		mode optim.ScalerMode
	}{
		{"auto on the CPU", "auto", optim.Capability{}, optim.FP32, optim.ScaleOff},
		{"auto on Hopper", "auto", optim.Capability{Major: 9}, optim.BF16, optim.ScaleOff},
		{"auto on Volta", "auto", optim.Capability{Major: 7}, optim.FP16, optim.ScaleDynamic},
		{"fp16 on the CPU", "fp16", optim.Capability{}, optim.FP16, optim.ScaleDynamic},
	}
	for _, p := range precs {
		c.Precision = optim.Precision(p.prec)
		oc, err := c.OptimConfig(p.cap, c.TotalSteps(13, 1))
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		want := optim.Config{
			Precision: p.want, Capability: p.cap, MaxGradNorm: 0.5, AccumSteps: 2,
			Scaler:   optim.ScalerConfig{Mode: p.mode, InitScale: 1024, GrowthFactor: 2, BackoffFactor: 0.5, GrowthInterval: 50},
			Schedule: optim.Schedule{Kind: optim.Cosine, TotalSteps: 28, WarmupRatio: 0.05, MinRatio: 0.1},
		}
		if !reflect.DeepEqual(oc, want) {
			t.Errorf("%s: OptimConfig =\n%+v\nwant\n%+v", p.name, oc, want)
		}
	}
	c.Precision = optim.BF16
	_, err := c.OptimConfig(optim.Capability{Major: 7}, 28)
	if err == nil || !strings.Contains(err.Error(), "precision: precision bf16 needs compute capability") {
		t.Errorf("bf16 on Volta: err = %v", err)
	}
}

// TestCheckPaths checks that missing inputs are reported together with
// their lines, and that existing ones pass.
func TestCheckPaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "imgs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "w.safetensors"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "lora.yaml")
	ok := mustParse(t, name, "model: {weights: w.safetensors}\ndata: {folders: [imgs]}\ntrain: {max_steps: 1000}\n")
	if err := ok.CheckPaths(); err != nil {
		t.Errorf("existing paths: %v", err)
	}
	bad := mustParse(t, name, "model: {weights: nope.safetensors}\ndata:\n  folders:\n    - imgs\n    - w.safetensors\n    - missing\ntrain: {max_steps: 1000}\n")
	err := bad.CheckPaths()
	want := strings.Join([]string{
		name + ":1: model.weights: " + filepath.Join(dir, "nope.safetensors") + ": no such file or directory",
		name + ":5: data.folders[1].path: " + filepath.Join(dir, "w.safetensors") + " is a file, want a folder",
		name + ":6: data.folders[2].path: " + filepath.Join(dir, "missing") + ": no such file or directory",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

// TestWriteExample checks that examples are written once and never
// overwrite a file.
func TestWriteExample(t *testing.T) {
	dir := t.TempDir()
	for _, name := range ExampleNames {
		path, err := WriteExample(name, dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err != nil {
			t.Errorf("written %s does not load: %v", name, err)
		}
		if _, err := WriteExample(name, dir); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("second write of %s: err = %v, want a refusal", name, err)
		}
	}
	if _, err := Example("nope.yaml"); err == nil {
		t.Error("Example(nope.yaml) succeeded")
	}
}

// TestPresetsExist checks that every preset name the schema accepts is an
// architecture the model package builds.
func TestPresetsExist(t *testing.T) {
	for _, p := range Presets {
		if _, err := nextdit.Preset(p); err != nil {
			t.Errorf("preset %s: %v", p, err)
		}
	}
}

// TestNearest checks the misspelling matcher on its edges.
func TestNearest(t *testing.T) {
	keys := []string{"learning_rate", "max_steps", "epochs", "batch_size", "seed"}
	cases := []struct{ in, want string }{
		{"learning_rat", "learning_rate"},
		{"Learning-Rate", "learning_rate"},
		{"max_step", "max_steps"},
		{"epoch", "epochs"},
		{"sed", "seed"},
		{"xyz", ""},
		{"a", ""},
		{"batchsize", "batch_size"},
	}
	for _, tc := range cases {
		if got := nearest(tc.in, keys); got != tc.want {
			t.Errorf("nearest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestEmptyFile checks that an empty file is all defaults: the three
// required settings are reported, nothing else.
func TestEmptyFile(t *testing.T) {
	_, err := Parse("e.yaml", nil)
	want := strings.Join([]string{
		"e.yaml: model.path: required: a NewBie-image-Exp0.1 model folder, or model.weights with model.vae, model.gemma and model.jina (only the tiny preset may start from random weights)",
		"e.yaml: data.folders: required: at least one dataset folder (data: {folders: [{path: my-images, repeats: 1}]})",
		"e.yaml: train.max_steps: the run has no length: give train.max_steps or train.epochs",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

// TestFinish checks a config built in code: derived fields are filled and
// problems are reported without lines.
func TestFinish(t *testing.T) {
	c := Defaults()
	c.Model.Preset = "tiny"
	c.Data.Folders = []Folder{{Path: "imgs"}}
	c.Data.Resolution = 256
	c.Train.MaxSteps = 500
	c.LoRA.Rank = 4
	got, err := Finish(c, "/base")
	if err != nil {
		t.Fatal(err)
	}
	if got.LoRA.Alpha != 4 || got.Data.Bucket.MinSide != 128 || got.Data.Folders[0].Path != "/base/imgs" {
		t.Errorf("Finish did not complete the config:\n%s", got.YAML())
	}
	c.Train.BatchSize = 0
	c.LoRA.Alpha = -1
	_, err = Finish(c, "/base")
	want := "config: lora.alpha: -1 must be positive (the update is scaled by alpha/rank)\n" +
		"config: train.batch_size: 0 must be at least 1"
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

// TestLoadMissingFile checks that an unreadable file is an error naming it.
func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.yaml")
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v", err)
	}
}
