package textenc

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/newbie-train/newbie-train/checkpoints/safetensors"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/kerneltest"
)

// tinyConfig is a small awkward architecture: 4 query heads over 2 kv
// heads of size 6, hidden 13, MLP 19, window 3, layer types as given (the
// last full, with linear RoPE ×4 on base 1e5).
func tinyConfig(types ...string) map[string]any {
	return map[string]any{
		"model_type": "gemma3_text", "vocab_size": 37, "hidden_size": 13, "intermediate_size": 19,
		"num_hidden_layers": len(types), "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 6,
		"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 7,
		"sliding_window": 3, "layer_types": types, "attn_logit_softcapping": nil,
		"use_bidirectional_attention": false, "attention_bias": false,
		"rope_parameters": map[string]any{
			"sliding_attention": map[string]any{"rope_type": "default", "rope_theta": 10000.0},
			"full_attention":    map[string]any{"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
		},
	}
}

// writeModel writes random weights for raw (a config as JSON fields) under
// prefix, lets edit change the tensor set, and returns the file's path and
// the weights it holds (F32 values, read back as float64).
func writeModel(t testing.TB, raw map[string]any, prefix string, edit func(map[string][]float64, map[string][]int)) (string, map[string][]float64) {
	t.Helper()
	js, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(string(js))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 11)) // benchmarks: any fixed draw
	if tt, ok := t.(*testing.T); ok {
		r = kerneltest.Rng(tt)
	}
	vals, shapes := map[string][]float64{}, map[string][]int{}
	for _, p := range cfg.Params() {
		n := 1
		for _, s := range p.Shape {
			n *= s
		}
		std := 1 / math.Sqrt(float64(p.Shape[len(p.Shape)-1]))
		if isNorm(p.Name) || p.Name == "embed_tokens.weight" {
			std = 0.5 // norms are 1+w: keep w away from −1 but clearly nonzero
		}
		v := kerneltest.Quantize(kernels.F32, kerneltest.Randn(r, n, std))
		vals[p.Name], shapes[p.Name] = v, p.Shape
	}
	if edit != nil {
		edit(vals, shapes)
	}
	var ts []safetensors.Tensor
	for name, v := range vals {
		f := make([]float32, len(v))
		for i, x := range v {
			f[i] = float32(x)
		}
		ts = append(ts, safetensors.FloatTensor(prefix+name, safetensors.F32, shapes[name], f))
	}
	path := filepath.Join(t.TempDir(), "gemma.safetensors")
	if err := safetensors.Write(path, ts, map[string]string{"config": string(js)}); err != nil {
		t.Fatal(err)
	}
	return path, vals
}

