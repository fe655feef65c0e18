"""Builds a run from a Config: data -> partition -> model + LoRA -> engine -> rounds -> evaluation (`run()`)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit import __version__
from fedit.atomic import write_json as atomic_write_json
from fedit.client.train import LocalTrainer
from fedit.config import RESUMABLE, Config
from fedit.data.invalid import InvalidRows
from fedit.data.records import Record
from fedit.data.templates import Template, get_template
from fedit.data.tokenize import TokenizedData
from fedit.errors import CheckpointError, ConfigError
from fedit.eval.evaluate import encode_held_out
from fedit.eval.evaluate import evaluate as evaluate_records
from fedit.generation import GenerationSettings
from fedit.model.base_delta import model_facts
from fedit.model.dropout import resolve_dropout_impl, set_lora_dropout
from fedit.model.fused_lora import resolve_kernel, set_lora_kernel
from fedit.model.load import check_quantization, load_base, pick_device
from fedit.model.lora import AdapterSlots, attach_lora, peft_lora_config, target_modules
from fedit.server.checkpoint import RunStore
from fedit.server.rounds import Reporter, run_rounds
from fedit.server.sampling import check_run_shape
from fedit.strategies import build_strategy
from fedit.tracking import TrackingSession, check_installed
from fedit.types import Params, RunResult


@dataclass
class PreparedData:
    client_records: list[list[Record]]
    test: list[Record]
    stats: dict[str, Any]
    fingerprint: str


def _fingerprint(client_records: list[list[Record]], test: list[Record]) -> str:
    h = hashlib.sha256()
    for part in [*client_records, test]:
        h.update(b"\x00client")
        for r in part:
            h.update(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def is_partition_dir(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "stats.json").is_file() and (p / "client_000.jsonl").is_file()


def partition_client_files(root: str | Path) -> list[Path]:
    """A `fedit partition` directory's client files, in client order (Dolly-format JSONL, one per client)."""
    return sorted(Path(root).glob("client_*.jsonl"))


def load_test_records(cfg: Config, report: InvalidRows | None = None) -> list[Record] | None:
    """The held-out set when it is given explicitly (builtin's test split, or data.test_source); with
    data.on_invalid = "skip" its bad rows are dropped and counted in `report`."""
    from fedit.data.sources import load_records

    if cfg.data.test_source:
        return load_records(cfg.data.test_source, format=cfg.data.format, field_map=cfg.data.fields,
                            on_invalid=cfg.data.on_invalid, report=report)
    if cfg.data.source == "builtin":
        from fedit.data.builtin import builtin_records

        return builtin_records("test", seed=cfg.run.seed)
    return None


def prepare_data(cfg: Config, log: Callable[[str], None] | None = None) -> PreparedData:
    """Load, split off the held-out set, and partition; deterministic in the config (and the data).

    With data.on_invalid = "skip", what was dropped (a count per reason, first locations) goes to the returned
    stats under "invalid" (the run's partition/stats.json) and, line by line, to `log`.
    """
    invalid = InvalidRows()
    data = _load_and_partition(cfg, invalid)
    if cfg.data.on_invalid == "skip":
        data.stats["invalid"] = invalid.to_dict()
        if log is not None:
            for line in invalid.lines():
                log(line)
    return data


def _load_and_partition(cfg: Config, invalid: InvalidRows) -> PreparedData:
    from fedit.data.sources import load_records
    from fedit.partition import partition, partition_stats, split_test

    def read(source: str | Path, fmt: str | None = None, fields: dict[str, str] | None = None) -> list[Record]:
        return load_records(source, format=fmt or cfg.data.format, field_map=cfg.data.fields if fields is None
                            else fields, on_invalid=cfg.data.on_invalid, report=invalid)

    src = cfg.data.source
    if is_partition_dir(src):  # made by `fedit partition`: use its clients and test split as they are
        root = Path(src)
        client_records = [read(f, "dolly", {}) for f in partition_client_files(root)]
        test = (load_test_records(cfg, invalid) or (read(root / "test.jsonl", "dolly", {})
                                                    if (root / "test.jsonl").is_file() else []))
        stats = json.loads((root / "stats.json").read_text())
        return PreparedData(client_records, test, stats, _fingerprint(client_records, test))

    records = read(src)
    test = load_test_records(cfg, invalid)
    if test is None:
        if cfg.partition.test_size > 0:
            train_idx, test_idx = split_test(records, cfg.partition.test_size, seed=cfg.run.seed)
            test = [records[i] for i in test_idx]
            records = [records[i] for i in train_idx]
        else:
            test = []
    p = cfg.partition
    parts = partition(records, p.clients, p.scheme, seed=cfg.run.seed, alpha=p.alpha, min_size=p.min_size,
                      field=p.field)
    client_records = [[records[i] for i in part] for part in parts]
    stats = partition_stats(records, parts, scheme=p.scheme, seed=cfg.run.seed, alpha=p.alpha)
    return PreparedData(client_records, test, stats, _fingerprint(client_records, test))


