"""One typed run configuration: nested dataclasses, loaded from TOML, overridden by CLI flags, saved with the run."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomli_w

from fedit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENGINES = ("simulation", "flower", "flower-sim")
WIRE_DTYPES = ("float32", "bfloat16", "int8")  # fedit.wire: how tensors cross between server and clients
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
DROPOUT_IMPLS = ("auto", "fast", "torch")  # fedit.model.dropout
LORA_KERNELS = ("auto", "peft")  # fedit.model.fused_lora
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class ModelConfig:
    name: str = "tiny"  # "tiny" (shipped base), a local path, or a Hugging Face hub name
    # auto: bf16 on CUDA (fp16 without bf16 support); on a CPU, bf16 autocast where it has bf16 matrix units
    # (AMX or AVX512-BF16), float32 elsewhere | float32 | bfloat16 | float16
    dtype: str = "auto"
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    # None | "4bit" (QLoRA: NF4, double quantization, compute in the run's dtype) | "8bit" (GPU only, bitsandbytes)
    quantization: str | None = None
    attn_implementation: str | None = None  # None = transformers' default (sdpa where available)


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # every linear layer of the blocks (QLoRA's finding: better than attention-only at the same rank);
    # ["auto"] = the architecture's attention projections (q_proj, v_proj for Llama: the FedIT/Alpaca-LoRA choice)
    targets: list[str] | None = field(default_factory=lambda: ["all-linear"])
    # how dropout masks are drawn: auto = fast on a CPU (16-bit slices of 64-bit random words, fedit.model.dropout),
    # torch's nn.Dropout elsewhere | fast | torch
    dropout_impl: str = "auto"
    # a LoRA linear layer's forward and backward: auto = one fused autograd function on a CPU (matmuls with the
    # scaling and sums folded in, fedit.model.fused_lora), peft's own forward elsewhere | peft
    kernel: str = "auto"


@dataclass
class DataConfig:
    source: str = "builtin"  # builtin | file | directory | HF dataset name or saved dataset directory
    format: str = "auto"  # auto | dolly | alpaca | messages
    fields: dict[str, str] = field(default_factory=dict)  # record field -> source column, e.g. instruction=question
    test_source: str | None = None  # held-out set; None = builtin's test split, or a stratified split of `source`
    template: str = "auto"  # auto | alpaca | alpaca-short | chat
    cutoff_len: int = 256
    train_on_inputs: bool = False
    add_eos: bool = True
    on_invalid: str = "error"  # error: stop at the first bad row (file/line/field) | skip: drop bad rows, report them
    # pack several examples into each row of cutoff_len tokens (position ids restart per example and attention never
    # crosses one): fewer pad tokens for short examples
    packing: bool = False


@dataclass
class PartitionConfig:
    clients: int = 10
    scheme: str = "shards"  # iid | shards | dirichlet | quantity | by-field
    alpha: float = 0.5
    test_size: int = 10  # held-out items per category when test_source is None and source is not builtin
    min_size: int | None = None
    field: str | None = None  # by-field: record field or meta key


@dataclass
class ClientConfig:
    local_epochs: float | None = 1.0
    local_steps: int | None = 20  # overrides local_epochs when set
    batch_size: int = 16
    micro_batch_size: int = 16
    lr: float = 3e-3  # right for the tiny default; 1e-4..3e-4 for billion-parameter models
    lr_schedule: str = "constant"  # constant | linear | cosine (per client, per round)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time


@dataclass
class StrategyConfig:
    """`[strategy] name = ...` plus one table per strategy, `[strategy.<name>]`, typed by the config dataclass
    registered with that strategy (fedit.strategies): a new strategy brings its own settings."""

    name: str = "fedavg"
    tables: dict[str, Any] = field(default_factory=dict)  # strategy name -> its config dataclass instance

    def settings(self, name: str | None = None) -> Any:
        """The settings of strategy `name` (default: the selected one), its defaults if no table was given."""
        from fedit.strategies import STRATEGIES

        name = name or self.name
        if name not in self.tables:
            self.tables[name] = STRATEGIES.get(name).config_class()
        return self.tables[name]

    def to_dict(self) -> dict[str, Any]:
        self.settings()  # the selected strategy's table is always written out, defaults included
        return {"name": self.name, **{n: dataclasses.asdict(t) for n, t in sorted(self.tables.items())}}


# The flat [strategy] keys of config v1 (older runs' config.toml): read as the selected strategy's settings; those it
# does not have are dropped when they hold their v1 default (v1 wrote every key, used or not).
V1_STRATEGY_DEFAULTS = {"server_lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, "mu": 0.01}


@dataclass
class RunConfig:
    rounds: int = 16
    fraction: float = 0.3
    clients_per_round: int | None = None  # overrides fraction when set
    min_clients: int = 1
    seed: int = 0
    out: str = ""  # run directory; "" = runs/run-<date>-<time>
    engine: str = "simulation"  # simulation | flower (loopback deployment) | flower-sim (Flower's Simulation Engine)
    nodes: int = 2  # flower: SuperNodes to start on loopback; flower-sim: virtual SuperNodes
    # flower-sim: Ray resources of each ClientApp process (one virtual SuperNode's message at a time); as many run
    # at once as the machine's CPUs (GPUs) hold; a client's torch threads = int(client_cpus)
    client_cpus: float = 1.0
    client_gpus: float = 0.0  # > 0 needs CUDA; e.g. 0.5 puts two ClientApp processes on one GPU
    # on the wire, both ways (fedit.wire): float32 (exact) | bfloat16 (half the bytes) | int8 (blockwise absmax
    # 8-bit, a float32 scale per run.wire_block values: about a quarter); updates go up as the delta from the task
    wire_dtype: str = "float32"
    wire_block: int = 64
    eval_every: int = 0  # evaluate the global model every K rounds (0 = only base and final)
    eval_limit: int | None = None  # held-out items used by in-loop evaluation (None = all)
    eval_generate: bool = True  # generation-based scores in addition to loss
    max_new_tokens: int = 32
    # an update claiming more examples than this is rejected (None: only what the server assigned each client bounds
    # it; set it where the server never sees the data, Flower's data.source = "nodes")
    max_client_examples: int | None = None
    faults: list[str] = field(default_factory=list)  # fault injection for testing (fedit.faults), e.g. "nan@2:1"
    # experiment tracking (fedit.tracking): none | tensorboard | mlflow | a comma list, e.g. "tensorboard,mlflow"
    report_to: str = "none"
    # MLflow tracking URI (None: a file store in <run>/mlruns); with TensorBoard alone, its event directory (None:
    # <run>/tensorboard)
    tracking_uri: str | None = None


# Settings a resumed run may change: they decide how long the run goes on, what is evaluated, where and on what
# engine it runs, which faults are injected and which trackers log it, never what a finished round computed.
RESUMABLE = frozenset({"run.rounds", "run.eval_every", "run.eval_limit", "run.eval_generate", "run.max_new_tokens",
                       "run.out", "run.engine", "run.nodes", "run.client_cpus", "run.client_gpus", "run.faults",
                       "run.report_to", "run.tracking_uri"})


def check_flower_sim(client_cpus: float, client_gpus: float, device: str) -> None:
    """`run.engine = "flower-sim"` needs Flower with Ray, CUDA where clients ask for GPUs, and GPUs for clients
    whose model.device is CUDA: checked with the config, before a run directory or a model exists (Flower would
    only fail once Ray is up, or a client would find no GPU)."""
    import importlib.util

    missing = [m for m in ("flwr", "ray") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"run.engine = 'flower-sim' needs Flower's Simulation Engine ({', '.join(missing)} not "
                          'installed): pip install "fedit[flower-sim]"')
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if client_cpus > cpus:
        raise ConfigError(f"run.client_cpus: got {client_cpus!r}, but this machine has {cpus} CPU(s): no ClientApp "
                          f"process would fit; use at most {cpus}")
    if client_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"run.client_gpus: got {client_gpus!r}, but this machine has no CUDA GPU; "
                              "use run.client_gpus = 0 (CPU clients)")
        if client_gpus > torch.cuda.device_count():
            raise ConfigError(f"run.client_gpus: got {client_gpus!r}, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s): no ClientApp process would fit")
    elif device.startswith("cuda"):
        raise ConfigError(f"model.device: got {device!r}, but run.client_gpus = 0 gives Flower's Simulation Engine "
                          "clients no GPU; set run.client_gpus (e.g. 1) or model.device = 'auto'")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> Config:
        cfg = _build(cls, data, where)
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        if path.suffix != ".toml":
            raise ConfigError(f"{path}: expected a .toml config file, got {path.suffix or 'no extension'!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        return cls.from_toml(text, where=str(path))

    @classmethod
    def from_toml(cls, text: str, where: str = "config") -> Config:
        """A config from TOML text (a file's, or the one a Flower run config carries); errors name `where`."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: invalid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{where}: invalid TOML: nested too deeply") from None
        return cls.from_dict(data, where=where)

    def override(self, dotted: dict[str, Any], where: str = "command line") -> Config:
        """A copy with `section.key` values replaced (CLI flags, `--set`, Flower's run config); None values are
        ignored (use `UNSET` to clear an optional setting). Strategy settings are `strategy.<name>.key`, or
        `strategy.key` for the selected strategy's. An unknown key fails naming the closest known ones."""
        data = self.to_dict(keep_none=True)
        selected: dict[str, Any] = {}  # `strategy.KEY`: a setting of whichever strategy ends up selected
        for key, value in dotted.items():
            if value is None:
                continue
            if value is UNSET:
                value = None
            section, _, name = key.partition(".")
            table, _, sub = name.partition(".")
            if section == "strategy" and sub:
                check_key(key)
                data["strategy"].setdefault(table, {})[sub] = value
            elif section == "strategy" and name != "name":
                selected[name] = value
            elif section not in data or name not in data[section]:
                check_key(key)
            else:
                data[section][name] = value
        if selected:
            from fedit.strategies import STRATEGIES

            chosen = data["strategy"]["name"]
            if chosen in STRATEGIES:
                known = {f.name for f in fields(STRATEGIES.get(chosen).config_class)}
                for name, value in selected.items():
                    if name not in known:
                        raise ConfigError(f"strategy.{name}: strategy {chosen!r} has no setting {name!r}; its "
                                          f"settings: {', '.join(sorted(known)) or '(none)'}")
                    data["strategy"].setdefault(chosen, {})[name] = value
        return Config.from_dict(data, where=where)

    def differences(self, other: Config) -> list[tuple[str, Any, Any]]:
        """(dotted key, this value, other's value) for every setting where the two differ."""
        a, b = _flatten(self.to_dict(keep_none=True)), _flatten(other.to_dict(keep_none=True))
        return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]

    def to_dict(self, keep_none: bool = False) -> dict[str, Any]:
        d = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self) if f.name != "strategy"}
        d["strategy"] = self.strategy.to_dict()
        d = {f.name: d[f.name] for f in fields(self)}
        if not keep_none:  # TOML has no null: an unset setting is left out, or written "none" where it is set by
            # default (client.local_steps under --local-epochs), so that reading the file back gives it unset again
            set_by_default = {(f.name, g.name) for f in fields(self) if f.name != "strategy"
                              for g in fields(getattr(self, f.name)) if g.default is not None}
            d = {s: {k: ("none" if (s, k) in set_by_default else v) if v is None else v for k, v in sec.items()
                     if v is not None or (s, k) in set_by_default} for s, sec in d.items()}
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        from fedit.atomic import write_text as atomic_write_text

        atomic_write_text(Path(path), self.to_toml())

    # ---- validation ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        c, r, p, s, lo, d = self.client, self.run, self.partition, self.strategy, self.lora, self.data
        checks = [
            (p.clients >= 1, "partition.clients", p.clients, "an integer >= 1"),
            (p.alpha > 0, "partition.alpha", p.alpha, "a number > 0"),
            (p.test_size >= 0, "partition.test_size", p.test_size, "an integer >= 0"),
            (r.rounds >= 1, "run.rounds", r.rounds, "an integer >= 1"),
            (0 < r.fraction <= 1, "run.fraction", r.fraction, "a number in (0, 1]"),
            (r.clients_per_round is None or r.clients_per_round >= 1, "run.clients_per_round", r.clients_per_round,
             "an integer >= 1"),
            (r.min_clients >= 1, "run.min_clients", r.min_clients, "an integer >= 1"),
            (r.seed >= 0, "run.seed", r.seed, "an integer >= 0"),
            (r.engine in ENGINES, "run.engine", r.engine, ", ".join(ENGINES)),
            (r.nodes >= 1, "run.nodes", r.nodes, "an integer >= 1"),
            (math.isfinite(r.client_cpus) and r.client_cpus > 0, "run.client_cpus", r.client_cpus, "a number > 0"),
            (math.isfinite(r.client_gpus) and r.client_gpus >= 0, "run.client_gpus", r.client_gpus,
             "a number >= 0"),
            (r.wire_dtype in WIRE_DTYPES, "run.wire_dtype", r.wire_dtype, ", ".join(WIRE_DTYPES)),
            (r.wire_block >= 8, "run.wire_block", r.wire_block, "an integer >= 8"),
            (r.eval_every >= 0, "run.eval_every", r.eval_every, "an integer >= 0"),
            (c.batch_size >= 1, "client.batch_size", c.batch_size, "an integer >= 1"),
            (c.micro_batch_size >= 1, "client.micro_batch_size", c.micro_batch_size, "an integer >= 1"),
            (c.batch_size % c.micro_batch_size == 0, "client.batch_size", c.batch_size,
             f"a multiple of client.micro_batch_size ({c.micro_batch_size})"),
            (c.lr > 0, "client.lr", c.lr, "a number > 0"),
            (c.lr_schedule in ("constant", "linear", "cosine"), "client.lr_schedule", c.lr_schedule,
             "constant, linear or cosine"),
            (c.local_steps is None or c.local_steps >= 1, "client.local_steps", c.local_steps, "an integer >= 1"),
            (c.local_epochs is None or c.local_epochs > 0, "client.local_epochs", c.local_epochs, "a number > 0"),
            (c.local_steps is not None or c.local_epochs is not None, "client.local_epochs", None,
             "local_epochs or local_steps to be set"),
            (c.max_grad_norm >= 0, "client.max_grad_norm", c.max_grad_norm, "a number >= 0 (0 disables clipping)"),
            (lo.r >= 1, "lora.r", lo.r, "an integer >= 1"),
            (lo.alpha > 0, "lora.alpha", lo.alpha, "a number > 0"),
            (0 <= lo.dropout < 1, "lora.dropout", lo.dropout, "a number in [0, 1)"),
            (lo.dropout_impl in DROPOUT_IMPLS, "lora.dropout_impl", lo.dropout_impl, ", ".join(DROPOUT_IMPLS)),
            (lo.kernel in LORA_KERNELS, "lora.kernel", lo.kernel, ", ".join(LORA_KERNELS)),
            (d.cutoff_len >= 8, "data.cutoff_len", d.cutoff_len, "an integer >= 8"),
            (c.warmup_steps >= 0, "client.warmup_steps", c.warmup_steps, "an integer >= 0"),
            (c.weight_decay >= 0, "client.weight_decay", c.weight_decay, "a number >= 0"),
            (r.eval_limit is None or r.eval_limit >= 1, "run.eval_limit", r.eval_limit, "an integer >= 1"),
            (r.max_new_tokens >= 1, "run.max_new_tokens", r.max_new_tokens, "an integer >= 1"),
            (r.max_client_examples is None or r.max_client_examples >= 1, "run.max_client_examples",
             r.max_client_examples, "an integer >= 1"),
            (p.min_size is None or p.min_size >= 0, "partition.min_size", p.min_size, "an integer >= 0"),
            (d.on_invalid in ("error", "skip"), "data.on_invalid", d.on_invalid, "'error' or 'skip'"),
            (self.model.quantization in (None, "4bit", "8bit"), "model.quantization", self.model.quantization,
             "4bit or 8bit"),
            (self.model.dtype in DTYPES, "model.dtype", self.model.dtype, ", ".join(DTYPES)),
            (_DEVICE.match(self.model.device) is not None, "model.device", self.model.device,
             "auto, cpu, cuda, cuda:N or mps"),
        ]
        from fedit.strategies.base import config_checks

        for name, table in sorted(s.tables.items()):
            checks += [(ok, f"strategy.{name}.{key}", got, exp) for ok, key, got, exp in config_checks(table)]
        for ok, key, got, expected in checks:
            if not ok:
                raise ConfigError(f"{key}: got {got!r}, expected {expected}")
        self._validate_names()
        if r.engine == "flower-sim":
            check_flower_sim(r.client_cpus, r.client_gpus, self.model.device)

    def _validate_names(self) -> None:
        """Names resolved through registries, checked now: a typo must not cost a model load or a run directory."""
        from fedit.data.formats import FORMATS
        from fedit.data.templates import TEMPLATES
        from fedit.faults import parse_faults
        from fedit.partition.base import PARTITIONERS
        from fedit.strategies import STRATEGIES

        named = [("strategy.name", self.strategy.name, STRATEGIES.names(), False),
                 ("data.template", self.data.template, TEMPLATES.names(), True),
                 ("data.format", self.data.format, FORMATS.names(), True),
                 ("partition.scheme", self.partition.scheme, PARTITIONERS.names(), False)]
        for key, value, known, auto in named:
            if value not in known and not (auto and value == "auto"):
                choices = (["auto"] if auto else []) + known
                raise ConfigError(f"{key}: got {value!r}, expected one of: {', '.join(choices)}")
        from fedit.tracking.backends import check_tracking

        check_tracking(self.run.report_to, self.run.tracking_uri)
        for f in parse_faults(self.run.faults, "run.faults"):
            if f.round is not None and f.round > self.run.rounds:
                raise ConfigError(f"run.faults: {f.spec!r} names round {f.round}, but run.rounds is {self.run.rounds}"
                                  " (it would never fire)")


