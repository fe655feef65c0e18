"""Run directory: per-round PEFT adapters and strategy state, metrics, config; durable atomic writes and resume.

    run_dir/
      .fedit-output          marker: a fedit run (only marked directories are ever replaced by --overwrite)
      .lock                  held (flock) by the one process using the run; released by the OS if it dies
      config.toml            resolved config          run.json     fedit version, data fingerprint
      round_0000/            adapter/ (PEFT format; + fedit_base_delta.safetensors), state/strategy.safetensors,
                             clients/<id>.safetensors (the state of clients this round changed), metrics.json
      ...
      metrics.jsonl          one object per round (rebuilt from round_*/metrics.json on resume)
      final/                 the last round's adapter
    Every adapter directory (round_NNNN/adapter/, final/) has a README.md: its Hugging Face model card (model/card.py).
A round directory is built under a temporary name, fsynced, and renamed when complete, so neither a kill nor a power
loss leaves half a round. On resume an unreadable or non-finite latest round is moved aside (`round_NNNN.corrupt`)
and the run continues from the round before it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from fedit.atomic import OLD_PREFIX, TMP_PREFIX, append_line, fsync_dir, staged_dir
from fedit.atomic import write_json as atomic_write_json
from fedit.atomic import write_text as atomic_write_text
from fedit.errors import CheckpointError
from fedit.model.card import write_run_card
from fedit.model.lora import load_adapter_params, save_adapter
from fedit.outdir import check_output_dir, create_atomically, marker_kind, write_marker
from fedit.strategies.base import State
from fedit.types import Params, payload_problem

ROUND_RE = re.compile(r"^round_(\d{4,})$")
LOCK = ".lock"
CLIENTS = "clients"  # round_NNNN/clients/<id>.safetensors: the state of the clients that round changed


def round_dir_name(r: int) -> str:
    return f"round_{r:04d}"


class RunStore:
    """Reads and writes one run directory; `lock()` makes one process its only writer."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def check_create(self, overwrite: bool) -> None:
        """Refuse early (before any model is loaded) if `create` would have to refuse."""
        if check_output_dir(self.root, overwrite, resume_hint=True):  # True: a fedit run that --overwrite replaces
            self._refuse_if_locked()

    def create(self, config_toml: str, info: dict[str, Any], overwrite: bool) -> None:
        """A new run directory holding the config and run.json, created in one rename; then locked."""
        if check_output_dir(self.root, overwrite, resume_hint=True):
            self._refuse_if_locked()
            shutil.rmtree(self.root)
        create_atomically(self.root, "run", {"config.toml": config_toml,
                                             "run.json": json.dumps(info, indent=2, sort_keys=True) + "\n"})
        self.lock()

    def open_existing(self) -> dict[str, Any]:
        """Validate and lock a directory to resume; returns run.json. Cleans temporary leftovers of an interrupted
        round (only once the lock is held, so another live process's temporary files are never touched)."""
        if not self.root.is_dir():
            raise CheckpointError(f"cannot resume: {self.root} does not exist")
        if not (self.root / "config.toml").is_file() or not (self.root / "run.json").is_file():
            raise CheckpointError(f"cannot resume: {self.root} is not a fedit run directory "
                                  "(config.toml and run.json missing)")
        try:
            info = json.loads((self.root / "run.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot resume: {self.root / 'run.json'} is corrupt ({e})") from None
        self.lock()
        if not info.get("run_id"):  # a run from before run ids: give it one now (Flower nodes key client state by it)
            import uuid

            info["run_id"] = uuid.uuid4().hex
            atomic_write_json(self.root / "run.json", info)
        if marker_kind(self.root) is None:  # a run made before markers existed: it is fedit's, say so now
            write_marker(self.root, "run")
        for leftover in [*self.root.glob(f"{TMP_PREFIX}*"), *self.root.glob(f"{OLD_PREFIX}*")]:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return info

    def info(self) -> dict[str, Any]:
        """run.json ({} if unreadable: callers only read optional fields from it)."""
        try:
            return json.loads((self.root / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    # ---- the lock -----------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run's lock (non-blocking); CheckpointError naming the holder if another process has it."""
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform: single-writer is the user's job
            return
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(f"{self.root} is in use by another fedit process (pid {holder}); wait for it to "
                                  "finish or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _refuse_if_locked(self) -> None:
        probe = RunStore(self.root)
        if (self.root / LOCK).exists():
            probe.lock()
            probe.unlock()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unlock()

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

    def save_round(self, r: int, params: Params, state: State, metrics: dict[str, Any], peft_config: Any,
                   client_state: dict[int, Params] | None = None, base_delta: Params | None = None) -> float:
        """Write round `r` durably and atomically: the adapter (with the cumulative base delta beside it, if any),
        the strategy state, the new state of the clients this round changed, and the metrics. Returns the seconds
        spent (also in its metrics)."""
        t0 = time.perf_counter()
        with staged_dir(self.root / round_dir_name(r)) as tmp:
            (tmp / "state").mkdir()
            save_adapter(params, tmp / "adapter", peft_config, base_delta)
            write_run_card(tmp / "adapter", self.root, "round", r, metrics)  # inside the round: never one without it
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "state" / "strategy.safetensors"))
            if client_state:
                (tmp / CLIENTS).mkdir()
                for cid, tensors in sorted(client_state.items()):
                    save_file({k: v.contiguous() for k, v in tensors.items()},
                              str(tmp / CLIENTS / f"{cid}.safetensors"))
            seconds = time.perf_counter() - t0
            metrics = dict(metrics, checkpoint_seconds=seconds)
            atomic_write_json(tmp / "metrics.json", metrics)
        append_line(self.root / "metrics.jsonl", json.dumps(metrics, sort_keys=True))
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

    def client_state(self, client_id: int, round_idx: int) -> Params:
        """Client `client_id`'s state as saved with round `round_idx` ({} for round 0 or a round without it)."""
        if round_idx <= 0:
            return {}
        f = self.root / round_dir_name(round_idx) / CLIENTS / f"{client_id}.safetensors"
        if not f.is_file():
            return {}
        try:
            return load_file(str(f))
        except Exception as e:
            raise CheckpointError(f"{f}: unreadable client state ({e})") from None

    def base_delta(self, r: int) -> Params:
        """The cumulative base delta saved with round `r` ({} if the strategy never changed the base)."""
        from fedit.model.base_delta import load_base_delta

        return load_base_delta(self.root / round_dir_name(r) / "adapter")

    def load_latest_usable(self, log: Any = None) -> tuple[int, Params, State, dict[str, Any]] | None:
        """The newest round that loads and holds only finite values; newer unusable rounds are moved aside to
        `round_NNNN.corrupt` (kept, never deleted) with a message. None when no round is usable."""
        for r in reversed(self.rounds()):
            try:
                params, state, metrics = self.load_round(r)
                bad = payload_problem(params, params) or payload_problem(state, state)
                if bad is not None:
                    raise CheckpointError(f"{round_dir_name(r)}: {bad}")
            except CheckpointError as e:
                src = self.root / round_dir_name(r)
                dst = self.root / f"{round_dir_name(r)}.corrupt"
                n = 1
                while dst.exists():
                    n += 1
                    dst = self.root / f"{round_dir_name(r)}.corrupt{n}"
                os.replace(src, dst)
                fsync_dir(self.root)
                if log is not None:
                    log(f"round {r} is unusable ({e}); moved it to {dst.name} and resuming from the round before it")
                continue
            return r, params, state, metrics
        return None

    def history(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rounds():
            f = self.root / round_dir_name(r) / "metrics.json"
            try:
                out.append(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{f}: unreadable round metrics ({e})") from None
        return out

    def rebuild_metrics(self) -> None:
        """metrics.jsonl from the complete rounds only (drops lines of a round that never finished)."""
        lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in self.history())
        atomic_write_text(self.root / "metrics.jsonl", lines)

    def write_final(self, r: int) -> Path:
        """final/: a copy of round `r`'s adapter, its model card saying it is the final one."""
        dst = self.root / "final"
        with staged_dir(dst) as tmp:
            shutil.copytree(self.root / round_dir_name(r) / "adapter", tmp, dirs_exist_ok=True)
            write_run_card(tmp, self.root, "final", r, self._round_metrics(r))
        return dst

    def write_final_card(self, r: int, evals: dict[str, Any]) -> None:
        """final/README.md again (atomically), with the base-vs-final table of eval.json."""
        write_run_card(self.root / "final", self.root, "final", r, self._round_metrics(r), evals)

    def _round_metrics(self, r: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / round_dir_name(r) / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

