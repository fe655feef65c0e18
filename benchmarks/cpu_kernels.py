"""The kernel timings behind the third pass of docs/benchmarks.md, *Speed step 2*: bf16 vs float32 GEMMs at the
default's shapes (the bound on bf16 alone), and the cost of applying a dropout mask (the fused LoRA layer's choice).

At M = 768 rows (16 examples x ~48 tokens): q, k, v as three [M x 256] x [256 x 256] GEMMs vs one x [256 x 768];
their input gradient as three GEMMs summed vs one; gate and up as two x [256 x 688] vs one. Then applying a mask to
a [M x 256] tensor: `masked_fill`, `torch.where`, a multiply by the bool mask viewed as uint8. Mean microseconds
over --loops calls after 20 warm-up calls.
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

if __name__ == "__main__":
    main()
