"""The paper's comparison on any data: FedIT global model vs each client's local-only model vs a centralized model.

Compute accounting (equal budgets, stated once here and in docs/results.md):
  * FedIT: `pipeline.run(cfg)` as configured; its cost is the optimizer steps its clients actually took.
  * local/<k>: client k alone, from the same LoRA init, for `E x steps_per_round(k)` optimizer steps, where
    steps_per_round(k) is what k runs when sampled (client.local_steps, or local_epochs over its data) and E is
    chosen by `local_compute`:
      - "expected" (default): the number of rounds k is expected to be sampled, rounds x clients_per_round / clients,
        i.e. the compute k would spend over the FedIT run;
      - "every-round": all rounds, the compute k would spend if it were sampled in every round. Never less than k
        spent in FedIT: the setting most favourable to local training.
    With every client sampled in every round (fraction 1.0) the two are the same.
  * centralized: the union of all clients' records, for the total number of client steps FedIT took (same batch size,
    learning rate and schedule), i.e. the same total compute as the federation.
Local and centralized models train in one continuous pass (one optimizer, no resets): what a lone trainer would do.
The same held-out records, evaluator, base model and seeded LoRA init are used for every method.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedit.atomic import write_json as atomic_write_json
from fedit.atomic import write_text as atomic_write_text
from fedit.config import Config
from fedit.data.tokenize import TokenizedData
from fedit.errors import ConfigError
from fedit.outdir import replace_output_dir
from fedit.server.checkpoint import RunStore

Log = Callable[[str], None]
StepCallback = Callable[[str, int, int, float], None]  # (method, step, total, loss)

FEDIT, CENTRALIZED, BASE = "fedit", "centralized", "base"
LOWER_IS_BETTER = {"loss", "perplexity"}


def local_name(client_id: int) -> str:
    return f"local/{client_id}"


def concat_data(parts: list[TokenizedData]) -> TokenizedData:
    return TokenizedData([x for p in parts for x in p.input_ids], [x for p in parts for x in p.labels],
                         [x for p in parts for x in p.categories])


def fedit_steps(rounds_metrics: list[dict[str, Any]]) -> dict[int, int]:
    """Optimizer steps each client actually took over the FedIT run (from the per-round metrics)."""
    steps: dict[int, int] = {}
    for m in rounds_metrics:
        for cid, cm in m.get("clients", {}).items():
            steps[int(cid)] = steps.get(int(cid), 0) + int(cm["steps"])
    return steps


def primary_metric(result: dict[str, Any]) -> str:
    """The metric the comparison is judged on: the generation score when there is one, else held-out loss."""
    return "score" if "score" in result["mean"] else "loss"


def better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def summarize(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Does FedIT beat every local model, and how far is it from centralized (per available metric)?"""
    out: dict[str, Any] = {"primary_metric": primary_metric(methods[FEDIT])}
    locals_ = {k: v for k, v in methods.items() if k.startswith("local/")}
    for metric in ("score", "loss"):
        if metric not in methods[FEDIT]["mean"]:
            continue
        f = methods[FEDIT]["mean"][metric]
        c = methods[CENTRALIZED]["mean"][metric] if CENTRALIZED in methods else None
        beaten = [k for k, v in locals_.items() if better(metric, f, v["mean"][metric])]
        entry: dict[str, Any] = {
            "fedit": f,
            "centralized": c,
            "best_local": None,
            "fedit_beats_every_local": len(beaten) == len(locals_) and bool(locals_),
            "locals_beaten": f"{len(beaten)}/{len(locals_)}",
        }
        if locals_:
            pick = min if metric in LOWER_IS_BETTER else max
            entry["best_local"] = pick(v["mean"][metric] for v in locals_.values())
        if c is not None:
            # Relative gap to centralized, signed so that > 0 means FedIT is worse.
            diff = f - c if metric in LOWER_IS_BETTER else c - f
            gap = diff / abs(c) if c else (0.0 if diff <= 0 else math.inf)
            entry["gap_to_centralized"] = gap
            entry["within_10pct_of_centralized"] = gap <= 0.10
        out[metric] = entry
    return out


LOCAL_COMPUTE = ("expected", "every-round")


def local_rounds(cfg: Config, num_clients: int, local_compute: str) -> float:
    """How many rounds' worth of local steps each local-only model gets (see the module docstring)."""
    from fedit.server.sampling import clients_per_round

    if local_compute == "every-round":
        return float(cfg.run.rounds)
    if local_compute == "expected":
        return cfg.run.rounds * clients_per_round(cfg.run, num_clients) / num_clients
    raise ConfigError(f"local_compute={local_compute!r}: expected one of {', '.join(LOCAL_COMPUTE)}")


