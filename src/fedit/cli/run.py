"""`fedit run` and `fedit partition`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedit.cli.common import RichReporter, config_table, console, one_of, parse_kv, print_invalid, user_errors
from fedit.config import RESUMABLE, Config, _toml_scalar, parse_assignment
from fedit.errors import ConfigError

# `fedit run` option name -> config key; `fedit experiment` takes the same options through this one map.
RUN_OPTION_KEYS: dict[str, str] = {
    "model": "model.name", "device": "model.device", "dtype": "model.dtype", "quantization": "model.quantization",
    "data": "data.source", "format": "data.format", "field": "data.fields", "test_data": "data.test_source",
    "template": "data.template", "cutoff_len": "data.cutoff_len", "train_on_inputs": "data.train_on_inputs",
    "on_invalid": "data.on_invalid", "fault": "run.faults", "max_client_examples": "run.max_client_examples",
    "report_to": "run.report_to", "wire_dtype": "run.wire_dtype", "packing": "data.packing",
    "gradient_checkpointing": "client.gradient_checkpointing",
    "clients": "partition.clients", "partition": "partition.scheme", "alpha": "partition.alpha",
    "partition_field": "partition.field", "test_size": "partition.test_size",
    "rounds": "run.rounds", "fraction": "run.fraction", "clients_per_round": "run.clients_per_round",
    "min_clients": "run.min_clients", "seed": "run.seed", "eval_every": "run.eval_every",
    "eval_limit": "run.eval_limit", "engine": "run.engine", "nodes": "run.nodes",
    "client_cpus": "run.client_cpus", "client_gpus": "run.client_gpus",
    "local_steps": "client.local_steps", "local_epochs": "client.local_epochs", "batch_size": "client.batch_size",
    "micro_batch_size": "client.micro_batch_size", "lr": "client.lr", "lr_schedule": "client.lr_schedule",
    "weight_decay": "client.weight_decay", "max_grad_norm": "client.max_grad_norm",
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "lora_targets": "lora.targets",
    "strategy": "strategy.name", "server_lr": "strategy.server_lr", "mu": "strategy.mu",
    "strategy_opt": "strategy.*", "set_": "*",
}
NOT_CONFIG = {"config", "out", "overwrite", "resume", "dry_run", "json_out"}  # handled by the command itself


def run_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from `fedit run`-style options (None = not given)."""
    out: dict[str, Any] = {}
    for name, key in RUN_OPTION_KEYS.items():
        value = options.get(name)
        if name == "field":
            value = parse_kv(value, "--field") or None
        elif name == "lora_targets" and value:
            value = value.split(",")
        elif name == "fault":
            value = list(value) if value else None
        elif name in ("strategy_opt", "set_"):
            continue
        out[key] = value
    for key, text in parse_kv(options.get("strategy_opt"), "--strategy-opt").items():
        out[f"strategy.{key}"] = _toml_scalar(text)  # a setting of the selected strategy, typed as TOML types it
    for assignment in options.get("set_") or []:
        key, value = parse_assignment(assignment)
        if out.get(key) is not None and out[key] != value:
            flag = next((f"--{o.replace('_', '-')}" for o, k in RUN_OPTION_KEYS.items() if k == key), "another flag")
            raise ConfigError(f"--set {assignment}: {key} is also given by {flag} ({out[key]!r}); give it once")
        out[key] = value
    return out



def build_config(config: Path | None, overrides: dict[str, Any]) -> Config:
    cfg = Config.from_file(config) if config else Config()
    return cfg.override(overrides)


def eval_table(ev: dict[str, Any]) -> Table:
    has_score = "base_score" in ev["mean"]
    t = Table(title=f"held-out evaluation: base model vs global model after round {ev.get('rounds', '?')}")
    t.add_column("category")
    t.add_column("n", justify="right")
    if has_score:
        t.add_column("base score", justify="right")
        t.add_column("final score", justify="right")
    t.add_column("base loss", justify="right")
    t.add_column("final loss", justify="right")
    for cat, row in ev["per_category"].items():
        cells = [cat, str(row["n"])]
        if has_score:
            cells += [f"{row['base_score']:.3f}", f"[bold]{row['final_score']:.3f}[/]"]
        cells += [f"{row['base_loss']:.3f}", f"{row['final_loss']:.3f}"]
        t.add_row(*cells)
    m = ev["mean"]
    cells = ["[bold]mean[/]", ""]
    if has_score:
        cells += [f"{m['base_score']:.3f}", f"[bold]{m['final_score']:.3f}[/]"]
    cells += [f"{m['base_loss']:.3f}", f"{m['final_loss']:.3f}"]
    t.add_row(*cells)
    return t


