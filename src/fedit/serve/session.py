"""One base model loaded once with several LoRA adapters on it (rounds, runs); adapters resolved from run dirs."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedit.errors import ConfigError

ROUND_DIR = re.compile(r"^round_(\d{4,})$")
BASE_ONLY = "base"  # model id of the bare base (adapters disabled) when serving it for comparison


@dataclass
class AdapterSource:
    """Where one adapter comes from and what it needs: its base model, prompt template and (if known) round."""

    name: str
    path: Path | None  # the PEFT adapter directory; None = the bare base model
    base: str
    template: str = "auto"
    round: int | None = None
    run_dir: Path | None = None

    def info(self) -> dict[str, Any]:
        return {"base": self.base, "adapter": str(self.path) if self.path else None, "round": self.round,
                "template": self.template, "run": str(self.run_dir) if self.run_dir else None}


def _is_adapter(p: Path) -> bool:
    return (p / "adapter_config.json").is_file()


def _is_run(p: Path) -> bool:
    return (p / "config.toml").is_file()


def _run_config(run_dir: Path) -> Any:
    from fedit.config import Config

    return Config.from_file(run_dir / "config.toml")


def _latest_round(run_dir: Path) -> int | None:
    rounds = _round_dirs(run_dir)
    return int(rounds[-1].name[6:]) if rounds else None


def _locate(path: Path) -> tuple[Path, Path | None, int | None]:
    """(adapter dir, run dir or None, round or None) for a run dir, a round dir, final/ or any adapter dir."""
    if _is_run(path) and not _is_adapter(path):
        if _is_adapter(path / "final"):
            return path / "final", path, _latest_round(path)
        latest = _latest_round(path)
        if latest is None:
            raise ConfigError(f"--adapter {path}: run directory has no final/ adapter and no complete round yet")
        return path / f"round_{latest:04d}" / "adapter", path, latest
    if (m := ROUND_DIR.match(path.name)) and _is_adapter(path / "adapter"):
        return path / "adapter", path.parent if _is_run(path.parent) else None, int(m.group(1))
    if not _is_adapter(path):
        raise ConfigError(f"--adapter {path}: not a PEFT adapter directory (no adapter_config.json) "
                          "nor a fedit run directory (no config.toml)")
    parent = path.parent
    if path.name == "adapter" and (m := ROUND_DIR.match(parent.name)):
        return path, parent.parent if _is_run(parent.parent) else None, int(m.group(1))
    if path.name == "final" and _is_run(parent):
        return path, parent, _latest_round(parent)
    return path, None, None


def _default_name(path: Path, run_dir: Path | None, round_idx: int | None, is_final: bool) -> str:
    if run_dir is None:
        return path.name if path.name not in ("adapter", "final") else path.parent.name
    if is_final or round_idx is None:
        return run_dir.name
    return f"{run_dir.name}-round{round_idx}"


def resolve_adapter(arg: str | Path, name: str | None = None, model: str | None = None,
                    template: str | None = None) -> AdapterSource:
    """An adapter source from a run dir, round dir, final/ or adapter dir; `model`/`template` override the saved ones.

    The base comes from `--model`, else adapter_config.json's `base_model_name_or_path`, else the run's model.name
    (used too when the recorded base path no longer exists, e.g. a run copied from another machine).
    """
    from fedit.model.lora import read_adapter_config

    path = Path(arg).expanduser()
    if not path.exists():
        raise ConfigError(f"--adapter {path}: does not exist")
    adapter_dir, run_dir, round_idx = _locate(path)
    cfg = _run_config(run_dir) if run_dir is not None else None
    base = model
    if base is None:
        recorded = read_adapter_config(adapter_dir).get("base_model_name_or_path")
        looks_local = bool(recorded) and (recorded.startswith(("/", ".", "~")) or Path(recorded).exists())
        if recorded and (not looks_local or Path(recorded).expanduser().exists()):
            base = recorded
        elif cfg is not None:
            base = cfg.model.name
        elif recorded:
            raise ConfigError(f"--adapter {adapter_dir}: its base model {recorded!r} does not exist here; "
                              "pass --model NAME_OR_PATH")
        else:
            raise ConfigError(f"--adapter {adapter_dir}: adapter_config.json names no base model; pass --model")
    tmpl = template or (cfg.data.template if cfg is not None else "auto")
    is_final = adapter_dir.name == "final" or adapter_dir == path and _is_run(path)
    return AdapterSource(name or _default_name(adapter_dir, run_dir, round_idx, is_final), adapter_dir.resolve(),
                         base, tmpl, round_idx, run_dir.resolve() if run_dir else None)


def _round_dirs(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.iterdir() if p.is_dir() and ROUND_DIR.match(p.name) and _is_adapter(p / "adapter")]
    return sorted(found, key=lambda p: int(p.name[6:]))


def parse_adapter_args(items: Sequence[str], model: str | None = None, template: str | None = None,
                       include_base: bool = False, all_rounds: bool = False) -> list[AdapterSource]:
    """`--adapter DIR` or `--adapter NAME=DIR`, repeated; names must be unique.

    `all_rounds`: a run directory also contributes every saved round, named `NAME-roundN` (compare rounds).
    """
    if not items:
        raise ConfigError("--adapter: give at least one adapter (a run directory or a PEFT adapter directory)")
    out: list[AdapterSource] = []
    for item in items:
        name, sep, rest = item.partition("=")
        named = bool(sep and name and "/" not in name and not Path(item).exists())
        src = resolve_adapter(rest if named else item, name=name.strip() if named else None, model=model,
                              template=template)
        out.append(src)
        run = Path(rest if named else item).expanduser()
        if all_rounds and _is_run(run) and not _is_adapter(run):
            out.extend(resolve_adapter(r, name=f"{src.name}-round{int(r.name[6:])}", model=model, template=template)
                       for r in _round_dirs(run))
    if include_base:
        out.append(AdapterSource(BASE_ONLY, None, out[0].base, out[0].template))
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--adapter: duplicate model name(s) {dupes}; name them with --adapter NAME=DIR")
    return out


def _same_base(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


@dataclass
class ModelSession:
    """The base model (loaded once) wrapped in one PeftModel that holds every served adapter.

    Adapters are switched per request with `use(name)` under `lock`; callers that generate hold the lock for the
    whole generation, so requests never see each other's adapter.
    """

    sources: list[AdapterSource]
    model: Any
    tokenizer: Any
    templates: dict[str, Any]
    slots: dict[str, str | None]  # public name -> peft adapter name (None = adapters disabled)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # public name -> the base delta saved beside that adapter (fedex runs); the base is W0 + the active one's delta
    deltas: dict[str, Any] = field(default_factory=dict)
    base: Any = None  # BaseWeights, when any adapter has a delta
    _base_of: str | None = None  # whose delta the base holds now (None = W0)

    @classmethod
    def load(cls, sources: Sequence[AdapterSource], device: str = "auto", dtype: str = "auto") -> ModelSession:
        from peft import PeftModel

        from fedit.config import ModelConfig
        from fedit.data.templates import get_template
        from fedit.model.load import load_base

        sources = list(sources)
        base = sources[0].base
        for s in sources[1:]:
            if not _same_base(s.base, base):
                raise ConfigError(f"adapters need one base model: {sources[0].name!r} uses {base!r}, "
                                  f"{s.name!r} uses {s.base!r}; serve them separately or pass --model")
        model, tokenizer = load_base(ModelConfig(name=base, device=device, dtype=dtype))
        slots: dict[str, str | None] = {}
        peft_model: Any = None
        for i, s in enumerate(sources):
            if s.path is None:
                slots[s.name] = None
                continue
            slot = f"a{i}"  # peft adapter names become module keys, which cannot hold "." and similar
            try:
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, str(s.path), adapter_name=slot, is_trainable=False)
                else:
                    peft_model.load_adapter(str(s.path), adapter_name=slot, is_trainable=False)
            except (ValueError, RuntimeError, KeyError) as e:
                raise ConfigError(f"--adapter {s.path}: cannot load it onto {base!r} ({e})") from None
            slots[s.name] = slot
        if peft_model is None:
            raise ConfigError("--adapter: give at least one adapter besides the base")
        peft_model.eval()
        templates = {s.name: get_template(s.template, tokenizer) for s in sources}
        session = cls(sources, peft_model, tokenizer, templates, slots)
        session._load_base_deltas()
        return session

    def _load_base_deltas(self) -> None:
        """Adapters trained with fedex only hold on W0 + their saved delta: read each, check it fits now."""
        from fedit.model.base_delta import BASE_DELTA_FILE, BaseWeights, is_quantized, load_base_delta

        for s in self.sources:
            delta = load_base_delta(s.path) if s.path is not None else {}
            if delta:
                if is_quantized(self.model):
                    raise ConfigError(f"--adapter {s.path}: it comes with a base delta ({BASE_DELTA_FILE}), which "
                                      "cannot be applied exactly to a 4/8-bit quantized base; load it unquantized")
                self.deltas[s.name] = delta
        if self.deltas:
            self.base = BaseWeights(self.model)
            for name in self.deltas:  # names and shapes checked now, not at the first request
                self._set_base(name)
            self._set_base(None)

    # ---- lookups ------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def source(self, name: str) -> AdapterSource:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def context_len(self) -> int:
        cfg = self.model.get_base_model().config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    # ---- prompts ------------------------------------------------------------------------------------------------
    def chat_ids(self, name: str, messages: Sequence[Any]) -> list[int]:
        """Token ids of the generation prompt for a conversation, in the adapter's training template."""
        from fedit.data.records import Message
        from fedit.data.tokenize import encode_prompt

        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        template = self.templates[name]
        return encode_prompt(template.chat_prompt(msgs), template, self.tokenizer)

    def text_ids(self, name: str, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt, with the same BOS handling as training."""
        from fedit.data.tokenize import encode_prompt

        return encode_prompt(prompt, self.templates[name], self.tokenizer)

    # ---- adapter switching (call with `lock` held) --------------------------------------------------------------
    def _set_base(self, name: str | None) -> None:
        """Base weights W0 + the delta of adapter `name` (W0 for None); a no-op when they are already that."""
        if self.base is None or name == self._base_of:
            return
        try:
            self.base.apply(self.deltas[name] if name is not None else {})
        except ConfigError as e:
            raise ConfigError(f"--adapter {self.source(name).path if name else 'base'}: {e}") from None
        self._base_of = name

    def use(self, name: str) -> Any:
        """A context manager that activates adapter `name` (or disables adapters for the bare base)."""
        import contextlib

        slot = self.slots[name]
        self._set_base(name if name in self.deltas else None)
        if slot is None:
            return self.model.disable_adapter()
        if self.model.active_adapter != slot:
            self.model.set_adapter(slot)
        return contextlib.nullcontext()