def run_experiment(cfg: Config, out: str | Path, *, overwrite: bool = False, reporter: Any = None,
                   log: Log | None = None, on_step: StepCallback | None = None,
                   local_compute: str = "expected") -> dict[str, Any]:
    """Train and evaluate FedIT, every client's local-only model and the centralized model; write DIR/experiment.*"""
    from fedit import pipeline
    from fedit.client.train import num_local_steps, train_client
    from fedit.engines.simulation import ClientDataCache
    from fedit.model.lora import save_adapter

    say = log or (lambda _m: None)
    cfg.validate()
    local_rounds(cfg, cfg.partition.clients, local_compute)  # reject a bad choice before any training
    if cfg.run.engine != "simulation":
        raise ConfigError(f"run.engine={cfg.run.engine!r}: the experiment runs in the in-process simulator only")
    root = replace_output_dir(out, overwrite, "experiment", "--out")
    t_start = time.perf_counter()

    # (a) FedIT: the ordinary run, in its own run directory.
    say(f"(a) FedIT: {cfg.run.rounds} rounds over {cfg.partition.clients} clients -> {root / 'fedit'}")
    fed_cfg = cfg.override({"run.out": str(root / FEDIT)})
    fed = pipeline.run(fed_cfg, reporter=reporter)
    history = RunStore(root / FEDIT).history()
    taken = fedit_steps(history)

    # One base model in memory for everything else; the LoRA init is the same seeded init FedIT started from.
    data = pipeline.prepare_data(cfg)
    bundle = pipeline.build_model(cfg)
    slots = bundle.trainer.slots
    init = slots.get()
    evaluate = pipeline.make_evaluator(cfg, bundle, data.test, slots)
    if evaluate is None:
        raise ConfigError("the experiment needs held-out records: the data gave an empty test set")
    cache = ClientDataCache(data.client_records, bundle.template, bundle.tokenizer, cfg)
    methods: dict[str, dict[str, Any]] = {}
    base_eval = history[0].get("eval") if history else None

    say("evaluating the FedIT global model")
    methods[FEDIT] = {**evaluate(fed.final_params), "steps": sum(taken.values()), "steps_by_client": taken,
                      "examples": sum(len(cache.get(c)) for c in range(len(data.client_records)))}
    _write_partial(root, cfg, methods, base_eval, local_compute)

    def train(name: str, td: TokenizedData, steps: int, client_id: int) -> dict[str, Any]:
        ccfg = replace(cfg.client, local_steps=steps)
        cb = (lambda s, t, loss: on_step(name, s, t, loss)) if on_step else None
        t0 = time.perf_counter()
        upd = train_client(bundle.trainer, init, td, ccfg, client_id=client_id, round_idx=0, seed=cfg.run.seed,
                           on_step=cb)
        seconds = time.perf_counter() - t0
        save_adapter(upd.params, root / name.replace("/", "_") / "adapter", bundle.peft_config)
        res = evaluate(upd.params)
        say(f"  {name}: {steps} steps on {len(td)} examples, train loss {upd.metrics['loss']:.4f}, "
            f"held-out loss {res['mean']['loss']:.4f}" + (f", score {res['mean']['score']:.3f}"
                                                          if "score" in res["mean"] else "")
            + f" ({seconds:.0f}s)")
        return {**res, "steps": steps, "examples": len(td), "train_loss": upd.metrics["loss"],
                "train_seconds": seconds}

    # (b) each client alone, with the compute chosen by `local_compute`.
    n_clients = len(data.client_records)
    per_client_rounds = local_rounds(cfg, n_clients, local_compute)
    say(f"(b) local-only: {n_clients} clients, each {per_client_rounds:g} rounds' worth of its steps per round "
        f"({local_compute})")
    for cid in range(n_clients):
        td = cache.get(cid)
        steps = max(1, round(per_client_rounds * num_local_steps(cfg.client, len(td))))
        methods[local_name(cid)] = train(local_name(cid), td, steps, cid)
        _write_partial(root, cfg, methods, base_eval, local_compute)

    # (c) centralized: the union of the clients' data, the total client steps FedIT took.
    total = max(1, sum(taken.values()))
    say(f"(c) centralized: {total} steps on the union of the clients' data")
    union = concat_data([cache.get(c) for c in range(n_clients)])
    methods[CENTRALIZED] = train(CENTRALIZED, union, total, n_clients)

    result = _write_partial(root, cfg, methods, base_eval, local_compute, final=True)
    result["wall_seconds"] = time.perf_counter() - t_start
    atomic_write_json(root / "experiment.json", result)
    atomic_write_text(root / "experiment.md", markdown_table(result))
    for metric in _metrics(result):
        try:
            plot_experiment(result, metric, root / f"experiment_{metric}.png")
        except Exception as e:  # a figure must never cost the results
            say(f"could not draw the {metric} chart: {e}")
    say(f"done in {result['wall_seconds']:.0f}s: {root / 'experiment.json'}")
    return result


