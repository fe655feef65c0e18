"""The kernel timings behind the third pass of docs/benchmarks.md, *Speed step 2*: bf16 vs float32 GEMMs at the
default's shapes (the bound on bf16 alone), the cost of applying a dropout mask (the fused LoRA layer's choice),
and what hand-fusing the rest could save at most (the 2026-12-07 look).

At M = 768 rows (16 examples x ~48 tokens): q, k, v as three [M x 256] x [256 x 256] GEMMs vs one x [256 x 768];
their input gradient as three GEMMs summed vs one; gate and up as two x [256 x 688] vs one. Then applying a mask to
a [M x 256] tensor: `masked_fill`, `torch.where`, a multiply by the bool mask viewed as uint8. Then the tiny
base's own non-matmul blocks in bf16 at the default's micro-batch (16 rows x 44 tokens), forward + backward as a
training step runs them: transformers' LlamaRMSNorm (9 per step), its rotary embedding on q and k (4 per step),
SiLU(gate) x up (4 per step); and drawing the 64-bit words of one LoRA dropout mask ([16 x 47 x 256] elements /
4) with torch's generator (what `MaskDropout` uses) against numpy's fastest. Mean microseconds over --loops calls
after 20 warm-up calls.
    python benchmarks/cpu_kernels.py [--threads 2] [--loops 200]
"""

import argparse
import time
from collections.abc import Callable


def _us(f: Callable[[], object], loops: int) -> float:
    for _ in range(20):
        f()
    t0 = time.perf_counter()
    for _ in range(loops):
        f()
    return (time.perf_counter() - t0) / loops * 1e6


def _one_dtype(torch, dt, m: int, n: int) -> None:  # noqa: ANN001 - torch imported late, like the others
    x = torch.randn(m, 256, dtype=dt)
    qkv = [torch.randn(256, 256, dtype=dt) for _ in range(3)]
    qkv_cat = torch.cat(qkv)
    g = [torch.randn(m, 256, dtype=dt) for _ in range(3)]
    g_cat = torch.cat(g, 1)
    mlp = [torch.randn(688, 256, dtype=dt) for _ in range(2)]
    mlp_cat = torch.cat(mlp)
    rows = {
        "q,k,v forward: 3 GEMMs / 1": (_us(lambda: [x @ w.t() for w in qkv], n), _us(lambda: x @ qkv_cat.t(), n)),
        "q,k,v input grad: 3 GEMMs / 1": (_us(lambda: g[0] @ qkv[0] + g[1] @ qkv[1] + g[2] @ qkv[2], n),
                                          _us(lambda: g_cat @ qkv_cat, n)),
        "gate,up forward: 2 GEMMs / 1": (_us(lambda: [x @ w.t() for w in mlp], n), _us(lambda: x @ mlp_cat.t(), n)),
    }
    for name, (sep, cat) in rows.items():
        print(f"{str(dt):15s} {name:32s} {sep:8.0f} {cat:8.0f}")
    keep = torch.rand(m, 256) >= 0.05
    drop, keep_u8 = ~keep, keep.view(torch.uint8)
    print(f"{str(dt):15s} mask: masked_fill {_us(lambda: x.masked_fill(drop, 0), n):.0f}, "
          f"where {_us(lambda: torch.where(keep, x, 0), n):.0f}, x * uint8 view {_us(lambda: x * keep_u8, n):.0f}")


def _block_ops(torch, n: int) -> None:  # noqa: ANN001
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    bf = torch.bfloat16
    norm = LlamaRMSNorm(256).to(bf).requires_grad_(False)
    x = torch.randn(16, 44, 256, dtype=bf, requires_grad=True)
    q, k = (torch.randn(16, 4, 44, 64, dtype=bf, requires_grad=True) for _ in range(2))
    cos, sin = torch.randn(1, 44, 64, dtype=bf), torch.randn(1, 44, 64, dtype=bf)
    gate, up = (torch.randn(16, 44, 688, dtype=bf, requires_grad=True) for _ in range(2))

    def step(f: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=bf):
                y = f()
            y.backward(torch.ones_like(y))
        return run

    def rotary() -> torch.Tensor:
        a, b = apply_rotary_pos_emb(q, k, cos, sin)
        return a + b

    per_step = {"RMSNorm": (step(lambda: norm(x)), 9), "rotary on q, k": (step(rotary), 4),
                "SiLU(gate) x up": (step(lambda: torch.nn.functional.silu(gate) * up), 4)}
    total = 0.0
    for name, (f, count) in per_step.items():
        us = _us(f, n)
        total += us * count
        print(f"bf16 fwd+bwd     {name:32s} {us:8.0f} us, x {count} per step = {us * count / 1000:.2f} ms")
    print(f"bf16 fwd+bwd     {'all three, per step':32s} {total / 1000:8.2f} ms")


def _generators(torch, n: int) -> None:  # noqa: ANN001
    import numpy as np

    words = 16 * 47 * 256 // 4
    buf = torch.empty(words, dtype=torch.int64)
    print(f"mask words ({words}): torch random_ {_us(lambda: buf.random_(-(2 ** 63), None), n):.0f} us", end="")
    for name in ("PCG64", "SFC64"):
        g = np.random.Generator(getattr(np.random, name)(0))
        us = _us(lambda g=g: g.integers(0, 2 ** 64, size=words, dtype=np.uint64), n)
        print(f", numpy {name} {us:.0f} us", end="")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loops", type=int, default=200)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    m, n = 768, args.loops
    print(f"torch {torch.__version__}, {args.threads} threads, M = {m}, mean us over {n} calls")
    for dt in (torch.bfloat16, torch.float32):
        _one_dtype(torch, dt, m, n)
    _block_ops(torch, n)
    _generators(torch, n)


if __name__ == "__main__":
    main()
