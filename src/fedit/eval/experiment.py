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
    """Does FedIT beat every local model, and how far is it from centralized (per available metric)? With several
    strategies, one such entry per strategy under `by_method`, and the best strategy per metric."""
    feds = [k for k in methods if is_fedit(k)]
    if feds == [FEDIT]:
        return _summary(methods, FEDIT)
    by = {k: _summary(methods, k) for k in feds}
    out: dict[str, Any] = {"primary_metric": primary_metric(methods[feds[0]]), "by_method": by}
    for metric in ("score", "loss"):
        vals = {k: methods[k]["mean"][metric] for k in feds if metric in methods[k]["mean"]}
        if vals:
            pick = min if metric in LOWER_IS_BETTER else max
            out[f"best_{metric}"] = pick(vals, key=vals.__getitem__)
    return out


def _summary(methods: dict[str, dict[str, Any]], fed: str) -> dict[str, Any]:
    out: dict[str, Any] = {"primary_metric": primary_metric(methods[fed])}
    locals_ = {k: v for k, v in methods.items() if k.startswith("local/")}
    for metric in ("score", "loss"):
        if metric not in methods[fed]["mean"]:
            continue
        f = methods[fed]["mean"][metric]
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


def fedit_key(strategy: str | None) -> str:
    """The method name of a federated run: "fedit" for the configured strategy, "fedit:<name>" with --strategies."""
    return FEDIT if strategy is None else f"{FEDIT}:{strategy}"


def is_fedit(name: str) -> bool:
    return name == FEDIT or name.startswith(f"{FEDIT}:")


def check_strategies(cfg: Config, strategies: list[str] | None) -> list[Config]:
    """One config per federated run, each validated (name and its [strategy.<name>] table) before any training."""
    if strategies is None:
        return [cfg]
    if not strategies or len(set(strategies)) != len(strategies):
        raise ConfigError(f"--strategies: got {strategies!r}, expected distinct strategy names, e.g. fedavg,fedadam")
    return [cfg.override({"strategy.name": s}) for s in strategies]


def run_summary(store: RunStore) -> dict[str, Any]:
    """What a federated run cost and how inexact its averaging was, from its rounds' metrics."""
    rounds = [m for m in store.history() if m.get("round", 0) >= 1]
    errs = [m["aggregation_error"] for m in rounds if "aggregation_error" in m]
    return {"bytes_up": sum(m.get("bytes_up", 0) for m in rounds),
            "bytes_down": sum(m.get("bytes_down", 0) for m in rounds),
            "aggregation_error_mean": sum(errs) / len(errs) if errs else None,
            "aggregation_error_max": max(errs) if errs else None,
            "train_seconds": sum(m.get("train_seconds", 0.0) for m in rounds)}


