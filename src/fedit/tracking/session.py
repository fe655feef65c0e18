"""One run's tracking: the configured trackers and curves.png, fed the rows of metrics.jsonl as rounds finish.

`pipeline.run` opens a `TrackingSession` once the run directory exists and wraps the run's reporter with it, so
both engines (the simulator and the Flower ServerApp, which calls pipeline.run too) pass through it. Nothing here
may cost a run: a tracker that raises is warned about once and dropped, and so is a curves.png that cannot be drawn.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedit.tracking.backends import build_trackers
from fedit.tracking.base import Tracker
from fedit.tracking.curves import plot_curves

CURVES = "curves.png"


class TrackingSession:
    """Feeds each finished round (and, on resume, every saved round the trackers may lack) to the trackers and
    redraws curves.png; `finish` adds the final evaluation. A context manager: leaving it closes the trackers."""

    def __init__(self, cfg: Any, run_dir: str | Path, log: Callable[[str], None]) -> None:
        self.root = Path(run_dir)
        self.log = log
        self.rows: dict[int, dict[str, Any]] = {}
        self.final: dict[str, Any] | None = None
        self.draw = True
        self.trackers: list[Tracker] = []
        try:
            self.trackers = build_trackers(cfg.run, self.root)
        except Exception as e:
            log(f"warning: tracking is off for this run ({type(e).__name__}: {e}); the run goes on")
        config = cfg.to_dict()  # what config.toml holds
        for t in list(self.trackers):
            self._call(t, "start", config, self.root)

    # ---- the trackers, each failure isolated --------------------------------------------------------------------
    def _call(self, tracker: Tracker, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as e:
            self.trackers.remove(tracker)
            self.log(f"warning: {tracker.name} tracking failed ({method}: {type(e).__name__}: {e}); the run goes on "
                     f"without it")
            if method != "close":
                with contextlib.suppress(Exception):
                    tracker.close()

    def _curves(self) -> None:
        if not self.draw:
            return
        try:
            plot_curves(list(self.rows.values()), self.root / CURVES, self.final, title=self.root.name)
        except Exception as e:
            self.draw = False
            self.log(f"warning: could not draw {CURVES} ({type(e).__name__}: {e}); the run goes on without it")

    # ---- rounds -------------------------------------------------------------------------------------------------
    def catch_up(self) -> None:
        """Every row of metrics.jsonl not seen yet (round 0, the rounds of earlier sessions) to the trackers."""
        try:
            text = (self.root / "metrics.jsonl").read_text(encoding="utf-8")
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, ValueError) as e:
            self.log(f"warning: tracking could not read metrics.jsonl ({e}); earlier rounds are not logged")
            return
        new = [r for r in rows if int(r.get("round", -1)) not in self.rows]
        for row in new:
            self._add(row)
        if new:
            self._curves()

    def _add(self, row: dict[str, Any]) -> None:
        r = int(row["round"])
        self.rows[r] = row
        for t in list(self.trackers):
            self._call(t, "log_round", r, row)

    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None:
        """Round `round_idx` is saved: log its row and redraw."""
        self._add(dict(metrics, round=round_idx))
        self._curves()

    def finish(self, evaluation: dict[str, Any] | None) -> None:
        """The run finished: any saved round not logged yet, the final evaluation, curves.png with it."""
        self.catch_up()
        self.final = evaluation
        for t in list(self.trackers):
            self._call(t, "finish", evaluation)
        self._curves()

    def close(self) -> None:
        for t in list(self.trackers):
            self._call(t, "close")
        self.trackers = []

    def __enter__(self) -> TrackingSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reporter(self, inner: Any = None) -> TrackingReporter:
        """`inner` (the run's reporter, or none) with this session listening to round_start and round_end."""
        return TrackingReporter(self, inner)


class TrackingReporter:
    """A round-loop Reporter that passes everything to `inner` and tells the session about each round."""

    def __init__(self, session: TrackingSession, inner: Any = None) -> None:
        from fedit.server.rounds import NullReporter

        self.session = session
        self.inner = inner if inner is not None else NullReporter()
        self._caught_up = False

    def round_start(self, round_idx: int, total_rounds: int, sampled: list[int]) -> None:
        if not self._caught_up:  # round 0 and earlier sessions' rounds are saved by now
            self._caught_up = True
            self.session.catch_up()
        self.inner.round_start(round_idx, total_rounds, sampled)

    def client_step(self, client_id: int, step: int, total: int, loss: float) -> None:
        self.inner.client_step(client_id, step, total, loss)

    def round_end(self, round_idx: int, metrics: dict[str, Any]) -> None:
        self.inner.round_end(round_idx, metrics)
        self.session.round_end(round_idx, metrics)

    def log(self, message: str) -> None:
        self.inner.log(message)
