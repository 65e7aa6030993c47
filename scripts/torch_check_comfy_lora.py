#!/usr/bin/env python3
"""Check that a ComfyUI-format LoRA written by newbie-train is applied by
PyTorch exactly as newbie-train's own model applies it.

The script runs the upstream Next-DiT forward of nextdit_ref.py (beside it)
in float64. It

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
import platform
import sys
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nextdit_ref import InputError, NextDiT

COMFY_PREFIX = "diffusion_model."
LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
ALPHA_SUFFIX = ".alpha"


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
