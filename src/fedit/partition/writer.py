"""Write a partition to disk: client_NNN.jsonl per client, test.jsonl, stats.json and heterogeneity.png."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedit.atomic import write_text
from fedit.data.records import Record
from fedit.partition.base import display_name, strata_codes
from fedit.partition.report import partition_stats, plot_heterogeneity

_CLIENT_FILE = re.compile(r"client_\d+\.jsonl")


def client_filename(i: int, num_clients: int) -> str:
    """client_000.jsonl ... (at least three digits, more when there are >= 1000 clients, so names sort)."""
    return f"client_{i:0{max(3, len(str(num_clients - 1)))}d}.jsonl"


def _jsonl(records: Sequence[Record]) -> str:
    return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)


def write_partition(
    out_dir: str | os.PathLike[str],
    records: Sequence[Record],
    parts: Sequence[Sequence[int]],
    test_records: Sequence[Record] | None = None,
    *,
    scheme: str,
    seed: int,
    alpha: float | None = None,
    field: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every file atomically (temp name + os.replace) and return the stats written to stats.json (with the
    entries of `extra` added, e.g. what `--on-invalid skip` dropped).

    Client files of an earlier, larger partition in the same folder (and its test.jsonl when no test set is given)
    are removed so the folder always describes one partition.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [client_filename(i, len(parts)) for i in range(len(parts))]
    for i, name in enumerate(names):
        write_text(out / name, _jsonl([records[j] for j in parts[i]]))
    keep = set(names)
    for old in out.iterdir():
        if _CLIENT_FILE.fullmatch(old.name) and old.name not in keep:
            old.unlink()
    stats = partition_stats(records, parts, scheme=scheme, seed=seed, alpha=alpha, field=field)
    stats["files"] = {"clients": names, "test": None}
    if test_records is not None:
        write_text(out / "test.jsonl", _jsonl(test_records))
        codes, cats = strata_codes(test_records)
        counts = {display_name(c): int(m) for c, m in zip(cats, np.bincount(codes, minlength=len(cats)), strict=True)}
        stats["files"]["test"] = "test.jsonl"
        stats["test"] = {"size": len(test_records), "counts": counts}
    elif (out / "test.jsonl").exists():
        (out / "test.jsonl").unlink()
    stats.update(extra or {})
    write_text(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    plot_heterogeneity(stats, out / "heterogeneity.png")
    return stats
