"""The plan as rich tables (`fedit run --dry-run`) or JSON (`--dry-run --json FILE`)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.plan.build import Plan

MAX_CLIENT_ROWS = 20


def size(n: float) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def count(n: float) -> str:
    """A parameter or token count: 1234 -> 1,234; 3.9e6 -> 3.95M."""
    for unit, scale in (("B", 1e9), ("M", 1e6)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{int(n):,}"


def model_table(plan: Plan) -> Table:
    s, d = plan.shape, plan.to_dict()
    t = Table(title="plan: model and adapter", show_header=False)
    t.add_column("what")
    t.add_column("value")
    quant = f", {plan.config.model.quantization}" if plan.config.model.quantization else ""
    t.add_row("base model", f"{escape(s.name)} ({s.model_type}, {count(s.params)} parameters, "
                            f"{str(s.dtype).removeprefix('torch.')}{quant}) on {plan.device}")
    t.add_row("weights", escape(s.weights) if s.weights else f"not on this machine ({escape(s.weights_missing)})")
    dims = s.dims
    t.add_row("shape", f"{dims['layers']} layers, hidden {dims['hidden']}, intermediate {dims['intermediate']}, "
                       f"{dims['heads']} heads ({dims['kv_heads']} kv), vocab {dims['vocab']}")
    targets = s.targets if isinstance(s.targets, str) else ",".join(s.targets)
    t.add_row("LoRA", f"r {plan.config.lora.r} on {escape(targets)}: {len(s.lora)} modules, "
                      f"{count(s.adapter_params)} parameters ({count(plan.trainable_params)} trained), "
                      f"{size(d['adapter']['bytes'])} payload")
    return t


def clients_table(plan: Plan) -> Table:
    first = set(plan.sampled[0])
    t = Table(title=f"plan: {len(plan.clients)} clients (cutoff_len {plan.lengths.cutoff_len})")
    t.add_column("client", no_wrap=True)
    for name in ("examples", "trunc", "drop", "steps", "tokens/round"):
        t.add_column(name, justify="right")
    flagged = set(plan.lengths.flagged())
    rows = plan.clients
    if len(rows) > MAX_CLIENT_ROWS:  # round 1's clients and the most truncated ones
        rows = sorted(rows, key=lambda c: (c.client not in first,
                                           -plan.lengths.groups[str(c.client)].affected_share))[:MAX_CLIENT_ROWS]
        rows.sort(key=lambda c: c.client)
    for c in rows:
        lc = plan.lengths.groups[str(c.client)]
        warn = str(c.client) in flagged
        cut = (lambda v: f"[yellow]{v}[/]") if warn else str
        t.add_row(f"{c.client}{' *' if c.client in first else ''}", str(c.examples), cut(lc.truncated),
                  cut(lc.dropped), str(c.steps), count(c.tokens_per_round))
    tot = plan.lengths.total
    t.add_row("[bold]total[/]", str(tot.examples), str(tot.truncated), str(tot.dropped), "", "")
    hidden = len(plan.clients) - len(rows)
    t.caption = ("* sampled in round 1; trunc: kept but cut at the cutoff; drop: no trainable token left; "
                 f"tokens/round: expected when sampled{f'; {hidden} more clients not shown' if hidden else ''}")
    return t


def rounds_table(plan: Plan) -> Table:
    r = plan.to_dict()["rounds"]
    tok, lab = r["tokens_per_round"], r["label_tokens_per_round"]
    t = Table(title="plan: per round", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("rounds", f"{r['rounds']}, {r['clients_per_round']} clients each (round 1: {r['round1_sampled']}, "
                        f"{r['round1_steps']} optimizer steps)")
    t.add_row("tokens per round", f"{count(tok['round1'])} in round 1; mean {count(tok['mean'])}, min "
                                  f"{count(tok['min'])}, max {count(tok['max'])}; {count(r['tokens_total'])} in all")
    t.add_row("label tokens per round", f"{count(lab['round1'])} in round 1; mean {count(lab['mean'])}")
    t.add_row("bytes per round", f"{size(plan.bytes_down)} down, {size(plan.bytes_up)} up (adapter payload, "
                                 f"{plan.config.strategy.name})")
    if plan.timing is not None:
        tm = plan.timing
        t.add_row("time per round", f"~{plan.seconds_per_round:.1f} s of local training ({tm.steps} steps timed on "
                                    f"client {tm.client}: {tm.seconds_per_step:.3f} s/step, "
                                    f"{tm.tokens_per_second:.0f} tok/s; evaluation and checkpoints not included)")
    else:
        t.add_row("time per round", escape(plan.time_note))
    return t


def memory_table(plan: Plan) -> Table:
    m = plan.memory
    where = "process RSS" if m.device == "cpu" else "GPU memory"
    t = Table(title=f"plan: estimated peak memory ({where})")
    t.add_column("component")
    t.add_column("estimate", justify="right")
    for name, b in m.components.items():
        t.add_row(name, size(b))
    t.add_row("[bold]total[/]", f"[bold]{size(m.total)}[/]")
    t.add_row("total with gradient checkpointing", size(m.total_checkpointing))
    notes = list(m.notes)
    if plan.timing is not None and m.device == "cpu":
        notes.append(f"measured peak RSS of this dry run after its timed steps: {size(plan.timing.peak_rss)}")
    t.caption = "; ".join(notes)
    return t


def print_plan(plan: Plan, console: Console) -> None:
    for table in (model_table(plan), clients_table(plan), rounds_table(plan), memory_table(plan)):
        console.print(table)
    for note in plan.notes:
        console.print(f"[yellow]{escape(note)}[/]", highlight=False)
    if (warning := plan.lengths.warning()) is not None:
        console.print(f"[yellow]{escape(warning)}[/]", highlight=False)
    spent = ", ".join(f"{k} {v:.1f}s" for k, v in plan.phases.items())
    console.print(f"dry run: planned in {plan.seconds:.1f}s ({spent}); no run directory was created",
                  highlight=False)


def write_json(plan: Plan, path: Path) -> None:
    """The plan as JSON (`Plan.to_dict`) in `path`, or on stdout for "-"."""
    text = json.dumps(plan.to_dict(), indent=2)
    if str(path) == "-":
        print(text)
    else:
        path.write_text(text + "\n", encoding="utf-8")


def dry_run(cfg: Config, dry: bool, json_out: Path | None, *, resume: Path | None, overwrite: bool) -> None:
    """`fedit run --dry-run [--json FILE]`: plan, print, optionally write JSON; ConfigError for --json alone."""
    from fedit.cli.common import RichReporter, console
    from fedit.plan.build import make_plan

    if not dry:
        raise ConfigError("--json: only with --dry-run (it writes the plan)")
    with RichReporter() as reporter:
        plan = make_plan(cfg, resume=resume, overwrite=overwrite, log=reporter.log)
    print_plan(plan, console)
    if json_out is not None:
        write_json(plan, json_out)