// hostForward is an independent float64 Gemma 3 text forward written with
// plain loops, straight from transformers' modeling_gemma3 (one token row
// at a time, explicit masks, kv heads repeated, RoPE angles as transformers
// computes them in float32). It returns hidden_states as [layer][b][i][d].
func hostForward(c Config, w map[string][]float64, ids [][]int32, lens []int) [][][][]float64 {
	h, hd, nh, nkv := c.HiddenSize, c.HeadDim, c.NumHeads, c.NumKVHeads
	l := len(ids[0])
	lin := func(x []float64, name string, out int) []float64 {
		m := w[name]
		y := make([]float64, out)
		for o := range out {
			for i, xi := range x {
				y[o] += m[o*len(x)+i] * xi
			}
		}
		return y
	}
	norm := func(x []float64, name string) []float64 {
		var ss float64
		for _, v := range x {
			ss += v * v
		}
		r := 1 / math.Sqrt(ss/float64(len(x))+c.RMSNormEps)
		y := make([]float64, len(x))
		for i, v := range x {
			y[i] = v * r * (1 + w[name][i])
		}
		return y
	}
	rope := func(x []float64, pos int, r Rope) []float64 {
		y := make([]float64, len(x))
		half := len(x) / 2
		for i := range half {
			inv := float32(1) / float32(math.Pow(float64(float32(r.Theta)), float64(float32(2*i)/float32(len(x)))))
			inv /= float32(r.Factor)
			a := float32(pos) * inv
			cs, sn := float64(float32(math.Cos(float64(a)))), float64(float32(math.Sin(float64(a))))
			y[i] = x[i]*cs - x[i+half]*sn
			y[i+half] = x[i+half]*cs + x[i]*sn
		}
		return y
	}
	var states [][][][]float64
	xs := make([][][]float64, len(ids))
	for b := range ids {
		xs[b] = make([][]float64, l)
		for i, id := range ids[b] {
			row := make([]float64, h)
			for d := range h {
				row[d] = w["embed_tokens.weight"][int(id)*h+d] * float64(float32(math.Sqrt(float64(h))))
			}
			xs[b][i] = row
		}
	}
	states = append(states, xs)
	for li := range c.NumLayers {
		p := fmt.Sprintf("layers.%d.", li)
		r := c.GlobalRope
		if c.Sliding(li) {
			r = c.LocalRope
		}
		next := make([][][]float64, len(ids))
		for b := range ids {
			q := make([][][]float64, l) // [i][head][hd]
			k := make([][][]float64, l)
			v := make([][][]float64, l)
			for i := range l {
				hn := norm(xs[b][i], p+"input_layernorm.weight")
				qa, ka, va := lin(hn, p+"self_attn.q_proj.weight", nh*hd), lin(hn, p+"self_attn.k_proj.weight", nkv*hd), lin(hn, p+"self_attn.v_proj.weight", nkv*hd)
				for hh := range nh {
					q[i] = append(q[i], rope(norm(qa[hh*hd:(hh+1)*hd], p+"self_attn.q_norm.weight"), i, r))
				}
				for hh := range nkv {
					k[i] = append(k[i], rope(norm(ka[hh*hd:(hh+1)*hd], p+"self_attn.k_norm.weight"), i, r))
					v[i] = append(v[i], va[hh*hd:(hh+1)*hd])
				}
			}
			next[b] = make([][]float64, l)
			for i := range l {
				att := make([]float64, 0, nh*hd)
				for hh := range nh {
					kh := hh / (nh / nkv)
					var keys []int
					for j := 0; j <= i && j < lens[b]; j++ {
						if !c.Sliding(li) || j > i-c.SlidingWindow {
							keys = append(keys, j)
						}
					}
					o := make([]float64, hd)
					if len(keys) > 0 {
						sc := make([]float64, len(keys))
						mx := math.Inf(-1)
						for n, j := range keys {
							for d := range hd {
								sc[n] += q[i][hh][d] * k[j][kh][d]
							}
							sc[n] /= math.Sqrt(c.QueryPreAttnScalar)
							mx = math.Max(mx, sc[n])
						}
						var z float64
						for n := range sc {
							sc[n] = math.Exp(sc[n] - mx)
							z += sc[n]
						}
						for n, j := range keys {
							for d := range hd {
								o[d] += sc[n] / z * v[j][kh][d]
							}
						}
					}
					att = append(att, o...)
				}
				a := norm(lin(att, p+"self_attn.o_proj.weight", h), p+"post_attention_layernorm.weight")
				x2 := make([]float64, h)
				for d := range h {
					x2[d] = xs[b][i][d] + a[d]
				}
				h2 := norm(x2, p+"pre_feedforward_layernorm.weight")
				gt, up := lin(h2, p+"mlp.gate_proj.weight", c.IntermediateSize), lin(h2, p+"mlp.up_proj.weight", c.IntermediateSize)
				for j, gv := range gt {
					gt[j] = 0.5 * gv * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(gv+0.044715*gv*gv*gv))) * up[j]
				}
				dn := norm(lin(gt, p+"mlp.down_proj.weight", h), p+"post_feedforward_layernorm.weight")
				out := make([]float64, h)
				for d := range h {
					out[d] = x2[d] + dn[d]
				}
				next[b][i] = out
			}
		}
		xs = next
		if li < c.NumLayers-1 {
			states = append(states, xs)
		}
	}
	last := make([][][]float64, len(ids))
	for b := range ids {
		for i := range l {
			last[b] = append(last[b], norm(xs[b][i], "norm.weight"))
		}
	}
	return append(states, last)
}

// flatten keeps positions i < lens[b] of a [b][i][d] state.
func flatten(s [][][]float64, lens []int) []float64 {
	var out []float64
	for b, rows := range s {
		for i := 0; i < lens[b]; i++ {
			out = append(out, rows[i]...)
		}
	}
	return out
}
