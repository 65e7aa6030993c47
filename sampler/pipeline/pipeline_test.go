package pipeline

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/data"
	"github.com/newbie-train/newbie-train/internal/golden/goldentest"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/models/lora"
	"github.com/newbie-train/newbie-train/models/nextdit"
	"github.com/newbie-train/newbie-train/models/vae"
	"github.com/newbie-train/newbie-train/optim"
	"github.com/newbie-train/newbie-train/sampler"
)

// quick are settings that sample the tiny model fast.
var quick = Settings{
	Sampler:      sampler.Options{Method: sampler.Euler, Steps: 4, Shift: 6},
	Guidance:     sampler.Guidance{Scale: 4, Renorm: 1},
	SystemPrompt: data.GemmaSystemPrompt,
}

// scaledWeights writes the tiny golden weights with one tensor multiplied.
func scaledWeights(t *testing.T, name string, by float32) string {
	t.Helper()
	f := goldentest.Open(t, "nextdit", "tiny.weights.safetensors")
	var ts []safetensors.Tensor
	for _, info := range f.Tensors() {
		v, err := f.Float32(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Name == name {
			for i := range v {
				v[i] *= by
			}
		}
		ts = append(ts, safetensors.FloatTensor(info.Name, safetensors.F32, info.Shape, v))
	}
	p := filepath.Join(t.TempDir(), "scaled.safetensors")
	if err := safetensors.Write(p, ts, f.Metadata()); err != nil {
		t.Fatal(err)
	}
	return p
}

// generator loads weights in a precision with the stand-in encoders and
// decoder.
func generator(t *testing.T, weights string, p optim.Precision, loras ...LoRAFile) *Generator {
	t.Helper()
	storage, autocast, err := DTypes(p)
	if err != nil {
		t.Fatal(err)
	}
	m, _, _, err := Load(ag.New(cpu.New()), ModelSpec{Weights: weights, LoRAs: loras}, storage)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Release)
	text := StandInTextEncoders(m.Config())
	return &Generator{Model: m, Text: text, Decoder: StandInDecoder{}, Autocast: autocast}
}

// latents samples images and returns their latents.
func latents(t *testing.T, g *Generator, imgs []Image, s Settings) ([]data.Latent, error) {
	t.Helper()
	var out []data.Latent
	err := g.Generate(context.Background(), imgs, s, func(r Result) error {
		out = append(out, r.Latent)
		return nil
	})
	return out, err
}

// TestFP16Overflow: with layers.1's ffn_norm2 weight scaled by 3e4 (still
// inside fp16's range itself), that block's residual update leaves fp16's
// range; fp16 sampling fails naming the step and the block (not an earlier
// one) instead of writing a black image, bf16 samples the same weights, and
// fp16 samples the unscaled ones.
func TestFP16Overflow(t *testing.T) {
	w := scaledWeights(t, "layers.1.ffn_norm2.weight", 3e4)
	imgs := []Image{{Prompt: "x", Seed: 1, Width: 32, Height: 32}}
	_, err := latents(t, generator(t, w, optim.FP16), imgs, quick)
	t.Log(err)
	if !errors.Is(err, ErrOverflow) || !strings.Contains(err.Error(), "step 1 of 3") || !strings.Contains(err.Error(), "output of layers.1") {
		t.Errorf("fp16: %v; want an overflow in layers.1 at step 1", err)
	}
	if _, err := latents(t, generator(t, w, optim.BF16), imgs, quick); err != nil {
		t.Errorf("bf16: %v", err)
	}
	if _, err := latents(t, generator(t, goldentest.Path(t, "nextdit", "tiny.weights.safetensors"), optim.FP16), imgs, quick); err != nil {
		t.Errorf("fp16 with the unscaled weights: %v", err)
	}
}

