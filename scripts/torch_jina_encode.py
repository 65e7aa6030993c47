#!/usr/bin/env python3
"""PyTorch anchor for the Jina CLIP v2 text tower's throughput.

A small PyTorch Jina XLM-RoBERTa text tower written from the architecture
(../shared/golden/README.md, "jina/"): embeddings LN(E[ids] + T[0]); 24
post-LN layers of fused q|k|v with bias, rotate-half RoPE over the whole
head (base 20000, tables in float32), SDPA attention with a key-padding
mask, out_proj, LayerNorm (eps 1e-5), fc1, exact GELU, fc2, LayerNorm; mean
pooling over the real tokens. The LoRA is merged into the weights, so it
costs nothing here, as in ours.

Throughput mode (the default): random bf16 weights at jina-clip-v2's size
(hidden 1024, 16 heads, MLP 4096, vocab 250002) on CUDA; prints tokens/s
(median of 5 timed batches after 2 warm-ups) and peak CUDA memory (weights
included) per batch shape, in the format of models/textenc's
TestEncodeThroughputCUDA.

Check mode (--golden DIR, a folder holding jina_tiny.weights.safetensors and
jina_tiny.golden.safetensors): loads the golden weights, merges the default
task's LoRA, runs the golden inputs in float64 on the CPU and prints the
relative error against out.pooled: evidence that this anchor is the model
the golden describes. Exit 1 above 1e-6.

    python3 scripts/torch_jina_encode.py [--shapes 8x512,8x64] [--golden DIR]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Layer(nn.Module):
    def __init__(self, h, heads, inter, eps):
        super().__init__()
        self.heads = heads
        self.Wqkv = nn.Linear(h, 3 * h)
        self.out_proj = nn.Linear(h, h)
        self.norm1 = nn.LayerNorm(h, eps=eps)
        self.fc1 = nn.Linear(h, inter)
        self.fc2 = nn.Linear(inter, h)
        self.norm2 = nn.LayerNorm(h, eps=eps)

    def forward(self, x, cos, sin, key_mask):
        b, l, h = x.shape
        q, k, v = self.Wqkv(x).view(b, l, 3, self.heads, h // self.heads).unbind(2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask)
        x = self.norm1(x + self.out_proj(a.transpose(1, 2).reshape(b, l, h)))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


def rotate(x, cos, sin):
    """Rotate-half RoPE: pairs (x[i], x[i + d/2]); cos, sin [L, d/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


class Tower(nn.Module):
    def __init__(self, vocab, h, layers, heads, inter, eps=1e-5, base=20000.0):
        super().__init__()
        self.word = nn.Embedding(vocab, h)
        self.type0 = nn.Parameter(torch.zeros(h))
        self.emb_ln = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(Layer(h, heads, inter, eps) for _ in range(layers))
        self.head_dim, self.base = h // heads, base

    def tables(self, l, device, dtype):
        d = self.head_dim
        inv = 1.0 / (self.base ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        f = torch.outer(torch.arange(l, device=device, dtype=torch.float32), inv)
        return f.cos().to(dtype), f.sin().to(dtype)

    def forward(self, ids, mask=None):
        x = self.emb_ln(self.word(ids) + self.type0)
        cos, sin = self.tables(ids.shape[1], ids.device, x.dtype)
        key_mask = None if mask is None else mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, cos, sin, key_mask)
        return x

    @staticmethod
    def pool(h, mask):
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


def golden_check(folder):
    from safetensors import safe_open
    with safe_open(os.path.join(folder, "jina_tiny.weights.safetensors"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        w = {k: f.get_tensor(k).double() for k in f.keys()}
    with safe_open(os.path.join(folder, "jina_tiny.golden.safetensors"), "pt") as f:
        ids, mask, want = f.get_tensor("in.input_ids").long(), f.get_tensor("in.attention_mask"), f.get_tensor("out.pooled")
    task = cfg["lora_adaptations"].index(cfg.get("default_lora_task", "retrieval.query"))
    scale = cfg["lora_alpha"] / cfg["lora_rank"]
    p = "text_model.transformer.roberta."

    def merged(module, embedding=False):
        base = p + module + ".parametrizations.weight."
        a, b = w[base + "0.lora_A"][task], w[base + "0.lora_B"][task]
        return w[base + "original"] + ((a @ b) if embedding else (b @ a)) * scale

    h = cfg["hidden_size"]
    t = Tower(cfg["vocab_size"], h, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["intermediate_size"],
              cfg["layer_norm_eps"], cfg["rotary_emb_base"]).double()
    with torch.no_grad():
        t.word.weight.copy_(merged("embeddings.word_embeddings", True))
        t.type0.copy_(merged("embeddings.token_type_embeddings", True)[0])
        t.emb_ln.weight.copy_(w[p + "emb_ln.weight"])
        t.emb_ln.bias.copy_(w[p + "emb_ln.bias"])
        for i, layer in enumerate(t.layers):
            q = f"encoder.layers.{i}."
            for name in ["Wqkv", "out_proj"]:
                getattr(layer, name).weight.copy_(merged(q + "mixer." + name))
                getattr(layer, name).bias.copy_(w[p + q + "mixer." + name + ".bias"])
            for name in ["fc1", "fc2"]:
                getattr(layer, name).weight.copy_(merged(q + "mlp." + name))
                getattr(layer, name).bias.copy_(w[p + q + "mlp." + name + ".bias"])
            for name in ["norm1", "norm2"]:
                getattr(layer, name).weight.copy_(w[p + q + name + ".weight"])
                getattr(layer, name).bias.copy_(w[p + q + name + ".bias"])
        got = Tower.pool(t(ids, mask), mask)
    err = ((got - want).norm() / want.norm()).item()
    print(f"torch jina anchor vs golden out.pooled (float64, CPU): rel err {err:.3g}", flush=True)
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8x512,8x64")
    ap.add_argument("--golden", help="folder of the Jina golden files: check the anchor against them first")
    args = ap.parse_args()
    if args.golden and not golden_check(args.golden) <= 1e-6:
        sys.exit(1)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        tower = Tower(250002, 1024, 24, 16, 4096).eval()
    torch.set_default_dtype(torch.float32)
    weights = torch.cuda.memory_allocated()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"{sum(p.numel() for p in tower.parameters())} parameters", flush=True)
    for shape in args.shapes.split(","):
        b, l = (int(x) for x in shape.split("x"))
        g = torch.Generator(device="cuda").manual_seed(b * 1000 + l)
        ids = torch.randint(0, 250002, (b, l), device="cuda", generator=g)
        mask = torch.ones(b, l, dtype=torch.long, device="cuda")
        times = []
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            for it in range(7):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                pooled = Tower.pool(tower(ids), mask)  # every token real: no mask in the attention
                torch.cuda.synchronize()
                if it >= 2:
                    times.append(time.perf_counter() - t0)
                assert torch.isfinite(pooled).all(), "non-finite pooled vector"
                del pooled
        med = statistics.median(times)
        peak = torch.cuda.max_memory_allocated()
        print(f"torch jina-clip-v2 pooled bf16 cuda batch {b} x {l}: {b * l / med:.0f} tokens/s "
              f"({med * 1000:.2f} ms/batch), peak {peak / 2**30:.2f} GiB (weights {weights / 2**30:.2f} GiB)", flush=True)


if __name__ == "__main__":
    main()
