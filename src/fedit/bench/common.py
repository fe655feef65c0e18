"""Shared pieces of the benchmarks: model and data setup, repeated timing, medians, RSS, tables and JSON output."""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.data.records import Record

DOLLY_DIRNAME = "dolly-15k-shepherd-10"


# ---- data ---------------------------------------------------------------------------------------------------------
def find_dolly(explicit: str | None = None) -> Path | None:
    """The Shepherd-split Dolly directory: --data, $FEDIT_BENCH_DATA, ../shared/data/... from the cwd or the repo."""
    candidates = [explicit, os.environ.get("FEDIT_BENCH_DATA"),
                  Path.cwd() / ".." / "shared" / "data" / DOLLY_DIRNAME,
                  Path(__file__).resolve().parents[4] / "shared" / "data" / DOLLY_DIRNAME]
    for c in candidates:
        if c and glob.glob(str(Path(c) / "local_training_*.json")):
            return Path(c).resolve()
    return None


def dolly_client_files(root: Path) -> list[Path]:
    return sorted(Path(root).glob("local_training_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def load_dolly_clients(root: Path) -> list[list[Record]]:
    """One record list per Shepherd client file."""
    from fedit.data.sources import load_records

    return [load_records(f, format="dolly") for f in dolly_client_files(root)]


def synthetic_records(n: int, seed: int = 0) -> list[Record]:
    """Records with Dolly-like spread of lengths (short QA to long contexts), for smoke runs without real data."""
    import random

    rng = random.Random(seed)
    words = ["the", "a", "river", "city", "baker", "Rome", "Paris", "apple", "plum", "data", "model", "answer",
             "question", "brown", "fox", "dog", "lazy"]
    cats = ["open_qa", "closed_qa", "summarization", "brainstorming"]
    out = []
    for i in range(n):
        ctx_len = rng.choice([0, 0, 0, rng.randint(20, 150)])
        out.append(Record(
            instruction=" ".join(rng.choices(words, k=rng.randint(4, 20))) + "?",
            context=" ".join(rng.choices(words, k=ctx_len)),
            response=" ".join(rng.choices(words, k=rng.randint(3, 90))) + ".",
            category=cats[i % len(cats)],
        ))
    return out


def client_data(n_clients: int, per_client: int, data: str | None, smoke: bool,
                mixed: bool = False) -> tuple[list[list[Record]], str]:
    """`n_clients` lists of `per_client` records: client i takes the next items of Shepherd client file i mod 10
    (`mixed`: every client takes items from all files in turn, a category mix), or synthetic records in smoke runs."""
    root = None if smoke else find_dolly(data)
    if root is None:
        recs = synthetic_records(n_clients * per_client)
        return [recs[i * per_client:(i + 1) * per_client] for i in range(n_clients)], "synthetic"
    files = load_dolly_clients(root)
    if mixed:
        pool = [r for group in zip(*files, strict=False) for r in group]  # round-robin over the files
        return [pool[i * per_client:(i + 1) * per_client] for i in range(n_clients)], f"dolly, mixed ({root})"
    return [files[i % len(files)][(i // len(files)) * per_client:][:per_client]
            for i in range(n_clients)], f"dolly ({root})"


# ---- model --------------------------------------------------------------------------------------------------------
def tiny_available() -> bool:
    from fedit.model.load import TINY_PATH

    return (TINY_PATH / "config.json").is_file() and any(TINY_PATH.glob("*.safetensors"))


_MICRO_CACHE: dict[tuple[int, int], Path] = {}


def model_name(model: str, smoke: bool) -> tuple[str, str]:
    """(path or name to load, description). 'auto' = the shipped tiny base when present, else a random micro Llama
    of the tiny shape (hidden 256, 4 layers); smoke runs always use a 2-layer micro model."""
    if model not in ("auto", "micro"):
        return model, model
    if model == "auto" and not smoke and tiny_available():
        return "tiny", "tiny (shipped base)"
    from fedit.tools.micro_model import build_micro_model

    shape = (32, 2) if smoke else (256, 4)
    if shape not in _MICRO_CACHE:
        out = Path(tempfile.mkdtemp(prefix="fedit-bench-micro-")) / "model"
        _MICRO_CACHE[shape] = build_micro_model(out, hidden=shape[0], layers=shape[1], heads=4,
                                                kv_heads=4 if shape[0] >= 256 else 2, max_positions=512)
    return str(_MICRO_CACHE[shape]), f"random micro Llama (hidden {shape[0]}, {shape[1]} layers)"


def bench_config(model: str, **overrides: Any):
    """A Config for benchmarks: CPU float32, alpaca template, the given model and overrides (dotted keys)."""
    from fedit.config import Config

    # train_on_inputs: Shepherd's default, and no record is dropped for a prompt longer than the cutoff.
    # LoRA r=8 on q,v, lr 3e-4, micro-batch 8, 1 local epoch: the FedIT/Shepherd settings the figures in
    # docs/benchmarks.md were measured with (pinned here, independent of fedit's embedded-default run settings).
    base = {"model.name": model, "model.device": "cpu", "model.dtype": "float32", "data.template": "alpaca",
            "data.train_on_inputs": True, "run.eval_every": 0, "lora.r": 8, "lora.alpha": 16,
            "lora.targets": ["auto"], "client.lr": 3e-4, "client.micro_batch_size": 8}
    cfg = Config().override({**base, **overrides})
    if "client.local_steps" not in overrides:
        cfg.client.local_steps = None  # local_epochs (1.0) decides
    return cfg


# ---- measurement --------------------------------------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleave(fns: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, list[dict[str, float]]]:
    """Run each contender once per repeat, alternating the order, so load changes on a shared CPU hit both alike."""
    out: dict[str, list[dict[str, float]]] = {k: [] for k in fns}
    names = list(fns)
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            out[name].append(fns[name]())
    return out


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([r[k] for r in runs]) for k in runs[0]} if runs else {}


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB).

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: a child process started by fork + exec inherits its parent's
    peak there, so every worker of a benchmark would report at least the parent's memory."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = os.getloadavg()[0]
    try:
        import transformers

        info["transformers"] = transformers.__version__
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---- output -------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    metric: str
    value: Any
    target: str = ""
    met: bool | None = None


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e3 else f"{v:,.0f}"
    return str(v)


def print_table(title: str, rows: Sequence[Row]) -> None:
    """A plain aligned table (no rich dependency needed in the thin scripts)."""
    cells = [(r.metric, fmt(r.value), r.target, "" if r.met is None else ("yes" if r.met else "NO")) for r in rows]
    head = ("metric", "value", "target", "met")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)] if cells else [len(h) for h in head]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))


