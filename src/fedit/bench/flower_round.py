"""Issue 14 item 5: the Flower loopback deployment's round time vs the in-process simulator's, same round.

The embedded default's round (the tiny model, the built-in suite in 10 clients, 3 sampled per round, 20 local
steps; evaluation limited to a few items and outside the rounds in both) runs once in the simulator (this process,
`threads` torch threads) and once on a loopback deployment (`run_flower`: a SuperLink, 2 SuperNodes with warm
workers, `threads` torch threads per worker). Round time is metrics.jsonl's `round_seconds` (the server's round:
messages out, training, replies in, aggregation), the median over rounds after the first; round 1 (model loads,
each client's first tokenization, the first ClientApp start) is reported separately. `flower_round_ratio` =
loopback / simulator (target <= 1.5). `stock=True` adds Flower's stock setup (a `flwr-clientapp` process per
message, the SuperNode's 3 s idle poll, the ServerApp's 0.2 s poll) for comparison.

Note on threads: the loopback's two nodes train their clients in parallel (one process each), the simulator trains
them one after another, so at equal threads per process the loopback has twice the cores when 2 are free; the
figure is the deployment's cost as a user sees it at that setting, and `fixed_seconds_per_round` (loopback round
minus its slowest node's training) is the messaging cost on its own.

No smoke mode: a loopback deployment takes ~30 s to start (SuperLink, SuperNodes, `flwr run`), more than the smoke
suite's budget; `run(smoke=True)` returns at once with `skipped`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fedit.bench.common import Row, bench_parser, median, quiet, report

TARGET = 1.5
NODES = 2


def _config(out: Path, rounds: int, model: str, data: str | None) -> Any:
    from fedit.config import Config

    over: dict[str, Any] = {"run.rounds": rounds, "run.out": str(out), "run.eval_limit": 2,
                            "run.eval_generate": False, "run.eval_every": 0, "run.nodes": NODES}
    if model not in ("auto", "tiny"):
        over["model.name"] = model
    if data:
        over["data.source"] = data
    return Config().override(over)


def _rounds(out: Path) -> list[dict[str, Any]]:
    """Per round: round_seconds, the clients' training seconds and the slowest node's (client c on node c % NODES)."""
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if not m.get("round"):
            continue
        secs = {int(c): float(d.get("seconds", 0.0)) for c, d in (m.get("clients") or {}).items()}
        per_node = [sum(v for c, v in secs.items() if c % NODES == k) for k in range(NODES)]
        rows.append({"round": m["round"], "round_seconds": float(m["round_seconds"]),
                     "client_seconds": sum(secs.values()), "slowest_node_seconds": max(per_node, default=0.0)})
    return rows


def _summary(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    steady = rows[1:] or rows
    return {"round_seconds": median([r["round_seconds"] for r in steady]),
            "round_1_seconds": rows[0]["round_seconds"] if rows else float("nan"),
            "client_seconds": median([r["client_seconds"] for r in steady]),
            "fixed_seconds_per_round": median([r["round_seconds"] - r["slowest_node_seconds"] for r in steady]),
            "wall_seconds": wall, "per_round": rows}


def simulate(rounds: int, threads: int, model: str, data: str | None) -> dict[str, Any]:
    """The in-process simulator at `threads` torch threads (restored afterwards)."""
    import torch

    from fedit.pipeline import run as run_pipeline

    out = Path(tempfile.mkdtemp(prefix="fedit-bench-flower-sim-"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        run_pipeline(_config(out / "run", rounds, model, data), overwrite=True)
        res = _summary(_rounds(out / "run"), time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(out, ignore_errors=True)
    return res


def loopback(rounds: int, threads: int, model: str, data: str | None, fast: bool = True) -> dict[str, Any]:
    """The loopback deployment (2 SuperNodes, warm workers at `threads` threads each); `fast` as in run_flower."""
    from fedit.engines.flower.launcher import run_flower

    out = Path(tempfile.mkdtemp(prefix="fedit-bench-flower-"))
    try:
        t0 = time.perf_counter()
        run_flower(_config(out / "run", rounds, model, data), overwrite=True, threads=threads, fast=fast,
                   log=lambda m: None)
        res = _summary(_rounds(out / "run"), time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return res


def run(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
        rounds: int | None = None, threads: int = 1, stock: bool | None = None) -> dict[str, Any]:
    if smoke:
        return {"benchmark": "flower", "skipped": "no smoke mode: a loopback deployment takes ~30 s to start"}
    quiet()
    rounds = rounds or (4 if quick else 6)
    stock = (not quick) if stock is None else stock
    res: dict[str, Any] = {"benchmark": "flower", "model": "tiny" if model in ("auto", "tiny") else model,
                           "data": data or "builtin", "clients": 10, "clients_per_round": 3, "local_steps": 20,
                           "nodes": NODES, "threads_per_process": threads, "rounds": rounds}
    res["simulator"] = simulate(rounds, threads, model, data)
    res["loopback"] = loopback(rounds, threads, model, data, fast=True)
    if stock:
        res["loopback_stock"] = loopback(rounds, threads, model, data, fast=False)
        res["flower_round_ratio_stock"] = res["loopback_stock"]["round_seconds"] / res["simulator"]["round_seconds"]
    res["flower_round_ratio"] = res["loopback"]["round_seconds"] / res["simulator"]["round_seconds"]
    res["flower_round_ratio_target"] = f"<= {TARGET}"
    res["flower_round_ratio_target_met"] = res["flower_round_ratio"] <= TARGET
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    if "skipped" in res:
        return [Row("skipped", res["skipped"])]
    sim, lb = res["simulator"], res["loopback"]
    out = [
        Row("simulator round, median rounds 2.. (s)", sim["round_seconds"]),
        Row("loopback round, median rounds 2.. (s)", lb["round_seconds"]),
        Row("flower_round_ratio (loopback / simulator)", res["flower_round_ratio"], f"<= {TARGET}",
            res["flower_round_ratio_target_met"]),
        Row("round 1: simulator / loopback (s)", f"{sim['round_1_seconds']:.2f} / {lb['round_1_seconds']:.2f}"),
        Row("loopback fixed cost per round: round - slowest node's training (s)", lb["fixed_seconds_per_round"]),
        Row("clients' training per round: simulator / loopback (s)",
            f"{sim['client_seconds']:.2f} / {lb['client_seconds']:.2f}"),
        Row("wall incl. start-up and evaluation: simulator / loopback (s)",
            f"{sim['wall_seconds']:.1f} / {lb['wall_seconds']:.1f}"),
    ]
    if "loopback_stock" in res:
        st = res["loopback_stock"]
        out += [Row("stock Flower setup: round, median rounds 2.. (s)", st["round_seconds"]),
                Row("stock Flower setup: ratio / fixed cost per round (s)",
                    f"{res['flower_round_ratio_stock']:.2f} / {st['fixed_seconds_per_round']:.2f}")]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = bench_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--stock", action="store_true", help="also run Flower's stock setup (slow)")
    a = ap.parse_args(argv)
    res = run(a.quick, a.smoke, a.model, a.data, a.rounds, a.threads or 1, a.stock or None)
    return report(res, f"Flower loopback round vs simulator ({res.get('model')}, {NODES} nodes, "
                       f"{res.get('threads_per_process')} thread(s) per process)", rows(res), a.json)


if __name__ == "__main__":
    main()
