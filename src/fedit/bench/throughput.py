"""Target 1: local-training throughput (real tokens/s) of fedit's client vs a hand-written PEFT + PyTorch loop.

Same model object (the adapter is reset to the same initial values before every run), same client data, same batch
size, micro-batch size, number of optimizer steps and learning rate. Contenders run interleaved, repeated; medians.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from fedit.bench.common import (
    Row,
    bench_config,
    client_data,
    interleave,
    medians,
    model_name,
    quiet,
    ratio,
    script_main,
)


def padding_of(data: Any, micro: int, n_micro: int, seed: int, round_idx: int, cid: int, grouped: bool) -> float:
    """The padding fraction fedit's client sees: replays the batch order train_client draws for this client/round."""
    from fedit.client.train import client_seed
    from fedit.data.tokenize import iter_micro_batches

    rng = np.random.default_rng(client_seed(seed, round_idx, cid))
    it = iter_micro_batches(data, micro, rng, grouped)
    lengths = data.lengths
    real = padded = 0
    for _ in range(n_micro):
        idx = next(it)
        real += int(lengths[idx].sum())
        padded += int(lengths[idx].max()) * len(idx)
    return 1 - real / padded


def run(quick: bool = True, smoke: bool = False, model: str = "auto", data: str | None = None,
        repeats: int | None = None) -> dict[str, Any]:
    from fedit.client.train import train_client
    from fedit.data.tokenize import tokenize_records
    from fedit.pipeline import build_model

    quiet()
    steps = 2 if smoke else (6 if quick else 12)
    repeats = repeats or (1 if smoke else (3 if quick else 5))
    batch, micro = 16, 8
    name, desc = model_name(model, smoke)
    cfg = bench_config(name, **{"client.batch_size": batch, "client.micro_batch_size": micro,
                                "client.local_steps": steps, "client.local_epochs": None, "data.cutoff_len": 256})
    [records], source = client_data(1, 32 if smoke else 256, data, smoke, mixed=True)
    bundle = build_model(cfg)
    tok = bundle.tokenizer
    td = tokenize_records(records, bundle.template, tok, cfg.data.cutoff_len, cfg.data.train_on_inputs,
                          cfg.data.add_eos)
    init = bundle.trainer.slots.get()
    from fedit.bench.handloop import hand_loop

    ungrouped = cfg.override({"client.group_by_length": False}).client
    counter = {"round": 0}

    def fedit_run(grouped: bool, steps: int = steps) -> dict[str, float]:
        counter["round"] += 1
        ccfg = dataclasses.replace(cfg.client if grouped else ungrouped, local_steps=steps)
        t0, c0 = time.perf_counter(), time.process_time()
        u = train_client(bundle.trainer, init, td, ccfg, client_id=0, round_idx=counter["round"], seed=0)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        pad = padding_of(td, micro, steps * batch // micro, 0, counter["round"], 0, grouped)
        return {"seconds": sec, "cpu_seconds": cpu, "tokens": u.metrics["tokens"],
                "tokens_per_s": u.metrics["tokens"] / sec, "tokens_per_cpu_s": u.metrics["tokens"] / cpu,
                "padding_fraction": pad}

    def hand_run(steps: int = steps) -> dict[str, float]:
        counter["round"] += 1
        bundle.trainer.slots.set(init)
        c0 = time.process_time()
        r = hand_loop(bundle.model, td, tok.pad_token_id, batch_size=batch, micro_batch_size=micro, steps=steps,
                      lr=cfg.client.lr, seed=counter["round"])
        r["cpu_seconds"] = time.process_time() - c0
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]
        return r

    contenders = {"fedit": lambda: fedit_run(True), "hand_loop": hand_run}
    if not quick or smoke:  # where fedit's gain comes from: the same loop without length grouping
        contenders["fedit_no_grouping"] = lambda: fedit_run(False)
    interleave({"fedit": lambda: fedit_run(True, 1), "hand_loop": lambda: hand_run(1)}, 1)  # warm-up, not counted
    runs = interleave(contenders, repeats)
    med = {k: medians(v) for k, v in runs.items()}
    res = {
        "benchmark": "throughput",
        "model": desc, "data": source, "examples": len(td), "steps": steps, "batch_size": batch,
        "micro_batch_size": micro, "cutoff_len": cfg.data.cutoff_len, "repeats": repeats,
        "fedit_tokens_per_s": med["fedit"]["tokens_per_s"],
        "hand_loop_tokens_per_s": med["hand_loop"]["tokens_per_s"],
        "fedit_padding_fraction": med["fedit"]["padding_fraction"],
        "hand_loop_padding_fraction": med["hand_loop"]["padding_fraction"],
        "throughput_ratio": ratio(med["fedit"]["tokens_per_s"], med["hand_loop"]["tokens_per_s"]),
        "throughput_ratio_cpu_time": ratio(med["fedit"]["tokens_per_cpu_s"], med["hand_loop"]["tokens_per_cpu_s"]),
        "fedit_tokens_per_cpu_s": med["fedit"]["tokens_per_cpu_s"],
        "hand_loop_tokens_per_cpu_s": med["hand_loop"]["tokens_per_cpu_s"],
        "torch_threads": torch.get_num_threads(),
        "throughput_ratio_per_repeat": [ratio(a["tokens_per_s"], b["tokens_per_s"])
                                        for a, b in zip(runs["fedit"], runs["hand_loop"], strict=True)],
        "runs": runs,
    }
    if "fedit_no_grouping" in med:
        res["fedit_no_grouping_tokens_per_s"] = med["fedit_no_grouping"]["tokens_per_s"]
        res["throughput_ratio_no_grouping"] = ratio(med["fedit_no_grouping"]["tokens_per_s"],
                                                    med["hand_loop"]["tokens_per_s"])
    res["throughput_ratio_target"] = ">= 1.0"
    res["throughput_target_met"] = res["throughput_ratio"] >= 1.0
    return res


def rows(res: dict[str, Any]) -> list[Row]:
    out = [
        Row("fedit client, real tokens/s", res["fedit_tokens_per_s"]),
        Row("hand-written loop, real tokens/s", res["hand_loop_tokens_per_s"]),
        Row("padding fraction fedit / hand loop",
            f"{res['fedit_padding_fraction']:.3f} / {res['hand_loop_padding_fraction']:.3f}"),
        Row("throughput_ratio (fedit / hand loop)", res["throughput_ratio"], ">= 1.0", res["throughput_target_met"]),
        Row("same, per process CPU second", res["throughput_ratio_cpu_time"], ">= 1.0",
            res["throughput_ratio_cpu_time"] >= 1.0),
        Row("per-repeat ratios", " ".join(f"{x:.2f}" for x in res["throughput_ratio_per_repeat"])),
    ]
    if "throughput_ratio_no_grouping" in res:
        out.insert(2, Row("fedit without length grouping, tokens/s", res["fedit_no_grouping_tokens_per_s"]))
        out.append(Row("ratio without grouping (loop overhead only)", res["throughput_ratio_no_grouping"]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return script_main(__doc__, run, rows, lambda res: f"Local-training throughput ({res['model']}, {res['data']}, "
                       f"{res['steps']} steps x {res['batch_size']}, medians of {res['repeats']})", argv)


if __name__ == "__main__":
    main()
