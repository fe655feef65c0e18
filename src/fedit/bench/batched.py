"""Issue 14 item 9: seconds per round, K clients trained one after another (`train_task`) vs batched on the one base
(`fedit.client.batched.train_batched`), at the embedded default's settings and at small micro-batches.

The default run's model, data and client settings (tiny base, float32 on a CPU without bf16 units, LoRA r16
all-linear, cutoff 256, batch 16, 20 local steps; the builtin data partitioned as `fedit run` does), clients 0..K-1
of round 1, the same initial adapter every time. For each micro-batch size the contenders run interleaved
(sequential, batched K=2, batched K=3, order reversed every other repeat); the sequential round of K clients is the
sum of its clients' times in the same repeat. Medians. The batched updates are checked against the sequential ones
(largest absolute difference, reported).

    python -m fedit.bench.batched --threads 2 [--micro 16,4,2,1] [--steps 20] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import time
from typing import Any

from fedit.bench.common import Row, bench_parser, median, quiet, ratio, report, set_threads


def run(micros: list[int], steps: int, repeats: int, model: str = "tiny", ks: tuple[int, ...] = (2, 3),
        profile: bool = False) -> dict[str, Any]:
    from fedit.client.batched import BatchedJob, train_batched
    from fedit.client.train import train_task
    from fedit.config import Config
    from fedit.engines.simulation import ClientDataCache
    from fedit.pipeline import build_model, prepare_data
    from fedit.types import ClientTask

    quiet()
    # peft's masks and forward on both sides: the batched forward draws nn.Dropout's masks (like for like)
    cfg = Config().override({"model.name": model, "model.device": "cpu", "model.dtype": "float32",
                             "client.local_steps": steps, "lora.dropout_impl": "torch", "lora.kernel": "peft"})
    data = prepare_data(cfg)
    bundle = build_model(cfg)
    trainer = bundle.trainer
    cache = ClientDataCache(data.client_records, bundle.template, bundle.tokenizer, cfg)
    kmax = max(ks)
    datas = [cache.get(c) for c in range(kmax)]
    task = ClientTask(trainer.slots.get())
    out: dict[str, Any] = {"model": model, "steps": steps, "repeats": repeats, "batch_size": cfg.client.batch_size,
                           "cutoff_len": cfg.data.cutoff_len, "lora": f"r{cfg.lora.r} {cfg.lora.targets}",
                           "examples": [len(d) for d in datas], "by_micro": {}}
    for micro in micros:
        ccfg = Config().override({"client.local_steps": steps, "client.micro_batch_size": micro}).client

        def sequential(ccfg: Any = ccfg) -> dict[str, Any]:
            times, cpu, ups = [], [], []
            for c in range(kmax):
                t0, c0 = time.perf_counter(), time.process_time()
                ups.append(train_task(trainer, task, datas[c], ccfg, client_id=c, round_idx=1, seed=cfg.run.seed)[0])
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            return {"times": times, "cpu": cpu, "updates": ups}

        def batched(k: int, sort: bool, ccfg: Any = ccfg) -> dict[str, Any]:
            t0, c0 = time.perf_counter(), time.process_time()
            ups = train_batched(trainer, [BatchedJob(c, task, datas[c]) for c in range(k)], ccfg, round_idx=1,
                                seed=cfg.run.seed, sort_in_step=sort)
            return {"times": [time.perf_counter() - t0], "cpu": [time.process_time() - c0], "updates": ups}

        variants = [(k, False) for k in ks] + ([(k, True) for k in ks] if micro < ccfg.batch_size else [])
        fns = {"sequential": sequential, **{f"k{k}{'s' if srt else ''}": (lambda k=k, srt=srt: batched(k, srt))
                                            for k, srt in variants}}
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in fns}
        names = list(fns)
        for rep in range(repeats):
            for n in names if rep % 2 == 0 else names[::-1]:
                runs[n].append(fns[n]())
        row: dict[str, Any] = {}
        for name in names[1:]:
            k = int(name[1:].rstrip("s"))
            seq = median([sum(r["times"][:k]) for r in runs["sequential"]])
            bat = median([r["times"][0] for r in runs[name]])
            seq_cpu = median([sum(r["cpu"][:k]) for r in runs["sequential"]])
            bat_cpu = median([r["cpu"][0] for r in runs[name]])
            seq_up, bat_up = runs["sequential"][0]["updates"][:k], runs[name][0]["updates"]
            diff = max(float((s.params[key] - b.params[key]).abs().max())
                       for s, b in zip(seq_up, bat_up, strict=True) for key in s.params)
            row[name] = {"sequential_s": seq, "batched_s": bat, "speedup": ratio(seq, bat), "max_abs_diff": diff,
                         "sequential_cpu_s": seq_cpu, "batched_cpu_s": bat_cpu, "cpu_speedup": ratio(seq_cpu, bat_cpu)}
        out["by_micro"][str(micro)] = row
        print(f"micro-batch {micro}: " + ", ".join(_line(k, v) for k, v in row.items()), flush=True)
        if profile:
            out["by_micro"][str(micro)]["profile"] = _profile(sequential, lambda: batched(kmax, True))
    return out


def _line(k: str, v: dict[str, float]) -> str:
    label = f"K={k[1:].rstrip('s')}" + (" sorted" if k.endswith("s") else "")
    return (f"{label} seq {v['sequential_s']:.2f}s batched {v['batched_s']:.2f}s x{v['speedup']:.2f} (CPU s "
            f"{v['sequential_cpu_s']:.2f} / {v['batched_cpu_s']:.2f} = x{v['cpu_speedup']:.2f})")


def _profile(sequential: Any, batched: Any) -> dict[str, str]:
    """The top operators (self CPU time) of one sequential round and one batched round."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for name, fn in (("sequential", sequential), ("batched", batched)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        print(f"--- {name}\n{tables[name]}", flush=True)
    return tables


def rows(res: dict[str, Any]) -> list[Row]:
    out = []
    for micro, row in res["by_micro"].items():
        for k, v in row.items():
            if not k.startswith("k"):
                continue
            sort = " sorted in step" if k.endswith("s") else ""
            out.append(Row(f"micro {micro}, K={k[1:].rstrip('s')}{sort}: sequential / batched s per round",
                           f"{v['sequential_s']:.2f} / {v['batched_s']:.2f} = x{v['speedup']:.2f}", ">= 1.3x to adopt",
                           v["speedup"] >= 1.3))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = bench_parser(__doc__)
    ap.add_argument("--micro", default="16,4,2,1", help="micro-batch sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also print the top operators of one round each")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    model = "tiny" if a.model == "auto" else a.model
    res = run([int(m) for m in a.micro.split(",")], a.steps, a.repeats, model, profile=a.profile)
    return report(res, f"Batched clients ({model}, {res['steps']} local steps, batch {res['batch_size']}, cutoff "
                       f"{res['cutoff_len']}, {res['repeats']} repeats, medians)", rows(res), a.json)


if __name__ == "__main__":
    main()
