"""`fedit eval`, `fedit generate`, `fedit judge` and `fedit experiment`: evaluation commands over the library."""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedit.cli.common import RichReporter, config_table, console, parse_kv, user_errors
from fedit.cli.run import run_overrides
from fedit.errors import ConfigError


# `fedit experiment` takes `fedit run`'s options; each maps to a config key (field/lora_targets are parsed first).
def metrics_table(result: dict[str, Any], title: str) -> Table:
    has_score = "score" in result["mean"]
    t = Table(title=title)
    for col in ["category", "n", "loss", "perplexity"] + (["score", "exact match"] if has_score else []):
        t.add_column(col, justify="left" if col == "category" else "right")
    rows = list(result["per_category"].items()) + [("[bold]mean[/]", result["mean"])]
    for cat, row in rows:
        cells = [cat, str(row.get("n", "")), f"{row['loss']:.4f}", f"{row['perplexity']:.2f}"]
        if has_score:
            cells += [f"{row['score']:.3f}", f"{row['exact_match']:.3f}"]
        t.add_row(*cells)
    return t


# ---------------------------------------------------------------- fedit eval / generate


def check_eval_options(out: Path, batch_size: int, max_new_tokens: int, temperature: float = 0.0) -> None:
    """Option values checked before any data is read or model loaded: a typo costs nothing."""
    for ok, option, got, expected in [(batch_size >= 1, "--batch-size", batch_size, "an integer >= 1"),
                                      (max_new_tokens >= 1, "--max-new-tokens", max_new_tokens, "an integer >= 1"),
                                      (temperature >= 0, "--temperature", temperature, "a number >= 0 (0 = greedy)")]:
        if not ok:
            raise ConfigError(f"{option}: got {got!r}, expected {expected}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; expected a file path for the results")


def eval_command(
    adapter: Path = typer.Option(None, help="Adapter: a PEFT directory, a run directory (its final/) or a round "
                                            "directory. Omit to evaluate the base model."),
    model: str = typer.Option(None, help="Base model (default: the one the adapter's run used, else 'tiny')."),
    data: str = typer.Option(None, help="Held-out data: 'builtin' (its test split), a partition directory (its "
                                        "test.jsonl), or any file/dataset `fedit run --data` accepts. Default: the "
                                        "held-out set of the adapter's run, else builtin's."),
    format: str = typer.Option("auto", "--format", help="auto | dolly | alpaca | messages"),
    field: list[str] = typer.Option(None, "--field", help="Field mapping, e.g. --field instruction=question."),
    template: str = typer.Option(None, help="Prompt template (default: the adapter's run's, else auto)."),
    limit: int = typer.Option(None, help="Evaluate this many records, taken round-robin over categories."),
    generate: bool = typer.Option(True, "--generate/--no-generate", help="Also generate and score answers."),
    max_new_tokens: int = typer.Option(32, help="Generation length."),
    batch_size: int = typer.Option(16, help="Records per forward/generation batch."),
    device: str = typer.Option("auto"),
    out: Path = typer.Option(Path("fedit-eval.json"), help="Where to write the JSON results."),
) -> None:
    """Per-category held-out response loss, perplexity and generation scores of an adapter (or the base model)."""
    _eval(adapter, model, data, format, field, template, limit, generate, max_new_tokens, batch_size, device, out)


@user_errors
def _eval(adapter: Path | None, model: str | None, data: str | None, format: str, field: list[str] | None,
          template: str | None, limit: int | None, generate: bool, max_new_tokens: int, batch_size: int,
          device: str, out: Path) -> None:
    from fedit.atomic import write_json as atomic_write_json
    from fedit.eval.answers import load_eval_records, load_target
    from fedit.eval.evaluate import evaluate
    from fedit.generation import GenerationSettings

    check_eval_options(out, batch_size, max_new_tokens)
    records = load_eval_records(data, format, parse_kv(field, "--field"), limit, adapter=adapter)
    target = load_target(adapter, model, template, device)
    console.print(f"evaluating {target.adapter or 'the base model'} ({target.model_name}) on {len(records)} records")
    t0 = time.perf_counter()
    res = evaluate(target.model, target.tokenizer, target.template, records, cutoff_len=target.cutoff_len,
                   generate=generate, settings=GenerationSettings(max_new_tokens=max_new_tokens),
                   batch_size=batch_size)
    seconds = time.perf_counter() - t0
    doc = {"adapter": target.adapter, "model": target.model_name, "data": data or "(the run's held-out set)",
           "records": len(records),
           "seconds": seconds, **res.to_dict()}
    atomic_write_json(out, doc)
    console.print(metrics_table(doc, f"held-out evaluation of {target.adapter or 'the base model'}"))
    console.print(f"{len(records)} records in {seconds:.1f}s; results written to {out}")


