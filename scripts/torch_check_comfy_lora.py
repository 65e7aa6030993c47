#!/usr/bin/env python3
"""Check that a ComfyUI-format LoRA written by newbie-train is applied by
PyTorch exactly as newbie-train's own model applies it.

The script holds its own small float64 PyTorch implementation of the
upstream Next-DiT forward (NewBie-image-Exp0.1 ``NextDiT_CLIP``; the Go model
in models/nextdit/forward.go is the spec it follows). It

1. loads the golden weights (upstream key names) and reproduces ``out.y`` of
   the golden file, which proves this script's model is the reference model;
2. merges a ComfyUI single-file LoRA into the weights purely by key names,
   the way ComfyUI patches a model: for every
   ``diffusion_model.<path>.lora_A.weight`` it adds
   ``(alpha / rank) * lora_B @ lora_A`` to ``<path>.weight``, with alpha from
   ``diffusion_model.<path>.alpha`` (1 scale when absent) and rank the first
   dimension of lora_A; then it reproduces ``out.y_lora``, the output that
   the reference (PEFT) and newbie-train give with the same adapter.

Both relative errors ||ours - ref|| / ||ref|| must be below --tol (1e-6:
the golden file holds float32 roundings of float64 results). The exit code is
0 when both pass, 1 when one fails, 2 on bad input.

Usage:
    python3 scripts/torch_check_comfy_lora.py \
        --weights tiny.weights.safetensors --golden tiny.golden.safetensors \
        --lora tiny.comfyui_lora.safetensors [--device cuda|cpu] [--json out.json]
"""

import argparse
import json
import math
import platform
import sys
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file

# Upstream constants that are not constructor arguments (see
# models/nextdit/config.go): RoPE base, width of the sinusoidal timestep
# embedding, and the epsilon of the q/k and CLIP-pooled RMSNorms and of the
# final LayerNorm.
ROPE_THETA = 10000.0
TIME_FREQ_DIM = 256
SMALL_EPS = 1e-6

COMFY_PREFIX = "diffusion_model."
LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
ALPHA_SUFFIX = ".alpha"


class InputError(Exception):
    """A file does not hold what the check needs."""


