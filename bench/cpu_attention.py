"""Attention in bfloat16 on a CPU: torch's fused kernel against the sum written out (model.causal_attention).

Two tables, one thread (a CPU shard's), best of the repeats:
1. the attention op alone, forward + backward, at the shapes a CPU trains (B, heads, T, head size): torch's
   scaled_dot_product_attention in float32 and bfloat16, and model.causal_attention written out in bfloat16;
2. a whole training call (forward + backward of the GPT, as the dtype probe times it) in float32 and in bfloat16
   with the kernel (EXPLICIT_ATTENTION_MAX_T = 0) and written out (the shipped bound).

    PYTHONPATH=src python bench/cpu_attention.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from nanogpt import config, model
from nanogpt.runtime import dtype_probe, machine

OPS = [(24, 3, 32, 64), (12, 2, 64, 64), (12, 4, 64, 32), (6, 3, 128, 64), (32, 6, 256, 64)]
# (layers, width, heads, context, sequences per shard): cpu-small at batch 24 on two shards, and the time plans'
STEPS = [(4, 128, 4, 64, 12), (4, 128, 2, 32, 24), (4, 192, 3, 32, 24), (4, 192, 3, 64, 12), (4, 128, 2, 128, 6)]


def op_ms(fn, shape: tuple[int, int, int, int], dtype: torch.dtype, repeats: int) -> float:
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(*shape, dtype=dtype)
    for _ in range(3):
        fn(q, k, v).backward(grad)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            fn(q, k, v).backward(grad)
        best = min(best, (time.perf_counter() - t0) / 5 * 1000)
    return best


def kernel(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def written_out(q, k, v):
    return model.causal_attention(q, k, v, dropout_p=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=4096, help="the steps' vocabulary (the code text's BPE)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {dtype_probe.cpu_model()}; torch {torch.__version__}; native bfloat16: "
          f"{machine.cpu_has_fast_bf16()}; bound {model.EXPLICIT_ATTENTION_MAX_T}\n")
    print("| B, heads, T, head size | kernel float32 ms | kernel bfloat16 ms | written out bfloat16 ms |")
    print("|---|---:|---:|---:|")
    for shape in OPS:
        row = [op_ms(kernel, shape, torch.float32, args.repeats), op_ms(kernel, shape, torch.bfloat16, args.repeats),
               op_ms(written_out, shape, torch.bfloat16, args.repeats)]
        print(f"| {', '.join(map(str, shape))} | " + " | ".join(f"{ms:.2f}" for ms in row) + " |", flush=True)
    bound = model.EXPLICIT_ATTENTION_MAX_T
    print("\n| layers x width (heads), context x sequences | float32 ms | bfloat16, kernel ms | bfloat16, written out "
          "ms | written out vs float32 |")
    print("|---|---:|---:|---:|---:|")
    for n_layer, n_embd, n_head, block, batch in STEPS:
        cfg = config.ModelConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block,
                                 vocab_size=args.vocab, dropout=0.0, bias=False)
        shape = dtype_probe.StepShape.of(cfg, batch)
        f32, bf16 = [], []
        for explicit in (0, bound, 0, bound):  # alternated, so a burst of load falls on both
            model.EXPLICIT_ATTENTION_MAX_T = explicit
            a, b = dtype_probe.measure(shape, repeats=args.repeats)
            f32.append(a)
            bf16.append((explicit, b))
        model.EXPLICIT_ATTENTION_MAX_T = bound
        with_kernel = min(b for e, b in bf16 if e == 0)
        out = min(b for e, b in bf16 if e == bound)
        print(f"| {n_layer} x {n_embd} ({n_head}), {block} x {batch} | {min(f32):.1f} | {with_kernel:.1f} | {out:.1f} "
              f"| {out / min(f32):.2f} |", flush=True)


if __name__ == "__main__":
    main()