class _Unset:
    """`UNSET`: an override that clears an optional setting (`--set run.eval_limit=none`); None means "not given"."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def setting_types() -> dict[str, Any]:
    """Every settable key and its declared type: `section.key`, `strategy.name`, and `strategy.<name>.<key>` for
    each registered strategy (its own settings dataclass). The one schema `--set`, `fedit config` and the Flower
    app's run config are typed by."""
    from fedit.strategies import STRATEGIES

    out: dict[str, Any] = {}
    for section in fields(Config):
        if section.name == "strategy":
            out["strategy.name"] = str
            for name in STRATEGIES.names():
                cls = STRATEGIES.get(name).config_class
                out.update({f"strategy.{name}.{k}": tp for k, tp in get_type_hints(cls).items()})
            continue
        hints = get_type_hints(get_type_hints(Config)[section.name])
        out.update({f"{section.name}.{k}": tp for k, tp in hints.items()})
    return out


def check_key(key: str) -> Any:
    """The declared type of setting `key`; an unknown key fails naming the closest known ones."""
    types = setting_types()
    if key in types:
        return types[key]
    known = sorted(types)
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    last = key.rpartition(".")[2]
    near += [k for k in known if k.rpartition(".")[2] == last and k not in near]  # `lr` -> client.lr
    if not near:
        near = [k for k in known if k.startswith(key.partition(".")[0] + ".")][:8]
    sections = ", ".join(f.name for f in fields(Config))
    hint = f"; did you mean {', '.join(near[:5])}?" if near else f"; keys are SECTION.KEY, sections: {sections}"
    raise ConfigError(f"unknown setting {key!r}{hint} (`fedit config init` lists every setting)")


