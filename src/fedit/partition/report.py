"""Partition statistics (clients x categories), a rich table of them, and the heterogeneity bar chart."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedit.data.records import Record
from fedit.errors import DataError
from fedit.partition.base import NO_ALPHA_SCHEMES, display_name, strata_codes

if TYPE_CHECKING:
    from rich.table import Table

PLOT_MAX_CLIENTS = 100
TABLE_MAX_ROWS = 20


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of a count matrix; 0 for empty rows."""
    totals = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    logs = np.log2(p, out=np.zeros(p.shape), where=p > 0)
    return np.maximum(-(p * logs).sum(axis=-1), 0.0)  # no -0.0


def partition_stats(
    records: Sequence[Record],
    parts: Sequence[Sequence[int]],
    *,
    scheme: str,
    seed: int,
    alpha: float | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    """JSON-ready summary: category names, per-client counts (rows follow `categories`), sizes, heterogeneity."""
    codes, names = strata_codes(records)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    flat = np.fromiter((i for p in parts for i in p), dtype=np.int64, count=int(sizes.sum()))
    if flat.size and (flat.min() < 0 or flat.max() >= len(records)):
        raise DataError(f"partition refers to record indices outside 0..{len(records) - 1}")
    clients = np.repeat(np.arange(len(parts)), sizes)
    k = max(len(names), 1)
    counts = np.bincount(clients * k + codes[flat], minlength=len(parts) * k).reshape(len(parts), k)[:, : len(names)]
    ent = _entropy_bits(counts)
    glob = float(_entropy_bits(counts.sum(axis=0)))
    mean = float(sizes.mean()) if len(sizes) else 0.0
    stats: dict[str, Any] = {
        "scheme": scheme,
        "seed": seed,
        "alpha": alpha if scheme not in NO_ALPHA_SCHEMES else None,  # don't suggest alpha shaped e.g. shards
        "num_clients": len(parts),
        "num_records": int(sizes.sum()),
        "categories": [display_name(n) for n in names],
        "sizes": sizes.tolist(),
        "counts": counts.tolist(),
        "client_entropy_bits": [round(float(e), 4) for e in ent],
        "heterogeneity": {
            "mean_client_entropy_bits": round(float(ent.mean()), 4) if len(ent) else 0.0,
            "global_entropy_bits": round(glob, 4),
            # 1.0: clients mix categories like the whole data (IID); near 0: one category per client
            "entropy_ratio": round(float(ent.mean()) / glob, 4) if glob > 0 and len(ent) else 0.0,
            "mean_categories_per_client": round(float((counts > 0).sum(axis=1).mean()), 3) if len(ent) else 0.0,
            "size_min": int(sizes.min()) if len(sizes) else 0,
            "size_max": int(sizes.max()) if len(sizes) else 0,
            "size_mean": round(mean, 3),
            "size_cv": round(float(sizes.std()) / mean, 4) if mean > 0 else 0.0,
        },
    }
    if field is not None:
        stats["field"] = field
        stats["client_values"] = [_client_value(records, p, field) for p in parts]
    return stats


def _client_value(records: Sequence[Record], part: Sequence[int], field: str) -> Any:
    """The field value a by-field client stands for (taken from its first record)."""
    if not part:
        return None
    r = records[part[0]]
    value = r.category if field == "category" else r.meta.get(field)
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def stats_table(stats: dict[str, Any]) -> Table:
    """Clients x categories counts as a rich Table; beyond 20 clients, the first 20 rows, a '...' row and totals."""
    from rich.table import Table

    h = stats["heterogeneity"]
    alpha = f", alpha {stats['alpha']}" if stats.get("alpha") is not None else ""
    table = Table(
        title=f"{stats['scheme']} partition: {stats['num_clients']} clients, {stats['num_records']} records, "
        f"seed {stats['seed']}{alpha}",
        caption=f"mean client category entropy {h['mean_client_entropy_bits']:.2f} bits "
        f"(all data {h['global_entropy_bits']:.2f}, ratio {h['entropy_ratio']:.2f}); "
        f"{h['mean_categories_per_client']:.1f} categories per client; sizes {h['size_min']}..{h['size_max']}",
    )
    values = stats.get("client_values")
    table.add_column("client", justify="right")
    if values is not None:
        table.add_column(str(stats.get("field", "value")))
    table.add_column("size", justify="right", style="bold")
    for name in stats["categories"]:
        table.add_column(name, justify="right")
    table.add_column("entropy", justify="right")
    n = stats["num_clients"]
    shown = n if n <= TABLE_MAX_ROWS else TABLE_MAX_ROWS
    for i in range(shown):
        label = [str(values[i])] if values is not None else []
        cells = [str(c) if c else "[dim]0[/dim]" for c in stats["counts"][i]]
        table.add_row(str(i), *label, str(stats["sizes"][i]), *cells, f"{stats['client_entropy_bits'][i]:.2f}")
    width = 1 + (values is not None)
    if shown < n:
        table.add_row(f"… {n - shown} more", *[""] * (width - 1), "…", *["…"] * len(stats["categories"]), "…")
    totals = np.asarray(stats["counts"], dtype=np.int64).reshape(n, -1).sum(axis=0)
    table.add_section()
    table.add_row(
        f"all {n}",
        *[""] * (width - 1),
        str(stats["num_records"]),
        *map(str, totals.tolist()),
        f"{h['mean_client_entropy_bits']:.2f}",
        style="bold",
    )
    return table


def plot_heterogeneity(stats: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Stacked bars, one per client, one colour per category (cf. Figure 2 of the FedIT paper); writes a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot state); shows the first 100 clients when there are more.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = stats["num_clients"]
    shown = min(n, PLOT_MAX_CLIENTS)
    counts = np.asarray(stats["counts"], dtype=np.int64).reshape(n, -1)[:shown]
    cats = stats["categories"]
    fig = Figure(figsize=(max(8.0, min(22.0, 2.5 + 0.19 * shown)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = _colours(len(cats))
    x = np.arange(shown)
    bottom = np.zeros(shown)
    for j, name in enumerate(cats):
        ax.bar(x, counts[:, j], bottom=bottom, width=0.85, color=colours[j], label=name, linewidth=0)
        bottom += counts[:, j]
    step = next(s for s in (1, 2, 5, 10, 20, 50) if shown / s <= 40)
    ax.set_xticks(x[::step])
    ax.set_xlim(-0.6, shown - 0.4)
    ax.set_xlabel("client")
    ax.set_ylabel("records")
    alpha = f", alpha={stats['alpha']}" if stats.get("alpha") is not None else ""
    title = f"{stats['scheme']} partition of {stats['num_records']} records, {n} clients (seed {stats['seed']}{alpha})"
    if shown < n:
        title += f"\nfirst {shown} of {n} clients shown"
    ax.set_title(title, fontsize=11)
    ax.legend(title="category", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=9)
    ax.set_ylim(0, max(1.0, float(bottom.max(initial=0)) * 1.05))  # stacked bars' sticky edges defeat margins
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def _colours(k: int) -> list:
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [colormaps["tab20"](i) for i in range(k)]
    return [colormaps["turbo"](i / max(k - 1, 1)) for i in range(k)]
