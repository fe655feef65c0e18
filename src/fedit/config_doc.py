"""A commented TOML of every setting (`fedit config init`): the values of a Config, each key with the comment its
dataclass field carries in the source, optional settings that are unset written as commented-out lines, and every
registered strategy's table (the selected one live, the others commented out)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import tomli_w

from fedit.config import Config

SECTIONS = {
    "model": "the base model: 'tiny' (shipped), a local path or a Hugging Face hub name",
    "lora": "the LoRA adapter every client trains",
    "data": "instruction data, template and tokenization",
    "partition": "how the data is split across clients (ignored for a `fedit partition` directory)",
    "client": "local training on each client, each round",
    "strategy": "server aggregation: `name`, and one [strategy.NAME] table of settings per strategy",
    "run": "rounds, sampling, evaluation, engine",
}
_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} from the class source: the trailing `# ...` of the field's line, after any
    comment lines right above it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (a frozen build): keys without comments
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        if (m := _COMMENT.match(line)) is not None:
            above.append(m.group(1).strip())
            continue
        m = _FIELD.match(line)
        if m is not None and m.group(1) in names and m.group(1) not in out:
            text = " ".join([*above, (m.group(2) or "").strip()]).strip()
            if text:
                out[m.group(1)] = text
        above = []
    return out


def _line(key: str, value: Any) -> str:
    if isinstance(value, dict):  # an inline table: tomli_w would open a [table] of its own
        return f"{key} = {{{', '.join(_line(k, v) for k, v in value.items())}}}" if value else f"{key} = {{}}"
    if isinstance(value, list):  # on one line, as a person writes it
        return f"{key} = [{', '.join(_line('v', v).partition(' = ')[2] for v in value)}]"
    return tomli_w.dumps({key: value}).strip()


def _table(obj: Any, header: str, live: bool, comment: str | None = None) -> list[str]:
    lead = "" if live else "# "
    out = [f"# {comment}"] if comment else []
    out.append(f"{lead}[{header}]")
    comments = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        note = comments.get(f.name)
        if value is None:
            out.append(f"# {f.name} = ...  # unset" + (f"; {note}" if note else ""))
            continue
        text = f"{lead}{_line(f.name, value)}"
        out.append(f"{text}  # {note}" if note else text)
    return out


def commented_toml(cfg: Config | None = None) -> str:
    """The config as TOML with a comment per key; `Config.from_toml` reads it back equal to `cfg`."""
    from fedit.strategies import STRATEGIES

    cfg = cfg or Config()
    lines = ["# fedit run configuration: every setting with its value (`fedit config init`).",
             "# Use it with `fedit run --config FILE`; flags and `--set SECTION.KEY=VALUE` override it;",
             "# `fedit config validate FILE` checks it, `fedit config show` prints what a run would use.", ""]
    for f in dataclasses.fields(cfg):
        if f.name == "strategy":
            lines += [f"# ---- {SECTIONS['strategy']}", "[strategy]", _line("name", cfg.strategy.name), ""]
            for name in STRATEGIES.names():
                settings = cfg.strategy.settings(name) if (name == cfg.strategy.name or name in cfg.strategy.tables) \
                    else STRATEGIES.get(name).config_class()
                live = name == cfg.strategy.name or name in cfg.strategy.tables
                if not dataclasses.fields(settings):
                    lines += [f"# [strategy.{name}] has no settings", ""]
                    continue
                lines += [*_table(settings, f"strategy.{name}", live), ""]
            continue
        lines += _table(getattr(cfg, f.name), f.name, True, f"---- {SECTIONS.get(f.name, f.name)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