// TestBatchEqualsSingle: images sampled together (captions of different
// lengths, padded in one batch) match the same images one at a time.
func TestBatchEqualsSingle(t *testing.T) {
	g := generator(t, goldentest.Path(t, "nextdit", "tiny.weights.safetensors"), optim.FP32)
	imgs := []Image{
		{Index: 0, Prompt: "<character_1><n>girl</n><gender>1girl</gender></character_1>", Negative: "lowres, blurry", Seed: 1, Width: 32, Height: 48},
		{Index: 1, Prompt: "sky", Seed: 2, Width: 32, Height: 48},
	}
	one, err := latents(t, g, imgs, quick)
	if err != nil {
		t.Fatal(err)
	}
	g.BatchSize = 2
	both, err := latents(t, g, imgs, quick)
	if err != nil {
		t.Fatal(err)
	}
	for i := range imgs {
		if e := kernels.RelErr(widen(both[i].Data), widen(one[i].Data)); !(e < 1e-5) {
			t.Errorf("image %d: batched vs alone rel err %.3g", i, e)
		}
	}
	if e := kernels.RelErr(widen(one[0].Data), widen(one[1].Data)); !(e > 0.01) {
		t.Errorf("two different prompts and seeds gave latents %.3g apart", e)
	}
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// recorder is a text encoder that records what it is asked to encode.
type recorder struct {
	*data.StandInTextEncoder
	texts []string
}

func (r *recorder) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	r.texts = append(r.texts, texts...)
	return r.StandInTextEncoder.EncodeTexts(ctx, texts)
}

// TestEncodeSystemPrompt: Gemma gets the system prompt before the prompt
// and before a non-empty negative prompt, an empty negative alone; CLIP gets
// the bare texts; the empty negative is one token.
func TestEncodeSystemPrompt(t *testing.T) {
	feat := &recorder{StandInTextEncoder: data.NewStandInTextEncoder(8, 4, 64)}
	pool := &recorder{StandInTextEncoder: data.NewStandInTextEncoder(8, 4, 64)}
	c, err := Encode(context.Background(), data.TextEncoders{Features: feat, Pooled: pool}, "SYS ", []string{"a b", "c"}, []string{"", "bad"}, 4)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(feat.texts, "|"); got != "SYS a b|SYS c||SYS bad" {
		t.Errorf("Gemma read %q", got)
	}
	if got := strings.Join(pool.texts, "|"); got != "a b|c||bad" {
		t.Errorf("CLIP read %q", got)
	}
	if c.B != 2 || c.Lens[2] != 1 || c.Lens[0] <= c.Lens[1] || c.L != c.Lens[0] || len(c.Pooled) != 16 {
		t.Errorf("conditioning: B %d, lengths %v, L %d, %d pooled values", c.B, c.Lens, c.L, len(c.Pooled))
	}
}