def run_experiment(cfg: Config, out: str | Path, *, overwrite: bool = False, reporter: Any = None,
                   log: Log | None = None, on_step: StepCallback | None = None,
                   local_compute: str = "expected", strategies: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate FedIT (the configured strategy, or each of `strategies` on the same data, partition,
    seeds and compute), every client's local-only model and the centralized model; write DIR/experiment.*"""
    from fedit import pipeline
    from fedit.client.train import num_local_steps, train_client
    from fedit.engines.simulation import ClientDataCache
    from fedit.model.lora import save_adapter

    say = log or (lambda _m: None)
    cfg.validate()
    fed_cfgs = check_strategies(cfg, strategies)
    local_rounds(cfg, cfg.partition.clients, local_compute)  # reject a bad choice before any training
    if cfg.run.engine != "simulation":
        raise ConfigError(f"run.engine={cfg.run.engine!r}: the experiment runs in the in-process simulator only")
    root = replace_output_dir(out, overwrite, "experiment", "--out")
    t_start = time.perf_counter()

    # (a) FedIT: the ordinary run (one per strategy), each in its own run directory.
    runs: list[tuple[str, str, Any, RunStore]] = []
    for fcfg in fed_cfgs:
        key = fedit_key(fcfg.strategy.name if strategies is not None else None)
        run_dir = root / key.replace(":", "-")
        say(f"(a) {key}: {cfg.run.rounds} rounds of {fcfg.strategy.name} over {cfg.partition.clients} clients "
            f"-> {run_dir}")
        fed = pipeline.run(fcfg.override({"run.out": str(run_dir)}), reporter=reporter)
        runs.append((key, fcfg.strategy.name, fed, RunStore(run_dir)))
    history = runs[0][3].history()

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
    examples = sum(len(cache.get(c)) for c in range(len(data.client_records)))
    steps_taken: list[int] = []
    for key, strategy_name, fed, store in runs:
        say(f"evaluating the {key} global model")
        taken = fedit_steps(store.history())
        steps_taken.append(sum(taken.values()))
        delta = store.base_delta(store.latest_round() or 0)  # FedEx-LoRA's global model includes its base delta
        base = bundle.trainer.base
        if delta and base is not None:
            base.apply(delta)
        methods[key] = {**evaluate(fed.final_params), "steps": sum(taken.values()), "steps_by_client": taken,
                        "examples": examples, "strategy": strategy_name, **run_summary(store)}
        if delta and base is not None:
            base.apply({})
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

    # (c) centralized: the union of the clients' data, the total client steps a FedIT run took (the most of them).
    total = max(1, *steps_taken)
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
    if final and any(is_fedit(k) for k in methods):
        result["summary"] = summarize(methods)
    atomic_write_json(root / "experiment.json", result)
    return result


def _first_fedit(result: dict[str, Any]) -> dict[str, Any]:
    return next(v for k, v in result["methods"].items() if is_fedit(k))


def _metrics(result: dict[str, Any]) -> list[str]:
    return [m for m in ("score", "loss") if m in _first_fedit(result)["mean"]]


def _ordered(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(k, v) for k, v in result["methods"].items() if is_fedit(k)]
    if CENTRALIZED in result["methods"]:
        rows.append((CENTRALIZED, result["methods"][CENTRALIZED]))
    rows += sorted(((k, v) for k, v in result["methods"].items() if k.startswith("local/")),
                   key=lambda kv: int(kv[0].split("/")[1]))
    if result.get("base"):
        rows.append((BASE, result["base"]))
    return rows


def markdown_table(result: dict[str, Any]) -> str:
    """One table per metric: methods as rows, categories (and the mean over categories) as columns."""
    cats = sorted(_first_fedit(result)["per_category"])
    out = []
    for metric in _metrics(result):
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        out.append(f"**held-out {metric}** ({arrow})\n")
        out.append("| method | " + " | ".join(cats) + " | mean |")
        out.append("|---" * (len(cats) + 2) + "|")
        for name, res in _ordered(result):
            cells = [f"{res['per_category'].get(c, {}).get(metric, float('nan')):.3f}" for c in cats]
            label = f"**{name}**" if is_fedit(name) else name
            out.append(f"| {label} | " + " | ".join(cells) + f" | **{res['mean'][metric]:.3f}** |")
        out.append("")
    s = result.get("summary", {})
    feds = [k for k in result["methods"] if is_fedit(k)]
    if len(feds) > 1:
        out.append(strategy_table(result))
    for fed in feds:
        entry = s.get("by_method", {}).get(fed, s) if len(feds) > 1 else s
        for metric in _metrics(result):
            e = entry.get(metric)
            if e:
                line = f"- {metric}: {fed} {e['fedit']:.3f}, beats {e['locals_beaten']} local-only models"
                if e.get("centralized") is not None:
                    line += (f"; centralized {e['centralized']:.3f} "
                             f"(gap: {100 * e['gap_to_centralized']:+.1f}%)")
                out.append(line)
    return "\n".join(out) + "\n"


def strategy_table(result: dict[str, Any]) -> str:
    """The strategies side by side: mean score/loss, traffic, and how inexact their averaging was."""
    metrics = _metrics(result)
    head = "| strategy | " + " | ".join(f"mean {m}" for m in metrics) + \
        " | MiB up | MiB down | aggregation error (mean / max) |"
    rows = [head, "|---" * (len(metrics) + 4) + "|"]
    for k, v in result["methods"].items():
        if not is_fedit(k):
            continue
        err = v.get("aggregation_error_mean")
        err_s = "-" if err is None else f"{err:.4f} / {v.get('aggregation_error_max', 0):.4f}"
        rows.append(f"| {k} | " + " | ".join(f"{v['mean'][m]:.3f}" for m in metrics) +
                    f" | {v.get('bytes_up', 0) / 2**20:.1f} | {v.get('bytes_down', 0) / 2**20:.1f} | {err_s} |")
    return "\n".join(rows) + "\n"


def plot_experiment(result: dict[str, Any], metric: str, path: Path) -> None:
    """One bar chart per category (and one for the mean), a bar per method, cf. Figure 3 of the FedIT paper."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _ordered(result)
    cats = sorted(_first_fedit(result)["per_category"]) + ["mean"]
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
        ax.bar(range(len(rows)), vals, color=[colour.get(n, "#d62728" if is_fedit(n) else "#bcbd22")
                                              for n in names])
        finite = [v for v in vals if math.isfinite(v)]
        if metric in LOWER_IS_BETTER and finite:  # losses differ by a few percent: zoom in, or all bars look equal
            lo, hi = min(finite), max(finite)
            pad = max(0.05 * (hi - lo), 1e-3)
            ax.set_ylim(lo - 4 * pad, hi + pad)
        ax.set_title(cat, fontsize=10)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([n.replace("local/", "L").replace("fedit:", "") for n in names], rotation=90,
                           fontsize=7)
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