def write_json(path: str | Path | None, obj: Any) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every CPU comparison script takes: --quick, --smoke, --model, --data, --threads, --json."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--data", default=None, help="the Dolly directory (default: ../shared/data/dolly-15k-shepherd-10)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default=None)
    return ap


def report(res: dict[str, Any], title: str, table: Sequence[Row], json_path: str | None) -> dict[str, Any]:
    """Stamp the machine, print the table, write the JSON: how every benchmark script ends."""
    res["machine"] = machine()
    print_table(title, table)
    write_json(json_path, res)
    return res


def script_main(doc: str | None, run: Callable[..., dict[str, Any]],
                rows: Callable[[dict[str, Any]], Sequence[Row]], title: Callable[[dict[str, Any]], str],
                argv: list[str] | None, extra: str = "repeats") -> dict[str, Any]:
    """A benchmark script's main: the common options plus `--<extra>` (an int handed to `run` after model and
    data), threads set, the run, its table and JSON."""
    ap = bench_parser(doc)
    ap.add_argument(f"--{extra}", type=int, default=None)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    res = run(a.quick, a.smoke, a.model, a.data, getattr(a, extra))
    return report(res, title(res), rows(res), a.json)


def set_threads(n: int | None) -> None:
    """Torch intra-op threads. On a shared, oversubscribed CPU one thread per process is often faster than two
    (threads wait for each other at every op); both contenders always run with the same setting."""
    if n:
        import torch

        torch.set_num_threads(n)


def quiet() -> None:
    from fedit.model.load import quiet_transformers

    quiet_transformers()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
