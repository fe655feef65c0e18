"""Hugging Face model cards (README.md) for saved adapters and merged exports, built with huggingface_hub's card API.

Every `round_NNNN/adapter/`, `final/` and `fedit export` directory gets a README.md: a YAML header made by
`ModelCardData` (base_model, library_name, tags, pipeline_tag, license when the base's own card names one, datasets
when the data is a Hub dataset, the evaluation as `EvalResult`s) and a body saying how the model was trained
(strategy and its settings, rounds, clients, local training, LoRA, data and its fingerprint, seed, fedit version,
privacy settings when the run has any), its evaluation table and how to load it. `ModelCard.load(path)` parses it.

`kind` says what the directory holds: "round" (the global adapter after a round), "final" (the last round's adapter,
with the base-vs-final table of eval.json once it exists) or "merged" (an export, library_name transformers). A
later kind (a client's personal adapter) is one more entry in KINDS. Writing a card never raises: a card that
cannot be written is a warning, never a lost round (`write_run_card`, `write_merged_card`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedit.config import Config

KINDS = {  # kind -> (title, what the directory holds)
    "round": ("LoRA adapter after round {round}", "the global LoRA adapter of a fedit run after round {round}"),
    "final": ("Final LoRA adapter", "the final LoRA adapter of a fedit run (round {round}, its last)"),
    "merged": ("Merged model", "a full model: a fedit LoRA adapter merged into the weights of its base"),
}
TAGS = ["fedit", "federated-learning", "lora", "peft", "instruction-tuning"]
CARD_FILE = "README.md"
_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"  # the header is ModelCardData's own YAML
_BASE_NOTE = "the base model's own behaviour: round 0 is the LoRA initialisation (B = 0), before any training"


@dataclass(frozen=True)
class CardFacts:
    """What a card says about the run that made a model: its config, run.json (fedit version, data fingerprint,
    number of clients) and privacy settings (none in fedit today; a differential-privacy issue passes its settings,
    e.g. {"noise_multiplier": 1.0, "clip": 0.1, "epsilon": 3.2}, and the card shows a Privacy section)."""

    config: Config
    info: dict[str, Any]
    privacy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run_dir(cls, root: str | Path) -> CardFacts:
        root = Path(root)
        cfg = Config.from_file(root / "config.toml")
        run_json = root / "run.json"  # absent in a run directory made by hand or by an older fedit: facts unknown
        info = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
        return cls(cfg, info, privacy_settings(cfg))


def privacy_settings(cfg: Config) -> dict[str, Any]:
    """The config's privacy settings ({} when it has none, as every config has today): a `privacy` section, when
    the config gains one, is shown as its fields say."""
    section = getattr(cfg, "privacy", None)
    if section is None:
        return {}
    values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    return {k: v for k, v in values.items() if v is not None}


# ---- what the YAML header may name --------------------------------------------------------------------------------
def _is_local(name: str) -> bool:
    from fedit.data.sources import _looks_like_path

    return Path(name).expanduser().exists() or _looks_like_path(name)


def hub_base_model(name: str) -> str | None:
    """The card's `base_model`: a Hub model id as configured, "tiny" for fedit's shipped base (what
    adapter_config.json records), None for a local directory (its path is this machine's, no Hub id)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name == "tiny":
        return name
    if _is_local(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def hub_dataset(source: str | None) -> str | None:
    """A Hub dataset id when the data came from the Hub ("hf:NAME" or a name that is not a local path)."""
    if not source or source in ("builtin", "nodes"):
        return None
    if source.startswith("hf:"):
        return source[3:]
    if any(c in source for c in "*?[") or _is_local(source):
        return None
    return source


def _base_license(name: str) -> str | None:
    """The license the base's own card names, if that card is on this machine (never fetched)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    from fedit.model.load import resolve_model_path

    try:
        readme: Any = Path(resolve_model_path(name)).expanduser() / CARD_FILE
        if not readme.is_file() and hub_base_model(name) not in (None, "tiny"):
            readme = try_to_load_from_cache(name, CARD_FILE)
        if not isinstance(readme, (str, Path)) or not Path(readme).is_file():
            return None
        license_ = (metadata_load(readme) or {}).get("license")
    except Exception:  # an unreadable or odd base card: the license is simply not known
        return None
    return license_ if isinstance(license_, str) else None


# ---- the body --------------------------------------------------------------------------------------------------
def _num(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _shown_path(source: str) -> str:
    """A data source as the card shows it: names as given, local paths by their last component only."""
    if source == "builtin":
        return "fedit's built-in suite (8 Dolly-style categories, seeded generators)"
    if source == "nodes":
        return "on the Flower nodes (the server never read a training record)"
    hub = hub_dataset(source)
    return f"Hub dataset `{hub}`" if hub else f"a local file or directory, `{Path(source).name}`"


def _base_lines(base: str) -> list[str]:
    hub = hub_base_model(base)
    if base == "tiny":
        return ["- **Base model:** `tiny`, fedit's shipped 3.95M-parameter Llama base (`fedit/model/assets/tiny`, "
                "see its README), not a Hugging Face Hub model: `fedit.model.load.resolve_model_path(\"tiny\")` "
                "gives its path on a machine with fedit installed."]
    if hub is None:
        return [f"- **Base model:** a local model directory, `{Path(base).name}` (its path on the training machine "
                "is not recorded here; adapter_config.json holds the path as configured)."]
    return [f"- **Base model:** [`{hub}`](https://huggingface.co/{hub})"]


def _strategy_lines(cfg: Config) -> list[str]:
    from fedit.strategies import STRATEGIES

    name = cfg.strategy.name
    doc = " ".join((sys.modules[STRATEGIES.get(name).__module__].__doc__ or "").strip().split("\n\n")[0].split())
    settings = dataclasses.asdict(cfg.strategy.settings())
    shown = ", ".join(f"`{k}` = {v!r}" for k, v in settings.items()) or "none"
    return [f"- **Strategy:** `{name}`" + (f": {doc}" if doc else ""), f"- **Strategy settings:** {shown}"]


def _training_section(facts: CardFacts, adapter_cfg: dict[str, Any], round_idx: int | None,
                      metrics: dict[str, Any] | None) -> list[str]:
    from fedit import __version__
    from fedit.server.sampling import clients_per_round

    cfg, info = facts.config, facts.info
    c, d, p, lo = cfg.client, cfg.data, cfg.partition, cfg.lora
    n_clients = int(info.get("num_clients") or p.clients)
    try:
        per_round: Any = clients_per_round(cfg.run, n_clients)
    except Exception:
        per_round = "?"
    local = f"{c.local_steps} steps" if c.local_steps is not None else f"{c.local_epochs} epochs"
    targets = adapter_cfg.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    lines = ["## Training", "",
             f"Federated instruction tuning with fedit over {n_clients} clients: each round "
             "the sampled clients train the LoRA adapter on their own data and the server aggregates their updates.",
             "", *_strategy_lines(cfg)]
    if round_idx is not None:
        lines.append(f"- **Rounds:** {round_idx} done of {cfg.run.rounds} planned"
                     + (f" ({_BASE_NOTE})" if round_idx == 0 else ""))
    how = (f"`run.clients_per_round` {cfg.run.clients_per_round}" if cfg.run.clients_per_round is not None
           else f"`run.fraction` {cfg.run.fraction}")
    lines.append(f"- **Clients:** {n_clients} in total, {per_round} sampled per round ({how}), partition "
                 f"`{p.scheme}`" + (f" (alpha {p.alpha})" if p.scheme == "dirichlet" else ""))
    if metrics and metrics.get("sampled"):
        lines.append(f"- **This round:** clients {metrics['sampled']} sampled, {len(metrics.get('replied', []))} "
                     f"replied; train loss {_num(metrics.get('train_loss'))} on {metrics.get('examples')} examples; "
                     f"{metrics.get('bytes_up')} bytes up, {metrics.get('bytes_down')} bytes down; aggregation "
                     f"error {_num(metrics.get('aggregation_error'))}")
    lines += [
        f"- **Local training:** {local} per client per round, batch {c.batch_size} (micro-batch "
        f"{c.micro_batch_size}), AdamW lr {c.lr} ({c.lr_schedule}, warmup {c.warmup_steps} steps), weight decay "
        f"{c.weight_decay}, gradient clipping {c.max_grad_norm}",
        f"- **LoRA:** r {adapter_cfg.get('r', lo.r)}, alpha {adapter_cfg.get('lora_alpha', lo.alpha)}, dropout "
        f"{lo.dropout}, targets {targets} (configured: {', '.join(lo.targets or ['auto'])})",
        f"- **Data:** {_shown_path(d.source)}"
        + (f", held-out set {_shown_path(d.test_source)}" if d.test_source else "")
        + f"; format `{d.format}`, template `{d.template}`, cutoff {d.cutoff_len} tokens, "
        f"train on inputs {d.train_on_inputs}",
        f"- **Data fingerprint:** `{info.get('data_fingerprint', '?')}` (run.json: sha256 of every client's records "
        "and the held-out set)",
        f"- **Seed:** {cfg.run.seed}",
        f"- **fedit version:** {info.get('fedit_version', '?')}"
        + (f" (this card written by {__version__})" if info.get("fedit_version") != __version__ else ""),
    ]
    if facts.privacy:
        lines += ["", "## Privacy", "", *[f"- `{k}`: {v!r}" for k, v in facts.privacy.items()]]
    return lines


def _eval_section(metrics: dict[str, Any] | None, evals: dict[str, Any] | None, round_idx: int | None) -> list[str]:
    if evals is not None:
        keys = [k for k in ("loss", "score", "exact_match") if f"final_{k}" in evals.get("mean", {})]
        header = ["category", "n"] + [f"{w} {k.replace('_', ' ')}" for k in keys for w in ("base", "final")]
        rows = [[cat, row.get("n")] + [row.get(f"{w}_{k}") for k in keys for w in ("base", "final")]
                for cat, row in sorted(evals.get("per_category", {}).items())]
        n = sum(int(r.get("n", 0)) for r in evals.get("per_category", {}).values())
        rows.append(["mean", n] + [evals["mean"].get(f"{w}_{k}") for k in keys for w in ("base", "final")])
        return ["## Evaluation", "",
                f"The base model and this adapter after round {evals.get('rounds', round_idx)} on the held-out set "
                "(eval.json). Loss: response-token NLL, teacher-forced; score: the built-in suite's checker, ROUGE-L "
                "F1 for other data; means are over categories.", "", _table(header, rows)]
    ev = (metrics or {}).get("eval")
    if not ev:
        return ["## Evaluation", "", "This round was not evaluated (`run.eval_every`); final/ carries the "
                "base-vs-final table." if round_idx else "Not evaluated."]
    keys = [k for k in ("loss", "perplexity", "score", "exact_match") if k in ev.get("mean", {})]
    rows = [[cat, row.get("n")] + [row.get(k) for k in keys] for cat, row in sorted(ev["per_category"].items())]
    n = sum(int(r.get("n", 0)) for r in ev["per_category"].values())
    rows.append(["mean", n] + [ev["mean"].get(k) for k in keys])
    what = _BASE_NOTE if round_idx == 0 else f"the global adapter after round {round_idx}"
    return ["## Evaluation", "", f"On the held-out set, {what}. Means are over categories.", "",
            _table(["category", "n", *[k.replace("_", " ") for k in keys]], rows)]


def _eval_results(facts: CardFacts | None, metrics: dict[str, Any] | None, evals: dict[str, Any] | None) -> list[Any]:
    """The evaluation means as huggingface_hub `EvalResult`s (the card's model-index)."""
    from huggingface_hub import EvalResult

    if evals is not None:
        mean = {k[6:]: v for k, v in evals.get("mean", {}).items() if k.startswith("final_")}
    else:
        mean = dict(((metrics or {}).get("eval") or {}).get("mean", {}))
    if not mean or facts is None:
        return []
    d = facts.config.data
    source = d.test_source or d.source
    hub = hub_dataset(source)
    dataset_type = hub or ("fedit-builtin" if source == "builtin" else "local")
    dataset_name = "fedit built-in suite, held-out split" if source == "builtin" else (
        hub or f"held-out records of {Path(source).name}")
    score = "built-in suite checker" if source == "builtin" else "ROUGE-L F1"
    names = {"loss": "response-token NLL", "perplexity": "perplexity", "score": f"score ({score})",
             "exact_match": "exact match"}
    return [EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_name,
                       dataset_split="test", metric_type=k, metric_name=names[k], metric_value=float(v))
            for k, v in mean.items() if k in names and isinstance(v, (int, float))]


def _usage_section(kind: str, base: str, location: str, with_delta: bool) -> list[str]:
    hub = hub_base_model(base)
    load_base = ('from fedit.model.load import resolve_model_path\nbase_path = resolve_model_path("tiny")'
                 if base == "tiny" else f'base_path = "{hub}"' if hub is not None
                 else f'base_path = "path/to/{Path(base).name}"  # the local base model directory')
    if kind == "merged":
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{location}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{location}")']
        return ["## How to use", "", "```python", *code, "```", "", "It needs neither peft nor fedit."]
    code = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            load_base, "base = AutoModelForCausalLM.from_pretrained(base_path)",
            "tokenizer = AutoTokenizer.from_pretrained(base_path)",
            f'model = PeftModel.from_pretrained(base, "{location}")']
    lines = ["## How to use", "", "```python", *code, "```", "",
             f"- `fedit chat --adapter {location}`: chat in the terminal",
             f"- `fedit serve --adapter {location}`: an OpenAI-compatible API (`/v1/chat/completions`)",
             f"- `fedit export --adapter {location} --out merged/`: a standalone model with the adapter merged in"]
    if with_delta:
        lines += ["", "This adapter has a base delta beside it (`fedit_base_delta.safetensors`, FedEx-LoRA): the "
                  "model is W0 + delta + s B A. `fedit chat`, `serve`, `eval` and `export` apply it; plain "
                  "`PeftModel.from_pretrained` does not, and gives a different model."]
    return lines


def build_card(kind: str, base: str, facts: CardFacts | None, adapter_cfg: dict[str, Any], location: str, *,
               round_idx: int | None = None, metrics: dict[str, Any] | None = None,
               evals: dict[str, Any] | None = None, with_delta: bool = False,
               merged: dict[str, Any] | None = None) -> Any:
    """A `huggingface_hub.ModelCard` for a directory of `kind` (see KINDS) whose base is `base` (as the adapter
    records it). `facts` (None: not made by a fedit run directory) give the training section, `metrics` the round's
    metrics row (its "eval" makes the round's table), `evals` eval.json (the base-vs-final table), `merged` the
    export's settings (dtype, base delta)."""
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in KINDS:
        raise ValueError(f"model card kind: got {kind!r}, expected one of: {', '.join(KINDS)}")
    title, what = (s.format(round=round_idx) for s in KINDS[kind])
    hub = hub_base_model(base)
    cfg = facts.config if facts is not None else None
    results = _eval_results(facts, metrics, evals)
    run_name = Path(cfg.run.out).name if cfg is not None and cfg.run.out else "fedit"
    model_name = run_name + {"round": f"-round{round_idx}", "final": "", "merged": "-merged"}.get(kind, f"-{kind}")
    datasets = [x for x in {hub_dataset(cfg.data.source), hub_dataset(cfg.data.test_source)} if x] if cfg else []
    data = ModelCardData(
        base_model=hub, library_name="transformers" if kind == "merged" else "peft", pipeline_tag="text-generation",
        license=_base_license(base), datasets=sorted(datasets) or None,
        tags=TAGS + ([cfg.strategy.name] if cfg is not None else []) + (["merged"] if kind == "merged" else []),
        eval_results=results or None, model_name=model_name if results else None,
    )
    if hub is not None and hub != "tiny":
        # the Hub's relation to base_model: "adapter" for a LoRA adapter; a LoRA merged into its one base is a
        # fine-tune of it (the Hub's "merge" means a merge of several models)
        data["base_model_relation"] = "finetune" if kind == "merged" else "adapter"
    body = [f"# {title}: {run_name}", "", f"This directory holds {what}, made by fedit.", "", *_base_lines(base)]
    if merged is not None:
        delta = " + the adapter's base delta (FedEx-LoRA)" if merged.get("base_delta") else ""
        body += ["", "## How it was made", "",
                 f"`fedit export` loaded the base in float32 on the CPU, applied the LoRA adapter "
                 f"`{merged.get('adapter', '?')}`" + (f" (round {round_idx})" if round_idx is not None else "")
                 + f", merged it exactly (W + s B A{delta}) and saved the weights as {merged.get('dtype', '?')} "
                 "with the tokenizer; fedit_export.json records the same."]
    body.append("")
    if facts is not None:
        body += _training_section(facts, adapter_cfg, round_idx, metrics)
    else:
        body.append("It was not made in a fedit run directory, so how it was trained is not known here.")
    body += ["", *_eval_section(metrics, evals, round_idx), "", *_usage_section(kind, base, location, with_delta)]
    return ModelCard.from_template(data, template_str=_TEMPLATE, body="\n".join(body))


# ---- writers: never raise ----------------------------------------------------------------------------------------
def _save(card: Any, path: Path) -> None:
    from fedit.atomic import write_text

    write_text(path, str(card))  # temp file + fsync + rename: the card is whole or the old one stays


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_run_card(adapter_dir: str | Path, run_root: str | Path, kind: str, round_idx: int,
                   metrics: dict[str, Any] | None = None, evals: dict[str, Any] | None = None) -> bool:
    """README.md in `adapter_dir`, an adapter of the run in `run_root` (its config.toml and run.json give the
    facts). Returns whether it was written; a failure is a warning, never an exception (a card must not cost a
    round)."""
    adapter_dir, run_root = Path(adapter_dir), Path(run_root)
    try:
        from fedit.model.base_delta import BASE_DELTA_FILE
        from fedit.model.lora import read_adapter_config

        adapter_cfg = read_adapter_config(adapter_dir)
        facts = CardFacts.from_run_dir(run_root)
        where = f"{run_root.name}/final" if kind == "final" else f"{run_root.name}/round_{round_idx:04d}/adapter"
        base = adapter_cfg.get("base_model_name_or_path") or facts.config.model.name
        card = build_card(kind, base, facts, adapter_cfg, where, round_idx=round_idx, metrics=metrics, evals=evals,
                          with_delta=(adapter_dir / BASE_DELTA_FILE).is_file())
        _save(card, adapter_dir / CARD_FILE)
    except Exception as e:  # a card is documentation: report it, keep the run going
        warnings.warn(f"could not write the model card {adapter_dir / CARD_FILE}: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def write_merged_card(out_dir: str | Path, source: Any, meta: dict[str, Any], name: str | None = None) -> bool:
    """README.md for a merged export in `out_dir` (being staged: `name` is the directory's final name) of `source`
    (a serve.session.AdapterSource); the training facts come from the adapter's run directory when it has one.
    Never raises (see write_run_card)."""
    out_dir = Path(out_dir)
    try:
        from fedit.model.lora import read_adapter_config

        adapter_dir, run_dir = Path(source.path), source.run_dir
        facts = CardFacts.from_run_dir(run_dir) if run_dir is not None else None
        metrics = evals = None
        if run_dir is not None and source.round is not None:
            metrics = _read_json(Path(run_dir) / f"round_{source.round:04d}" / "metrics.json")
            if adapter_dir.name == "final":
                evals = _read_json(Path(run_dir) / "eval.json")
        shown = f"{Path(run_dir).name}/" if run_dir is not None else ""
        shown += "final" if adapter_dir.name == "final" else (
            f"{adapter_dir.parent.name}/adapter" if adapter_dir.name == "adapter" else adapter_dir.name)
        card = build_card("merged", source.base, facts, read_adapter_config(adapter_dir), name or out_dir.name,
                          round_idx=source.round, metrics=metrics, evals=evals,
                          merged={"adapter": shown, "dtype": meta.get("dtype"), "base_delta": meta.get("base_delta")})
        _save(card, out_dir / CARD_FILE)
    except Exception as e:
        warnings.warn(f"could not write the model card {out_dir / CARD_FILE}: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=2)
        return False
    return True
