package lora

import (
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
	"github.com/newbie-train/newbie-train/models/nextdit"
)

// TestExportImportRoundTrip: the golden PEFT adapter, exported and written
// in each format, reads back (through the format-detecting Load) into a
// set whose export is identical and whose model output is identical, bit
// for bit, to the original's.
func TestExportImportRoundTrip(t *testing.T) {
	g := needGolden(t)
	m := loadTiny(t, kernels.F32)
	s, err := LoadPEFT(m, peftDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.Export()
	if err != nil {
		t.Fatal(err)
	}
	if ref.Rank != 4 || ref.Alpha != 8 || len(ref.Layers) != 35 {
		t.Fatalf("export: rank %d alpha %g, %d layers; want 4, 8, 35", ref.Rank, ref.Alpha, len(ref.Layers))
	}
	yRef, _ := run(t, m, g, kernels.F32, 0, false)
	ref.Meta[checkpoints.MetaSteps] = "17"
	for _, f := range []checkpoints.Format{checkpoints.FormatPEFT, checkpoints.FormatComfyUI, checkpoints.FormatKohya} {
		t.Run(string(f), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lora")
			if f != checkpoints.FormatPEFT {
				path += ".safetensors"
			}
			if err := checkpoints.WriteLoRA(path, ref, f, checkpoints.ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			m2 := loadTiny(t, kernels.F32)
			s2, got, err := Load(m2, path, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got != f {
				t.Errorf("detected format %s, wrote %s", got, f)
			}
			back, err := s2.Export()
			if err != nil {
				t.Fatal(err)
			}
			back.Meta = ref.Meta
			if !reflect.DeepEqual(back, ref) {
				t.Errorf("exported LoRA differs after a %s round trip", f)
			}
			y, _ := run(t, m2, g, kernels.F32, 0, false)
			for i := range y {
				if math.Float64bits(y[i]) != math.Float64bits(yRef[i]) {
					t.Fatalf("output[%d] %v after the round trip, %v before", i, y[i], yRef[i])
				}
			}
		})
	}
}

// TestImportRefuses: LoRAs that do not fit the model are refused with every
// problem named, and leave the model's previous hook in place.
func TestImportRefuses(t *testing.T) {
	needGolden(t)
	src, _, err := checkpoints.ReadLoRA(peftDir)
	if err != nil {
		t.Fatal(err)
	}
	clone := func() *checkpoints.LoRA {
		l := *src
		l.Layers = map[string]checkpoints.LoRALayer{}
		for k, v := range src.Layers {
			l.Layers[k] = v
		}
		return &l
	}
	cases := []struct {
		name   string
		edit   func(l *checkpoints.LoRA)
		wants  []string
		master kernels.DType
	}{
		{"extra and missing layers", func(l *checkpoints.LoRA) {
			l.Layers["layers.7.attention.qkv"] = l.Layers["layers.0.attention.qkv"]
			delete(l.Layers, "layers.1.feed_forward.w2")
		}, []string{"unexpected layer layers.7.attention.qkv", "missing layers.1.feed_forward.w2 (targets select it; expected A [4 384], B [96 4])"}, 0},
		{"mis-shaped", func(l *checkpoints.LoRA) {
			ly := l.Layers["layers.0.feed_forward.w1"]
			ly.In, ly.Out = ly.Out, ly.In
			ly.A = make([]float32, ly.Rank*ly.In)
			ly.B = make([]float32, ly.Out*ly.Rank)
			l.Layers["layers.0.feed_forward.w1"] = ly
		}, []string{"mis-shaped layers.0.feed_forward.w1: the LoRA has in 384, out 96; the model's layer has in 96, out 384"}, 0},
		{"per-layer alpha", func(l *checkpoints.LoRA) {
			ly := l.Layers["layers.0.attention.out"]
			ly.Alpha = 3
			l.Layers["layers.0.attention.out"] = ly
		}, []string{"own rank or alpha", "layers.0.attention.out (rank 4, alpha 3)"}, 0},
		{"unknown target", func(l *checkpoints.LoRA) { l.Targets = append(l.Targets, "attn.to_q") }, []string{"attn.to_q"}, 0},
		{"bad master", func(*checkpoints.LoRA) {}, []string{"master"}, kernels.BF16},
		{"empty", func(l *checkpoints.LoRA) { l.Layers = nil }, []string{"no layers"}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := clone()
			c.edit(l)
			m := loadTiny(t, kernels.F32)
			keep, err := Attach(m, Config{Rank: 1, Alpha: 1, Targets: []string{"attention.out"}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = Import(m, l, c.master)
			for _, w := range c.wants {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v lacks %q", err, w)
				}
			}
			if h, ok := m.Hook().(*Set); !ok || h != keep {
				t.Errorf("a failed Import changed the model's hook")
			}
		})
	}
}

// TestParityAdapter: the golden PEFT adapter, also as a kohya file, passes
// RunGolden's LoRA comparison in float64; the same LoRA with alpha doubled
// does not.
func TestParityAdapter(t *testing.T) {
	needGolden(t)
	l, _, err := checkpoints.ReadLoRA(peftDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kohya := filepath.Join(dir, "kohya.safetensors")
	if err := checkpoints.WriteLoRA(kohya, l, checkpoints.FormatKohya, checkpoints.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	l.Alpha *= 2
	for k, ly := range l.Layers {
		ly.Alpha *= 2
		l.Layers[k] = ly
	}
	wrong := filepath.Join(dir, "wrong.safetensors")
	if err := checkpoints.WriteLoRA(wrong, l, checkpoints.FormatComfyUI, checkpoints.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	p, _ := nextdit.ParsePrecision("fp64")
	for _, c := range []struct {
		path string
		pass bool
	}{{peftDir, true}, {kohya, true}, {wrong, false}} {
		rep, err := nextdit.RunGolden(cpu.New(), weightsPath, goldenPath, nextdit.GoldenOptions{Precision: p, Adapter: ParityAdapter(c.path)})
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		if ok, fails := rep.Pass(p); ok != c.pass {
			t.Errorf("%s: pass %v (%v), want %v", c.path, ok, fails, c.pass)
		}
		if len(rep.LoRA) != 70 || len(rep.Inputs) != 1 || len(rep.Params) != 0 {
			t.Errorf("%s: compared %d LoRA, %d input, %d parameter gradients; want 70, 1, 0", c.path, len(rep.LoRA), len(rep.Inputs), len(rep.Params))
		}
		w, _ := nextdit.Worst(rep.LoRA)
		t.Logf("%s: out %.3g, worst LoRA gradient %.3g", filepath.Base(c.path), rep.Output, w)
	}
}

// TestExportDTypes: bf16 and f16 exports read back within their rounding.
func TestExportDTypes(t *testing.T) {
	needGolden(t)
	ref, _, err := checkpoints.ReadLoRA(peftDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dt  safetensors.DType
		tol float64
	}{{safetensors.BF16, 4e-3}, {safetensors.F16, 5e-4}} {
		path := filepath.Join(t.TempDir(), "l.safetensors")
		if err := checkpoints.WriteLoRA(path, ref, checkpoints.FormatComfyUI, checkpoints.ExportOptions{DType: c.dt}); err != nil {
			t.Fatal(err)
		}
		m := loadTiny(t, kernels.F32)
		s, _, err := Load(m, path, 0)
		if err != nil {
			t.Fatal(err)
		}
		back, err := s.Export()
		if err != nil {
			t.Fatal(err)
		}
		ly, want := back.Layers["layers.0.attention.qkv"], ref.Layers["layers.0.attention.qkv"]
		var num, den float64
		for i := range want.A {
			d := float64(ly.A[i] - want.A[i])
			num, den = num+d*d, den+float64(want.A[i])*float64(want.A[i])
		}
		if e := math.Sqrt(num / den); e > c.tol || e == 0 {
			t.Errorf("%s: rel err %g, want in (0, %g]", c.dt, e, c.tol)
		}
	}
}

// TestAddDelta compares the host merge with a float64 reference of
// W + (alpha/rank)·B·A on random matrices of awkward sizes.
func TestAddDelta(t *testing.T) {
	cases := []struct{ out, in, rank int }{{7, 13, 3}, {37, 5, 1}, {1, 100, 7}, {13, 7, 13}}
	rng := uint64(1)
	draw := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(kernels.NormalAt(42, rng, 0, 1))
			rng++
		}
		return v
	}
	for _, c := range cases {
		ly := checkpoints.LoRALayer{A: draw(c.rank * c.in), B: draw(c.out * c.rank), In: c.in, Out: c.out, Rank: c.rank, Alpha: 1.5 * float64(c.rank+1)}
		w := draw(c.out * c.in)
		want := make([]float64, len(w))
		scale := ly.Alpha / float64(ly.Rank)
		for o := range c.out {
			for i := range c.in {
				s := 0.0
				for r := range c.rank {
					s += float64(ly.B[o*c.rank+r]) * float64(ly.A[r*c.in+i])
				}
				want[o*c.in+i] = float64(w[o*c.in+i]) + scale*s
			}
		}
		if err := AddDelta(w, ly); err != nil {
			t.Fatal(err)
		}
		got := make([]float64, len(w))
		for i, x := range w {
			got[i] = float64(x)
		}
		kerneltest.Check(t, "AddDelta", got, want, 1e-7)
	}
	if err := AddDelta(make([]float32, 5), checkpoints.LoRALayer{A: make([]float32, 2), B: make([]float32, 2), In: 2, Out: 2, Rank: 1}); err == nil {
		t.Errorf("a weight of the wrong length was accepted")
	}
}