def run_summary(result: Any, wall: float) -> Table:
    t = Table(title="run summary")
    t.add_column("round", justify="right")
    t.add_column("clients")
    t.add_column("train loss", justify="right")
    t.add_column("tokens", justify="right")
    t.add_column("tok/s", justify="right")
    t.add_column("round s", justify="right")
    t.add_column("KiB up/down", justify="right")
    for r in result.rounds:
        m = r.metrics
        tps = m["tokens"] / m["client_train_seconds"] if m["client_train_seconds"] else 0
        t.add_row(str(r.round), ",".join(map(str, r.replied)), f"{m['train_loss']:.4f}", str(m["tokens"]),
                  f"{tps:.0f}", f"{m['round_seconds'] + m['checkpoint_seconds']:.2f}",
                  f"{m['bytes_up'] / 1024:.0f}/{m['bytes_down'] / 1024:.0f}")
    t.caption = f"run directory: {result.run_dir}   wall time: {wall:.1f}s"
    return t


def run_command(
    config: Path = typer.Option(None, "--config", "-c", help="TOML config file; flags override it."),
    model: str = typer.Option(None, help="Base model: 'tiny' (shipped), a local path, or a Hugging Face hub name."),
    data: str = typer.Option(None, help="Data: 'builtin', a JSON/JSONL/CSV/Parquet file or directory, a partition "
                                        "directory from `fedit partition`, or a HF dataset name/saved directory."),
    format: str = typer.Option(None, "--format", help="auto | dolly | alpaca | messages"),
    field: list[str] = typer.Option(None, "--field", help="Field mapping, e.g. --field instruction=question."),
    test_data: str = typer.Option(None, help="Held-out data (default: builtin's test split or a stratified split)."),
    template: str = typer.Option(None, help="auto | alpaca | alpaca-short | chat"),
    cutoff_len: int = typer.Option(None, help="Max tokens per example."),
    train_on_inputs: bool = typer.Option(None, "--train-on-inputs/--no-train-on-inputs"),
    on_invalid: str = typer.Option(None, help="Bad data rows: error (stop, naming file/line/field) | skip (drop "
                                              "them and report what was dropped)."),
    clients: int = typer.Option(None, help="Number of clients."),
    partition: str = typer.Option(None, help="iid | shards | dirichlet | quantity | by-field"),
    alpha: float = typer.Option(None, help="Dirichlet/quantity concentration (smaller = more skewed)."),
    partition_field: str = typer.Option(None, help="by-field: the record field or meta key."),
    test_size: int = typer.Option(None, help="Held-out items per category when splitting the data."),
    rounds: int = typer.Option(None, help="Communication rounds."),
    fraction: float = typer.Option(None, help="Fraction of clients sampled per round."),
    clients_per_round: int = typer.Option(None, help="Clients per round (overrides --fraction)."),
    min_clients: int = typer.Option(None, help="Minimum replies for a round to count."),
    local_steps: int = typer.Option(None, help="Optimizer steps per client per round."),
    local_epochs: float = typer.Option(None, help="Epochs per client per round (if --local-steps is not set)."),
    batch_size: int = typer.Option(None, help="Examples per optimizer step."),
    micro_batch_size: int = typer.Option(None, help="Examples per forward pass (gradient accumulation)."),
    lr: float = typer.Option(None, help="Client learning rate."),
    lr_schedule: str = typer.Option(None, help="constant | linear | cosine"),
    weight_decay: float = typer.Option(None),
    max_grad_norm: float = typer.Option(None),
    lora_r: int = typer.Option(None),
    lora_alpha: int = typer.Option(None),
    lora_dropout: float = typer.Option(None),
    lora_targets: str = typer.Option(None, help="Comma-separated module names, all-linear (default), or auto "
                                                "(the architecture's attention projections, e.g. q_proj,v_proj)."),
    strategy: str = typer.Option(None, help="Aggregation strategy: fedavg | fedprox | fedadam | ... (see "
                                            "docs/architecture.md; each has its own [strategy.NAME] settings)."),
    strategy_opt: list[str] = typer.Option(None, "--strategy-opt", help="A setting of the selected strategy, "
                                           "KEY=VALUE (repeatable), e.g. --strategy-opt tau=1e-3."),
    server_lr: float = typer.Option(None, help="Server learning rate (server optimizers: --strategy-opt server_lr)."),
    mu: float = typer.Option(None, help="FedProx proximal weight (--strategy-opt mu)."),
    seed: int = typer.Option(None),
    out: str = typer.Option(None, help="Run directory (default runs/run-<time>)."),
    resume: Path = typer.Option(None, help="Continue the run in this directory from its last complete round."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out directory."),
    eval_every: int = typer.Option(None, help="Evaluate every K rounds (base and final are always evaluated)."),
    eval_limit: int = typer.Option(None, help="Held-out items used in evaluation."),
    engine: str = typer.Option(None, help="simulation (in-process) | flower (loopback deployment) | flower-sim "
                                          "(Flower's Simulation Engine: ClientApps in Ray processes)"),
    nodes: int = typer.Option(None, help="Flower: SuperNodes to start on loopback; flower-sim: virtual SuperNodes."),
    client_cpus: float = typer.Option(None, help="flower-sim: CPUs per ClientApp process (its torch threads); as "
                                                 "many run at once as the CPUs hold."),
    client_gpus: float = typer.Option(None, help="flower-sim: GPUs per ClientApp process (0.5: two share a GPU; "
                                                 "> 0 needs CUDA)."),
    wire_dtype: str = typer.Option(None, help="Tasks and updates on the wire: float32 | bfloat16 (half the bytes) "
                                              "| int8 (blockwise 8-bit, about a quarter)."),
    packing: bool = typer.Option(None, "--packing/--no-packing", help="Pack several examples per row (no "
                                 "attention across examples)."),
    gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
    device: str = typer.Option(None, help="auto | cpu | cuda | mps"),
    dtype: str = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    quantization: str = typer.Option(None, help="4bit | 8bit (CUDA only)"),
    fault: list[str] = typer.Option(None, "--fault", help="Inject a fault for testing, KIND@ROUND:CLIENT[=VALUE], "
                                                          "e.g. nan@2:1, crash@1:0, hang@1:2, slow@1:3=5, lie@2:1 "
                                                          "(repeatable; see docs/architecture.md)."),
    max_client_examples: int = typer.Option(None, help="Reject updates claiming more examples than this."),
    report_to: str = typer.Option(None, help="Experiment tracking: none | tensorboard | mlflow | tensorboard,mlflow "
                                             "(event files in <run>/tensorboard, an MLflow store in <run>/mlruns; "
                                             "--set run.tracking_uri=URI for another; docs/tracking.md)."),
    set_: list[str] = typer.Option(None, "--set", help="Any setting, SECTION.KEY=VALUE (repeatable), typed by the "
                                   "config schema, e.g. --set client.lr=0.001 --set data.add_eos=false; lists "
                                   "comma-separated, `none` unsets; `fedit config init` lists every key."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and plan the run without running it: clients, "
                                 "tokens and bytes per round, adapter size, peak memory, time per round (needs no "
                                 "weights; creates no run directory)."),
    json_out: Path = typer.Option(None, "--json", help="With --dry-run: also write the plan as JSON to this file "
                                                       "('-' for stdout)."),
) -> None:
    """Federated instruction tuning. With no arguments: the tiny shipped model on the built-in suite, 10 clients."""
    _run(config, locals(), resume, overwrite)


@user_errors
def _run(config: Path | None, options: dict[str, Any], resume: Path | None, overwrite: bool) -> None:
    from fedit import pipeline

    overrides = run_overrides(options)  # inside user_errors: a bad --field is a one-line error too
    overrides["run.out"] = options.get("out")
    if resume is not None:
        given = {k for k, v in overrides.items() if v is not None}
        if config is not None or given - RESUMABLE:
            bad = sorted(given - RESUMABLE) or ["--config"]
            allowed = [f"--{o.replace('_', '-')}" for o, k in RUN_OPTION_KEYS.items() if k in RESUMABLE]
            raise ConfigError(f"--resume continues a run with its saved settings; only {', '.join(allowed)} may "
                              f"change (got {', '.join(bad)})")
        saved = resume / "config.toml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {resume} is not a fedit run directory (no config.toml)")
        cfg = build_config(saved, overrides)
    else:
        cfg = build_config(config, overrides)
        if overrides.get("client.local_epochs") is not None and overrides.get("client.local_steps") is None:
            cfg.client.local_steps = None  # explicit --local-epochs wins over a config file's local_steps
    console.print(config_table(cfg.to_dict()))
    t0 = time.perf_counter()
    from fedit.tracking import check_installed

    check_installed(cfg.run.report_to)  # before a Flower deployment starts (pipeline.run checks it too)
    if options.get("dry_run") or options.get("json_out") is not None:
        from fedit.plan.render import dry_run

        dry_run(cfg, options.get("dry_run", False), options.get("json_out"), resume=resume, overwrite=overwrite)
        return
    if cfg.run.engine == "flower":
        from fedit.engines.flower.launcher import run_flower

        result = run_flower(cfg, resume=resume, overwrite=overwrite)
    elif cfg.run.engine == "flower-sim":
        from fedit.engines.flower.sim import run_flower_sim

        result = run_flower_sim(cfg, resume=resume, overwrite=overwrite)
    else:
        with RichReporter() as reporter:
            result = pipeline.run(cfg, resume=resume, overwrite=overwrite, reporter=reporter)
    wall = time.perf_counter() - t0
    console.print(run_summary(result, wall))
    from fedit.cli.data import print_run_lengths

    print_run_lengths(Path(result.run_dir))  # truncated/dropped per client, and the >5% warning again
    if result.eval:
        console.print(eval_table(result.eval))
    console.print(f"final adapter: {Path(result.run_dir) / 'final'}")


