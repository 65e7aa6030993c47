package textenc

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// randomIDs draws b rows of l token ids below vocab, BOS (2) first.
func randomIDs(r *rand.Rand, b, l, vocab int) [][]int32 {
	ids := make([][]int32, b)
	for i := range ids {
		ids[i] = make([]int32, l)
		ids[i][0] = 2
		for j := 1; j < l; j++ {
			ids[i][j] = int32(r.IntN(vocab))
		}
	}
	return ids
}

// maskOf is the right-padding mask of the given lengths.
func maskOf(lens []int, l int) [][]int32 {
	m := make([][]int32, len(lens))
	for b, n := range lens {
		m[b] = make([]int32, l)
		for i := range n {
			m[b][i] = 1
		}
	}
	return m
}

func mustConfig(t *testing.T, raw map[string]any) Config {
	t.Helper()
	js, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(string(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAgainstHostReference runs a random model with sliding and global
// layers, grouped heads and right padding (one row only BOS) against the
// plain-loop float64 forward, every hidden state at the real positions.
func TestAgainstHostReference(t *testing.T) {
	raw := tinyConfig(SlidingAttention, SlidingAttention, FullAttention, SlidingAttention)
	cfg := mustConfig(t, raw)
	path, w := writeModel(t, raw, "", nil)
	r := kerneltest.Rng(t)
	const l = 11
	lens := []int{l, 7, 1}
	ids := randomIDs(r, len(lens), l, cfg.VocabSize)
	for b, n := range lens {
		for i := n; i < l; i++ {
			ids[b][i] = 0
		}
	}
	ref := hostForward(cfg, w, ids, lens)
	for _, tc := range []struct {
		dtype kernels.DType
		tol   float64
	}{
		{kernels.F64, 1e-12},
		{kernels.F32, 1e-5},
	} {
		t.Run(tc.dtype.String(), func(t *testing.T) {
			e := ag.New(cpu.New())
			g, err := Load(e, path, Options{DType: tc.dtype})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Release()
			hs, err := g.Forward(ids, maskOf(lens, l))
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) != len(ref) {
				t.Fatalf("%d hidden states, reference has %d", len(hs), len(ref))
			}
			for i, h := range hs {
				got := values(t, h)
				var rows []float64
				for b := range lens {
					for p := range lens[b] {
						rows = append(rows, got[(b*l+p)*cfg.HiddenSize:(b*l+p+1)*cfg.HiddenSize]...)
					}
				}
				kerneltest.Check(t, fmt.Sprintf("hidden_states[%d]", i), rows, flatten(ref[i], lens), tc.tol)
				t.Logf("hidden_states[%d]: relative error %.3g", i, kernels.RelErr(rows, flatten(ref[i], lens)))
			}
			if err := e.EndStep(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSlidingWindowReach changes the first token of a model of two
// sliding layers (window 3: position i sees i−2..i) and checks which
// positions of each hidden state move: only position 0 of the embeddings,
// 0..2 after one layer, 0..4 after two (and in the final norm of it).
func TestSlidingWindowReach(t *testing.T) {
	raw := tinyConfig(SlidingAttention, SlidingAttention, SlidingAttention)
	path, _ := writeModel(t, raw, "", nil)
	e := ag.New(cpu.New())
	g, err := Load(e, path, Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	const l = 13
	r := kerneltest.Rng(t)
	a := randomIDs(r, 1, l, g.Config().VocabSize)
	b := [][]int32{append([]int32(nil), a[0]...)}
	b[0][0] = (a[0][0] + 5) % int32(g.Config().VocabSize)
	ha, err := g.Forward(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := g.Forward(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := g.Config().HiddenSize
	reach := []int{0, 2, 4, 6} // last position that token 0 reaches, per hidden state
	for s := range ha {
		va, vb := values(t, ha[s]), values(t, hb[s])
		for p := range l {
			diff := kernels.RelErr(vb[p*h:(p+1)*h], va[p*h:(p+1)*h])
			if p <= reach[s] && diff < 1e-6 {
				t.Errorf("hidden_states[%d] position %d: unchanged (%.3g) by token 0 within the window", s, p, diff)
			}
			if p > reach[s] && diff != 0 {
				t.Errorf("hidden_states[%d] position %d: changed (%.3g) by token 0 outside the window", s, p, diff)
			}
		}
	}
}

// TestGoldenNeedsWindow proves the golden exercises the sliding window:
// without it parity breaks far beyond rounding.
func TestGoldenNeedsWindow(t *testing.T) {
	gc := openGolden(t)
	e := ag.New(cpu.New())
	g, err := Load(e, gc.weights, Options{DType: kernels.F64})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	g.noWindow = true
	m2, err := g.PenultimateHidden(gc.ids, gc.mask)
	if err != nil {
		t.Fatal(err)
	}
	if d := kernels.RelErr(gc.masked(values(t, m2)), gc.masked(gc.m2)); d < 1e-3 {
		t.Errorf("without the sliding window hidden_states[-2] is still within %.3g of the golden: the window is not exercised", d)
	}
}

// TestKeyReport checks that one load reports every missing, unexpected
// and mis-shaped key, and that keys outside a multimodal prefix are skipped.
func TestKeyReport(t *testing.T) {
	raw := tinyConfig(SlidingAttention, FullAttention)
	path, _ := writeModel(t, raw, "", func(v map[string][]float64, s map[string][]int) {
		delete(v, "layers.1.mlp.up_proj.weight")
		v["layers.1.extra.weight"], s["layers.1.extra.weight"] = []float64{1, 2}, []int{2}
		v["norm.weight"], s["norm.weight"] = make([]float64, 12), []int{12}
	})
	_, err := Load(ag.New(cpu.New()), path, Options{DType: kernels.F32})
	ke, ok := IsKeyError(err)
	if !ok {
		t.Fatalf("Load error %v is not a *KeyError", err)
	}
	if len(ke.Missing) != 1 || ke.Missing[0].Name != "layers.1.mlp.up_proj.weight" ||
		len(ke.Unexpected) != 1 || ke.Unexpected[0] != "layers.1.extra.weight" ||
		len(ke.Misshaped) != 1 || ke.Misshaped[0].Name != "norm.weight" {
		t.Errorf("key report %+v", ke)
	}
	for _, want := range []string{"missing    layers.1.mlp.up_proj.weight (expected shape [19 13])", "unexpected layers.1.extra.weight", "mis-shaped norm.weight: file has [12], expected [13]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error text lacks %q:\n%v", want, err)
		}
	}

	// A multimodal checkpoint: text weights under model.language_model.,
	// a vision tower beside them, which is not the text model's business.
	mm, _ := writeModel(t, raw, "model.language_model.", func(v map[string][]float64, s map[string][]int) {})
	g, err := Load(ag.New(cpu.New()), mm, Options{DType: kernels.F32})
	if err != nil {
		t.Fatalf("prefixed checkpoint: %v", err)
	}
	g.Release()
}

// TestForwardRejects checks argument errors name the problem.
func TestForwardRejects(t *testing.T) {
	raw := tinyConfig(SlidingAttention)
	path, _ := writeModel(t, raw, "", nil)
	g, err := Load(ag.New(cpu.New()), path, Options{DType: kernels.F32})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		ids, mask [][]int32
		want      string
	}{
		{"empty", nil, nil, "empty batch"},
		{"ragged", [][]int32{{2, 3}, {2}}, nil, "row 1 has 1 tokens"},
		{"vocab", [][]int32{{2, 37}}, nil, "outside the vocabulary"},
		{"negative id", [][]int32{{2, -1}}, nil, "outside the vocabulary"},
		{"mask rows", [][]int32{{2, 3}}, [][]int32{{1, 1}, {1, 1}}, "2 mask rows"},
		{"mask length", [][]int32{{2, 3}}, [][]int32{{1}}, "has 1 entries"},
		{"left padding", [][]int32{{0, 2}}, [][]int32{{0, 1}}, "only right padding"},
		{"hole", [][]int32{{2, 3, 4}}, [][]int32{{1, 0, 1}}, "only right padding"},
		{"no token", [][]int32{{2, 3}}, [][]int32{{0, 0}}, "no real token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.Forward(tc.ids, tc.mask)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	g.Release()
	if _, err := g.Forward([][]int32{{2}}, nil); err == nil || !strings.Contains(err.Error(), "released") {
		t.Errorf("forward on a released model: %v", err)
	}
}

// TestForwardFreesIntermediates checks that a forward keeps nothing but
// the hidden states it hands out and the rotary tables it caches for the
// next batch of that shape: releasing the outputs brings the backend's
// allocation back to the weights' plus the tables', a second forward adds
// nothing, and releasing the model frees everything, in every storage
// dtype.
func TestForwardFreesIntermediates(t *testing.T) {
	raw := tinyConfig(SlidingAttention, FullAttention)
	path, _ := writeModel(t, raw, "", nil)
	for _, d := range []kernels.DType{kernels.F64, kernels.F32, kernels.BF16} {
		t.Run(d.String(), func(t *testing.T) {
			b := cpu.New()
			e := ag.New(b)
			g, err := Load(e, path, Options{DType: d})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Release()
			weights := b.MemStats().Allocated
			ids := randomIDs(kerneltest.Rng(t), 2, 9, g.Config().VocabSize)
			hs, err := g.Forward(ids, maskOf([]int{9, 4}, 9))
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range hs {
				h.Release()
			}
			p, err := g.PenultimateHidden(ids, nil)
			if err != nil {
				t.Fatal(err)
			}
			p.Release()
			c := g.Config()
			ropes := int64(2) // local and global
			if c.LocalRope == c.GlobalRope {
				ropes = 1
			}
			tables := ropes * 2 * int64(2*9*c.HeadDim/2*d.Size())
			if got := b.MemStats().Allocated; got != weights+tables {
				t.Errorf("after releasing the outputs %d bytes are allocated, the weights hold %d and the cached rotary tables %d", got, weights, tables)
			}
			g.Release()
			if got := b.MemStats().Allocated; got != 0 {
				t.Errorf("after releasing the model %d bytes are still allocated", got)
			}
		})
	}
}

// TestLoadErrors checks the load failures that are not key mismatches,
// and that Options.Config stands in for a file without metadata.
func TestLoadErrors(t *testing.T) {
	raw := tinyConfig(SlidingAttention)
	cfg := mustConfig(t, raw)
	path, w := writeModel(t, raw, "", nil)
	var ts []safetensors.Tensor
	for _, p := range cfg.Params() {
		f := make([]float32, len(w[p.Name]))
		for i, x := range w[p.Name] {
			f[i] = float32(x)
		}
		ts = append(ts, safetensors.FloatTensor(p.Name, safetensors.F32, p.Shape, f))
	}
	bare := filepath.Join(t.TempDir(), "bare.safetensors")
	if err := safetensors.Write(bare, ts, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		opts       Options
		want       string
	}{
		{"dtype", path, Options{DType: kernels.F16}, "not BF16, F32 or F64"},
		{"no config: Gemma 3 4B", bare, Options{DType: kernels.F32}, "Gemma 3 4B defaults: no config in the file's metadata and no config.json beside it"},
		{"no config: 4B shapes", bare, Options{DType: kernels.F32}, "mis-shaped embed_tokens.weight: file has [37 13], expected [262208 2560]"},
		{"no config: listing capped", bare, Options{DType: kernels.F32}, "… and 421 more"},
		{"absent", filepath.Join(t.TempDir(), "none.safetensors"), Options{}, "no such file"},
		{"empty folder", t.TempDir(), Options{}, "neither model.safetensors.index.json nor model.safetensors"},
		{"bad config", bare, Options{DType: kernels.F32, Config: &Config{}}, "must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(ag.New(cpu.New()), tc.path, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	g, err := Load(ag.New(cpu.New()), bare, Options{DType: kernels.F32, Config: &cfg})
	if err != nil {
		t.Fatalf("bare file with Options.Config: %v", err)
	}
	g.Release()
}
