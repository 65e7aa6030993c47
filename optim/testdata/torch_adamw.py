"""Reference trajectory of torch.optim.AdamW for the optim package's tests.

Runs PyTorch's AdamW in float64 on a few small tensors split into parameter
groups with different learning rates, betas, eps and weight decay, for 50
steps, feeding a gradient sequence this script generates deterministically.
It writes the inputs (groups, initial values, every step's gradients) and the
parameters after every step to one JSON file, so the Go test can replay the
same gradients and compare without needing PyTorch.

Usage: python3 torch_adamw.py [OUTPUT.json]   (default: adamw_ref.json here)
"""

import json
import math
import os
import sys

import torch

STEPS = 50

# Awkward sizes on purpose: nothing is a power of two.
SHAPES = {"w1": [7], "w2": [5, 3], "bias": [13], "w3": [37]}

# Groups exercise per-group hyperparameters: decay vs none, different betas
# and eps (the Go side must split these into separate fused calls).
GROUPS = [
    {"params": ["w1", "w2"], "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1},
    {"params": ["bias"], "lr": 3e-3, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.0},
    {"params": ["w3"], "lr": 5e-2, "betas": [0.95, 0.98], "eps": 1e-8, "weight_decay": 0.01},
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "adamw_ref.json")
    gen = torch.Generator().manual_seed(20261128)
    names = list(SHAPES)
    params = {n: torch.randn(SHAPES[n], generator=gen, dtype=torch.float64) for n in names}
    init = {n: params[n].flatten().tolist() for n in names}
    for p in params.values():
        p.requires_grad_(True)

    groups = [
        {"params": [params[n] for n in g["params"]], "lr": g["lr"], "betas": tuple(g["betas"]),
         "eps": g["eps"], "weight_decay": g["weight_decay"]}
        for g in GROUPS
    ]
    # foreach=False, fused=False: the plain single-tensor loop, the algorithm
    # as documented, with no multi-tensor reordering.
    opt = torch.optim.AdamW(groups, foreach=False, fused=False)

    grads, after = [], []
    for step in range(STEPS):
        step_grads = []
        for n in names:
            # Magnitudes spread over four decades across steps and tensors so
            # that eps, bias correction and decay all matter somewhere.
            mag = 10.0 ** float(torch.empty(1, dtype=torch.float64).uniform_(-3.0, 1.0, generator=gen))
            bias = math.sin(0.3 * step + len(n))  # a drift, so moments build up
            g = (torch.randn(SHAPES[n], generator=gen, dtype=torch.float64) + bias) * mag
            params[n].grad = g
            step_grads.append(g.flatten().tolist())
        opt.step()
        grads.append(step_grads)
        after.append([params[n].detach().flatten().tolist() for n in names])

    doc = {
        "about": "torch.optim.AdamW float64 reference, written by torch_adamw.py",
        "torch_version": torch.__version__,
        "steps": STEPS,
        "names": names,
        "shapes": [SHAPES[n] for n in names],
        "groups": GROUPS,
        "init": [init[n] for n in names],
        "grads": grads,
        "after": after,
    }
    with open(out, "w") as f:
        json.dump(doc, f)
    print(f"wrote {out}: {STEPS} steps, torch {torch.__version__}, final w1[0] = {after[-1][0][0]!r}")


if __name__ == "__main__":
    main()
