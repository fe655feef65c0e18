"""curves.png: a valid PNG next to metrics.jsonl, redrawn as rounds finish, drawn from the run's own numbers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fedit.tracking.curves import curve_points, plot_curves

PNG = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG
    return imread(path)


def test_the_tracked_run_has_curves_with_its_points(tracked_run) -> None:
    img = read_png(tracked_run.root / "curves.png")
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert not list(tracked_run.root.glob(".curves.png*"))  # no temporary file left behind
    pts = curve_points(tracked_run.rows, tracked_run.eval)
    rows = tracked_run.rows
    assert pts["train_loss"] == [(r["round"], r["train_loss"]) for r in rows[1:]]
    assert pts["eval_loss"] == [(0, rows[0]["eval"]["mean"]["loss"]), (1, rows[1]["eval"]["mean"]["loss"]),
                                (3, tracked_run.eval["mean"]["final_loss"])]
    assert [p[0] for p in pts["eval_score"]] == [0, 1, 3]


def test_curves_change_when_rounds_are_added(tracked_run, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    digests = []
    for n in (2, 3, 4):
        plot_curves(tracked_run.rows[:n], out, title="run")
        read_png(out)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    plot_curves(tracked_run.rows, out, tracked_run.eval, title="run")
    digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(set(digests)) == 4


def test_curves_without_evaluation(tmp_path: Path) -> None:
    rows = [{"round": 0}, {"round": 1, "train_loss": 2.0}, {"round": 2, "train_loss": float("nan")}]
    plot_curves(rows, tmp_path / "c.png")
    assert read_png(tmp_path / "c.png").shape[1] < 700  # one panel: no score to show
    assert curve_points(rows) == {"train_loss": [(1, 2.0)], "eval_loss": [], "eval_score": []}
