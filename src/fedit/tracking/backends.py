"""The tracking backends by name: `run.report_to` parsed and checked, the installed libraries checked, trackers built.

Nothing here imports a tracking library: the config validates names without them, and a missing library is found
(with `importlib.util.find_spec`) before any work starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from fedit.errors import ConfigError

if TYPE_CHECKING:
    from fedit.config import RunConfig
    from fedit.tracking.base import Tracker

BACKENDS = ("tensorboard", "mlflow")
# backend -> (the module it imports, the fedit extra that installs it)
REQUIRES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def parse_report_to(value: str, key: str = "run.report_to") -> tuple[str, ...]:
    """The backends named by `value`: "none" (none), one name, or a comma list ("tensorboard,mlflow")."""
    names = [n.strip() for n in str(value).split(",")]
    expected = f"none, {', '.join(BACKENDS)}, or a comma list of them (e.g. tensorboard,mlflow)"
    if names == ["none"]:
        return ()
    bad = [n for n in names if n not in BACKENDS]
    if bad:
        raise ConfigError(f"{key}: got {value!r} ({bad[0]!r} is not a backend), expected {expected}")
    return tuple(dict.fromkeys(names))


def is_local(uri: str) -> bool:
    """Whether `uri` names a local directory: a plain path or a file: URI (not http:, sqlite:, databricks, ...)."""
    return urlparse(uri).scheme in ("", "file")


def local_path(uri: str) -> Path:
    """The absolute directory a local `uri` names (relative paths from the working directory)."""
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri).expanduser().resolve()


def check_tracking(report_to: str, tracking_uri: str | None) -> tuple[str, ...]:
    """Check `run.report_to` and `run.tracking_uri` together (no library needed); returns the backends."""
    backends = parse_report_to(report_to)
    if tracking_uri is not None and not tracking_uri.strip():
        raise ConfigError("run.tracking_uri: got an empty string, expected a URI or directory (or leave it unset)")
    if tracking_uri and backends == ("tensorboard",) and not is_local(tracking_uri):
        raise ConfigError(f"run.tracking_uri: got {tracking_uri!r}, expected a local directory for TensorBoard's "
                          "event files (a plain path or a file: URI)")
    return backends


def check_installed(report_to: str) -> None:
    """Refuse, naming the extra to install, when a chosen backend's library is missing."""
    for name in parse_report_to(report_to):
        module, extra = REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"run.report_to: {name} needs the {module!r} package, which is not installed; "
                              f'install it with: pip install "fedit[{extra}]"')


def tensorboard_dir(run: RunConfig, run_dir: Path) -> Path:
    """Where TensorBoard's event files go: run.tracking_uri when TensorBoard is the only backend, else
    <run>/tensorboard."""
    if run.tracking_uri and parse_report_to(run.report_to) == ("tensorboard",):
        return local_path(run.tracking_uri)
    return Path(run_dir).resolve() / "tensorboard"


def build_trackers(run: RunConfig, run_dir: Path) -> list[Tracker]:
    """The trackers `run.report_to` names, not started yet (starting imports their libraries)."""
    out: list[Tracker] = []
    for name in parse_report_to(run.report_to):
        if name == "tensorboard":
            from fedit.tracking.tensorboard import TensorBoardTracker

            out.append(TensorBoardTracker(tensorboard_dir(run, run_dir)))
        else:
            from fedit.tracking.mlflow import MlflowTracker

            out.append(MlflowTracker(run.tracking_uri))
    return out
