"""Targets 2 and 5: round overhead (round wall time / sum of client training time) and bytes per round.

A real fedit round loop (`run_rounds`: sampling, adapter swap, local training, FedAvg, checkpoint, metrics.jsonl) with
10 clients per round. Evaluation is off in the loop and timed separately. Bytes up/down in metrics.jsonl are checked
against payload size x clients.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from fedit.bench.common import (
    Row,
    bench_config,
    client_data,
    median,
    model_name,
    quiet,
    script_main,
)


def run(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
        rounds: int | None = None) -> dict[str, Any]:
    from fedit.engines.simulation import ClientDataCache, SimulationEngine
    from fedit.eval.evaluate import evaluate
    from fedit.pipeline import build_model
    from fedit.server.checkpoint import RunStore
    from fedit.server.rounds import run_rounds
    from fedit.strategies import build_strategy
    from fedit.types import payload_bytes

    quiet()
    n_clients = 3 if smoke else 10
    per_client = 8 if smoke else (32 if quick else 48)
    rounds = rounds or (2 if smoke else (4 if quick else 5))
    name, desc = model_name(model, smoke)
    clients, source = client_data(n_clients + 1, per_client, data, smoke)
    test = clients.pop()[:8]
    out = Path(tempfile.mkdtemp(prefix="fedit-bench-rounds-"))
    cfg = bench_config(name, **{"partition.clients": n_clients, "run.clients_per_round": n_clients,
                                "run.rounds": rounds, "run.out": str(out), "client.batch_size": 16,
                                "client.micro_batch_size": 8, "client.local_epochs": 1.0, "data.cutoff_len": 256})
    bundle = build_model(cfg)
    strategy = build_strategy(cfg.strategy)
    store = RunStore(out)
    store.create(cfg.to_toml(), {"benchmark": "round_overhead"}, overwrite=True)
    params = bundle.trainer.slots.get()
    state = strategy.init_state(params, len(clients))
    store.save_round(0, params, state, {"round": 0}, bundle.peft_config)
    engine = SimulationEngine(bundle.trainer, ClientDataCache(clients, bundle.template, bundle.tokenizer, cfg), cfg)

    t0 = time.perf_counter()
    params, state, results = run_rounds(cfg, engine, strategy, store, bundle.peft_config, params, state, 0)
    wall = time.perf_counter() - t0

    t_eval = time.perf_counter()
    bundle.trainer.slots.set(params)
    evaluate(bundle.model, bundle.tokenizer, bundle.template, test, cutoff_len=256, generate=False)
    eval_seconds = time.perf_counter() - t_eval

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
    per_round = []
    for m in lines:
        total = m["round_seconds"] + m["checkpoint_seconds"]
        per_round.append({"round": m["round"], "round_seconds": total, "client_train_seconds":
                          m["client_train_seconds"], "aggregate_seconds": m["aggregate_seconds"],
                          "checkpoint_seconds": m["checkpoint_seconds"],
                          "overhead": total / m["client_train_seconds"]})
    payload = payload_bytes(params)
    bytes_ok = all(m["bytes_up"] == payload * len(m["replied"]) and m["bytes_down"] == payload * len(m["sampled"])
                   for m in lines)
    steady = per_round[1:] or per_round
    res = {
        "benchmark": "round_overhead", "model": desc, "data": source, "clients_per_round": n_clients,
        "examples_per_client": per_client, "rounds": rounds, "run_dir": str(out),
        "round_overhead": median([r["overhead"] for r in steady]),
        "round_overhead_first_round": per_round[0]["overhead"],
        "round_overhead_all_rounds_wall": wall / sum(r["client_train_seconds"] for r in per_round),
        "round_seconds_median": median([r["round_seconds"] for r in steady]),
        "client_train_seconds_median": median([r["client_train_seconds"] for r in steady]),
        "aggregate_seconds_median": median([r["aggregate_seconds"] for r in steady]),
        "checkpoint_seconds_median": median([r["checkpoint_seconds"] for r in steady]),
        "eval_seconds": eval_seconds, "eval_examples": len(test),
        "payload_bytes": payload, "bytes_per_round_up": lines[-1]["bytes_up"],
        "bytes_per_round_down": lines[-1]["bytes_down"], "bytes_match_payload_x_clients": bytes_ok,
        "per_round": per_round,
    }
    res["round_overhead_target"] = "<= 1.03"
    res["round_overhead_target_met"] = res["round_overhead"] <= 1.03
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    return [
        Row("round wall time, median (s)", res["round_seconds_median"]),
        Row("sum of client training time, median (s)", res["client_train_seconds_median"]),
        Row("round_overhead (rounds 2..)", res["round_overhead"], "<= 1.03", res["round_overhead_target_met"]),
        Row("round 1 overhead (tokenizes each client once)", res["round_overhead_first_round"]),
        Row("all rounds: wall / sum client time", res["round_overhead_all_rounds_wall"]),
        Row("aggregation / checkpoint, median (s)",
            f"{res['aggregate_seconds_median']:.4f} / {res['checkpoint_seconds_median']:.4f}"),
        Row(f"evaluation of {res['eval_examples']} held-out items (s), separate", res["eval_seconds"]),
        Row("adapter payload (bytes)", res["payload_bytes"]),
        Row("bytes up / down per round", f"{res['bytes_per_round_up']} / {res['bytes_per_round_down']}"),
        Row("metrics.jsonl bytes = payload x clients", res["bytes_match_payload_x_clients"], "true",
            res["bytes_match_payload_x_clients"]),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return script_main(__doc__, run, rows, lambda res: f"Round overhead ({res['model']}, {res['data']}, "
                       f"{res['clients_per_round']} clients x {res['examples_per_client']} items, "
                       f"{res['rounds']} rounds)", argv, extra="rounds")


if __name__ == "__main__":
    main()
