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

from fedit.types import ClientUpdate, Params, payload_problem


def update_problem(update: ClientUpdate, expected: Params, max_examples: int | None = None,
                   check_metrics: bool = True, expected_extras: Params | None = None) -> str | None:
    """Why the server must not aggregate `update` (None if it may); `check_metrics=False` skips the metrics (for
    strategies called directly, whose callers may send none). `expected_extras` are the extra tensors the strategy
    expects back (None: not checked; {}: none allowed)."""
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, int):
        return f"num_examples must be an integer, got {n!r}"
    if n < 1:
        return f"num_examples must be >= 1, got {n}"
    if max_examples is not None and n > max_examples:
        return f"claims {n} examples, but at most {max_examples} were assigned to it"
    if check_metrics:
        problem = metrics_problem(update.metrics)
        if problem is not None:
            return problem
    problem = payload_problem(update.params, expected)
    if problem is None and expected_extras is not None:
        extras = payload_problem(update.extras, expected_extras)
        problem = f"extras: {extras}" if extras is not None else None
    return problem


def metrics_problem(metrics: Any) -> str | None:
    if not isinstance(metrics, Mapping):
        return f"metrics must be a mapping, got {type(metrics).__name__}"
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"metric {k!r} is {v!r}, expected a finite number"
    if "loss" not in metrics:
        return "metrics lack the training loss ('loss')"
    return None
