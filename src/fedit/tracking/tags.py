"""Stable tag names for the numeric fields of a metrics.jsonl row, shared by every tracker (docs/tracking.md).

    train_loss, examples, tokens        train/loss, train/examples, train/tokens
    bytes_up, bytes_down                comm/bytes_up, comm/bytes_down
    *_seconds                           time/<key>            (round, checkpoint, client_train, train, aggregate, eval)
    sampled, replied, failed            clients/<key>         (how many)
    aggregation_error                   strategy/aggregation_error
    strategy.<k>                        strategy/<k>          (what the strategy reports, e.g. residual_norm)
    eval.mean.<k>                       eval/mean_<k>         (score, loss, exact_match, ...)
    eval.per_category.<c>.<k>           eval/<c>/<k>
    epsilon                             privacy/epsilon
    any other number, nested dicts      <key>, <key>/<sub>/...
    round, clients (per-client detail)  not logged (the round is the step; per-client figures stay in metrics.jsonl)

Name parts are reduced to letters, digits, `_`, `-` and `.` (what both TensorBoard and MLflow accept).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

RENAMED = {"train_loss": "train/loss", "examples": "train/examples", "tokens": "train/tokens",
           "bytes_up": "comm/bytes_up", "bytes_down": "comm/bytes_down",
           "aggregation_error": "strategy/aggregation_error", "epsilon": "privacy/epsilon"}
COUNTED = ("sampled", "replied", "failed")
SKIPPED = ("round", "clients")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def tag_part(name: Any) -> str:
    """`name` as one safe tag component (never empty, never `.` or `..`)."""
    s = _UNSAFE.sub("_", str(name))
    return "_" if s in ("", ".", "..") else s


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _nested(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in sorted(value.items(), key=lambda kv: str(kv[0])):
            _nested(f"{prefix}/{tag_part(k)}", v, out)
        return
    x = _number(value)
    if x is not None:
        out[prefix] = x


def eval_scalars(evaluation: dict[str, Any]) -> dict[str, float]:
    """An evaluation (`eval` of a row: per_category and mean) as eval/mean_<k> and eval/<category>/<k>."""
    out: dict[str, float] = {}
    for key, value in sorted(evaluation.items()):
        if key == "mean" and isinstance(value, dict):
            for k, v in sorted(value.items()):
                x = _number(v)
                if x is not None:
                    out[f"eval/mean_{tag_part(k)}"] = x
        elif key == "per_category" and isinstance(value, dict):
            for cat, metrics in sorted(value.items()):
                _nested(f"eval/{tag_part(cat)}", metrics, out)
        else:
            _nested(f"eval/{tag_part(key)}", value, out)
    return out


def round_scalars(row: dict[str, Any]) -> dict[str, float]:
    """Every numeric field of a metrics.jsonl row under its stable tag name (see the module docstring)."""
    out: dict[str, float] = {}
    for key, value in sorted(row.items()):
        if key in SKIPPED:
            continue
        if key in COUNTED and isinstance(value, (list, dict)):
            out[f"clients/{key}"] = float(len(value))
        elif key == "eval" and isinstance(value, dict):
            out.update(eval_scalars(value))
        elif key in RENAMED:
            _nested(RENAMED[key], value, out)
        elif key.endswith("_seconds"):
            _nested(f"time/{tag_part(key)}", value, out)
        else:
            _nested(tag_part(key), value, out)
    return out


def final_scalars(evaluation: dict[str, Any]) -> dict[str, float]:
    """eval.json's final figures (`final_<k>`) under the same tags as an in-loop evaluation's."""
    final = {"mean": {k[len("final_"):]: v for k, v in evaluation.get("mean", {}).items() if k.startswith("final_")},
             "per_category": {c: {("n" if k == "n" else k[len("final_"):]): v for k, v in m.items()
                                  if k == "n" or k.startswith("final_")}
                              for c, m in evaluation.get("per_category", {}).items()}}
    return eval_scalars(final)


def finite(scalars: dict[str, float]) -> dict[str, float]:
    """The finite ones (NaN and infinity are not plotted; metrics.jsonl keeps them)."""
    return {k: v for k, v in scalars.items() if math.isfinite(v)}


def config_params(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict (`Config.to_dict`) as dotted keys ("client.lr"); values kept if bool/int/float/str, lists,
    tables and None written as JSON."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = json.dumps(value)

    walk("", config)
    return out
