"""Durable atomic writes: a file or directory appears complete under its final name, or not at all.

"Complete" holds across a power loss, not only a kill: file data is fsynced before the rename, and the directory
holding the new name is fsynced after it, so the rename itself is on disk (POSIX; on platforms without directory
fsync that step is skipped).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"  # temporary siblings; run directories remove leftovers of these on resume
OLD_PREFIX = ".old-"  # a directory being replaced, between the two renames


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (new names, renames, removals) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (files first, then their directories, deepest first)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """A text file to write into; when the block completes it is fsynced and renamed over `path`.

    If the block raises, the temporary sibling is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling, fsync it, and rename it over `path`."""
    with open_text(path) as f:
        f.write(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync (for logs that are also rebuilt from durable sources)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line if line.endswith("\n") else line + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """An empty `.tmp-<name>` directory beside `final`; when the block completes it replaces `final` whole.

    Everything written inside is fsynced before the rename. A kill or power loss inside the block leaves at most the
    temporary directory (run directories clean those up on resume); an existing `final` is moved aside first and
    removed only after the new one is in place, so a crash never leaves neither.
    """
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    fsync_tree(tmp)
    old = final.with_name(f"{OLD_PREFIX}{final.name}")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