def partition_command(
    data: str = typer.Option(..., help="Records to partition (any source `fedit run --data` accepts)."),
    clients: int = typer.Option(..., help="Number of clients."),
    scheme: str = typer.Option("dirichlet", help="iid | shards | dirichlet | quantity | by-field"),
    alpha: float = typer.Option(0.5, help="Dirichlet/quantity concentration (> 0)."),
    field_name: str = typer.Option(None, "--by", help="by-field: the record field or meta key."),
    min_size: int = typer.Option(None, help="Minimum records per client."),
    test_size: int = typer.Option(10, help="Held-out records per category (0 = none)."),
    format: str = typer.Option("auto", "--format"),
    field: list[str] = typer.Option(None, "--field", help="Field mapping, e.g. --field instruction=question."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(..., help="Output directory."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output directory."),
    on_invalid: str = typer.Option("error", help="Bad data rows: error (stop, naming file/line/field) | skip (drop "
                                                 "them and report what was dropped)."),
) -> None:
    """Split data across clients (one JSONL per client), with a held-out test split, stats and a heterogeneity plot."""
    _partition(data, clients, scheme, alpha, field_name, min_size, test_size, format, field, seed, out, overwrite,
               on_invalid)


def _check_partition_options(clients: int, test_size: int, min_size: int | None, seed: int, on_invalid: str) -> None:
    from fedit.data.invalid import ON_INVALID

    for ok, option, got, expected in [(clients >= 1, "--clients", clients, "an integer >= 1"),
                                      (test_size >= 0, "--test-size", test_size, "an integer >= 0 (0 = none)"),
                                      (min_size is None or min_size >= 0, "--min-size", min_size, "an integer >= 0"),
                                      (seed >= 0, "--seed", seed, "an integer >= 0")]:
        if not ok:
            raise ConfigError(f"{option}: got {got!r}, expected {expected}")
    one_of(on_invalid, "--on-invalid", ON_INVALID)


@user_errors
def _partition(data: str, clients: int, scheme: str, alpha: float, field_name: str | None, min_size: int | None,
               test_size: int, format: str, field: list[str] | None, seed: int, out: Path, overwrite: bool,
               on_invalid: str) -> None:
    from fedit.data.invalid import InvalidRows
    from fedit.data.sources import load_records
    from fedit.outdir import check_output_dir, replace_output_dir
    from fedit.partition import partition, split_test, stats_table, write_partition

    _check_partition_options(clients, test_size, min_size, seed, on_invalid)
    check_output_dir(out, overwrite, "--out")  # refuse before reading anything; delete only once it is all done
    t0 = time.perf_counter()
    invalid = InvalidRows()
    records = load_records(data, format=format, field_map=parse_kv(field, "--field"), on_invalid=on_invalid,
                           report=invalid)
    test_records = []
    if test_size > 0:
        train_idx, test_idx = split_test(records, test_size, seed=seed)
        test_records = [records[i] for i in test_idx]
        records = [records[i] for i in train_idx]
    parts = partition(records, clients, scheme, seed=seed, alpha=alpha, min_size=min_size, field=field_name)
    replace_output_dir(out, overwrite, "partition", "--out")
    extra = {"invalid": invalid.to_dict()} if on_invalid == "skip" else None
    stats = write_partition(out, records, parts, test_records, scheme=scheme, seed=seed, alpha=alpha, extra=extra)
    console.print(stats_table(stats))
    if on_invalid == "skip":
        print_invalid(invalid)
    console.print(f"{len(parts)} clients, {len(records)} training and {len(test_records)} held-out records "
                  f"written to {out} in {time.perf_counter() - t0:.2f}s (stats.json, heterogeneity.png)")
