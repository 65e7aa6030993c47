package vae

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// TestFLUXSize: the FLUX.1 architecture has 83,819,683 parameters in 244
// tensors, the size of the published autoencoder (ae.safetensors is 335 MB
// in fp32, the diffusers bf16 copy 168 MB); a missing or extra block,
// width or shortcut in Params would change the count.
func TestFLUXSize(t *testing.T) {
	ps := FLUX().Params()
	n := 0
	for _, p := range ps {
		k := 1
		for _, d := range p.Shape {
			k *= d
		}
		n += k
	}
	if n != 83819683 || len(ps) != 244 {
		t.Fatalf("FLUX: %d parameters in %d tensors, want 83819683 in 244", n, len(ps))
	}
	if err := FLUX().Validate(); err != nil {
		t.Fatal(err)
	}
	if FLUX().Downsample() != 8 {
		t.Fatalf("FLUX downsample %d, want 8", FLUX().Downsample())
	}
}

// TestParseConfig: configs the package builds parse; every other one is
// refused naming the field.
func TestParseConfig(t *testing.T) {
	base := `"in_channels": 3, "out_channels": 3, "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32, "act_fn": "silu", "use_quant_conv": false, "use_post_quant_conv": false`
	blocks := `"down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]`
	cases := []struct {
		name, js, wantErr string
		shift, scale      float64
	}{
		{"tiny with factors", `{` + base + `, ` + blocks + `, "block_out_channels": [32, 64], "shift_factor": 0.5, "scaling_factor": 2, "sample_size": 1024}`, "", 0.5, 2},
		{"defaults for factors", `{` + base + `, ` + blocks + `, "block_out_channels": [32, 64]}`, "", DefaultShift, DefaultScale},
		{"null shift", `{` + base + `, ` + blocks + `, "block_out_channels": [32, 64], "shift_factor": null}`, "", DefaultShift, DefaultScale},
		{"bad json", `{`, "config JSON", 0, 0},
		{"groups", `{` + base + `, ` + blocks + `, "block_out_channels": [32, 48]}`, "norm_num_groups", 0, 0},
		{"block count", `{` + base + `, ` + blocks + `, "block_out_channels": [32, 64, 64]}`, "block types", 0, 0},
		{"act", `{` + strings.Replace(base, "silu", "gelu", 1) + `, ` + blocks + `, "block_out_channels": [32, 64]}`, "act_fn", 0, 0},
		{"quant conv", `{` + strings.Replace(base, `"use_quant_conv": false`, `"use_quant_conv": true`, 1) + `, ` + blocks + `, "block_out_channels": [32, 64]}`, "use_quant_conv", 0, 0},
		{"quant conv absent", `{"in_channels": 3, "out_channels": 3, "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, ` + blocks + `, "block_out_channels": [32, 64]}`, "absent", 0, 0},
		{"block type", `{` + base + `, "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "block_out_channels": [32, 64]}`, "down_block_types[1]", 0, 0},
		{"no blocks", `{` + base + `, "block_out_channels": []}`, "empty", 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig(c.js)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Shift() != c.shift || cfg.Scale() != c.scale {
				t.Fatalf("shift %v scale %v, want %v %v", cfg.Shift(), cfg.Scale(), c.shift, c.scale)
			}
		})
	}
}

