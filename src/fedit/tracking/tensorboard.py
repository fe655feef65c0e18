"""TensorBoard: scalars per round with torch's SummaryWriter, the config as text and hparams; resumes in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.tracking.tags import config_params, final_scalars, finite, round_scalars

# the run's headline metrics, named to the hparams plugin so its table shows them beside the config
HPARAM_METRICS = ("train/loss", "eval/mean_loss", "eval/mean_score")


def logged_steps(log_dir: Path) -> dict[str, int]:
    """Tag -> the last step already in `log_dir`'s event files (read with TensorBoard's own EventAccumulator);
    every tag kind counts (scalars, and the config's text)."""
    if not log_dir.is_dir() or not any(log_dir.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {t: max(e.step for e in acc.Scalars(t)) for t in tags.get("scalars", []) if acc.Scalars(t)}
    out |= {t: max(e.step for e in acc.Tensors(t)) for t in tags.get("tensors", []) if acc.Tensors(t)}
    return out


def _hparam_value(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) else str(v)


class TensorBoardTracker:
    """Event files in one directory (default <run>/tensorboard): every round's scalars at step = round, float32 as
    TensorBoard stores them; the config as a TOML text and as hparams once, when the directory starts."""

    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self.logged: dict[str, int] = {}

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logged = logged_steps(self.log_dir)
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=30)
        if not self.logged:  # a new directory: the config once (a resumed run's changes are in config.toml)
            import tomli_w
            from torch.utils.tensorboard.summary import hparams

            toml = tomli_w.dumps(config)
            self.writer.add_text("config", "    " + toml.replace("\n", "\n    "), 0)  # markdown code block
            exp, ssi, _ = hparams({k: _hparam_value(v) for k, v in config_params(config).items()},
                                  dict.fromkeys(HPARAM_METRICS, 0.0))
            self.writer.file_writer.add_summary(exp)
            self.writer.file_writer.add_summary(ssi)
            self.logged["config"] = 0
            self.writer.flush()

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in finite(scalars).items():
            if step > self.logged.get(tag, -1):
                self.writer.add_scalar(tag, value, step)
                self.logged[tag] = step
        self.writer.flush()

    def log_round(self, round_idx: int, row: dict[str, Any]) -> None:
        self._write(round_idx, round_scalars(row))

    def finish(self, evaluation: dict[str, Any] | None) -> None:
        if evaluation:
            self._write(int(evaluation["rounds"]), final_scalars(evaluation))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
