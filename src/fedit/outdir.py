"""Output directories fedit owns: a marker file says so, and only marked directories are ever replaced.

Every directory fedit creates for its results (a run, a partition, a merged export, an experiment) gets a marker
file, `.fedit-output`, naming what it holds. `--overwrite` deletes a non-empty directory only when it carries that
marker; anything else (a project, a home directory, someone's data) is refused and left untouched. The current
directory, any directory containing it, the home directory and the filesystem root are refused even when marked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fedit.errors import CheckpointError

MARKER = ".fedit-output"
KINDS = ("run", "partition", "export", "experiment")


def marker_kind(path: Path) -> str | None:
    """The kind recorded by fedit's marker in `path`, or None when it carries none (or an unreadable one)."""
    f = Path(path) / MARKER
    try:
        kind = json.loads(f.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in KINDS else None


def write_marker(path: Path, kind: str) -> None:
    from fedit import __version__
    from fedit.atomic import write_json

    assert kind in KINDS, kind
    write_json(Path(path) / MARKER, {"kind": kind, "fedit_version": __version__})


def _protected(path: Path) -> str | None:
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the current directory or contains it"
    if resolved == Path.home().resolve():
        return "it is the home directory"
    if resolved == Path(resolved.anchor):
        return "it is the filesystem root"
    return None


def check_output_dir(path: str | Path, overwrite: bool, what: str = "output directory",
                     resume_hint: bool = False) -> bool:
    """Whether `path` can receive new output; True when it exists with content that `replace_output_dir` will
    delete. Raises CheckpointError, touching nothing, when the directory is in use by others' files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{what} {path} is a file, not a directory")
    if not path.exists():
        parent = next(p for p in path.absolute().parents if p.exists())
        if not parent.is_dir():
            raise CheckpointError(f"{what} {path}: {parent} is not a directory, so nothing can be created under it")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CheckpointError(f"{what} {path}: cannot create it, {parent} is not writable")
        return False
    if not any(path.iterdir()):
        return False
    kind = marker_kind(path)
    if not overwrite:
        hint = f" or --resume {path} to continue it" if resume_hint and kind == "run" else ""
        if kind is None:
            raise CheckpointError(f"{what} {path} is not empty and is not a fedit output directory; "
                                  "choose an empty or new directory")
        raise CheckpointError(f"{what} {path} is not empty (a fedit {kind} directory); "
                              f"pass --overwrite to replace it{hint}")
    if kind is None:
        raise CheckpointError(f"refusing to --overwrite {path}: it is not a fedit output directory (no {MARKER} "
                              "marker), so fedit will not delete it; choose an empty or new directory")
    reason = _protected(path)
    if reason:
        raise CheckpointError(f"refusing to --overwrite {path}: {reason}")
    return True


def replace_output_dir(path: str | Path, overwrite: bool, kind: str, what: str = "output directory") -> Path:
    """Make `path` an empty directory marked as fedit's `kind`, deleting a previous fedit output if allowed."""
    path = Path(path)
    if check_output_dir(path, overwrite, what):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, kind)
    return path


def create_atomically(path: Path, kind: str, files: dict[str, str]) -> None:
    """Create directory `path` holding the marker and `files` (name -> text) in one rename, so that a kill leaves
    either no directory or a complete one. `path` must be absent or an empty directory."""
    from fedit.atomic import fsync_dir, fsync_tree

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.fedit-creating-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_marker(tmp, kind)
        fsync_tree(tmp)
        try:
            os.replace(tmp, path)  # onto an absent or empty directory: atomic on POSIX
        except OSError as e:
            raise CheckpointError(f"cannot create {path}: {e.strerror} (did another process write to it?)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