// rewrite copies the golden weights to dir/name with edit applied to the
// tensor list, keeping the metadata unless meta is non-nil.
func rewrite(t *testing.T, g goldenRun, dir, name string, meta map[string]string, edit func([]safetensors.Tensor) []safetensors.Tensor) string {
	t.Helper()
	f, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []safetensors.Tensor
	for _, n := range f.Names() {
		v, err := f.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := f.Info(n)
		ts = append(ts, safetensors.FloatTensor(n, safetensors.F32, info.Shape, v))
	}
	if meta == nil {
		meta = f.Metadata()
	}
	p := filepath.Join(dir, name)
	if err := safetensors.Write(p, edit(ts), meta); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKeyReport: a file with a missing, an unexpected and a mis-shaped key
// is refused with all three named in one error.
func TestKeyReport(t *testing.T) {
	g := openGolden(t)
	dir := t.TempDir()
	p := rewrite(t, g, dir, "broken.safetensors", nil, func(ts []safetensors.Tensor) []safetensors.Tensor {
		var out []safetensors.Tensor
		for _, x := range ts {
			switch x.Name {
			case "decoder.mid_block.attentions.0.to_q.weight": // dropped
			case "encoder.conv_in.bias":
				out = append(out, safetensors.FloatTensor(x.Name, safetensors.F32, []int{31}, make([]float32, 31)))
			default:
				out = append(out, x)
			}
		}
		return append(out, safetensors.FloatTensor("encoder.quant_conv.weight", safetensors.F32, []int{2}, []float32{1, 2}))
	})
	_, err := Load(newEngine(), p, Options{})
	ke, ok := IsKeyError(err)
	if !ok {
		t.Fatalf("error %v is not a key report", err)
	}
	if len(ke.Missing) != 1 || ke.Missing[0].Name != "decoder.mid_block.attentions.0.to_q.weight" ||
		len(ke.Unexpected) != 1 || ke.Unexpected[0] != "encoder.quant_conv.weight" ||
		len(ke.Misshaped) != 1 || ke.Misshaped[0].Name != "encoder.conv_in.bias" {
		t.Fatalf("report %+v", ke)
	}
	for _, s := range []string{"missing    decoder.mid_block.attentions.0.to_q.weight (expected shape [64 64])", "unexpected encoder.quant_conv.weight", "mis-shaped encoder.conv_in.bias: file has [31]", p} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("report lacks %q:\n%v", s, err)
		}
	}
}

