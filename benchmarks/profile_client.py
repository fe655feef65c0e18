"""Where one client's local training spends its time: torch.profiler's self CPU time by operator class.

Two shapes: `default` (the embedded default's client: built-in data, its config, 20 local steps of 16 rows of
~44 tokens, fedit's speed options as `fedit run` picks them) and `shepherd` (the Shepherd bench's fedit side:
float32, 64 Dolly items taken from the 10 Shepherd client files in turn, batch 16 = 2 x 8, cutoff 256, LoRA r8
on q,k,v,o, loss on responses, one epoch). After one untimed call, a second call is timed and a third
profiled; prints the wall time, the operator classes of `fedit.bench.dtype` and the top operators. --set
key=value overrides the config (e.g. `--set model.dtype=float32`).
    python benchmarks/profile_client.py [--shape default|shepherd] [--threads 2] [--set key=value ...]
"""

import argparse
import sys
import time
from pathlib import Path

try:
    import fedit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("default", "shepherd"), default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", help="the Shepherd-split Dolly directory (default: ../shared/data/...)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    from fedit.config import parse_setting
    from fedit.errors import ConfigError

    over = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        try:
            over[key] = parse_setting(key, value)
        except ConfigError as e:
            ap.error(str(e))

    import torch
    from torch.profiler import ProfilerActivity, profile

    from fedit.bench.common import bench_config, client_data, quiet
    from fedit.bench.dtype import class_shares
    from fedit.bench.shepherd import QKVO
    from fedit.client.train import num_local_steps, train_client
    from fedit.config import Config
    from fedit.data.tokenize import tokenize_records
    from fedit.model.load import pick_dtype
    from fedit.pipeline import build_model, prepare_data

    quiet()
    torch.set_num_threads(args.threads)
    if args.shape == "default":
        cfg = Config().override({"model.device": "cpu", **over})
        bundle = build_model(cfg)
        records = prepare_data(cfg).client_records[0]
    else:
        cfg = bench_config("tiny", **{"client.batch_size": 16, "client.micro_batch_size": 8, "data.cutoff_len": 256,
                                      "data.train_on_inputs": False,
                                      "lora.targets": QKVO, **over})
        bundle = build_model(cfg)
        [records], source = client_data(1, 64, args.data, smoke=False, mixed=True)
        print(f"data: {source}")
    data = tokenize_records(records, bundle.template, bundle.tokenizer, cfg.data.cutoff_len, cfg.data.train_on_inputs,
                            cfg.data.add_eos)
    init = bundle.trainer.slots.get()

    def train(round_idx: int) -> None:
        train_client(bundle.trainer, init, data, cfg.client, client_id=0, round_idx=round_idx, seed=0)

    train(1)
    t0 = time.perf_counter()
    train(2)
    wall = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(3)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    print(f"{args.shape}: {len(data.lengths)} examples, mean {sum(data.lengths) / len(data.lengths):.1f} tokens, "
          f"{num_local_steps(cfg.client, len(data.lengths))} local steps, model.dtype {cfg.model.dtype} "
          f"({str(pick_dtype(cfg.model.dtype, torch.device('cpu'))).removeprefix('torch.')}), "
          f"{args.threads} threads, one client's training {wall:.2f} s (profiled call: {total:.0f} ms of ops)")
    print("by class: " + ", ".join(f"{k} {v:.0%}" for k, v in class_shares(events).items()))
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{e.self_cpu_time_total / 1e3:9.1f} ms {e.count:6d} calls  {e.key}")


if __name__ == "__main__":
    main()