@dataclass
class ModelBundle:
    model: Any  # PeftModel
    tokenizer: Any
    template: Template
    peft_config: Any
    trainer: LocalTrainer


def build_model(cfg: Config) -> ModelBundle:
    base, tokenizer = load_base(cfg.model, max_len=cfg.data.cutoff_len)
    base_name = cfg.model.name  # as configured: "tiny" for the shipped base, never this machine's site-packages path
    model = attach_lora(base, cfg.lora, seed=cfg.run.seed, gradient_checkpointing=cfg.client.gradient_checkpointing)
    set_lora_dropout(model, resolve_dropout_impl(cfg.lora.dropout_impl, base.device))
    set_lora_kernel(model, resolve_kernel(cfg.lora.kernel, base.device))
    template = get_template(cfg.data.template, tokenizer)
    peft_config = peft_lora_config(cfg.lora, target_modules(base, cfg.lora.targets), base_name)
    trainer = LocalTrainer.for_model(model, tokenizer)
    trainer.pack_len = cfg.data.cutoff_len if cfg.data.packing else None
    return ModelBundle(model, tokenizer, template, peft_config, trainer)


def stratified_head(records: list[Record], limit: int) -> list[Record]:
    """The first `limit` records taken round-robin across categories, so a small limit still covers every category."""
    by_cat: dict[str | None, list[Record]] = {}
    for r in records:
        by_cat.setdefault(r.category, []).append(r)
    queues = [list(v) for v in by_cat.values()]
    out: list[Record] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


