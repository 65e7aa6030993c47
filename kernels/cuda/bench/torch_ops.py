"""Times the PyTorch baselines for docs/BENCHMARKS.md on the same shapes as
kernels/cuda's Go benchmarks: the bf16 GEMMs of one Next-DiT block at 1024²
(M = 4352 tokens) and scaled_dot_product_attention forward and
forward+backward at B=1, S=4352, 24 query / 8 kv heads, d=96.

Each figure is the median of many runs timed with CUDA events after a
warm-up, on random (never zero) inputs. Run: python3 torch_ops.py
"""
import statistics

import torch
import torch.nn.functional as F


def time_ms(fn, warm=10, iters=30, reps=1):
    """Median milliseconds per call; reps calls run between each pair of
    events so host launch gaps do not count (the Go GEMM benchmark does 10)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        torch.cuda.synchronize()
        out.append(s.elapsed_time(e) / reps)
    return statistics.median(out)


def main():
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}")
    M = 4352
    bf = torch.bfloat16
    # (name, m, n, k, kind): "fwd" is x[M,K]·W[N,K]ᵀ; "dX" is dY[M,K]·W[K,N];
    # "dW" is dY[K=M tokens, m]ᵀ·X[M tokens, n].
    shapes = [
        ("qkv_2304x3840", M, 3840, 2304, "fwd"),
        ("out_2304x2304", M, 2304, 2304, "fwd"),
        ("w13_2304x9216", M, 9216, 2304, "fwd"),
        ("w2_9216x2304", M, 2304, 9216, "fwd"),
        ("qkv_dX_3840x2304", M, 2304, 3840, "dX"),
        ("qkv_dW_3840x2304", 3840, 2304, M, "dW"),
    ]
    for name, m, n, k, kind in shapes:
        if kind == "fwd":
            x = torch.randn(m, k, device=dev, dtype=bf)
            w = torch.randn(n, k, device=dev, dtype=bf) * 0.02
            fn = lambda: F.linear(x, w)
        elif kind == "dX":
            x = torch.randn(m, k, device=dev, dtype=bf)
            w = torch.randn(k, n, device=dev, dtype=bf) * 0.02
            fn = lambda: torch.mm(x, w)
        else:
            x = torch.randn(k, m, device=dev, dtype=bf)
            w = torch.randn(k, n, device=dev, dtype=bf) * 0.02
            fn = lambda: torch.mm(x.t(), w)
        ms = time_ms(fn, reps=10)
        fl = 2 * m * n * k
        print(f"torch gemm {name:22s} {ms:8.4f} ms  {fl / ms / 1e9:7.1f} TFLOP/s")

    B, S, Hq, Hkv, D = 1, 4352, 24, 8, 96
    q = torch.randn(B, Hq, S, D, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(B, Hkv, S, D, device=dev, dtype=bf, requires_grad=True)
    do = torch.randn(B, Hq, S, D, device=dev, dtype=bf)

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    def fwdbwd():
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        o.backward(do)

    fl = 4 * B * Hq * S * S * D
    ms = time_ms(fwd, iters=30)
    print(f"torch sdpa fwd     {ms:8.4f} ms  {fl / ms / 1e9:7.1f} TFLOP/s")
    ms = time_ms(fwdbwd, iters=30)
    print(f"torch sdpa fwd+bwd {ms:8.4f} ms  {3.5 * fl / ms / 1e9:7.1f} TFLOP/s")

    x = torch.randn(M, 2304, device=dev, dtype=bf)
    w = torch.randn(2304, device=dev, dtype=bf)
    ms = time_ms(lambda: F.rms_norm(x, (2304,), w, 1e-6), iters=100)
    print(f"torch rms_norm 4352x2304 {ms:8.4f} ms  {(2 * 2 * M * 2304) / ms / 1e9:7.1f} TB/s")
    h = torch.randn(M, 9216, device=dev, dtype=bf)
    ms = time_ms(lambda: F.silu(h), iters=100)
    print(f"torch silu 4352x9216 {ms:8.4f} ms  {(2 * 2 * M * 9216) / ms / 1e9:7.1f} TB/s")


if __name__ == "__main__":
    main()