def rms_norm(x, weight, eps):
    """RMSNorm over the last axis with a learned per-channel weight."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def layer_norm_plain(x, eps):
    """LayerNorm over the last axis without affine parameters."""
    mu = x.mean(dim=-1, keepdim=True)
    var = (x - mu).pow(2).mean(dim=-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps)


class NextDiT:
    """A float64 functional Next-DiT over a dict of upstream-named weights.

    Only the forward is implemented: it is all the comparison needs, and
    keeping the weights in a plain dict is what lets a LoRA be merged by key
    name alone, as ComfyUI does.
    """

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = weights
        self.dim = cfg["dim"]
        self.n_heads = cfg["n_heads"]
        self.n_kv_heads = cfg.get("n_kv_heads") or cfg["n_heads"]
        self.head_dim = self.dim // self.n_heads
        self.patch = cfg["patch_size"]
        self.in_ch = cfg["in_channels"]
        self.norm_eps = cfg["norm_eps"]
        self.qk_norm = cfg.get("qk_norm", False)
        if sum(cfg["axes_dims"]) != self.head_dim:
            raise InputError(
                f"axes_dims {cfg['axes_dims']} do not add up to the head width {self.head_dim}")

    def linear(self, name, x):
        """x @ W^T (+ b) for the linear layer whose keys start with name."""
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        return y if b is None else y + b

    # --- position and time embeddings -------------------------------------

    def rope_angles(self, pos):
        """Rotation angles [.., head_dim/2] for integer positions [.., 3]:
        each axis a contributes axes_dims[a]/2 pairs with frequencies
        theta^(-2j/axes_dims[a]), the axes concatenated in order."""
        parts = []
        for a, d in enumerate(self.cfg["axes_dims"]):
            j = torch.arange(0, d // 2, dtype=torch.float64, device=pos.device)
            freq = 1.0 / ROPE_THETA ** (2.0 * j / d)
            parts.append(pos[..., a:a + 1].to(torch.float64) * freq)
        return torch.cat(parts, dim=-1)

    def rope_tables(self, cap_lens, cap_pad, ht, wt, device):
        """cos/sin tables for the caption refiner [B, L, hd/2], the noise
        refiner [B, N, hd/2] and the joint blocks [B, S, hd/2].

        Caption token i sits at (i, 0, 0); image token (r, c) at
        (cap_len, r, c). Padded caption positions get cos = sin = 0, as the
        reference's zero-filled caption table does; padded joint positions
        sit at (0, 0, 0). Padded keys are masked, so neither value reaches a
        real token."""
        b, n = len(cap_lens), ht * wt
        s = max(cap_lens) + n
        rows = torch.arange(ht, device=device).repeat_interleave(wt)
        cols = torch.arange(wt, device=device).repeat(ht)
        half = self.head_dim // 2
        cap_cos = torch.zeros(b, cap_pad, half, dtype=torch.float64, device=device)
        cap_sin = torch.zeros_like(cap_cos)
        img_pos = torch.zeros(b, n, 3, dtype=torch.int64, device=device)
        joint_pos = torch.zeros(b, s, 3, dtype=torch.int64, device=device)
        for i, cl in enumerate(cap_lens):
            cap = torch.zeros(cl, 3, dtype=torch.int64, device=device)
            cap[:, 0] = torch.arange(cl, device=device)
            ang = self.rope_angles(cap)
            cap_cos[i, :cl], cap_sin[i, :cl] = ang.cos(), ang.sin()
            img_pos[i, :, 0] = cl
            img_pos[i, :, 1] = rows
            img_pos[i, :, 2] = cols
            joint_pos[i, :cl] = cap
            joint_pos[i, cl:cl + n] = img_pos[i]
        img_ang, joint_ang = self.rope_angles(img_pos), self.rope_angles(joint_pos)
        return ((cap_cos, cap_sin), (img_ang.cos(), img_ang.sin()),
                (joint_ang.cos(), joint_ang.sin()))

    @staticmethod
    def apply_rope(x, cos, sin):
        """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, S, H, hd] by the
        angles whose cos/sin are [B, S, hd/2]."""
        xr = x.reshape(*x.shape[:-1], -1, 2)
        re, im = xr[..., 0], xr[..., 1]
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        return torch.stack((re * c - im * s, re * s + im * c), dim=-1).flatten(-2)

    @staticmethod
    def timestep_embedding(t):
        """Sinusoidal embedding [B, 256]: cos(t f_j) then sin(t f_j) with
        f_j = exp(-ln(10000) j / 128); t is used as given (t = 1 is data)."""
        half = TIME_FREQ_DIM // 2
        j = torch.arange(half, dtype=torch.float64, device=t.device)
        freqs = torch.exp(-math.log(10000.0) * j / half)
        args = t[:, None] * freqs[None, :]
        return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)

    # --- blocks ------------------------------------------------------------

    def attention(self, prefix, x, cos, sin, key_lens):
        """Fused qkv, per-head q/k RMSNorm, RoPE, grouped-query attention
        with keys at positions >= key_lens[b] masked out, output projection."""
        b, s, _ = x.shape
        hd, hq, hkv = self.head_dim, self.n_heads, self.n_kv_heads
        qkv = self.linear(prefix + ".attention.qkv", x)
        q = qkv[..., :hq * hd].reshape(b, s, hq, hd)
        k = qkv[..., hq * hd:(hq + hkv) * hd].reshape(b, s, hkv, hd)
        v = qkv[..., (hq + hkv) * hd:].reshape(b, s, hkv, hd)
        if self.qk_norm:
            q = rms_norm(q, self.w[prefix + ".attention.q_norm.weight"], SMALL_EPS)
            k = rms_norm(k, self.w[prefix + ".attention.k_norm.weight"], SMALL_EPS)
        q, k = self.apply_rope(q, cos, sin), self.apply_rope(k, cos, sin)
        # Each kv head serves n_rep consecutive query heads.
        rep = hq // hkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # [B, H, S, hd]
        scores = (q @ k.transpose(-1, -2)) * math.sqrt(1.0 / hd)
        if key_lens is not None:
            keep = torch.arange(s, device=x.device)[None, :] < key_lens[:, None]  # [B, S]
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        o = torch.softmax(scores, dim=-1) @ v
        o = o.permute(0, 2, 1, 3).reshape(b, s, hq * hd)
        return self.linear(prefix + ".attention.out", o)

    def feed_forward(self, prefix, x):
        """SwiGLU: w2(silu(w1 x) * w3 x)."""
        h = torch.nn.functional.silu(self.linear(prefix + ".feed_forward.w1", x))
        return self.linear(prefix + ".feed_forward.w2", h * self.linear(prefix + ".feed_forward.w3", x))

    def block(self, prefix, x, adaln, cos, sin, key_lens):
        """Sandwich-normed attention and SwiGLU; with adaln, each branch's
        input is scaled by (1 + scale) and its output gated by tanh(gate)."""
        w, eps, d = self.w, self.norm_eps, self.dim
        if adaln is not None:
            mod = self.linear(prefix + ".adaLN_modulation.1", torch.nn.functional.silu(adaln))
            scale_msa, gate_msa, scale_mlp, gate_mlp = (mod[:, i * d:(i + 1) * d] for i in range(4))
        h = rms_norm(x, w[prefix + ".attention_norm1.weight"], eps)
        if adaln is not None:
            h = h * (1 + scale_msa[:, None, :])
        a = rms_norm(self.attention(prefix, h, cos, sin, key_lens), w[prefix + ".attention_norm2.weight"], eps)
        x = x + (a if adaln is None else torch.tanh(gate_msa)[:, None, :] * a)
        h = rms_norm(x, w[prefix + ".ffn_norm1.weight"], eps)
        if adaln is not None:
            h = h * (1 + scale_mlp[:, None, :])
        f = rms_norm(self.feed_forward(prefix, h), w[prefix + ".ffn_norm2.weight"], eps)
        return x + (f if adaln is None else torch.tanh(gate_mlp)[:, None, :] * f)

    # --- whole network -------------------------------------------------------

    def forward(self, x, t, cap_feats, cap_lens, clip_pooled):
        """Prediction [B, C, H, W] for latents x [B, C, H, W], timesteps t
        [B], caption features [B, L, cap_dim] with cap_lens real tokens first,
        and the pooled CLIP text embedding [B, clip_dim] (or None)."""
        b, c, hh, ww = x.shape
        p = self.patch
        ht, wt = hh // p, ww // p
        n = ht * wt
        dev = x.device
        cap_lens_t = torch.tensor(cap_lens, device=dev)

        adaln = self.linear("t_embedder.mlp.2", torch.nn.functional.silu(
            self.linear("t_embedder.mlp.0", self.timestep_embedding(t))))
        if clip_pooled is not None:
            clip = self.linear("clip_text_pooled_proj.1",
                               rms_norm(clip_pooled, self.w["clip_text_pooled_proj.0.weight"], SMALL_EPS))
            adaln = self.linear("time_text_embed.1", torch.nn.functional.silu(torch.cat((adaln, clip), dim=1)))

        (cap_cos, cap_sin), (img_cos, img_sin), (j_cos, j_sin) = self.rope_tables(
            cap_lens, cap_feats.shape[1], ht, wt, dev)

        cap = self.linear("cap_embedder.1", rms_norm(cap_feats, self.w["cap_embedder.0.weight"], self.norm_eps))
        n_ref = self.cfg["n_refiner_layers"]
        for i in range(n_ref):
            cap = self.block(f"context_refiner.{i}", cap, None, cap_cos, cap_sin, cap_lens_t)

        # Patches flatten in (pH, pW, C) order.
        patches = x.reshape(b, c, ht, p, wt, p).permute(0, 2, 4, 3, 5, 1).reshape(b, n, p * p * c)
        img = self.linear("x_embedder", patches)
        for i in range(n_ref):
            img = self.block(f"noise_refiner.{i}", img, adaln, img_cos, img_sin, None)

        # Joint sequence per sample: [own caption tokens, image tokens, zeros].
        s = max(cap_lens) + n
        joint = torch.zeros(b, s, self.dim, dtype=img.dtype, device=dev)
        for i, cl in enumerate(cap_lens):
            joint[i, :cl] = cap[i, :cl]
            joint[i, cl:cl + n] = img[i]
        for i in range(self.cfg["n_layers"]):
            joint = self.block(f"layers.{i}", joint, adaln, j_cos, j_sin, cap_lens_t + n)

        scale = self.linear("final_layer.adaLN_modulation.1", torch.nn.functional.silu(adaln))
        out = self.linear("final_layer.linear",
                          layer_norm_plain(joint, SMALL_EPS) * (1 + scale[:, None, :]))

        tok = torch.stack([out[i, cl:cl + n] for i, cl in enumerate(cap_lens)])
        return tok.reshape(b, ht, wt, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)


def merge_comfy_lora(weights, lora):
    """Merge a ComfyUI single-file LoRA into weights (in place) by key names
    alone, as ComfyUI's loader does for `diffusion_model.<path>` keys. Every
    key of the file must be used; returns the merged module paths and their
    scales."""
    used = set()
    merged = {}
    for key in sorted(lora):
        if not (key.startswith(COMFY_PREFIX) and key.endswith(LORA_A_SUFFIX)):
            continue
        path = key[len(COMFY_PREFIX):-len(LORA_A_SUFFIX)]
        b_key = COMFY_PREFIX + path + LORA_B_SUFFIX
        alpha_key = COMFY_PREFIX + path + ALPHA_SUFFIX
        target = path + ".weight"
        if b_key not in lora:
            raise InputError(f"{key} has no {b_key} beside it")
        if target not in weights:
            raise InputError(f"{key} targets {target}, which the model does not have")
        a = lora[key].to(weights[target])
        bm = lora[b_key].to(weights[target])
        rank = a.shape[0]
        scale = 1.0
        if alpha_key in lora:
            scale = float(lora[alpha_key].item()) / rank
            used.add(alpha_key)
        delta = scale * (bm @ a)
        if delta.shape != weights[target].shape:
            raise InputError(f"{path}: B@A is {tuple(delta.shape)}, {target} is {tuple(weights[target].shape)}")
        weights[target] = weights[target] + delta
        used.update((key, b_key))
        merged[path] = scale
    unused = sorted(set(lora) - used)
    if unused:
        raise InputError(f"{len(unused)} LoRA keys were not used, e.g. {unused[:3]}")
    if not merged:
        raise InputError("the LoRA file has no diffusion_model.*.lora_A.weight keys")
    return merged


def rel_err(ours, ref):
    """||ours - ref|| / ||ref|| in float64."""
    return (torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref)).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="base weights, upstream key names (tiny.weights.safetensors)")
    ap.add_argument("--golden", required=True, help="golden inputs and outputs (tiny.golden.safetensors)")
    ap.add_argument("--lora", required=True, help="ComfyUI single-file LoRA written by newbie-train")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    ap.add_argument("--tol", type=float, default=1e-6, help="largest relative error that passes")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    f64 = torch.float64

    try:
        with safe_open(args.weights, framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise InputError(f"{args.weights} has no config in its metadata")
        cfg = json.loads(meta["config"])
        base = {k: v.to(device=device, dtype=f64) for k, v in load_file(args.weights).items()}
        gold = load_file(args.golden)
        lora = load_file(args.lora)
        for k in ("in.x", "in.t", "in.cap_feats", "in.cap_mask", "out.y", "out.y_lora"):
            if k not in gold:
                raise InputError(f"{args.golden} has no {k}")
        mask = gold["in.cap_mask"].to(torch.int64)
        cap_lens = mask.sum(dim=1).tolist()
        # Real tokens must come first: row i is then exactly [1]*cl + [0]*pad.
        want = (torch.arange(mask.shape[1])[None, :] < torch.tensor(cap_lens)[:, None]).to(torch.int64)
        if not torch.equal(mask, want):
            raise InputError("the caption mask is not 0/1 with real tokens first (right padding)")
        inputs = dict(
            x=gold["in.x"].to(device=device, dtype=f64),
            t=gold["in.t"].to(device=device, dtype=f64),
            cap_feats=gold["in.cap_feats"].to(device=device, dtype=f64),
            cap_lens=cap_lens,
            clip_pooled=(gold["in.clip_text_pooled"].to(device=device, dtype=f64)
                         if "in.clip_text_pooled" in gold else None),
        )
        ref_y = gold["out.y"].to(device=device, dtype=f64)
        ref_y_lora = gold["out.y_lora"].to(device=device, dtype=f64)

        t0 = time.perf_counter()
        with torch.no_grad():
            y = NextDiT(cfg, dict(base)).forward(**inputs)
            merged_w = dict(base)
            merged = merge_comfy_lora(merged_w, lora)
            y_lora = NextDiT(cfg, merged_w).forward(**inputs)
        secs = time.perf_counter() - t0
    except InputError as e:
        print(f"torch_check_comfy_lora: {e}", file=sys.stderr)
        return 2

    scales = sorted(set(merged.values()))
    res = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": "float64",
        "lora_layers_merged": len(merged),
        "lora_scales": scales,
        "rel_err_y": rel_err(y, ref_y),
        "rel_err_y_lora": rel_err(y_lora, ref_y_lora),
        # How much the adapter moves the output, and how exactly our change
        # matches the reference's change: the LoRA is not a no-op.
        "lora_effect_rel": rel_err(ref_y_lora, ref_y),
        "rel_err_lora_delta": rel_err(y_lora - y, ref_y_lora - ref_y),
        "seconds": secs,
        "tol": args.tol,
    }
    ok = res["rel_err_y"] < args.tol and res["rel_err_y_lora"] < args.tol
    res["pass"] = ok
    print(f"torch {res['torch']} on {device} ({res['device']}), float64")
    print(f"merged {len(merged)} LoRA layers from {args.lora} by key name, scales alpha/rank = {scales}")
    print(f"out.y      rel err {res['rel_err_y']:.3e}  (script model vs reference)")
    print(f"out.y_lora rel err {res['rel_err_y_lora']:.3e}  (PyTorch + our ComfyUI file vs reference/ours)")
    print(f"LoRA effect ||y_lora - y||/||y|| = {res['lora_effect_rel']:.3e}; "
          f"rel err of that change {res['rel_err_lora_delta']:.3e}")
    print("PASS" if ok else f"FAIL (tolerance {args.tol:g})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