def generate_command(
    adapter: Path = typer.Option(None, help="Adapter (PEFT, run or round directory); omit for the base model."),
    data: str = typer.Option(None, help="Requests to answer (same forms and default as `fedit eval --data`)."),
    out: Path = typer.Option(..., help="Answers file (JSONL) for `fedit judge`."),
    model: str = typer.Option(None, help="Base model (default: the adapter's run's, else 'tiny')."),
    format: str = typer.Option("auto", "--format"),
    field: list[str] = typer.Option(None, "--field"),
    template: str = typer.Option(None),
    limit: int = typer.Option(None, help="Answer this many records, round-robin over categories."),
    max_new_tokens: int = typer.Option(128, help="Generation length."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: int = typer.Option(0, help="Sampling seed (with --temperature > 0)."),
    batch_size: int = typer.Option(16),
    name: str = typer.Option(None, help="Model label stored with each answer (default: the adapter path)."),
    device: str = typer.Option("auto"),
) -> None:
    """Answer held-out requests with an adapter, batched, using the training template; writes JSONL."""
    _generate(adapter, data, out, model, format, field, template, limit, max_new_tokens, temperature, seed,
              batch_size, name, device)


@user_errors
def _generate(adapter: Path | None, data: str | None, out: Path, model: str | None, format: str,
              field: list[str] | None, template: str | None, limit: int | None, max_new_tokens: int,
              temperature: float, seed: int, batch_size: int, name: str | None, device: str) -> None:
    from fedit.eval.answers import answers_from, load_eval_records, load_target, write_answers
    from fedit.eval.generate import generate_answers
    from fedit.generation import GenerationSettings

    check_eval_options(out, batch_size, max_new_tokens, temperature)
    records = load_eval_records(data, format, parse_kv(field, "--field"), limit, adapter=adapter)
    target = load_target(adapter, model, template, device)
    t0 = time.perf_counter()
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    texts = generate_answers(target.model, target.tokenizer, target.template, records, settings, batch_size)
    label = name or target.adapter or target.model_name
    write_answers(out, answers_from(records, texts, label))
    console.print(f"{len(texts)} answers from {label} in {time.perf_counter() - t0:.1f}s written to {out}")


# ---------------------------------------------------------------- fedit judge


def judge_command(
    answers: Path = typer.Option(..., help="Candidate answers (JSONL from `fedit generate`)."),
    reference: Path = typer.Option(None, help="Reference model's answers (relative and pairwise modes)."),
    judge_model: str = typer.Option(..., help="The judge model's name at the endpoint."),
    base_url: str = typer.Option(..., help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1."),
    out: Path = typer.Option(..., help="Where to write the judgement summary (JSON)."),
    mode: str = typer.Option(None, help="single | relative | pairwise (default: relative with --reference, "
                                        "else single)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    concurrency: int = typer.Option(4, help="Requests in flight at once."),
    retries: int = typer.Option(4, help="Retries per request on 429/5xx/timeouts."),
    timeout: float = typer.Option(60.0, help="Seconds per request."),
    cache: Path = typer.Option(None, help="Judgement cache directory (default: .judge-cache beside --out)."),
    max_tokens: int = typer.Option(512, help="Judge reply length."),
) -> None:
    """LLM-as-judge: grade answers 1-10 per category, relative to a reference model, or pairwise in both orders."""
    _judge(answers, reference, judge_model, base_url, out, mode, api_key_env, concurrency, retries, timeout, cache,
           max_tokens)


@user_errors
def _judge(answers: Path, reference: Path | None, judge_model: str, base_url: str, out: Path, mode: str | None,
           api_key_env: str, concurrency: int, retries: int, timeout: float, cache: Path | None,
           max_tokens: int) -> None:
    from fedit.atomic import write_json as atomic_write_json
    from fedit.eval.answers import read_answers
    from fedit.eval.judge import JudgeClient, judge_answers

    if concurrency < 1 or retries < 0 or timeout <= 0:
        raise ConfigError("--concurrency must be >= 1, --retries >= 0 and --timeout > 0")
    cands = read_answers(answers)
    refs = read_answers(reference) if reference is not None else None
    mode = mode or ("relative" if refs is not None else "single")
    client = JudgeClient(judge_model, base_url, os.environ.get(api_key_env), concurrency=concurrency,
                         retries=retries, timeout=timeout, cache_dir=cache or out.parent / ".judge-cache",
                         max_tokens=max_tokens)
    console.print(f"judging {len(cands)} answers with {judge_model} ({mode})")
    t0 = time.perf_counter()
    try:
        doc = judge_answers(client, cands, mode, refs)
    finally:
        client.close()
    doc.update(answers=str(answers), reference=str(reference) if reference else None,
               seconds=time.perf_counter() - t0)
    atomic_write_json(out, doc)
    console.print(judge_table(doc))
    r = doc["requests"]
    console.print(f"{doc['unparseable']} unparseable, {doc['failed']} failed; {r['sent']} requests sent "
                  f"({r['retries']} retries), {r['cached']} from the cache; written to {out}")


def judge_table(doc: dict[str, Any]) -> Table:
    rel = doc["mode"] != "single"
    t = Table(title=f"judge {doc['judge']} ({doc['mode']})")
    cols = ["category", "n", "scored", "mean"] + (["reference", "relative"] if rel else [])
    cols += ["W/T/L"] if doc["mode"] == "pairwise" else []
    for c in cols + ["unparseable", "failed"]:
        t.add_column(c, justify="left" if c == "category" else "right")

    def f(x: float | None, p: int = 2) -> str:
        return "-" if x is None else f"{x:.{p}f}"

    for cat, row in [*doc["per_category"].items(), ("[bold]all[/]", doc["overall"])]:
        cells = [cat, str(row["n"]), str(row["scored"]), f(row["mean"])]
        if rel:
            cells += [f(row["reference_mean"]), f(row["relative"], 3)]
        if doc["mode"] == "pairwise":
            cells.append(f"{row['wins']}/{row['ties']}/{row['losses']}")
        t.add_row(*cells, str(row["unparseable"]), str(row["failed"]))
    return t


# ---------------------------------------------------------------- fedit experiment


def experiment_command(**options: Any) -> None:
    """FedIT vs each client's local-only model vs centralized (equal compute), per category; `fedit run`'s options."""
    _experiment(options)


def _experiment_signature() -> inspect.Signature:
    from fedit.cli.run import run_command

    sig = inspect.signature(run_command, eval_str=True)
    params = []
    for p in sig.parameters.values():
        if p.name == "resume":
            continue
        if p.name == "out":
            p = p.replace(default=typer.Option(None, help="Experiment directory (default runs/experiment-<time>)."))
        params.append(p)
    params.append(inspect.Parameter(
        "strategies", inspect.Parameter.KEYWORD_ONLY, annotation=str,
        default=typer.Option(None, help="Compare these strategies, comma-separated (e.g. fedavg,fedadam,scaffold,"
                             "ffa,fedex): each trains on the same data, partition, seeds and compute; results under "
                             "methods['fedit:<name>'] and a strategy table.")))
    params.append(inspect.Parameter(
        "local_compute", inspect.Parameter.KEYWORD_ONLY, annotation=str,
        default=typer.Option("expected", help="Local-only models' steps: 'expected' = the rounds a client is "
                             "expected to be sampled (its compute over the FedIT run); 'every-round' = all rounds.")))
    return sig.replace(parameters=params)


# Typer reads the options from the signature: `fedit run`'s own, so the two commands never drift apart.
_SIG = _experiment_signature()
experiment_command.__signature__ = _SIG  # type: ignore[attr-defined]
experiment_command.__annotations__ = {p.name: p.annotation for p in _SIG.parameters.values()}


@user_errors
def _experiment(options: dict[str, Any]) -> None:
    from fedit.cli.run import build_config
    from fedit.eval.experiment import markdown_table, run_experiment

    overrides = run_overrides(options)
    out = options.get("out") or time.strftime("runs/experiment-%Y%m%d-%H%M%S")
    cfg = build_config(options.get("config"), overrides)
    if overrides.get("client.local_epochs") is not None and overrides.get("client.local_steps") is None:
        cfg.client.local_steps = None  # explicit --local-epochs wins over a config file's local_steps
    console.print(config_table(cfg.to_dict(), title="experiment config"))
    with RichReporter() as reporter:
        def log(msg: str) -> None:
            reporter.progress.console.print(msg, highlight=False)

        def on_step(name: str, step: int, total: int, loss: float) -> None:
            reporter.client_step(name, step, total, loss)  # type: ignore[arg-type]  # a label, not an id

        result = run_experiment(cfg, out, overwrite=bool(options.get("overwrite")), reporter=reporter, log=log,
                                on_step=on_step, local_compute=options.get("local_compute") or "expected",
                                strategies=_split(options.get("strategies")))
    console.print(markdown_table(result), markup=False, highlight=False)
    console.print(f"results: {Path(out) / 'experiment.json'}, experiment.md, experiment_*.png")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("generate")(generate_command)
    app.command("judge")(judge_command)
    app.command("experiment")(experiment_command)
