"""Run directory: per-round PEFT adapters and strategy state, metrics, config; atomic writes and resume.

    run_dir/
      config.toml            resolved config          run.json     fedit version, data fingerprint
      round_0000/            adapter/ (PEFT format), state/strategy.safetensors, metrics.json
      ...
      metrics.jsonl          one object per round (rebuilt from round_*/metrics.json on resume)
      final/                 the last round's adapter
A round directory is built under a temporary name and renamed when complete, so a kill never leaves half a round.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from fedit.atomic import staged_dir
from fedit.atomic import write_json as atomic_write_json
from fedit.atomic import write_text as atomic_write_text
from fedit.errors import CheckpointError
from fedit.model.lora import load_adapter_params, save_adapter
from fedit.strategies.base import State
from fedit.types import Params

ROUND_RE = re.compile(r"^round_(\d{4,})$")


def round_dir_name(r: int) -> str:
    return f"round_{r:04d}"


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def create(self, config_toml: str, info: dict[str, Any], overwrite: bool) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise CheckpointError(f"output directory {self.root} is not empty; pass --overwrite to replace it "
                                      f"or --resume {self.root} to continue it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "config.toml", config_toml)
        atomic_write_json(self.root / "run.json", info)

    def open_existing(self) -> dict[str, Any]:
        """Validate a directory to resume; returns run.json. Cleans temporary leftovers of an interrupted round."""
        if not self.root.is_dir():
            raise CheckpointError(f"cannot resume: {self.root} does not exist")
        if not (self.root / "config.toml").is_file() or not (self.root / "run.json").is_file():
            raise CheckpointError(f"cannot resume: {self.root} is not a fedit run directory "
                                  "(config.toml and run.json missing)")
        try:
            info = json.loads((self.root / "run.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"cannot resume: {self.root / 'run.json'} is corrupt ({e})") from None
        for leftover in self.root.glob(".tmp-*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        if self.latest_round() is None:
            raise CheckpointError(f"cannot resume: {self.root} has no complete round (no round_NNNN directory)")
        return info

    # ---- rounds -------------------------------------------------------------------------------------------------
    def rounds(self) -> list[int]:
        out = []
        for p in self.root.iterdir() if self.root.is_dir() else []:
            m = ROUND_RE.match(p.name)
            if m and p.is_dir() and (p / "metrics.json").is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_round(self) -> int | None:
        rs = self.rounds()
        return rs[-1] if rs else None

    def save_round(self, r: int, params: Params, state: State, metrics: dict[str, Any], peft_config: Any) -> float:
        """Write round `r` atomically; returns the seconds spent (also stored in its metrics as checkpoint_seconds)."""
        t0 = time.perf_counter()
        with staged_dir(self.root / round_dir_name(r)) as tmp:
            (tmp / "state").mkdir()
            save_adapter(params, tmp / "adapter", peft_config)
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "state" / "strategy.safetensors"))
            seconds = time.perf_counter() - t0
            metrics = dict(metrics, checkpoint_seconds=seconds)
            atomic_write_json(tmp / "metrics.json", metrics)
        with open(self.root / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
        return seconds

    def load_round(self, r: int) -> tuple[Params, State, dict[str, Any]]:
        d = self.root / round_dir_name(r)
        params = load_adapter_params(d / "adapter")
        try:
            state = load_file(str(d / "state" / "strategy.safetensors"))
            metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        except Exception as e:
            raise CheckpointError(f"cannot resume from {d}: corrupt checkpoint ({e})") from None
        return params, state, metrics

    def history(self) -> list[dict[str, Any]]:
        return [json.loads((self.root / round_dir_name(r) / "metrics.json").read_text()) for r in self.rounds()]

    def rebuild_metrics(self) -> None:
        """metrics.jsonl from the complete rounds only (drops lines of a round that never finished)."""
        lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in self.history())
        atomic_write_text(self.root / "metrics.jsonl", lines)

    def write_final(self, r: int) -> Path:
        dst = self.root / "final"
        with staged_dir(dst) as tmp:
            shutil.copytree(self.root / round_dir_name(r) / "adapter", tmp, dirs_exist_ok=True)
        return dst
