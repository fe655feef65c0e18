"""Per-update validation: the trust boundary between what clients send and what strategies aggregate.

Every update a round receives is checked here before any strategy sees it, whatever engine delivered it:

- the payload has exactly the expected tensor keys, each a tensor of the expected shape and dtype;
- every value is finite (one NaN or Inf would poison the global adapter and, through the checkpoint, every resume);
- `num_examples` is an integer in [1, bound], where bound is what the server assigned that client (or a bound from
  the config when the data never reaches the server): a client cannot claim more weight than its data;
- the reported metrics are finite numbers, and the training loss is among them.

A failing update is dropped with the reason, as if the client had failed; the round goes on with the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fedit.types import ClientUpdate, Params


def _nonfinite(t: torch.Tensor) -> int:
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    return int((~torch.isfinite(t)).sum())


def param_problem(params: Any, expected: Params) -> str | None:
    """Why `params` cannot stand for a payload shaped like `expected` (None if it can)."""
    if not isinstance(params, Mapping):
        return f"params must be a mapping of tensors, got {type(params).__name__}"
    missing = sorted(expected.keys() - params.keys())
    extra = sorted(params.keys() - expected.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
        return "adapter keys differ from the global adapter: " + "; ".join(parts)
    for k, ref in expected.items():
        v = params[k]
        if not isinstance(v, torch.Tensor):
            return f"{k} is a {type(v).__name__}, expected a tensor"
        if v.shape != ref.shape:
            return f"{k} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}"
        if v.dtype != ref.dtype:
            return f"{k} has dtype {v.dtype}, expected {ref.dtype}"
    for k, v in params.items():
        bad = _nonfinite(v)
        if bad:
            return f"{k} has {bad} non-finite value(s) (NaN or Inf)"
    return None


def update_problem(update: ClientUpdate, expected: Params, max_examples: int | None = None) -> str | None:
    """Why the server must not aggregate `update` (None if it may)."""
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, int):
        return f"num_examples must be an integer, got {n!r}"
    if n < 1:
        return f"num_examples must be >= 1, got {n}"
    if max_examples is not None and n > max_examples:
        return f"claims {n} examples, but at most {max_examples} were assigned to it"
    if not isinstance(update.metrics, Mapping):
        return f"metrics must be a mapping, got {type(update.metrics).__name__}"
    for k, v in update.metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"metric {k!r} is {v!r}, expected a finite number"
    if "loss" not in update.metrics:
        return "metrics lack the training loss ('loss')"
    return param_problem(update.params, expected)
