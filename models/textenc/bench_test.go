package textenc

import (
	"os"
	"testing"

	ag "github.com/newbie-train/newbie-train/autograd"
	"github.com/newbie-train/newbie-train/kernels"
	"github.com/newbie-train/newbie-train/kernels/cpu"
)

// BenchmarkPenultimateHidden times the caption-feature forward of a
// mid-sized random Gemma 3 (hidden 256, 8/4 heads of 32, MLP 1024, six
// layers of which the last is global, window 64) on a batch of 2 × 128
// tokens on the CPU backend.
func BenchmarkPenultimateHidden(b *testing.B) {
	raw := tinyConfig(SlidingAttention, SlidingAttention, SlidingAttention, SlidingAttention, SlidingAttention, FullAttention)
	for k, v := range map[string]any{"vocab_size": 1000, "hidden_size": 256, "intermediate_size": 1024,
		"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 64} {
		raw[k] = v
	}
	path, _ := writeModel(b, raw, "", nil)
	const batch, l = 2, 128
	ids := make([][]int32, batch)
	for i := range ids {
		ids[i] = make([]int32, l)
		for j := range ids[i] {
			ids[i][j] = int32((i*131 + j*17) % 1000)
		}
	}
	for _, d := range []kernels.DType{kernels.F32, kernels.BF16} {
		b.Run(d.String(), func(b *testing.B) {
			e := ag.New(cpu.New())
			g, err := Load(e, path, Options{DType: d})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Release()
			b.ResetTimer()
			for range b.N {
				p, err := g.PenultimateHidden(ids, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.Values(); err != nil {
					b.Fatal(err)
				}
				p.Release()
			}
			b.ReportMetric(float64(batch*l)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkLoadJina times LoadJina in bf16 on the CPU backend, the LoRA
// merge and the weights' conversion included, from the file
// NEWBIE_JINA_FILE names (skipped without it): a full-size one comes from
// `newbie-train dev write-random-model --size full`
// (clip_model/jina-clip-v2.safetensors, 1.06 GiB).
func BenchmarkLoadJina(b *testing.B) {
	path := os.Getenv("NEWBIE_JINA_FILE")
	if path == "" {
		b.Skip("NEWBIE_JINA_FILE names no Jina CLIP v2 file")
	}
	for range b.N {
		e := ag.New(cpu.New())
		j, err := LoadJina(e, path, JinaOptions{DType: kernels.BF16})
		if err != nil {
			b.Fatal(err)
		}
		j.Release()
	}
}
