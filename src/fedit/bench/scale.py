"""Target 4: scale with the number of registered clients (10, 100, 1,000; 10 sampled per round).

- peak RSS of a whole simulated run, each size in its own fresh process (ru_maxrss is a lifetime peak);
- peak RSS of a round of 200 sampled clients vs one of 10 (200 registered), with a 5 MB adapter (LoRA r=64 on
  every linear layer of the tiny base): the round loop folds each update into the strategy's streaming accumulator as
  the engine delivers it, so memory must not grow with the clients sampled (200 buffered updates would be 1 GB);
- aggregation time against the number of sampled clients (FedAvg on real-shaped payloads; least-squares line);
- partitioning the Dolly data into 1,000 clients, per scheme.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from fedit.bench.common import (
    Row,
    bench_config,
    find_dolly,
    load_dolly_clients,
    machine,
    median,
    model_name,
    peak_rss_mb,
    print_table,
    quiet,
    set_threads,
    synthetic_records,
    write_json,
)

SIZES = (10, 100, 1000)
SAMPLED = (10, 200)  # sampled clients per round in the aggregation-memory pair (200 registered)
# a large adapter and little training per client: the round's memory is then the updates', not the model's
BIG_ADAPTER = {"lora.r": 64, "lora.alpha": 128, "lora.targets": ["all-linear"], "client.batch_size": 2,
               "client.micro_batch_size": 2, "data.cutoff_len": 64}


def all_records(data: str | None, smoke: bool) -> tuple[list[Any], str]:
    root = None if smoke else find_dolly(data)
    if root is None:
        return synthetic_records(2000), "synthetic"
    return [r for part in load_dolly_clients(root) for r in part], f"dolly ({root})"


def worker(n_clients: int, model: str, data: str | None, smoke: bool, rounds: int,
           sampled: int = 10, big_adapter: bool = False) -> dict[str, Any]:
    """One simulated run with `n_clients` registered clients, `sampled` a round; runs in its own process."""
    from fedit.engines.simulation import ClientDataCache, SimulationEngine
    from fedit.partition import partition
    from fedit.pipeline import build_model
    from fedit.server.checkpoint import RunStore
    from fedit.server.rounds import run_rounds
    from fedit.strategies import build_strategy

    quiet()
    records, source = all_records(data, smoke)
    t0 = time.perf_counter()
    parts = partition(records, n_clients, "shards", seed=0)
    part_s = time.perf_counter() - t0
    clients = [[records[i] for i in p] for p in parts]
    out = tempfile.mkdtemp(prefix="fedit-bench-scale-")
    cfg = bench_config(model, **{"partition.clients": n_clients, "run.clients_per_round": sampled, "run.rounds": rounds,
                                 "client.local_steps": 1, "client.local_epochs": None, "run.out": out,
                                 **(BIG_ADAPTER if big_adapter else {})})
    bundle = build_model(cfg)
    strategy = build_strategy(cfg.strategy)
    store = RunStore(out)
    store.create(cfg.to_toml(), {}, overwrite=True)
    params = bundle.trainer.slots.get()
    state = strategy.init_state(params, len(clients))
    store.save_round(0, params, state, {"round": 0}, bundle.peft_config)
    engine = SimulationEngine(bundle.trainer, ClientDataCache(clients, bundle.template, bundle.tokenizer, cfg), cfg)
    t0 = time.perf_counter()
    run_rounds(cfg, engine, strategy, store, bundle.peft_config, params, state, 0)
    return {"clients": n_clients, "sampled": sampled, "peak_rss_mb": peak_rss_mb(), "partition_seconds": part_s,
            "seconds_per_round": (time.perf_counter() - t0) / rounds, "records": len(records), "data": source,
            "adapter_bytes": sum(v.numel() * v.element_size() for v in params.values())}


def spawn(n: int, model: str, data: str | None, smoke: bool, rounds: int, threads: int | None,
          sampled: int = 10, big_adapter: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "fedit.bench.scale", "--worker", str(n), "--model", model, "--rounds", str(rounds),
           "--sampled", str(sampled)] + (["--big-adapter"] if big_adapter else [])
    cmd += (["--data", data] if data else []) + (["--smoke"] if smoke else [])
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scale worker ({n} clients) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def aggregation_timing(sizes: tuple[int, ...], repeats: int, shape: tuple[int, int, int]) -> dict[str, Any]:
    """FedAvg time for k sampled clients; payload of r-rank LoRA on q,v of `layers` layers of width `hidden`."""
    import numpy as np
    import torch

    from fedit.config import StrategyConfig
    from fedit.strategies import build_strategy
    from fedit.strategies.base import RoundContext
    from fedit.types import ClientUpdate

    hidden, layers, r = shape
    g = torch.Generator().manual_seed(0)
    payload = {f"base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight":
               torch.randn((r, hidden) if ab == "A" else (hidden, r), generator=g)
               for i in range(layers) for m in ("q", "v") for ab in ("A", "B")}
    fedavg = build_strategy(StrategyConfig())
    updates = [ClientUpdate(i, {k: v + i for k, v in payload.items()}, 10 + i) for i in range(max(sizes))]
    secs = []
    for k in sizes:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fedavg.aggregate(RoundContext(1, 0, k, tuple(range(k))), payload, updates[:k], {})
            ts.append(time.perf_counter() - t0)
        secs.append(median(ts))
    x, y = np.array(sizes, float), np.array(secs)
    slope, icpt = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + icpt)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
    return {"sampled_clients": list(sizes), "seconds": secs, "seconds_per_client": float(slope),
            "intercept_seconds": float(icpt), "linear_r2": float(r2),
            "payload_params": sum(v.numel() for v in payload.values()),
            "payload_shape": {"hidden": hidden, "layers": layers, "r": r, "targets": ["q_proj", "v_proj"]}}


def partition_timing(data: str | None, smoke: bool, n: int = 1000) -> dict[str, Any]:
    from fedit.partition import partition

    t0 = time.perf_counter()
    records, source = all_records(data, smoke)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"records": len(records), "clients": n, "load_seconds": load_s, "data": source}
    for scheme in ("iid", "shards", "dirichlet", "quantity"):
        t0 = time.perf_counter()
        partition(records, n, scheme, seed=0)
        out[f"{scheme}_seconds"] = time.perf_counter() - t0
    out["max_seconds_incl_load"] = load_s + max(out[f"{s}_seconds"] for s in ("iid", "shards", "dirichlet",
                                                                              "quantity"))
    return out


def run(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
        threads: int | None = None) -> dict[str, Any]:
    quiet()
    name, desc = model_name(model, smoke)
    rounds = 1 if smoke else 2
    sizes = (10, 20) if smoke else SIZES
    # smoke: in this process (seconds, but the RSS peak is then shared and meaningless); otherwise a fresh process each
    runs = [worker(n, name, data, smoke, rounds, sampled=2) if smoke else spawn(n, name, data, smoke, rounds, threads)
            for n in sizes]
    rss = {r["clients"]: r["peak_rss_mb"] for r in runs}
    # aggregation memory: the same registered clients, 10 vs 200 sampled (smoke: 2 vs 8 of 20, in this process)
    pair = (2, 8) if smoke else SAMPLED
    reg = 20 if smoke else max(SAMPLED)
    sampled_runs = [worker(reg, name, data, smoke, 1, sampled=k, big_adapter=True) if smoke
                    else spawn(reg, name, data, smoke, 1, threads, sampled=k, big_adapter=True) for k in pair]
    agg_sizes = (2, 4, 8) if smoke else (5, 10, 20, 40)
    agg = aggregation_timing(agg_sizes, 3 if smoke else 7, (64, 2, 4) if smoke else (1024, 24, 16))
    part = partition_timing(data, smoke, 100 if smoke else 1000)
    big = max(sizes)
    res = {
        "benchmark": "scale", "model": desc, "rounds_per_size": rounds, "sampled_per_round": 10,
        "runs": runs, "peak_rss_mb": {str(k): v for k, v in rss.items()},
        f"memory_ratio_{big}_vs_10": rss[big] / rss[10],
        "sampled_runs": sampled_runs,
        f"memory_ratio_{pair[1]}_vs_{pair[0]}_sampled": sampled_runs[1]["peak_rss_mb"] / sampled_runs[0]["peak_rss_mb"],
        "sampled_adapter_bytes": sampled_runs[0]["adapter_bytes"],
        "aggregation": agg, "aggregation_seconds_per_client": agg["seconds_per_client"],
        "aggregation_linear_r2": agg["linear_r2"],
        "partition": part, f"partition_{part['clients']}_seconds": part["max_seconds_incl_load"],
    }
    res["memory_target_met"] = res[f"memory_ratio_{big}_vs_10"] <= 1.10
    res["sampled_memory_target_met"] = res[f"memory_ratio_{pair[1]}_vs_{pair[0]}_sampled"] <= 1.10
    res["partition_target_met"] = part["max_seconds_incl_load"] < 5.0 and part["clients"] == 1000
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    key = next(k for k in res if k.startswith("memory_ratio_") and not k.endswith("_sampled"))
    out = [Row(f"peak RSS, {k} clients (MiB)", v) for k, v in res["peak_rss_mb"].items()]
    out.append(Row(key, res[key], "<= 1.10", res["memory_target_met"]))
    skey = next(k for k in res if k.endswith("_sampled"))
    for r in res["sampled_runs"]:
        out.append(Row(f"peak RSS, {r['sampled']} of {r['clients']} sampled, "
                       f"{res['sampled_adapter_bytes'] / 2**20:.0f} MiB adapter (MiB)", r["peak_rss_mb"]))
    out.append(Row(skey, res[skey], "<= 1.10", res["sampled_memory_target_met"]))
    agg = res["aggregation"]
    for k, s in zip(agg["sampled_clients"], agg["seconds"], strict=True):
        out.append(Row(f"FedAvg of {k} clients (ms), {agg['payload_params']:,} params", s * 1e3))
    out.append(Row("aggregation: ms per client (slope)", agg["seconds_per_client"] * 1e3))
    out.append(Row("aggregation: linear fit R^2", agg["linear_r2"], "linear", agg["linear_r2"] > 0.95))
    p = res["partition"]
    out.append(Row(f"load {p['records']:,} records (s)", p["load_seconds"]))
    for s in ("iid", "shards", "dirichlet", "quantity"):
        out.append(Row(f"partition into {p['clients']} clients, {s} (s)", p[f"{s}_seconds"]))
    out.append(Row(f"slowest partition into {p['clients']} incl. load (s)", p["max_seconds_incl_load"], "< 5",
                   res["partition_target_met"]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--sampled", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--big-adapter", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    if a.worker is not None:
        print(json.dumps(worker(a.worker, a.model, a.data, a.smoke, a.rounds, a.sampled, a.big_adapter)))
        return {}
    res = run(a.quick, a.smoke, a.model, a.data, a.threads)
    res["machine"] = machine()
    print_table(f"Scale ({res['model']}, 10 sampled per round)", rows(res))
    write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