// TestStackLoRAs: the stacked adapter's update is the strength-weighted sum
// of the LoRAs' updates, also for layers only one of them adapts, and
// loads onto the model.
func TestStackLoRAs(t *testing.T) {
	a, _, err := checkpoints.ReadLoRA(goldentest.Path(t, "nextdit", "tiny.peft_lora"))
	if err != nil {
		t.Fatal(err)
	}
	// b: rank 2, its own alpha, on two of a's layers and with other values.
	b := &checkpoints.LoRA{Rank: 2, Alpha: 3, Layers: map[string]checkpoints.LoRALayer{}}
	names := a.LayerNames()[:2]
	for k, name := range names {
		ly := a.Layers[name]
		nl := checkpoints.LoRALayer{In: ly.In, Out: ly.Out, Rank: 2, Alpha: 3, A: make([]float32, 2*ly.In), B: make([]float32, ly.Out*2)}
		for i := range nl.A {
			nl.A[i] = float32(kernels.NormalAt(uint64(k), uint64(i), 0, 1))
		}
		for i := range nl.B {
			nl.B[i] = float32(kernels.NormalAt(uint64(k+9), uint64(i), 0, 1))
		}
		b.Layers[name] = nl
	}
	st, err := StackLoRAs([]WeightedLoRA{{a, 0.7}, {b, -1.5}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range a.LayerNames() {
		ly := a.Layers[name]
		got := make([]float32, ly.In*ly.Out)
		want := make([]float32, ly.In*ly.Out)
		if err := lora.AddDelta(got, st.Layers[name]); err != nil {
			t.Fatal(err)
		}
		for _, part := range []struct {
			l *checkpoints.LoRA
			s float64
		}{{a, 0.7}, {b, -1.5}} {
			if pl, ok := part.l.Layers[name]; ok {
				pl.Alpha *= part.s
				if err := lora.AddDelta(want, pl); err != nil {
					t.Fatal(err)
				}
			}
		}
		if e := kernels.RelErr(widen(got), widen(want)); !(e < 1e-6) {
			t.Errorf("%s: stacked update rel err %.3g", name, e)
		}
	}
	m, err := nextdit.Load(ag.New(cpu.New()), goldentest.Path(t, "nextdit", "tiny.weights.safetensors"), nextdit.Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if _, err := lora.Import(m, st, kernels.F32); err != nil {
		t.Errorf("import of the stack: %v", err)
	}
	if _, err := StackLoRAs([]WeightedLoRA{{a, math.NaN()}}); err == nil {
		t.Error("a NaN strength stacked")
	}
}

// TestParametersRoundTrip: the parameters text parses back to what was
// written, quoting included, and a PNG carries it in tEXt or iTXt.
func TestParametersRoundTrip(t *testing.T) {
	img := Image{Prompt: "<n>girl</n>\nsmile, 1girl", Negative: "lowres: bad", Seed: 123, Width: 832, Height: 1216}
	s := quick
	s.Sampler.Method = sampler.DPM
	mi := ModelInfo{Name: "newbie", Hash: "0123456789", LoRAs: []LoRAInfo{{"a", "abc", 0.8}, {"b", "def", 1}}, Precision: "bf16"}
	text := Parameters(img, s, mi)
	prompt, neg, kv, err := ParseParameters(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Steps": "4", "Sampler": "DPM++ 2M", "CFG scale": "4", "Seed": "123", "Size": "832x1216",
		"Model hash": "0123456789", "Model": "newbie", "Lora hashes": "a: abc, b: def", "Lora strengths": "a: 0.8, b: 1",
		"Shift": "6", "CFG truncation": "1", "CFG renorm": "1", "System prompt": data.GemmaSystemPrompt, "Precision": "bf16"}
	if prompt != img.Prompt || neg != img.Negative || len(kv) != len(want) {
		t.Errorf("parsed %q / %q / %v from\n%s", prompt, neg, kv, text)
	}
	for k, v := range want {
		if kv[k] != v {
			t.Errorf("%s = %q, want %q", k, kv[k], v)
		}
	}
	rgb := data.RGB{W: 2, H: 1, Pix: []float32{-1, 1, 0, 0.5, 2, -2}}
	for _, p := range []string{text, "一个剑客, 水墨画\nSteps: 4"} {
		b, err := EncodePNG(rgb, p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := TextChunks(b)
		if err != nil || got[ParametersKey] != p {
			t.Errorf("PNG text %q, %v; want %q", got[ParametersKey], err, p)
		}
	}
}

// callOrder records which encoder was called, in order, around a real
// (stand-in) encoder.
type callOrder struct {
	name  string
	calls *[]string
	enc   data.TextEncoder
}

func (c callOrder) Identity() string { return c.enc.Identity() }

func (c callOrder) EncodeTexts(ctx context.Context, texts []string) ([]data.TextEncoding, error) {
	*c.calls = append(*c.calls, c.name)
	return c.enc.EncodeTexts(ctx, texts)
}

// TestPrepareTexts: the prepared encoders give Encode exactly what the
// encoders themselves give, after one feature call and then one pooled
// call for every image; a text not prepared is an error, not a silent
// encoding.
func TestPrepareTexts(t *testing.T) {
	tiny, _ := nextdit.Preset("tiny")
	real := StandInTextEncoders(tiny)
	var calls []string
	rec := data.TextEncoders{Features: callOrder{"features", &calls, real.Features}, Pooled: callOrder{"pooled", &calls, real.Pooled}}
	imgs := []Image{
		{Prompt: "<n>alice</n>", Negative: "", Width: 64, Height: 64},
		{Prompt: "1girl, smile", Negative: "lowres", Width: 64, Height: 64},
		{Prompt: "<n>alice</n>", Negative: "lowres", Width: 64, Height: 64},
	}
	const system = "system: "
	prep, err := PrepareTexts(context.Background(), rec, system, imgs, tiny.ClipTextDim)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"features", "pooled"}; !slices.Equal(calls, want) {
		t.Fatalf("encoder calls %v, want %v", calls, want)
	}
	if prep.Features.Identity() != real.Features.Identity() {
		t.Errorf("identity %q, want the encoder's %q", prep.Features.Identity(), real.Features.Identity())
	}
	for _, im := range imgs {
		want, err := Encode(context.Background(), real, system, []string{im.Prompt}, []string{im.Negative}, tiny.ClipTextDim)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Encode(context.Background(), prep, system, []string{im.Prompt}, []string{im.Negative}, tiny.ClipTextDim)
		if err != nil {
			t.Fatalf("%q: %v", im.Prompt, err)
		}
		if !slices.Equal(got.Feats, want.Feats) || !slices.Equal(got.Pooled, want.Pooled) || !slices.Equal(got.Lens, want.Lens) {
			t.Errorf("%q: prepared conditioning differs from the encoders'", im.Prompt)
		}
	}
	if _, err := prep.Features.EncodeTexts(context.Background(), []string{"never prepared"}); err == nil {
		t.Error("an unprepared text was answered")
	}
	if len(calls) != 2 {
		t.Errorf("the prepared encoders called the encoders: %v", calls)
	}
}

// TestReadPrompts: text files give a prompt a line; YAML gives per-prompt
// settings, and Images expands seeds and checks sizes.
func TestReadPrompts(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	specs, err := ReadPrompts(write("p.txt", "# comment\n1girl, smile\r\n\nblue sky\n"))
	if err != nil || len(specs) != 2 || specs[0].Prompt != "1girl, smile" || specs[1].Prompt != "blue sky" {
		t.Fatalf("text prompts %+v, %v", specs, err)
	}
	specs, err = ReadPrompts(write("p.yaml", "- a\n- prompt: b\n  seed: 7\n  width: 512\n  negative: \"\"\n"))
	if err != nil || len(specs) != 2 || *specs[1].Seed != 7 || specs[1].Width != 512 || *specs[1].Negative != "" {
		t.Fatalf("yaml prompts %+v, %v", specs, err)
	}
	imgs, err := Images(specs, Defaults{Negative: "n", Seeds: []uint64{1, 2}, Width: 1024, Height: 768})
	if err != nil || len(imgs) != 3 || imgs[1].Seed != 2 || imgs[2].Seed != 7 || imgs[2].Width != 512 || imgs[2].Height != 768 || imgs[2].Negative != "" || imgs[0].Negative != "n" {
		t.Errorf("images %+v, %v", imgs, err)
	}
	for body, want := range map[string]string{
		"- prompt: a\n  size: 3\n":    "size",
		"- prompt: a\n  width: 100\n": "multiples of 16",
		"a: b\n":                      "a list",
		"- \"\"\n":                    "empty prompt",
	} {
		specs, err := ReadPrompts(write("bad.yaml", body))
		if err == nil {
			_, err = Images(specs, Defaults{Seeds: []uint64{1}, Width: 64, Height: 64})
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error mentioning %q", body, err, want)
		}
	}
}

// TestVAEDecoder: the decoder maps the DiT latent of the golden tiny VAE
// back through latent/scale + shift and the decoder to its out.decoded.
func TestVAEDecoder(t *testing.T) {
	g := goldentest.Open(t, "vae", "vae_tiny.golden.safetensors")
	m, err := vae.Load(ag.New(cpu.New()), goldentest.Path(t, "vae", "vae_tiny.weights.safetensors"), vae.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	lat := goldentest.Tensor(t, g, "out.latent")
	want := goldentest.Tensor(t, g, "out.decoded")
	b, c, h, w := lat.Shape[0], lat.Shape[1], lat.Shape[2], lat.Shape[3]
	ls := make([]data.Latent, b)
	for i := range ls {
		ls[i] = data.Latent{C: c, H: h, W: w, Data: make([]float32, c*h*w)}
		for j := range ls[i].Data {
			ls[i].Data[j] = float32(lat.Values[i*c*h*w+j])
		}
	}
	imgs, err := NewVAEDecoder(m, 0).DecodeLatents(context.Background(), ls)
	if err != nil {
		t.Fatal(err)
	}
	var got []float64
	for _, im := range imgs {
		if im.W != want.Shape[3] || im.H != want.Shape[2] {
			t.Fatalf("decoded %dx%d, want %v", im.W, im.H, want.Shape)
		}
		got = append(got, widen(im.Pix)...)
	}
	goldentest.Check(t, "decoded", got, want.Values, 1e-5)
}
