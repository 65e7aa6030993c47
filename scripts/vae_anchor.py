#!/usr/bin/env python3
"""PyTorch FLUX-VAE anchor: the speed newbie-train's VAE is measured against.

The FLUX.1 autoencoder (diffusers' AutoencoderKL in the FLUX layout) written
as plain torch modules from the architecture facts, because diffusers is not
installed on the device machine: conv_in; four down blocks of two resnets
(GroupNorm 32 groups eps 1e-6, SiLU, 3x3 convolutions, a 1x1 shortcut where
the width changes) with a stride-2 downsampler (zero pad right and bottom,
3x3 stride 2) after the first three; a mid block resnet - single-head
attention - resnet; norm_out, SiLU, conv_out to 2x16 channels. The decoder
mirrors it with three resnets per up block and nearest-2x upsampling + 3x3
conv. Module names follow diffusers' state-dict keys, so --check-golden can
load newbie-train's tiny golden VAE and reproduce its reference outputs in
float64, which shows this is the same network.

Timing (default): random weights in bf16 on CUDA, encode of a 1024x1024
image and decode of a 128x128 latent, each in NCHW and channels_last
memory format, cuDNN autotuning on; CUDA events around each call after
warm-up, the median of --repeat calls, and the peak of
torch.cuda.max_memory_allocated. The last lines are a table.

    python3 scripts/vae_anchor.py [--repeat 10] [--json out.json]
    python3 scripts/vae_anchor.py --check-golden ../shared/golden/vae
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPS, EPS = 32, 1e-6
FLUX = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
            in_channels=3, out_channels=3, norm_num_groups=32)


class Resnet(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """diffusers' Attention with one head as wide as the block, through SDPA."""

    def __init__(self, ch, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=EPS)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x):
        b, c, h, w = x.shape
        r = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = (p(r).unsqueeze(1) for p in (self.to_q, self.to_k, self.to_v))
        if hasattr(F, "scaled_dot_product_attention"):
            o = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        else:  # torch < 2.0 (the golden check on a machine without a GPU)
            o = torch.softmax(q @ k.transpose(-1, -2) / c**0.5, dim=-1).matmul(v).squeeze(1)
        o = self.to_out[0](o).transpose(1, 2).reshape(b, c, h, w)
        return o + x


class Mid(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.resnets = nn.ModuleList([Resnet(ch, ch, groups), Resnet(ch, ch, groups)])
        self.attentions = nn.ModuleList([Attention(ch, groups)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Down(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    def __init__(self, resnets, sampler, kind):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if sampler is not None:
            setattr(self, kind, nn.ModuleList([sampler]))
        self.kind = kind if sampler is not None else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.kind:
            x = getattr(self, self.kind)[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        boc, g, n = c["block_out_channels"], c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["in_channels"], boc[0], 3, padding=1)
        blocks, cin = [], boc[0]
        for i, cout in enumerate(boc):
            rs = [Resnet(cin if j == 0 else cout, cout, g) for j in range(n)]
            blocks.append(Block(rs, Down(cout) if i < len(boc) - 1 else None, "downsamplers"))
            cin = cout
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = Mid(boc[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, boc[-1], eps=EPS)
        self.conv_out = nn.Conv2d(boc[-1], 2 * c["latent_channels"], 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        boc, g, n = list(reversed(c["block_out_channels"])), c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["latent_channels"], boc[0], 3, padding=1)
        self.mid_block = Mid(boc[0], g)
        blocks, cin = [], boc[0]
        for i, cout in enumerate(boc):
            rs = [Resnet(cin if j == 0 else cout, cout, g) for j in range(n + 1)]
            blocks.append(Block(rs, Up(cout) if i < len(boc) - 1 else None, "upsamplers"))
            cin = cout
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(g, boc[-1], eps=EPS)
        self.conv_out = nn.Conv2d(boc[-1], c["out_channels"], 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.encoder, self.decoder = Encoder(c), Decoder(c)


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    """Reads a safetensors file (8-byte header length, JSON header, data)
    into tensors and its metadata, without the safetensors package."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    data = bytearray(raw[8 + n:])
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        dt = SAFETENSORS_DTYPES[t["dtype"]]
        out[name] = torch.frombuffer(data[a:b], dtype=dt).reshape(t["shape"]) if b > a else torch.zeros(t["shape"], dtype=dt)
    return out, meta


def check_golden(folder):
    """Loads the tiny golden VAE and reproduces its outputs in float64."""
    weights, meta = read_safetensors(f"{folder}/vae_tiny.weights.safetensors")
    g, _ = read_safetensors(f"{folder}/vae_tiny.golden.safetensors")
    cfg = dict(FLUX)
    cfg.update({k: v for k, v in json.loads(meta["config"]).items() if k in FLUX})
    m = VAE(cfg).double()
    m.load_state_dict({k: v.double() for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        h = m.encoder(g["in.image"].double())
        lc = cfg["latent_channels"]
        mean, logvar = h[:, :lc], h[:, lc:].clamp(-30, 20)
        dec = m.decoder(mean)
    worst = 0.0
    for name, got in [("out.mean", mean), ("out.logvar", logvar), ("out.decoded", dec)]:
        want = g[name].double()
        err = ((got - want).norm() / want.norm()).item()
        worst = max(worst, err)
        print(f"{name}: rel err {err:.3g}")
    ok = worst < 1e-6
    print("PASS" if ok else "FAIL", f"anchor reproduces the golden VAE (worst {worst:.3g}, tolerance 1e-6)")
    return 0 if ok else 1


def time_cuda(fn, repeat, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times), min(times), torch.cuda.max_memory_allocated() / 2**30


def bench(repeat, out_json):
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    dev = torch.device("cuda")
    m = VAE(FLUX).to(dev, torch.bfloat16).eval()
    img = torch.rand(1, 3, 1024, 1024, device=dev, dtype=torch.bfloat16) * 2 - 1
    z = torch.randn(1, 16, 128, 128, device=dev, dtype=torch.bfloat16)
    rows = []
    for fmt in ("nchw", "channels_last"):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        m = m.to(memory_format=mf)
        x, zz = img.contiguous(memory_format=mf), z.contiguous(memory_format=mf)
        with torch.inference_mode():
            for op, fn in (("encode 1024x1024", lambda: m.encoder(x)), ("decode 128x128 latent", lambda: m.decoder(zz))):
                torch.cuda.empty_cache()
                med, best, peak = time_cuda(fn, repeat)
                rows.append(dict(op=op, format=fmt, median_s=med, min_s=best, peak_gib=peak))
                print(f"anchor {op} ({fmt}): median {med * 1e3:.1f} ms, min {best * 1e3:.1f} ms, peak {peak:.2f} GiB", flush=True)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} cudnn {torch.backends.cudnn.version()} bf16, median of {repeat}")
    print("| op | format | median s | peak GiB |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['op']} | {r['format']} | {r['median_s']:.4f} | {r['peak_gib']:.2f} |")
    if out_json:
        with open(out_json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, repeat=repeat, rows=rows), f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", default="")
    ap.add_argument("--check-golden", default="", help="folder with vae_tiny.{weights,golden}.safetensors")
    a = ap.parse_args()
    if a.check_golden:
        return check_golden(a.check_golden)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    bench(a.repeat, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