// TestConfigSources: without config metadata, the architecture comes from
// Options.Config, else a config.json beside the file, else FLUX (whose
// shapes the tiny weights then fail, as a key report).
func TestConfigSources(t *testing.T) {
	g := openGolden(t)
	f, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	js := f.Metadata()["config"]
	f.Close()
	tiny, err := ParseConfig(js)
	if err != nil {
		t.Fatal(err)
	}
	keep := func(ts []safetensors.Tensor) []safetensors.Tensor { return ts }

	bare := t.TempDir()
	p := rewrite(t, g, bare, "diffusion_pytorch_model.safetensors", map[string]string{}, keep)
	if _, err := Load(newEngine(), p, Options{}); err == nil {
		t.Fatal("tiny weights loaded as FLUX")
	} else if ke, ok := IsKeyError(err); !ok || len(ke.Misshaped) == 0 {
		t.Fatalf("FLUX fallback: %v", err)
	}
	m, err := Load(newEngine(), p, Options{Config: &tiny, DType: kernels.F32})
	if err != nil {
		t.Fatalf("with Options.Config: %v", err)
	}
	m.Release()

	folder := t.TempDir()
	p = rewrite(t, g, folder, "diffusion_pytorch_model.safetensors", map[string]string{}, keep)
	if err := os.WriteFile(filepath.Join(folder, "config.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err = Load(newEngine(), p, Options{})
	if err != nil {
		t.Fatalf("with config.json: %v", err)
	}
	if m.Config().JSON() != tiny.JSON() || m.Options().DType != kernels.F32 {
		t.Fatalf("config %s dtype %v; want %s F32", m.Config().JSON(), m.Options().DType, tiny.JSON())
	}
	m.Release()

	if _, err := Load(newEngine(), p, Options{DType: kernels.I32}); err == nil || !strings.Contains(err.Error(), "not a float") {
		t.Fatalf("int storage: %v", err)
	}
	if _, err := Load(newEngine(), filepath.Join(folder, "absent.safetensors"), Options{}); err == nil {
		t.Fatal("an absent file loaded")
	}
}

// TestConfigConflict: a config asked for that differs from the file's own
// is refused.
func TestConfigConflict(t *testing.T) {
	g := openGolden(t)
	flux := FLUX()
	if _, err := Load(newEngine(), g.weights, Options{Config: &flux}); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("error %v, want a config conflict", err)
	}
}

// TestBFLLayout: the golden weights renamed to Black Forest Labs' layout
// (attention linears as 1×1 convs, up blocks numbered the other way) load
// to the same model: the golden outputs match and the weights hash is the
// diffusers file's. A BFL file missing a key is reported under its
// diffusers name.
func TestBFLLayout(t *testing.T) {
	g := openGolden(t)
	f, err := safetensors.Open(g.weights)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(f.Metadata()["config"])
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	toBFL := func(drop string) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			var out []safetensors.Tensor
			for _, x := range ts {
				if x.Name == drop {
					continue
				}
				name, conv := bflName(x.Name, cfg)
				shape := x.Shape
				if conv {
					shape = []int{shape[0], shape[1], 1, 1}
				}
				x.Name, x.Shape = name, shape
				out = append(out, x)
			}
			return out
		}
	}
	for _, c := range []struct{ diffusers, bfl string }{
		{"encoder.down_blocks.1.resnets.0.conv1.weight", "encoder.down.1.block.0.conv1.weight"},
		{"encoder.down_blocks.2.resnets.0.conv_shortcut.bias", "encoder.down.2.block.0.nin_shortcut.bias"},
		{"encoder.down_blocks.0.downsamplers.0.conv.weight", "encoder.down.0.downsample.conv.weight"},
		{"encoder.mid_block.resnets.1.norm2.bias", "encoder.mid.block_2.norm2.bias"},
		{"decoder.mid_block.attentions.0.to_out.0.weight", "decoder.mid.attn_1.proj_out.weight"},
		{"decoder.mid_block.attentions.0.group_norm.weight", "decoder.mid.attn_1.norm.weight"},
		{"decoder.up_blocks.0.upsamplers.0.conv.bias", "decoder.up.3.upsample.conv.bias"},
		{"decoder.up_blocks.3.resnets.2.conv2.weight", "decoder.up.0.block.2.conv2.weight"},
		{"decoder.conv_norm_out.weight", "decoder.norm_out.weight"},
	} {
		if got, _ := bflName(c.diffusers, cfg); got != c.bfl {
			t.Errorf("bflName(%s) = %s, want %s", c.diffusers, got, c.bfl)
		}
	}
	dir := t.TempDir()
	p := rewrite(t, g, dir, "ae.safetensors", nil, toBFL(""))
	e := newEngine()
	ref, err := Load(e, g.weights, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Release()
	m, err := Load(e, p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if m.WeightsHash() != ref.WeightsHash() {
		t.Errorf("BFL layout hash %s, diffusers %s", m.WeightsHash(), ref.WeightsHash())
	}
	img, shape := g.get(t, "in.image")
	e.NoGrad(func() {
		x := e.FromFloat64(kernels.F32, shape, img)
		lat, err := m.Latent(x)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := g.get(t, "out.latent")
		kerneltest.Check(t, "BFL-layout latent", values(t, lat), want, 1e-5)
		mean, _, err := m.Encode(x)
		if err != nil {
			t.Fatal(err)
		}
		dec, err := m.Decode(mean)
		if err != nil {
			t.Fatal(err)
		}
		want, _ = g.get(t, "out.decoded")
		kerneltest.Check(t, "BFL-layout decoded", values(t, dec), want, 1e-5)
	})
	if err := e.EndStep(); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct{ path, layout string }{{g.weights, LayoutDiffusers}, {p, LayoutBFL}} {
		bf, err := safetensors.Open(c.path)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := DetectLayout(bf.Names())
		bf.Close()
		ccfg, clayout, cerr := Check(c.path, Options{})
		if !ok || got != c.layout || cerr != nil || clayout != c.layout || ccfg.JSON() != cfg.JSON() {
			t.Errorf("%s: DetectLayout %q %v, Check %q %v: want %q and no error", c.path, got, ok, clayout, cerr, c.layout)
		}
	}
	if got, ok := DetectLayout([]string{"layers.0.attention.qkv.weight"}); ok {
		t.Errorf("DetectLayout of a Next-DiT key: %q, want not a VAE", got)
	}

	p = rewrite(t, g, dir, "ae-broken.safetensors", nil, toBFL("decoder.mid_block.attentions.0.to_k.bias"))
	_, err = Load(e, p, Options{})
	if ke, ok := IsKeyError(err); !ok || len(ke.Missing) != 1 || ke.Missing[0].Name != "decoder.mid_block.attentions.0.to_k.bias" || len(ke.Unexpected) != 0 {
		t.Fatalf("BFL file without a key: %v", err)
	}
	if _, _, err := Check(p, Options{}); err == nil || !strings.Contains(err.Error(), "decoder.mid_block.attentions.0.to_k.bias") {
		t.Errorf("Check of a BFL file without a key: %v, want the key report", err)
	}
}
