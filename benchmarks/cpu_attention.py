"""Eager vs SDPA attention under CPU bf16 autocast, one training step of the tiny base at several row lengths.

The figures behind `fedit.model.precision.EAGER_MAX_LEN` (docs/benchmarks.md, *Speed step 2*): for each
(rows x tokens), the median over --repeats steps (forward + backward, after one warm-up) of the shipped tiny base
stored in bf16, with transformers' eager attention and with SDPA, the two interleaved step by step, and their
ratio (< 1: eager is faster).
    python benchmarks/cpu_attention.py [--threads N]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = ((16, 64), (16, 256), (8, 512), (4, 1024), (2, 2048))


def _stepper(impl: str, rows: int, tokens: int):  # noqa: ANN202 - a closure timing one step
    import torch
    from transformers import AutoModelForCausalLM

    from fedit.model.load import TINY_PATH

    model = AutoModelForCausalLM.from_pretrained(TINY_PATH, dtype=torch.bfloat16, attn_implementation=impl)
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.embed_tokens.weight.requires_grad_(True)  # something to backpropagate into, as LoRA would
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (rows, tokens), generator=gen)
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[0, : tokens // 4] = 0  # one left-padded row, as a batch of unequal rows has

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits.float().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


def step_seconds(rows: int, tokens: int, repeats: int) -> dict[str, float]:
    """Median step seconds per implementation, the two interleaved step by step (the machine's drift hits both)."""
    steppers = {impl: _stepper(impl, rows, tokens) for impl in ("sdpa", "eager")}
    times: dict[str, list[float]] = {impl: [] for impl in steppers}
    for i in range(repeats + 1):
        for impl in (list(steppers) if i % 2 else list(steppers)[::-1]):
            t = steppers[impl]()
            if i:  # the first of each is a warm-up
                times[impl].append(t)
    return {impl: statistics.median(v) for impl, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=9, help="steps timed per contender and shape (median)")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"{'rows x tokens':>14}  {'sdpa s':>7}  {'eager s':>7}  eager/sdpa")
    for rows, tokens in SHAPES:
        t = step_seconds(rows, tokens, a.repeats)
        print(f"{rows:>5} x {tokens:<6}  {t['sdpa']:7.3f}  {t['eager']:7.3f}  {t['eager'] / t['sdpa']:.2f}", flush=True)


if __name__ == "__main__":
    main()