def parse_setting(key: str, text: str, where: str = "--set") -> Any:
    """The value of `--set KEY=TEXT`, typed by the schema: numbers and booleans as TOML spells them, strings as
    written, lists comma-separated (or a TOML array), tables `k=v,k2=v2` (or a TOML inline table), and `none` for
    an optional setting unset. Type errors name the key and what it expects."""
    section, _, name = key.partition(".")
    if section == "strategy" and name and "." not in name and name != "name":  # the selected strategy's setting:
        return _toml_scalar(text.strip())  # typed by Config.override once the strategy is known
    tp = check_key(key)
    args = get_args(tp)
    if type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return UNSET
        tp = next(a for a in args if a is not type(None))
    elif text.strip().lower() in ("none", "null") and tp is not str:
        raise ConfigError(f"{where}: {key}: this setting must be set (it cannot be none)")
    origin = get_origin(tp)
    value: Any = text
    if origin is list:
        value = _toml_scalar(text) if text.strip().startswith("[") else [v.strip() for v in text.split(",")
                                                                           if v.strip()]
    elif origin is dict:
        if text.strip().startswith("{"):
            value = _toml_scalar(text)
        else:
            value = {}
            for item in filter(None, (t.strip() for t in text.split(","))):
                k, eq, v = item.partition("=")
                if not eq or not k.strip():
                    raise ConfigError(f"{where}: {key}: expected KEY=VALUE pairs separated by commas, got {text!r}")
                value[k.strip()] = v.strip()
    elif tp is bool:
        low = text.strip().lower()
        value = {"true": True, "false": False}.get(low, text)
    elif tp in (int, float):
        value = _toml_scalar(text.strip())
    return _coerce(value, tp, key, where)


