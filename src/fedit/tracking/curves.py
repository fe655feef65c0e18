"""curves.png: train loss by round and, where the run evaluated, mean held-out loss and score by round."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def curve_points(rows: list[dict[str, Any]], final: dict[str, Any] | None = None) -> dict[str, list[tuple[int, float]]]:
    """(round, value) series from metrics.jsonl rows: "train_loss" (rounds >= 1), "eval_loss" and "eval_score"
    (round 0 is the base model; the final evaluation, eval.json, at its round)."""
    out: dict[str, list[tuple[int, float]]] = {"train_loss": [], "eval_loss": [], "eval_score": []}

    def add(name: str, r: int, v: Any) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name].append((r, float(v)))

    for row in sorted(rows, key=lambda x: x["round"]):
        r = int(row["round"])
        add("train_loss", r, row.get("train_loss"))
        mean = row.get("eval", {}).get("mean", {})
        add("eval_loss", r, mean.get("loss"))
        add("eval_score", r, mean.get("score"))
    if final:
        r = int(final["rounds"])
        for name, key in (("eval_loss", "final_loss"), ("eval_score", "final_score")):
            out[name] = [p for p in out[name] if p[0] != r]
            add(name, r, final.get("mean", {}).get(key))
    return out


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str], final: dict[str, Any] | None = None,
                title: str = "") -> None:
    """Write the PNG atomically (a temporary sibling renamed over `path`), so a viewer never sees half a file.

    Uses matplotlib's Agg canvas directly (no pyplot state), as partition/report.py does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    pts = curve_points(rows, final)
    has_score = bool(pts["eval_score"])
    fig = Figure(figsize=(10.0 if has_score else 6.0, 3.8))  # a fixed layout: one draw per save, not two
    fig.subplots_adjust(left=0.08 if has_score else 0.12, right=0.98, bottom=0.13, top=0.9, wspace=0.22)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if has_score else 1, 1)
    for name, label, style in (("train_loss", "train loss", "o-"), ("eval_loss", "held-out loss (mean)", "s--")):
        if pts[name]:
            xs, ys = zip(*pts[name], strict=True)
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if pts["train_loss"] or pts["eval_loss"]:
        ax.legend(fontsize=8)
    if has_score:
        ax2 = fig.add_subplot(1, 2, 2)
        xs, ys = zip(*pts["eval_score"], strict=True)
        ax2.plot(xs, ys, "s-", color="#d62728", markersize=3)
        ax2.set_xlabel("round")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("held-out score (mean)")
        ax2.grid(alpha=0.3)
    last = max((p[0] for s in pts.values() for p in s), default=0)
    fig.suptitle(f"{title}  (round {last})" if title else f"round {last}", fontsize=10)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
