"""The Tracker protocol: what an experiment tracker (TensorBoard, MLflow) is asked to do during a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """One tracking backend for one run. Every method may raise: the session (`fedit.tracking.session`) turns a
    failure into one warning and stops using that tracker; the run goes on.

    A tracker never logs a tag at a round it already holds for that tag (it learns what it holds from its own store
    in `start`), so a resumed run, which replays saved rounds through `log_round`, logs nothing twice.
    """

    name: str

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        """Open (or reopen, on resume) the tracker's run and record `config` (the run's Config.to_dict) as its
        hyperparameters."""
        ...

    def log_round(self, round_idx: int, row: dict[str, Any]) -> None:
        """Log one round's metrics.jsonl row (its numeric fields, `fedit.tracking.tags.round_scalars`)."""
        ...

    def finish(self, evaluation: dict[str, Any] | None) -> None:
        """The run finished: log the final evaluation (eval.json, at its `rounds` step) and mark the run done."""
        ...

    def close(self) -> None:
        """Release the tracker (a run that never reached `finish` is marked as failed where the backend can)."""
        ...
