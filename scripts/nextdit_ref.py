"""The upstream Next-DiT forward in PyTorch, shared by the scripts that
check us against PyTorch (torch_check_comfy_lora.py, torch_train_replay.py).

A transcription of NewBie-image-Exp0.1's ``NextDiT_CLIP`` forward; the Go
model in models/nextdit/forward.go is the spec it follows. In float64 it
reproduces the golden file's ``out.y`` (torch_check_comfy_lora.py checks
that) and the golden LoRA training run (torch_train_replay.py).
"""

import math

import torch


class InputError(Exception):
    """A file does not hold what the check needs."""


# Upstream constants that are not constructor arguments (see
# models/nextdit/config.go): RoPE base, width of the sinusoidal timestep
# embedding, and the epsilon of the q/k and CLIP-pooled RMSNorms and of the
# final LayerNorm.
ROPE_THETA = 10000.0
TIME_FREQ_DIM = 256
SMALL_EPS = 1e-6


def rms_norm(x, weight, eps):
    """RMSNorm over the last axis with a learned per-channel weight, as
    upstream writes it: normalised in float32 (float64 stays float64), cast
    back to x's dtype, then times the weight — which is what decides the
    dtypes under autocast."""
    xf = x if x.dtype == torch.float64 else x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).type_as(x) * weight


def layer_norm_plain(x, eps):
    """LayerNorm over the last axis without affine parameters."""
    mu = x.mean(dim=-1, keepdim=True)
    var = (x - mu).pow(2).mean(dim=-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps)


class NextDiT:
    """A functional Next-DiT over a dict of upstream-named weights.

    The weights in a plain dict are what let a LoRA be merged by key name
    alone, as ComfyUI does. ``lora`` maps a linear layer's name to its
    adapter (A, B), applied unmerged as PEFT does (x·Aᵀ·Bᵀ times
    ``lora_scale``), so that autograd can train A and B.
    """

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = weights
        self.lora = {}
        self.lora_scale = 1.0
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
        """x·Wᵀ (+ b) for the linear layer whose keys start with name, plus
        its adapter's update when it has one."""
        y = torch.nn.functional.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))
        if name in self.lora:
            a, b = self.lora[name]
            y = y + self.lora_scale * torch.nn.functional.linear(torch.nn.functional.linear(x, a), b)
        return y

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
        c, s = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
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
        mask = None
        if key_lens is not None:
            keep = torch.arange(s, device=x.device)[None, :] < key_lens[:, None]  # [B, S]
            mask = keep[:, None, None, :]
        # As upstream without flash-attn: SDPA (its math path in float64).
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=math.sqrt(1.0 / hd))
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
            self.linear("t_embedder.mlp.0", self.timestep_embedding(t).to(x.dtype))))
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
