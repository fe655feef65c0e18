"""`fedit bench`: targets 1-5 in one process run, one table per benchmark and one JSON file with every result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fedit.bench import dtype, flower_round, payload, rounds, scale, shepherd, throughput
from fedit.bench.common import Row, machine, print_table

BENCHMARKS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], list[Row]], str]] = {
    "throughput": (throughput.run, throughput.rows, "1. Local-training throughput: fedit client vs hand-written loop"),
    "round_overhead": (rounds.run, rounds.rows, "2+5. Round overhead (10 clients per round) and bytes per round"),
    "shepherd": (shepherd.run, shepherd.rows, "3. Per-round time: Shepherd-style baseline vs fedit"),
    "scale": (scale.run, scale.rows, "4. Scale: 10 / 100 / 1,000 registered clients, 10 sampled"),
    "payload": (payload.run, payload.rows, "5. Adapter payload for common setups (from configs, no weights)"),
    "dtype": (dtype.run, dtype.rows, "float32 vs bf16 autocast: the default's round, and where the time goes"),
    "flower": (flower_round.run, flower_round.rows,
               "Flower loopback round (2 SuperNodes, warm workers) vs the simulator, the default's round"),
}

HEADLINE = {  # self-explaining top-level keys of the JSON file -> (benchmark, key in its result)
    "throughput_ratio": ("throughput", "throughput_ratio"),
    "throughput_ratio_cpu_time": ("throughput", "throughput_ratio_cpu_time"),
    "round_overhead": ("round_overhead", "round_overhead"),
    "bytes_match_payload_x_clients": ("round_overhead", "bytes_match_payload_x_clients"),
    "shepherd_speedup": ("shepherd", "shepherd_speedup"),
    "shepherd_speedup_cpu_time": ("shepherd", "shepherd_speedup_cpu_time"),
    "shepherd_speedup_all_rounds": ("shepherd", "shepherd_speedup_all_rounds"),
    "shepherd_speedup_train_on_inputs": ("shepherd", "shepherd_speedup_train_on_inputs"),
    "shepherd_speedup_bf16": ("shepherd", "shepherd_speedup_bf16"),
    "memory_ratio_1000_vs_10": ("scale", "memory_ratio_1000_vs_10"),
    "memory_ratio_200_vs_10_sampled": ("scale", "memory_ratio_200_vs_10_sampled"),
    "aggregation_seconds_per_client": ("scale", "aggregation_seconds_per_client"),
    "aggregation_linear_r2": ("scale", "aggregation_linear_r2"),
    "partition_1000_seconds": ("scale", "partition_1000_seconds"),
    "flower_round_ratio": ("flower", "flower_round_ratio"),
    "dtype_speedup": ("dtype", "dtype_speedup"),
    "dtype_speedup_bf16_only": ("dtype", "dtype_speedup_bf16_only"),
    "dtype_speedup_dropout_only": ("dtype", "dtype_speedup_dropout_only"),
    "dtype_speedup_cpu_lora_only": ("dtype", "dtype_speedup_cpu_lora_only"),
    "dtype_speedup_dolly256": ("dtype", "dtype_speedup_dolly256"),
}
TARGETS = {"throughput_ratio": ">= 1.0", "round_overhead": "<= 1.03", "shepherd_speedup": ">= 2.0",
           "shepherd_speedup_train_on_inputs": "reported", "shepherd_speedup_bf16": "reported",
           "memory_ratio_1000_vs_10": "<= 1.10",
           "memory_ratio_200_vs_10_sampled": "<= 1.10", "partition_1000_seconds": "< 5",
           "bytes_match_payload_x_clients": "true", "aggregation_linear_r2": "> 0.95 (linear)",
           "flower_round_ratio": "<= 1.5", "dtype_speedup": ">= 2.0", "dtype_speedup_bf16_only": ">= 1.5",
           "dtype_speedup_dropout_only": "reported", "dtype_speedup_cpu_lora_only": "reported"}


def _met(key: str, v: Any) -> bool | None:
    checks: dict[str, Callable[[Any], bool]] = {
        "throughput_ratio": lambda x: x >= 1.0, "round_overhead": lambda x: x <= 1.03,
        "shepherd_speedup": lambda x: x >= 2.0, "memory_ratio_1000_vs_10": lambda x: x <= 1.10,
        "memory_ratio_200_vs_10_sampled": lambda x: x <= 1.10,
        "partition_1000_seconds": lambda x: x < 5, "bytes_match_payload_x_clients": bool,
        "aggregation_linear_r2": lambda x: x > 0.95, "flower_round_ratio": lambda x: x <= 1.5,
        "dtype_speedup": lambda x: x >= 2.0, "dtype_speedup_bf16_only": lambda x: x >= 1.5}
    return checks[key](v) if key in checks and v is not None else None


def run_suite(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
              only: list[str] | None = None, echo: bool = True) -> dict[str, Any]:
    """Run the selected benchmarks (all by default); returns {"results": {...}, headline keys..., "machine": ...}."""
    out: dict[str, Any] = {"mode": "smoke" if smoke else ("quick" if quick else "full"), "results": {}}
    t0 = time.perf_counter()
    for name, (fn, rows_of, title) in BENCHMARKS.items():
        if only and name not in only:
            continue
        t = time.perf_counter()
        kwargs: dict[str, Any] = {"quick": quick, "smoke": smoke}
        if name != "payload":
            kwargs |= {"model": model, "data": data}
        res = fn(**kwargs)
        res["wall_seconds"] = time.perf_counter() - t
        out["results"][name] = res
        if echo:
            print_table(f"{title}  [{res['wall_seconds']:.0f} s]", rows_of(res))
    for key, (bench, field) in HEADLINE.items():
        if bench in out["results"] and field in out["results"][bench]:
            out[key] = out["results"][bench][field]
    out["targets"] = {k: {"value": out[k], "target": TARGETS.get(k), "met": _met(k, out[k])}
                      for k in HEADLINE if k in out}
    out["total_seconds"] = time.perf_counter() - t0
    out["machine"] = machine()
    if echo:
        print_table("Summary", [Row(k, v["value"], v["target"] or "", v["met"]) for k, v in out["targets"].items()])
    return out
