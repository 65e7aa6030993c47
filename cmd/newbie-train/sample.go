package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/configs"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/models/newbie"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/optim"
	"github.com/newbie-train/newbie-train/sampler"
	"github.com/newbie-train/newbie-train/sampler/pipeline"
	"github.com/newbie-train/newbie-train/train"
)

// sampleOptions are the flags of `newbie-train sample`.
type sampleOptions struct {
	config, model, weights, preset string
	vae                            string
	loras                          []string
	prompts                        []string
	promptsFile                    string
	negative, systemPrompt         string
	seeds                          []uint
	width, height                  int
	method                         string
	steps                          int
	shift, cfg, cfgTrunc, renorm   float64
	precision, device              string
	gpu, batch                     int
	out                            string
	grid                           bool
}

func newSampleCmd(stdout, stderr io.Writer) *cobra.Command {
	o := &sampleOptions{}
	cmd := &cobra.Command{
		Use:   "sample --model FOLDER [--lora FILE[:STRENGTH]]... --prompt P... [--out DIR]",
		Short: "Make images with a base model and LoRAs, as upstream's sampler does",
		Long: `sample makes images with the base model and zero or more LoRAs (PEFT folders, ours or NewbieLoraTrainer's; ComfyUI,
diffusion-pipe and ai-toolkit single files; kohya files), each with a strength.
The LoRAs are applied as adapters on the frozen base, not merged into it, as
the trainer ran them: merged into bf16 weights, the part of an update below
half a weight's last bit would round away.

Prompts come from --prompt (repeatable) and --prompts FILE: one prompt a line,
or YAML, a list of prompts or of mappings with prompt, negative, seed, width and
height. Prompts are read as training reads captions (NewBie XML, tags or prose;
XML is rendered in the canonical layout). As upstream inference does it, the
system prompt goes before the prompt for Gemma, before the negative prompt only
when that is not empty, and never to Jina CLIP.

The sampler is upstream's: --sampler midpoint (default) or euler is
torchdiffeq's fixed-grid method over the shifted grid, dpm is DPM-Solver++
(second-order multistep, time_uniform_flow). --steps means what upstream's
num_sampling_steps means: for midpoint and euler the number of grid points,
so steps−1 integration steps (midpoint evaluates the model twice a step); for
dpm the number of solver steps (one evaluation each). Guidance runs the prompt
and the negative prompt in one batch while the evaluation's t < --cfg-trunc,
with --renorm-cfg capping the guided velocity at that many times the
conditional one's norm.

Every image is written as <out>/<prompt index>-<seed>.png (written whole and
renamed, so Ctrl-C leaves no half file; exit code 130) with its settings in a
PNG "parameters" text chunk in the A1111 / Forge form. The noise of a seed is
this program's own (the same on every backend), not torch.randn's.

--config lora.yaml takes the model, the sample: section (prompts, negative
prompt, steps, cfg, seed, sampler, time shift, resolution) and the caption
settings (system prompt, trigger word) from a training config, so the images
match the run's previews; flags given as well override it.

Precision: bf16 where the GPU's compute capability is ≥ 8.0, fp16 below,
fp32 on the CPU, unless --precision says otherwise; in fp16 every model
evaluation is checked for overflow and a failure names the step and block.

The model is a NewBie-image-Exp0.1 folder (--model, or model.path and the
single files of a config's model: section; --weights and --vae replace the
folder's transformer and VAE). The prompts are encoded first, by Gemma 3 and
then Jina CLIP v2, each freed before the next loads, then the DiT samples and
the FLUX VAE decodes: the peak is the largest of these, not their sum. The tiny
preset without a folder samples on the stand-in encoders and the stand-in
decoder (block colours, not pictures) unless --vae gives a FLUX VAE.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSample(cmd.Context(), o, cmd.Flags().Changed, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.config, "config", "c", "", "take the model and the sample: section from a training config")
	f.StringVar(&o.model, "model", "", "a NewBie-image-Exp0.1 model folder (Hugging Face, diffusers or a flat folder of single files)")
	f.StringVar(&o.weights, "weights", "", "the transformer's weights (a file, a sharded index or a diffusers folder), replacing the folder's")
	f.StringVar(&o.preset, "preset", "", "architecture when the weights have no config metadata (newbie-exp0.1, lumina2, tiny); inferred from the shapes when omitted")
	f.StringArrayVar(&o.loras, "lora", nil, "a LoRA and its strength, FILE[:STRENGTH] (default strength 1); repeatable")
	f.StringVar(&o.vae, "vae", "", "FLUX VAE weights to decode with, replacing the folder's")
	f.StringArrayVar(&o.prompts, "prompt", nil, "a prompt; repeatable")
	f.StringVar(&o.promptsFile, "prompts", "", "a file of prompts: one a line, or YAML (see above)")
	f.StringVar(&o.negative, "negative", "", "the negative prompt (default empty)")
	f.StringVar(&o.systemPrompt, "system-prompt", data.GemmaSystemPrompt, "text put before the prompts for Gemma (by default the prefix of NewBie's XML training captions)")
	f.UintSliceVar(&o.seeds, "seed", []uint{42}, "noise seeds; every prompt is made once per seed")
	f.IntVar(&o.width, "width", 1024, "image width, a multiple of 16")
	f.IntVar(&o.height, "height", 1024, "image height, a multiple of 16")
	f.StringVar(&o.method, "sampler", string(sampler.Midpoint), "midpoint, euler or dpm")
	f.IntVar(&o.steps, "steps", 28, "upstream's num_sampling_steps: grid points for midpoint and euler (steps−1 steps), solver steps for dpm")
	f.Float64Var(&o.shift, "shift", 6, "time shift of the grid, as upstream's t_shift")
	f.Float64Var(&o.cfg, "cfg", 5, "classifier-free guidance scale; 1 turns it off")
	f.Float64Var(&o.cfgTrunc, "cfg-trunc", 1, "guide only evaluations at t < this (t = 1 is the image); 1 guides all")
	f.Float64Var(&o.renorm, "renorm-cfg", 0, "cap the guided velocity at this times the conditional one's norm; 0 turns it off")
	f.StringVar(&o.precision, "precision", "auto", "auto, bf16, fp16 or fp32")
	f.StringVar(&o.device, "device", "auto", "auto (CUDA when a GPU is found), cuda or cpu")
	f.IntVar(&o.gpu, "gpu", 0, "CUDA device index")
	f.IntVar(&o.batch, "batch-size", 1, "images of one size sampled together")
	f.StringVarP(&o.out, "out", "o", "samples", "folder for the PNGs")
	f.BoolVar(&o.grid, "grid", false, "also write all images tiled into <out>/grid.png")
	return cmd
}

// samplePlan is everything a sample run does, checked before any of it
// runs.
type samplePlan struct {
	// model names the parts as a config does (folder and single files);
	// real says the real encoders are used.
	model    configs.Model
	real     bool
	budget   int64
	spec     pipeline.ModelSpec
	settings pipeline.Settings
	images   []pipeline.Image
}

// planSample turns the flags (and the config, when given) into a plan;
// every problem is a usage error.
func planSample(o *sampleOptions, changed func(string) bool) (*samplePlan, error) {
	p := &samplePlan{spec: pipeline.ModelSpec{Weights: o.weights, Preset: o.preset}}
	var cfg *configs.Config
	trigger := ""
	if o.config != "" {
		var err error
		if cfg, err = loadConfig(o.config, nil); err != nil {
			return nil, err
		}
		s := cfg.Sample
		p.model = cfg.Model
		p.budget = train.MemoryBudget(cfg)
		if !changed("weights") {
			p.spec.Weights = cfg.Model.Weights
		}
		if !changed("preset") {
			p.spec.Preset = cfg.Model.Preset
		}
		p.spec.RandomSeed = cfg.Train.Seed
		set := func(name string, apply func()) {
			if !changed(name) {
				apply()
			}
		}
		set("prompt", func() { o.prompts = s.Prompts })
		set("negative", func() { o.negative = s.NegativePrompt })
		set("steps", func() { o.steps = s.Steps })
		set("cfg", func() { o.cfg = s.CFG })
		set("seed", func() { o.seeds = []uint{uint(s.Seed)} })
		set("sampler", func() { o.method = s.Sampler })
		set("shift", func() { o.shift = s.TimeShift })
		set("width", func() { o.width = s.Resolution })
		set("height", func() { o.height = s.Resolution })
		set("device", func() { o.device = cfg.Device })
		set("gpu", func() { o.gpu = cfg.GPU })
		set("system-prompt", func() { o.systemPrompt = pipeline.ConfigSettings(cfg).SystemPrompt })
		trigger = cfg.Data.Caption.TriggerWord
	}
	if changed("model") || o.config == "" {
		p.model.Path = o.model
	}
	if changed("weights") || o.config == "" {
		p.model.Weights = o.weights
	}
	if changed("vae") || o.config == "" {
		p.model.VAE = o.vae
	}
	p.model.Preset = p.spec.Preset
	// Real encoders for a model folder or encoder files, and for every
	// model but the tiny one (whose preset may also be told by its file).
	p.real = p.model.NamesEncoders()
	if !p.real && p.spec.Preset != "tiny" {
		if p.spec.Weights == "" {
			return nil, usageError{errors.New("sample needs --model FOLDER (or --config with model.path), or --preset tiny")}
		}
		mcfg, err := pipeline.ModelConfig(p.spec)
		if err != nil {
			return nil, err
		}
		tiny, _ := nextdit.Preset("tiny")
		p.real = mcfg.JSON() != tiny.JSON()
	}
	for _, l := range o.loras {
		lf, err := pipeline.ParseLoRAFlag(l)
		if err != nil {
			return nil, usageError{err}
		}
		p.spec.LoRAs = append(p.spec.LoRAs, lf)
	}
	p.settings = pipeline.Settings{
		Sampler:      sampler.Options{Method: sampler.Method(o.method), Steps: o.steps, Shift: o.shift},
		Guidance:     sampler.Guidance{Scale: o.cfg, Trunc: o.cfgTrunc, Renorm: o.renorm},
		SystemPrompt: o.systemPrompt,
	}
	if err := p.settings.Validate(); err != nil {
		return nil, usageError{err}
	}
	if o.batch < 1 {
		return nil, usageError{fmt.Errorf("--batch-size %d: want at least 1", o.batch)}
	}
	specs := make([]pipeline.PromptSpec, len(o.prompts))
	for i, t := range o.prompts {
		specs[i].Prompt = t
	}
	if o.promptsFile != "" {
		more, err := pipeline.ReadPrompts(o.promptsFile)
		if err != nil {
			return nil, usageError{err}
		}
		specs = append(specs, more...)
	}
	if len(specs) == 0 {
		return nil, usageError{errors.New("sample needs a prompt: --prompt, --prompts FILE or --config with sample.prompts")}
	}
	seeds := make([]uint64, len(o.seeds))
	for i, s := range o.seeds {
		seeds[i] = uint64(s)
	}
	imgs, err := pipeline.Images(specs, pipeline.Defaults{Negative: o.negative, Seeds: seeds, Width: o.width, Height: o.height, Trigger: trigger})
	if err != nil {
		return nil, usageError{err}
	}
	p.images = imgs
	return p, nil
}

func runSample(ctx context.Context, o *sampleOptions, changed func(string) bool, stdout, stderr io.Writer) error {
	plan, err := planSample(o, changed)
	if err != nil {
		return err
	}
	if _, err := optim.ParsePrecision(o.precision); err != nil {
		return usageError{fmt.Errorf("--precision: %w", err)}
	}
	var found *newbie.Model
	if plan.real {
		if found, err = train.FindModel(plan.model, sampleKeys); err != nil {
			return usageError{err}
		}
		plan.spec.Weights, plan.spec.Arch = found.DiT.Path, &found.DiT.Arch
	}
	mcfg, err := pipeline.ModelConfig(plan.spec)
	if err != nil {
		return err
	}
	b, capability, err := train.OpenBackend(o.device, o.gpu, stderr)
	if err != nil {
		return err
	}
	prec, err := optim.Precision(o.precision).Resolve(capability)
	if err != nil {
		return usageError{err}
	}
	storage, autocast, err := pipeline.DTypes(prec)
	if err != nil {
		return usageError{err}
	}
	e := ag.New(b)
	start := time.Now()
	text, textNotice := pipeline.StandInTextEncoders(mcfg), pipeline.StandInNotice
	if found != nil {
		// Every prompt through Gemma 3, then Jina CLIP, before the DiT loads.
		p, err := newbie.NewPipeline(e, found, newbie.Options{Budget: plan.budget, Log: stderr})
		if err != nil {
			return err
		}
		text, err = pipeline.PrepareTexts(ctx, p.TextEncoders(), plan.settings.SystemPrompt, plan.images, mcfg.ClipTextDim)
		if cerr := p.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w: stopped while encoding the prompts (nothing was written)", errInterrupted)
			}
			return err
		}
		textNotice = "Gemma 3 + Jina CLIP v2"
	}
	start = time.Now()
	b.ResetPeak() // the encoders are gone: the peak from here is the DiT's and the VAE's
	model, _, info, err := pipeline.Load(e, plan.spec, storage)
	if err != nil {
		return err
	}
	defer model.Release()
	var dec pipeline.Decoder = pipeline.StandInDecoder{}
	vaePath := plan.model.VAE
	if found != nil {
		vaePath = found.VAE.Path
	}
	if vaePath != "" {
		v, err := pipeline.LoadVAEDecoder(e, vaePath, autocast)
		if err != nil {
			return err
		}
		defer v.Release()
		dec = v
	}
	hashes := hashInfo(plan.spec)
	info.Precision, info.Encoders, info.Decoder, info.Version = string(prec), textNotice, dec.Name(), programVersion()
	loaded := time.Since(start)
	fmt.Fprintf(stderr, "sample: %s on %s in %s (model loaded in %.1fs); %s; %s\n", info.Name, b.Name(), prec, loaded.Seconds(), textNotice, dec.Name())
	for _, l := range plan.spec.LoRAs {
		fmt.Fprintf(stderr, "sample: LoRA %s at strength %g (an adapter on the frozen base)\n", l.Path, l.Strength)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	gen := pipeline.Generator{Model: model, Text: text, Decoder: dec, Autocast: autocast, BatchSize: o.batch,
		Progress: progressPrinter(stderr)}
	var written []string
	var rgbs []data.RGB
	firstParams := ""
	err = gen.Generate(ctx, plan.images, plan.settings, func(r pipeline.Result) error {
		h := <-hashes
		hashes <- h
		mi := info
		mi.Hash = h.model
		for i := range mi.LoRAs {
			mi.LoRAs[i].Hash = h.loras[i]
		}
		params := pipeline.Parameters(r.Image, plan.settings, mi)
		path := filepath.Join(o.out, fmt.Sprintf("%03d-%d.png", r.Image.Index, r.Image.Seed))
		if err := pipeline.WritePNG(path, r.RGB, params); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "sample: wrote %s\n", path)
		written = append(written, path)
		if o.grid {
			rgbs = append(rgbs, r.RGB)
			if firstParams == "" {
				firstParams = params
			}
		}
		return nil
	})
	if errors.Is(err, context.Canceled) || (err != nil && ctx.Err() != nil) {
		return fmt.Errorf("%w: sampling stopped after %d of %d images (every written PNG is whole)", errInterrupted, len(written), len(plan.images))
	}
	if err != nil {
		return err
	}
	if o.grid {
		path := filepath.Join(o.out, "grid.png")
		if err := pipeline.WritePNG(path, pipeline.Grid(rgbs, 0), firstParams); err != nil {
			return err
		}
		written = append(written, path)
	}
	total := time.Since(start)
	fmt.Fprintf(stdout, "wrote %d images to %s in %.1fs (model load %.1fs, sampling and decode %.1fs), peak %s on %s\n",
		len(plan.images), o.out, total.Seconds(), loaded.Seconds(), (total - loaded).Seconds(), train.BytesText(b.MemStats().Peak), b.Name())
	return nil
}

// fileHashes are the short hashes of a run's model and LoRAs.
type fileHashes struct {
	model string
	loras []string
}

// hashInfo hashes the base and the LoRAs in the background (a full model's
// file takes seconds) and hands the result over a channel of one, which
// readers put back after taking it. A file that cannot be hashed gets no
// hash.
func hashInfo(spec pipeline.ModelSpec) chan fileHashes {
	ch := make(chan fileHashes, 1)
	go func() {
		var h fileHashes
		if spec.Weights != "" {
			h.model, _ = pipeline.ShortHash(spec.Weights)
		}
		for _, l := range spec.LoRAs {
			s, _ := pipeline.ShortHash(l.Path)
			h.loras = append(h.loras, s)
		}
		ch <- h
	}()
	return ch
}

// progressPrinter reports each image batch's steps on w: the first and last
// step of every batch and at most one line a second between.
func progressPrinter(w io.Writer) func(pipeline.Progress) {
	var last time.Time
	return func(p pipeline.Progress) {
		if p.Step != 1 && p.Step != p.Steps && time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		names := make([]string, len(p.Batch))
		for i, im := range p.Batch {
			names[i] = fmt.Sprintf("%03d-%d", im.Index, im.Seed)
		}
		fmt.Fprintf(w, "sample: image %d/%d [%s]: step %d/%d, %s elapsed, ETA %s\n",
			p.Done+1, p.Total, strings.Join(names, " "), p.Step, p.Steps,
			p.Elapsed.Round(100*time.Millisecond), p.ETA.Round(100*time.Millisecond))
	}
}

// sampleKeys name the model's parts by the flags, or the config keys, that
// give them.
var sampleKeys = map[newbie.Part]string{
	newbie.PartDiT: "--weights (model.weights)", newbie.PartVAE: "--vae (model.vae)",
	newbie.PartGemma: "model.gemma in --config", newbie.PartGemmaTokenizer: "model.gemma_tokenizer in --config",
	newbie.PartJina: "model.jina in --config", newbie.PartJinaTokenizer: "model.jina_tokenizer in --config",
}