class Evaluator:
    """Evaluates a payload on a fixed set of held-out records; `records_id` identifies that set, so a resumed run
    can tell whether the base evaluation stored with round 0 was made on the same records."""

    def __init__(self, cfg: Config, bundle: ModelBundle, records: list[Record], slots: AdapterSlots) -> None:
        self.cfg, self.bundle, self.records, self.slots = cfg, bundle, records, slots
        self.settings = GenerationSettings(max_new_tokens=cfg.run.max_new_tokens)
        h = hashlib.sha256(json.dumps([cfg.run.eval_generate, cfg.run.max_new_tokens, cfg.data.cutoff_len]).encode())
        for r in records:
            h.update(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        self.records_id = h.hexdigest()
        self.encoded: TokenizedData | None = None  # the records tokenized once, on first use, for every evaluation

    def __call__(self, params: Params) -> dict[str, Any]:
        b = self.bundle
        if self.encoded is None:
            self.encoded = encode_held_out(self.records, b.template, b.tokenizer, self.cfg.data.cutoff_len)
        self.slots.set(params)
        res = evaluate_records(b.model, b.tokenizer, b.template, self.records, cutoff_len=self.cfg.data.cutoff_len,
                               generate=self.cfg.run.eval_generate, settings=self.settings, encoded=self.encoded)
        return res.to_dict()


def make_evaluator(cfg: Config, bundle: ModelBundle, test: list[Record], slots: AdapterSlots) -> Evaluator | None:
    records = stratified_head(test, cfg.run.eval_limit) if cfg.run.eval_limit else test
    return Evaluator(cfg, bundle, records, slots) if records else None


def compare_evals(base: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """eval.json: for each category the base and final metrics, and the means."""
    cats = sorted(set(base["per_category"]) | set(final["per_category"]))
    per = {}
    for c in cats:
        b, f = base["per_category"].get(c, {}), final["per_category"].get(c, {})
        per[c] = {"n": f.get("n", b.get("n", 0))}
        for k in ("score", "loss", "exact_match"):
            if k in b or k in f:
                per[c][f"base_{k}"] = b.get(k)
                per[c][f"final_{k}"] = f.get(k)
    mean = {}
    for k in ("score", "loss", "exact_match"):
        if k in base["mean"]:
            mean[f"base_{k}"] = base["mean"][k]
            mean[f"final_{k}"] = final["mean"][k]
    return {"per_category": per, "mean": mean}


def data_on_nodes(cfg: Config, client_ids: list[int]) -> PreparedData:
    """The server's view when training data never leaves the nodes (`data.source = "nodes"`, Flower deployments):
    which clients exist, and the held-out set only if one is given (`data.test_source`, or builtin's test split)."""
    test = load_test_records(cfg) or []
    h = hashlib.sha256(json.dumps(sorted(client_ids)).encode())
    for r in test:
        h.update(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False).encode())
    n = max(client_ids) + 1
    stats = {"scheme": "on-nodes", "num_clients": n, "note": "training data stays on the nodes"}
    return PreparedData([[] for _ in range(n)], test, stats, h.hexdigest())


def _matters(key: str, saved: Config, cfg: Config) -> bool:
    """Whether a changed setting changes the run: another strategy's table does not; when the strategy itself
    changed, its name says it all."""
    if not key.startswith("strategy.") or key == "strategy.name":
        return True
    if saved.strategy.name != cfg.strategy.name:
        return False
    return key.startswith(f"strategy.{cfg.strategy.name}.")


def check_resume_config(root: Path, cfg: Config) -> None:
    """Refuse to resume `root` with settings that change what its finished rounds computed (library API and Flower
    path alike; the CLI builds `cfg` from the saved config plus the options it allows)."""
    saved_file = root / "config.toml"
    if not saved_file.is_file():
        raise CheckpointError(f"cannot resume: {root} is not a fedit run directory (no config.toml)")
    try:
        saved = Config.from_file(saved_file)
    except ConfigError as e:
        raise CheckpointError(f"cannot resume {root}: its saved config is unreadable ({e})") from None
    done = RunStore(root).latest_round()
    if done is not None and done > cfg.run.rounds:
        raise ConfigError(f"run.rounds={cfg.run.rounds} but {root} already has {done} rounds; resume with "
                          f"--rounds {done} or more")
    changed = [d for d in saved.differences(cfg) if d[0] not in RESUMABLE and _matters(d[0], saved, cfg)]
    if changed:
        shown = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise CheckpointError(f"cannot resume {root} with a different config: {shown}{more}. A resumed run may "
                              f"change only {', '.join(sorted(RESUMABLE))}; start a new run for the others")


def default_run_dir() -> str:
    """The run directory when run.out is not set: runs/run-<date>-<time>."""
    return time.strftime("runs/run-%Y%m%d-%H%M%S")


def run(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False,
        reporter: Reporter | None = None, engine: Any = None, data: PreparedData | None = None) -> RunResult:
    """Run (or resume) federated instruction tuning as configured; returns the final adapter and evaluation.

    `engine` replaces the in-process simulator (Flower passes its own); `data` replaces loading and partitioning
    (a Flower server whose clients' data stays on the nodes passes `data_on_nodes(...)`). Everything that can be
    checked (config, output directory, data, strategy, model) is checked before the run directory is touched; the
    directory is locked against a second process for as long as the run goes on.
    """
    cfg.validate()  # every name and range, before any data is read or any model loaded
    if cfg.model.quantization:  # 4/8-bit without a GPU or bitsandbytes: refused now, not after loading the data
        check_quantization(cfg.model.quantization, pick_device(cfg.model.device))
    check_installed(cfg.run.report_to)  # a tracker's missing library, named with its extra, before any work
    log = reporter.log if reporter is not None else (lambda _m: None)
    if not cfg.run.out and resume is None:
        cfg = cfg.override({"run.out": default_run_dir()})
    store = RunStore(resume if resume is not None else cfg.run.out)
    if resume is not None:
        check_resume_config(store.root, cfg)
    else:
        store.check_create(overwrite)
    if data is None:
        data = prepare_data(cfg, log)
    check_run_shape(cfg.run, len(data.client_records))
    strategy = build_strategy(cfg.strategy)
    bundle = build_model(cfg)  # a model that cannot load leaves no run directory behind
    strategy.bind_model(model_facts(bundle.trainer.model))  # LoRA scaling and layouts (FedEx-LoRA), quantization
    with store:
        if resume is not None:
            info = store.open_existing()  # takes the lock first
            if info.get("data_fingerprint") != data.fingerprint:
                raise CheckpointError(f"cannot resume {store.root}: the data differs from the data the run "
                                      "started with (fingerprint mismatch); resume with the same data and settings")
            if not cfg.run.out:
                cfg = cfg.override({"run.out": str(store.root)})
            cfg.save(store.root / "config.toml")  # the resumable settings as they are now (rounds, eval, ...)
        else:
            store.create(cfg.to_toml(), {"fedit_version": __version__, "data_fingerprint": data.fingerprint,
                                         "num_clients": len(data.client_records), "run_id": uuid.uuid4().hex},
                         overwrite)
            atomic_write_json(store.root / "partition" / "stats.json", data.stats)
            try:
                from fedit.partition import plot_heterogeneity

                plot_heterogeneity(data.stats, store.root / "partition" / "heterogeneity.png")
            except Exception as e:  # a plot must never cost a run
                log(f"could not draw the partition plot: {e}")
        with TrackingSession(cfg, store.root, log) as tracking:  # TensorBoard/MLflow, curves.png; never fail a run
            result = _run_in(cfg, store, data, strategy, bundle, resume is not None, tracking.reporter(reporter),
                             engine, log)
            tracking.finish(result.eval)
        return result


def _report_lengths(cache: Any, store: RunStore, log: Any) -> None:
    """What data.cutoff_len truncated and dropped, per client (every client tokenized once, kept for training):
    saved to partition/lengths.json and warned about before round 1."""
    lengths = cache.length_report()
    atomic_write_json(store.root / "partition" / "lengths.json", lengths.to_dict())
    if (warning := lengths.warning()) is not None:
        log(warning)


def _run_in(cfg: Config, store: RunStore, data: PreparedData, strategy: Any, bundle: ModelBundle, resumed: bool,
            reporter: Reporter | None, engine: Any, log: Any) -> RunResult:
    """The rounds and the final evaluation, inside a created (or reopened) and locked run directory."""
    slots = bundle.trainer.slots
    base_weights = bundle.trainer.base
    evaluate = make_evaluator(cfg, bundle, data.test, slots)
    latest = store.load_latest_usable(log) if resumed else None
    delta: Params = {}
    if latest is None:  # a new run, or a resumed one that never finished round 0: (re)start from the LoRA init
        params = slots.get()  # LoRA init (B = 0): the base model's behaviour
        state = strategy.init_state(params, len(data.client_records))
        metrics0: dict[str, Any] = {"round": 0, "sampled": [], "replied": []}
        if evaluate is not None:
            metrics0["eval"] = evaluate(params)
            metrics0["eval_records"] = evaluate.records_id
        store.save_round(0, params, state, metrics0, bundle.peft_config)
        start = 0
    else:
        start, params, state, _ = latest
        if start > cfg.run.rounds:
            raise ConfigError(f"run.rounds={cfg.run.rounds} but {store.root} already has {start} rounds")
        delta = store.base_delta(start)
    store.rebuild_metrics()

    if engine is None:
        if cfg.run.engine != "simulation":
            raise ConfigError(f"run.engine={cfg.run.engine!r}: use the CLI launcher (fedit run --engine "
                              f"{cfg.run.engine})")
        from fedit.engines.simulation import ClientDataCache, SimulationEngine

        cache = ClientDataCache(data.client_records, bundle.template, bundle.tokenizer, cfg)
        _report_lengths(cache, store, log)
        engine = SimulationEngine(bundle.trainer, cache, cfg, plan=strategy.client_plan(),
                                  load_state=store.client_state)
    elif any(data.client_records):  # Flower with the data on the server (the loopback launcher): the same report
        from fedit.engines.simulation import ClientDataCache

        _report_lengths(ClientDataCache(data.client_records, bundle.template, bundle.tokenizer, cfg), store, log)
    if delta:  # resumed under a strategy that changes the base (FedEx-LoRA): clients and evaluation start on it
        if base_weights is not None:
            base_weights.apply(delta)
        engine.set_base_delta(delta)
    # the most examples each client may claim: what the server assigned it, where the server knows its data
    bounds = {c: len(recs) for c, recs in enumerate(data.client_records) if recs}
    try:
        params, state, results = run_rounds(cfg, engine, strategy, store, bundle.peft_config, params, state, start,
                                            evaluate, reporter, example_bounds=bounds, base_delta=delta,
                                            run_id=str(store.info().get("run_id", "")), base=base_weights)
    finally:
        engine.close()
    last = store.latest_round()
    assert last is not None
    store.write_final(last)

    eval_out = None
    if evaluate is not None:
        round0_params, _, round0_metrics = store.load_round(0)
        same_records = round0_metrics.get("eval_records") == evaluate.records_id
        base = round0_metrics.get("eval") if same_records else None
        if base is None:  # the base model on exactly the records the final model sees (and on the original base)
            final_delta = store.base_delta(last)
            if final_delta and base_weights is not None:
                base_weights.apply({})
            base = evaluate(round0_params)
            if final_delta and base_weights is not None:
                base_weights.apply(final_delta)
        final = evaluate(params)
        eval_out = compare_evals(base, final)
        eval_out["rounds"] = last
        atomic_write_json(store.root / "eval.json", eval_out)
        store.write_final_card(last, eval_out)  # final/README.md gains the base-vs-final table
    return RunResult(str(store.root), results, params, eval_out)
