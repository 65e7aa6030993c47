#!/usr/bin/env python3
"""PyTorch anchor for the Gemma 3 caption encoder's throughput.

transformers' Gemma3TextModel at Gemma 3 4B's size (34 layers, hidden 2560,
8/4 heads of 256, MLP 10240, vocab 262208, window 1024 on five of every six
layers, global RoPE 1e6 with linear x8, local 1e4), random weights, bf16 on
CUDA, SDPA attention, run the way NewBie conditions on it:
output_hidden_states=True and hidden_states[-2] kept. It prints, per batch
shape, tokens/s (median of 5 timed batches after 2 warm-ups) and the peak
CUDA memory (torch.cuda.max_memory_allocated, weights included), in the
format of models/textenc's TestEncodeThroughputCUDA, so the two sit side
by side in one log (scripts/device/enc.sh).

    python3 scripts/torch_gemma3_encode.py [--shapes 8x512,8x64] [--golden DIR]

--golden DIR (a folder holding gemma_tiny.weights.safetensors and
gemma_tiny.golden.safetensors) first loads the golden's weights into
transformers' own Gemma3TextModel and prints its relative error against the
golden outputs at the mask-1 positions, in float64 on the CPU (the
reference's own floor) and in bf16 on CUDA (weights and activations bf16, as
a bf16 Gemma runs in transformers): the second is the bound a bf16 Gemma
can be held to on this random model (models/textenc.GemmaTolerances).
"""
import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import Gemma3TextConfig, Gemma3TextModel


def config():
    kw = dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
              num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
              sliding_window=1024, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh")
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["rope_parameters"] = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        }
    else:
        kw.update(rope_theta=1000000.0, rope_local_base_freq=10000.0,
                  rope_scaling={"rope_type": "linear", "factor": 8.0})
    cfg = Gemma3TextConfig(**kw)
    cfg.use_cache = False
    try:
        cfg._attn_implementation = "sdpa"
    except Exception:  # older configs: set at model construction instead
        pass
    return cfg


def golden_check(folder):
    from safetensors import safe_open
    with safe_open(os.path.join(folder, "gemma_tiny.weights.safetensors"), "pt") as f:
        cfg = Gemma3TextConfig.from_dict(json.loads(f.metadata()["config"]))
        w = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(os.path.join(folder, "gemma_tiny.golden.safetensors"), "pt") as f:
        ids, mask = f.get_tensor("in.input_ids").long(), f.get_tensor("in.attention_mask").long()
        want = {k: f.get_tensor("out." + k).double() for k in ("hidden_states_m2", "last_hidden_state")}
    cfg.use_cache = False
    keep = mask.bool()
    for dtype, device in ((torch.float64, "cpu"), (torch.bfloat16, "cuda")):
        cfg._attn_implementation = "eager"
        model = Gemma3TextModel(cfg).to(dtype)
        missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in w.items()}, strict=False)
        if unexpected or [m for m in missing if "embed_tokens" not in m]:
            raise SystemExit(f"golden weights do not fit Gemma3TextModel: missing {missing}, unexpected {unexpected}")
        model = model.to(device).eval()
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        got = {"hidden_states_m2": out.hidden_states[-2], "last_hidden_state": out.last_hidden_state}
        errs = []
        for k, ref in want.items():
            g = got[k].double().cpu()[keep]
            r = ref[keep]
            errs.append(f"{k} {((g - r).norm() / r.norm()).item():.3g}")
        name = "float64, CPU" if dtype == torch.float64 else "bf16, CUDA"
        print(f"torch gemma3 (transformers) vs golden ({name}): rel err " + ", ".join(errs), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8x512,8x64")
    ap.add_argument("--golden", help="folder of the Gemma golden files: print transformers' own error against them first")
    args = ap.parse_args()
    if args.golden:
        golden_check(args.golden)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Gemma3TextModel(config()).eval()
    torch.set_default_dtype(torch.float32)
    weights = torch.cuda.memory_allocated()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}, "
          f"{n_params} parameters, attention {getattr(model.config, '_attn_implementation', '?')}, "
          f"layer types {model.config.layer_types[:6]}...", flush=True)
    for shape in args.shapes.split(","):
        b, l = (int(x) for x in shape.split("x"))
        g = torch.Generator(device="cuda").manual_seed(b * 1000 + l)
        ids = torch.randint(0, 262208, (b, l), device="cuda", generator=g)
        mask = torch.ones(b, l, dtype=torch.long, device="cuda")
        times = []
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            for it in range(7):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                h = out.hidden_states[-2]
                torch.cuda.synchronize()
                if it >= 2:
                    times.append(time.perf_counter() - t0)
                assert torch.isfinite(h).all(), "non-finite hidden state"
                del out, h
        med = statistics.median(times)
        peak = torch.cuda.max_memory_allocated()
        print(f"torch gemma3-4b hidden_states[-2] bf16 cuda batch {b} x {l}: {b * l / med:.0f} tokens/s "
              f"({med * 1000:.2f} ms/batch), peak {peak / 2**30:.2f} GiB (weights {weights / 2**30:.2f} GiB)", flush=True)


if __name__ == "__main__":
    main()