def _write_partial(root: Path, cfg: Config, methods: dict[str, dict[str, Any]], base_eval: dict[str, Any] | None,
                   local_compute: str, final: bool = False) -> dict[str, Any]:
    """experiment.json so far (rewritten after each method, so a long run shows its progress on disk)."""
    result: dict[str, Any] = {
        "complete": final,
        "config": cfg.to_dict(),
        "compute": {
            "fedit": "the optimizer steps the sampled clients actually took (sum over rounds and clients)",
            "local": ("rounds x clients per round / clients x the client's steps per round (the compute it would "
                      "spend over the FedIT run)" if local_compute == "expected" else
                      "rounds x the client's steps per round (the compute it would spend if sampled every round)"),
            "local_compute": local_compute,
            "centralized": "the total client steps of the FedIT run, on the union of the clients' data",
        },
        "methods": methods,
        "base": base_eval,
    }
    if final and FEDIT in methods:
        result["summary"] = summarize(methods)
    atomic_write_json(root / "experiment.json", result)
    return result


def _metrics(result: dict[str, Any]) -> list[str]:
    return [m for m in ("score", "loss") if m in result["methods"][FEDIT]["mean"]]


def _ordered(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(FEDIT, result["methods"][FEDIT])]
    if CENTRALIZED in result["methods"]:
        rows.append((CENTRALIZED, result["methods"][CENTRALIZED]))
    rows += sorted(((k, v) for k, v in result["methods"].items() if k.startswith("local/")),
                   key=lambda kv: int(kv[0].split("/")[1]))
    if result.get("base"):
        rows.append((BASE, result["base"]))
    return rows


def markdown_table(result: dict[str, Any]) -> str:
    """One table per metric: methods as rows, categories (and the mean over categories) as columns."""
    cats = sorted(result["methods"][FEDIT]["per_category"])
    out = []
    for metric in _metrics(result):
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        out.append(f"**held-out {metric}** ({arrow})\n")
        out.append("| method | " + " | ".join(cats) + " | mean |")
        out.append("|---" * (len(cats) + 2) + "|")
        for name, res in _ordered(result):
            cells = [f"{res['per_category'].get(c, {}).get(metric, float('nan')):.3f}" for c in cats]
            label = f"**{name}**" if name == FEDIT else name
            out.append(f"| {label} | " + " | ".join(cells) + f" | **{res['mean'][metric]:.3f}** |")
        out.append("")
    s = result.get("summary", {})
    for metric in _metrics(result):
        e = s.get(metric)
        if e:
            line = f"- {metric}: FedIT {e['fedit']:.3f}, beats {e['locals_beaten']} local-only models"
            if e.get("centralized") is not None:
                line += f"; centralized {e['centralized']:.3f} (FedIT's gap: {100 * e['gap_to_centralized']:+.1f}%)"
            out.append(line)
    return "\n".join(out) + "\n"


def plot_experiment(result: dict[str, Any], metric: str, path: Path) -> None:
    """One bar chart per category (and one for the mean), a bar per method, cf. Figure 3 of the FedIT paper."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _ordered(result)
    cats = sorted(result["methods"][FEDIT]["per_category"]) + ["mean"]
    ncol = min(3, len(cats))
    nrow = math.ceil(len(cats) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 2.9 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    colour = {FEDIT: "#d62728", CENTRALIZED: "#1f77b4", BASE: "#7f7f7f"}
    names = [n for n, _ in rows]
    for i, cat in enumerate(cats):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        vals = [(r["mean"] if cat == "mean" else r["per_category"].get(cat, {})).get(metric, float("nan"))
                for _, r in rows]
        ax.bar(range(len(rows)), vals, color=[colour.get(n, "#bcbd22") for n in names])
        finite = [v for v in vals if math.isfinite(v)]
        if metric in LOWER_IS_BETTER and finite:  # losses differ by a few percent: zoom in, or all bars look equal
            lo, hi = min(finite), max(finite)
            pad = max(0.05 * (hi - lo), 1e-3)
            ax.set_ylim(lo - 4 * pad, hi + pad)
        ax.set_title(cat, fontsize=10)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([n.replace("local/", "L") for n in names], rotation=90, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(f"held-out {metric} per category: FedIT (red), centralized (blue), local-only Lk (olive), "
                 f"base (grey)", fontsize=10)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)


def load_experiment(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    p = p / "experiment.json" if p.is_dir() else p
    return json.loads(p.read_text(encoding="utf-8"))
