"""Answer files (JSONL) of `fedit generate`, read by `fedit judge`; loading the adapter and records to evaluate."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedit.data.records import Record
from fedit.errors import ConfigError, DataError


@dataclass
class Answer:
    """One generated answer with the request it answers and the data set's own response (the gold reference)."""

    id: str
    instruction: str
    answer: str
    context: str = ""
    category: str | None = None
    gold: str = ""
    model: str = ""

    def question(self) -> str:
        """The request as the judge sees it: the instruction, and the context when there is one."""
        return f"{self.instruction}\n\n{self.context}" if self.context else self.instruction


def answers_from(records: Sequence[Record], texts: Sequence[str], model: str) -> list[Answer]:
    return [Answer(str(r.meta.get("id", i)), r.instruction, t, r.context, r.category, r.response, model)
            for i, (r, t) in enumerate(zip(records, texts, strict=True))]


def write_answers(path: str | Path, answers: Sequence[Answer]) -> None:
    from fedit.atomic import write_text as atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(asdict(a), ensure_ascii=False) + "\n" for a in answers))


def read_answers(path: str | Path) -> list[Answer]:
    """Answers from a JSONL file; each line needs at least `instruction` and `answer` (`id` defaults to the line)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"answers file not found: {p}")
    out: list[Answer] = []
    known = set(Answer.__dataclass_fields__)
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not isinstance(
                row.get("answer"), str):
            raise DataError(f"{p} line {n}: expected an object with string fields 'instruction' and 'answer', "
                            f"got {str(row)[:80]!r}")
        row = {k: v for k, v in row.items() if k in known}
        row["id"] = str(row.get("id", n - 1))
        out.append(Answer(**row))
    if not out:
        raise DataError(f"{p} holds no answers")
    return out


def pair_answers(cands: Sequence[Answer], refs: Sequence[Answer], where: str) -> list[tuple[Answer, Answer]]:
    """Match each candidate answer to the reference answer to the same request (by id, checked by instruction)."""
    by_id = {r.id: r for r in refs}
    pairs = []
    for a in cands:
        r = by_id.get(a.id)
        if r is None:
            raise DataError(f"{where}: no reference answer with id {a.id!r} (instruction {a.instruction[:60]!r}); "
                            "generate both answer files from the same data and --limit")
        if r.instruction != a.instruction:
            raise DataError(f"{where}: id {a.id!r} answers different requests ({a.instruction[:40]!r} vs "
                            f"{r.instruction[:40]!r}); generate both answer files from the same data and --limit")
        pairs.append((a, r))
    return pairs


# ---------------------------------------------------------------- loading what to evaluate


def find_run_config(adapter: Path) -> Path | None:
    """The config.toml of the run an adapter belongs to (DIR, DIR/final, DIR/round_NNNN/adapter), if any."""
    for d in (adapter, adapter.parent, adapter.parent.parent):
        if (d / "config.toml").is_file() and (d / "run.json").is_file():
            return d / "config.toml"
    return None


def resolve_adapter(path: Path) -> Path:
    """A PEFT adapter directory from what the user gave: the adapter itself, a run directory, or a round directory."""
    for cand in (path, path / "final", path / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise ConfigError(f"--adapter {path}: not a PEFT adapter directory (no adapter_config.json), nor a run "
                      "directory with final/, nor a round directory with adapter/")


@dataclass
class EvalTarget:
    model: Any
    tokenizer: Any
    template: Any
    cutoff_len: int
    model_name: str
    adapter: str | None


def load_target(adapter: Path | None, model: str | None = None, template: str | None = None,
                device: str = "auto", dtype: str = "auto") -> EvalTarget:
    """Base model (+ adapter if given) with the template and cutoff the adapter was trained with, when known."""
    from fedit.config import Config, ModelConfig
    from fedit.data.templates import get_template
    from fedit.model.load import load_base
    from fedit.model.lora import read_adapter_config

    cfg = Config()
    adapter_dir = resolve_adapter(adapter) if adapter is not None else None
    run_cfg = find_run_config(adapter_dir) if adapter_dir is not None else None
    if run_cfg is not None:
        cfg = Config.from_file(run_cfg)
    name = model or (cfg.model.name if run_cfg is not None else None)
    if name is None and adapter_dir is not None:
        name = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    name = name or "tiny"
    # the attention the run trained and evaluated with (`pick_attention` follows the cutoff), so a run's own
    # held-out set scores as the run scored it
    base, tok = load_base(ModelConfig(name=name, device=device, dtype=dtype,
                                      attn_implementation=cfg.model.attn_implementation), max_len=cfg.data.cutoff_len)
    net = base
    if adapter_dir is not None:
        from peft import PeftModel

        from fedit.model.base_delta import apply_saved_base_delta

        net = PeftModel.from_pretrained(base, str(adapter_dir))
        apply_saved_base_delta(net, adapter_dir)  # fedex: the adapter holds on W0 + its saved delta only
    net.eval()
    return EvalTarget(net, tok, get_template(template or cfg.data.template, tok), cfg.data.cutoff_len, name,
                      str(adapter_dir) if adapter_dir is not None else None)


def load_eval_records(data: str | None, format: str = "auto", field_map: dict[str, str] | None = None,
                      limit: int | None = None, seed: int = 0, adapter: Path | None = None) -> list[Record]:
    """Held-out records: 'builtin' = its test split; a `fedit partition` directory = its test.jsonl; else the data.

    With no `data`, the held-out set of the run the adapter belongs to (as `fedit run` evaluated it), else builtin's.
    """
    from fedit.data.sources import load_records
    from fedit.pipeline import is_partition_dir, stratified_head

    records = run_test_records(adapter) if data is None and adapter is not None else None
    if records is not None:
        pass  # the run's own held-out set
    elif data is None or data == "builtin":
        from fedit.data.builtin import builtin_records

        records = builtin_records("test", seed=seed)
    elif is_partition_dir(data):
        test = Path(data) / "test.jsonl"
        if not test.is_file():
            raise DataError(f"{data}: partition directory without a test.jsonl; pass the held-out file instead")
        records = load_records(test, format="dolly")
    else:
        records = load_records(data, format=format, field_map=field_map or {})
    if not records:
        raise DataError("no held-out records to evaluate; pass --data")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit: got {limit}, expected an integer >= 1")
        records = stratified_head(records, limit)
    return records


def run_test_records(adapter: Path) -> list[Record] | None:
    """The held-out records of the run an adapter comes from (None when it is not part of a run directory)."""
    from fedit.config import Config
    from fedit.pipeline import prepare_data

    cfg_path = find_run_config(resolve_adapter(adapter))
    return prepare_data(Config.from_file(cfg_path)).test if cfg_path is not None else None