def parse_assignment(text: str, option: str = "--set") -> tuple[str, Any]:
    """`section.key=value` -> (key, typed value)."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"{option}: expected SECTION.KEY=VALUE (e.g. {option} client.lr=0.001), got {text!r}")
    return key, parse_setting(key, value)


def flat_settings(cfg: Config) -> dict[str, bool | int | float | str]:
    """Every key of `setting_types()` -> its value in `cfg` as a bool, int, float or str (what a Flower run config
    holds): the inverse of `parse_setting`, exactly (`parse_setting(key, text)` gives each str back). An unset
    optional setting is "none", a list "a,b", a table "k=v,k2=v2" (a TOML array / inline table where an item would
    not survive that form). Strategy keys cover every registered strategy (its defaults where `cfg` has no table);
    `cfg` is not changed."""
    from fedit.strategies import STRATEGIES

    def quoted(s: str) -> str:
        return tomli_w.dumps({"s": s})[4:].rstrip("\n")

    out: dict[str, bool | int | float | str] = {}
    for key in setting_types():
        section, _, name = key.partition(".")
        if section == "strategy" and name != "name":
            strategy, _, sub = name.partition(".")
            tables = cfg.strategy.tables
            value = getattr(tables[strategy] if strategy in tables else STRATEGIES.get(strategy).config_class(), sub)
        else:
            value = getattr(getattr(cfg, section), name)
        if value is None:
            value = "none"
        elif isinstance(value, list):
            text = ",".join(value)
            plain = all(v and v == v.strip() and "," not in v for v in value)
            if not plain or text.startswith("[") or text.lower() in ("none", "null"):
                text = "[" + ", ".join(quoted(v) for v in value) + "]"
            value = text
        elif isinstance(value, dict):
            text = ",".join(f"{k}={v}" for k, v in value.items())
            plain = all(k and k == k.strip() and not set(",=") & set(k) and v == v.strip() and "," not in v
                        for k, v in value.items())
            if not plain or text.startswith("{"):
                text = "{" + ", ".join(f"{quoted(k)} = {quoted(v)}" for k, v in value.items()) + "}"
            value = text
        out[key] = value
    return out


def _toml_scalar(text: str) -> Any:
    """TEXT as TOML types it (0.5 a float, 3 an int, [..] an array), or TEXT itself when it is not a TOML value."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking unknown keys and value types, naming the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.') or 'root'}] should be a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(prefix + n for n in near)}? " if near else ""
        raise ConfigError(f"{where}: unknown setting {prefix}{unknown[0]!r}; {hint}known in this section: "
                          f"{sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if tp is StrategyConfig:
            kwargs[name] = _build_strategy(value, where)
        elif is_dataclass(tp):
            kwargs[name] = _build(tp, value, where, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}", where)
    return cls(**kwargs)


def _build_strategy(data: Any, where: str) -> StrategyConfig:
    """[strategy]: `name`, tables of registered strategies, and v1's flat keys (see V1_STRATEGY_DEFAULTS)."""
    from fedit.strategies import STRATEGIES

    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [strategy] should be a table, got {type(data).__name__}")
    name = _coerce(data.get("name", "fedavg"), str, "strategy.name", where)
    if name not in STRATEGIES:
        raise ConfigError(f"{where}: strategy.name: got {name!r}, expected one of: {', '.join(STRATEGIES.names())}")
    tables: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "name":
            continue
        if key in STRATEGIES:
            tables[key] = _build(STRATEGIES.get(key).config_class, value, where, f"strategy.{key}.")
        elif isinstance(value, dict):
            raise ConfigError(f"{where}: [strategy.{key}]: no strategy is called {key!r}; expected one of: "
                              f"{', '.join(STRATEGIES.names())}")
        else:
            flat[key] = value
    own = STRATEGIES.get(name).config_class
    known = {f.name for f in fields(own)}
    if flat:
        table = dataclasses.asdict(tables[name]) if name in tables else {}
        for key, value in flat.items():
            if key in known:
                table[key] = value
            elif not (key in V1_STRATEGY_DEFAULTS and value == V1_STRATEGY_DEFAULTS[key]):
                raise ConfigError(f"{where}: strategy.{key}: not a setting of strategy {name!r}; its settings: "
                                  f"{sorted(known) or '(none)'}")
        tables[name] = _build(own, table, where, f"strategy.{name}.")
    return StrategyConfig(name, tables)


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    """{"section.key": value}, the strategy tables one level deeper ("strategy.fedadam.tau")."""
    out: dict[str, Any] = {}
    for section, values in d.items():
        for k, v in values.items():
            if section == "strategy" and isinstance(v, dict):
                out.update({f"strategy.{k}.{kk}": vv for kk, vv in v.items()} or {f"strategy.{k}": {}})
            else:
                out[f"{section}.{k}"] = v
    return out


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: {key} must be set (got nothing)")
    if args and type(None) in args:  # Optional[X]
        if isinstance(value, str) and value.strip().lower() == "none":  # how to_toml writes an unset setting
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key}: expected a list of strings, got {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: {key}: expected a table of strings, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML spells inf and nan; no setting means either
                raise ConfigError(f"{where}: {key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where}: {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {key}: expected a string, got {value!r}")
    return value
