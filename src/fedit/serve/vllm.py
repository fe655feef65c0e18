"""Would vLLM's multi-LoRA server (`vllm serve BASE --enable-lora --lora-modules NAME=DIR`) load this adapter and
serve the model fedit trained? `check_vllm` answers from the files alone (no model, no vLLM needed).

The rules are vLLM 0.33.0's, read from its source and written here in fedit's own code:

- `vllm/lora/peft_helper.py`, `PEFTHelper.from_local_dir` / `from_dict`: `adapter_config.json` must hold `r`,
  `lora_alpha` and `target_modules` (the only required fields; others are ignored, `target_modules` is never
  matched against anything); `__post_init__`: `r` and every `rank_pattern` rank a positive integer; scaling is
  `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora` (so rsLoRA adapters serve as trained).
- `PEFTHelper._validate_features` and `validate_legal`: refused are `use_dora`, `lora_bias`, `modules_to_save`
  other than `["classifier"]`/`["score"]`, `init_lora_weights` strings other than gaussian/eva/orthogonal/mica/
  lora_ga (PiSSA, OLoRA, CorDA, LoftQ change the base), `alora_invocation_tokens`, `layer_replication`,
  `use_bdlora`, `use_qalora`, `bias` other than "none", and a rank (max of `r` and `rank_pattern`) above
  `--max-lora-rank`.
- `vllm/config/lora.py`, `LoRAConfig`: `max_lora_rank` defaults to 16 and must be one of 1, 8, 16, 32, 64, 128,
  256, 320, 512 (`MaxLoRARanks`, the `--max-lora-rank` choices).
- `vllm/lora/lora_model.py`, `LoRAModel.from_local_checkpoint`: tensors from `adapter_model.safetensors`, else
  `adapter_model.bin` / `.pt` ("doesn't contain tensors" otherwise); every tensor's module (its name without the
  `base_model.model.` prefix and the `.lora_A.weight` tail, `vllm/lora/utils.py` `parse_fine_tuned_lora_name`)
  must end in a module the model supports ("expected target modules in ... but received ..."); names other
  than `lora_A/B.weight`, `lora_embedding_A/B` (or a classifier head) are "unsupported LoRA weight";
  `from_lora_tensors`: an embedding LoRA must span the base's vocabulary.
- Supported modules (`vllm/lora/worker_manager.py` `_load_adapter`, `utils.get_supported_lora_modules`): the
  model's linear layers, with packed layers expanded through the model's `packed_modules_mapping` (`qkv_proj` ->
  q/k/v_proj, `gate_up_proj` -> gate/up_proj), plus its `embedding_modules` (`ARCHITECTURES` below, from
  `vllm/model_executor/models/{llama,mistral,qwen2,qwen3,phi3}.py`).

fedit's own rules on top, where vLLM would load the adapter but serve a different model: a FedEx-LoRA base delta
(`fedit_base_delta.safetensors`) beside the adapter (vLLM never reads it: serve a merged export instead); tensors
outside the model's module layout (vLLM looks LoRAs up by the model's module names and silently skips others);
A/B shapes that disagree with the rank or with the base's config.json; `peft_type` other than LORA.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedit.model.base_delta import BASE_DELTA_FILE
from fedit.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

VLLM_VERSION = "0.33.0"  # the release these rules were read from
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
DEFAULT_MAX_LORA_RANK = 16  # LoRAConfig.max_lora_rank
WEIGHT_FILES = (ADAPTER_WEIGHTS, "adapter_model.bin", "adapter_model.pt")  # the order vLLM tries them
HEAD_MODULES = ("classifier", "score")  # the only modules_to_save vLLM takes (classification models)
INIT_OK = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # init_lora_weights strings vLLM serves
BASE_EMBEDDINGS = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")  # vLLM skips these tensors
PEFT_PREFIX = "base_model.model."

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One reason vLLM would not load the adapter (error) or might not serve it as expected (warning)."""

    level: Level
    file: str  # the file (or directory) it is about
    field: str  # the adapter_config.json field, the tensor name, or "-"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.file}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Architecture:
    """What vLLM's model class offers LoRA: linear layers by suffix, packed ones and their adapter-visible parts."""

    name: str
    linear: tuple[str, ...]  # the model's LinearBase layers (module-name suffixes)
    packed: dict[str, tuple[str, ...]]  # packed_modules_mapping
    embeddings: tuple[str, ...]  # embedding_modules
    fused_qkv: bool = False  # Phi-3: the HF checkpoint already has qkv_proj / gate_up_proj

    def expected_modules(self) -> set[str]:
        """The module suffixes an adapter may hold tensors for (worker_manager._load_adapter's expansion)."""
        out: set[str] = set(self.embeddings)
        for m in self.linear:
            out.update(self.packed.get(m, (m,)))
        return out


_LLAMA_LINEAR = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
_LLAMA_PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_EMB = ("embed_tokens", "lm_head")
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (
        Architecture("LlamaForCausalLM", _LLAMA_LINEAR, _LLAMA_PACKED, _EMB),
        Architecture("MistralForCausalLM", _LLAMA_LINEAR, _LLAMA_PACKED, ()),  # embedding_modules = {}
        Architecture("Qwen2ForCausalLM", _LLAMA_LINEAR, _LLAMA_PACKED, ()),  # SupportsLoRA's default {}
        Architecture("Qwen3ForCausalLM", _LLAMA_LINEAR, _LLAMA_PACKED, _EMB),
        Architecture("Phi3ForCausalLM", _LLAMA_LINEAR, {"qkv_proj": ("qkv_proj",), "gate_up_proj": ("gate_up_proj",)},
                     _EMB, fused_qkv=True),
    )
}
NO_LORA = ("GPT2LMHeadModel", "FalconForCausalLM", "BloomForCausalLM")  # vLLM 0.33.0 classes without SupportsLoRA

# module path (after the PEFT prefix) of a decoder layer's module, or a top-level embedding/head
_LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.([A-Za-z0-9_]+)$")
_TOP_MODULE = {"embed_tokens": "model.embed_tokens", "lm_head": "lm_head"}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")


@dataclass(frozen=True)
class Tensor:
    """One tensor of the adapter file as vLLM parses its name."""

    key: str
    shape: tuple[int, ...]
    module: str  # module path without the PEFT prefix, e.g. "model.layers.0.self_attn.q_proj"
    part: str  # "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"


def required_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank` (None above vLLM's largest)."""
    return next((m for m in MAX_LORA_RANKS if m >= rank), None)


def adapter_rank(adapter_config: dict[str, Any]) -> int:
    """The largest rank in the adapter (r and every rank_pattern rank), as validate_legal compares it."""
    ranks = [adapter_config.get("r")] + list((adapter_config.get("rank_pattern") or {}).values())
    return max((r for r in ranks if isinstance(r, int) and not isinstance(r, bool)), default=0)


def read_base_config(base: str | None) -> dict[str, Any] | None:
    """The base model's config.json: a local directory, "tiny", or a Hub name already in the local cache; else None.

    Never reaches the network (vLLM would download the base itself; the check needs only its architecture)."""
    if not base:
        return None
    from fedit.model.load import TINY_PATH

    path = TINY_PATH if base == "tiny" else Path(base).expanduser()
    found: Path | None = path / "config.json" if (path / "config.json").is_file() else None
    if found is None and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base, "config.json")
            found = Path(cached) if isinstance(cached, str) else None
        except Exception:  # an invalid repo id is simply "not found here"
            found = None
    if found is None:
        return None
    try:
        data = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_vllm(adapter_dir: str | Path, base: str | None = None) -> list[Problem]:
    """Every reason vLLM's `--enable-lora` server would refuse the PEFT adapter in `adapter_dir`, or serve it as a
    different model than fedit's loaders do; an empty list means it loads with the default settings.

    `base`: the base model (a path, "tiny" or a cached Hub name) whose config.json gives the architecture and the
    dimensions; default: adapter_config.json's `base_model_name_or_path`. A rank above vLLM's default
    `--max-lora-rank` is a warning naming the flag (see `required_max_lora_rank`)."""
    d = Path(adapter_dir)
    problems: list[Problem] = []
    cfg = _read_config(d, problems)
    if cfg is None:
        return problems
    base_cfg = read_base_config(base if base is not None else cfg.get("base_model_name_or_path"))
    arch = _architecture(base_cfg, base if base is not None else cfg.get("base_model_name_or_path"), problems)
    _check_config(cfg, problems)
    tensors = _read_tensors(d, problems)
    if tensors is not None:
        _check_tensors(tensors, cfg, arch, base_cfg, problems)
    if (d / BASE_DELTA_FILE).is_file():
        problems.append(Problem("error", BASE_DELTA_FILE, "-", (
            "a FedEx-LoRA base delta: the adapter is exact only on W0 + delta, and vLLM loads the adapter onto the "
            f"unchanged base (it never reads this file), so it would serve a different model; serve a merged "
            f"export instead: `fedit export --adapter {d} --out merged/` then `vllm serve merged/`")))
    return problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]


def serve_command(base: str, name: str, adapter_dir: str | Path, max_lora_rank: int) -> str:
    """The `vllm serve` command line for one adapter (name=path form, or vLLM's JSON form where that would break)."""
    from fedit.model.load import resolve_model_path

    path = str(Path(adapter_dir).resolve())
    # LoRAParserAction splits name=path at the first "=" and reads an item holding "," as JSON
    plain = "=" not in name and "," not in name and "," not in path
    module = f"{name}={path}" if plain else json.dumps({"name": name, "path": path})
    return (f"vllm serve {shlex.quote(resolve_model_path(base))} --enable-lora --max-lora-rank {max_lora_rank} "
            f"--lora-modules {shlex.quote(module)}")


# -- adapter_config.json ---------------------------------------------------------------------------------------


def _read_config(d: Path, problems: list[Problem]) -> dict[str, Any] | None:
    f = d / ADAPTER_CONFIG
    if not f.is_file():
        problems.append(Problem("error", str(d), ADAPTER_CONFIG, "missing: not a PEFT adapter directory"))
        return None
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem("error", ADAPTER_CONFIG, "-", f"not readable JSON ({e})"))
        return None
    if not isinstance(cfg, dict):
        problems.append(Problem("error", ADAPTER_CONFIG, "-", "expected a JSON object"))
        return None
    return cfg


def _check_config(cfg: dict[str, Any], problems: list[Problem]) -> None:
    def bad(name: str, message: str, level: Level = "error") -> None:
        problems.append(Problem(level, ADAPTER_CONFIG, name, message))

    for name in ("r", "lora_alpha", "target_modules"):
        if name not in cfg:
            bad(name, "missing (vLLM requires r, lora_alpha and target_modules)")
    if cfg.get("peft_type", "LORA") != "LORA":
        bad("peft_type", f"got {cfg['peft_type']!r}, expected \"LORA\" (vLLM serves LoRA adapters only)")
    if cfg.get("task_type") not in (None, "CAUSAL_LM"):
        bad("task_type", f"got {cfg['task_type']!r}; vLLM's generate server is for CAUSAL_LM adapters", "warning")
    r = cfg.get("r")
    if "r" in cfg and not _positive_int(r):
        bad("r", f"got {r!r}, expected a positive integer")
    alpha = cfg.get("lora_alpha")
    if "lora_alpha" in cfg and (isinstance(alpha, bool) or not isinstance(alpha, int | float)
                                or not math.isfinite(alpha)):
        bad("lora_alpha", f"got {alpha!r}, expected a number")
    pattern = cfg.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        bad("rank_pattern", f"got {pattern!r}, expected an object of module pattern -> rank")
    else:
        for key, rank in pattern.items():
            if not _positive_int(rank):
                bad("rank_pattern", f"{key!r}: got {rank!r}, expected a positive integer")
    if cfg.get("bias", "none") != "none":
        bad("bias", f"got {cfg['bias']!r}, expected \"none\" (vLLM: adapter bias is not supported)")
    if cfg.get("use_dora"):
        bad("use_dora", "true: vLLM does not support DoRA; train plain LoRA (fedit's lora settings)")
    if cfg.get("lora_bias"):
        bad("lora_bias", "true: vLLM does not support LoRA bias")
    saved = cfg.get("modules_to_save") or []
    if not isinstance(saved, list) or any(m not in HEAD_MODULES for m in saved):
        bad("modules_to_save", f"got {saved!r}: vLLM takes none (or [\"classifier\"] / [\"score\"] for "
                               "classification models); fully trained modules cannot be served as a LoRA")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in INIT_OK:
        bad("init_lora_weights", f"got {init!r}: this init changes the base weights, which vLLM does not; "
                                 "convert it to a plain LoRA with peft first")
    unsupported = (("alora_invocation_tokens", "Activated LoRA (aLoRA)"), ("layer_replication", "layer_replication"),
                   ("use_bdlora", "block-diagonal LoRA (BD-LoRA)"), ("use_qalora", "QALoRA"))
    for name, what in unsupported:
        if cfg.get(name):
            bad(name, f"set: vLLM does not support {what}")
    if cfg.get("trainable_token_indices"):
        bad("trainable_token_indices", "set: vLLM does not load trainable-token deltas (its tensors are not LoRA A/B)")
    rank = adapter_rank(cfg)
    if rank > 0:
        need = required_max_lora_rank(rank)
        if need is None:
            bad("r", f"rank {rank} is above vLLM's largest --max-lora-rank {MAX_LORA_RANKS[-1]}")
        elif need > DEFAULT_MAX_LORA_RANK:
            bad("r", f"rank {rank} is above vLLM's default --max-lora-rank {DEFAULT_MAX_LORA_RANK}: "
                     f"pass --max-lora-rank {need}", "warning")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# -- architecture ----------------------------------------------------------------------------------------------


def _architecture(base_cfg: dict[str, Any] | None, base: str | None, problems: list[Problem]) -> Architecture | None:
    if base_cfg is None:
        problems.append(Problem("warning", ADAPTER_CONFIG, "base_model_name_or_path", (
            f"the base {base!r} has no config.json here, so target modules and shapes were not checked against "
            "its architecture; pass --model with a local copy or a cached Hub name")))
        return None
    archs = base_cfg.get("architectures") or []
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    if any(a in NO_LORA for a in archs):
        problems.append(Problem("error", "config.json", "architectures", (
            f"{archs}: vLLM {VLLM_VERSION} does not support LoRA for this architecture (serve a merged export)")))
    else:
        problems.append(Problem("warning", "config.json", "architectures", (
            f"{archs}: fedit knows vLLM's LoRA modules for {', '.join(ARCHITECTURES)} only; "
            "module names were not checked")))
    return None


# -- tensors ---------------------------------------------------------------------------------------------------


def _read_tensors(d: Path, problems: list[Problem]) -> list[tuple[str, tuple[int, ...]]] | None:
    """(key, shape) of every tensor in the first weights file vLLM would read."""
    for name in WEIGHT_FILES:
        f = d / name
        if not f.is_file():
            continue
        try:
            if name == ADAPTER_WEIGHTS:
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as st:
                    return [(k, tuple(st.get_slice(k).get_shape())) for k in st.keys()]  # noqa: SIM118
            import torch

            data = torch.load(str(f), map_location="cpu", weights_only=True)
            return [(k, tuple(v.shape)) for k, v in data.items()]
        except Exception as e:  # safetensors/torch raise their own types for a corrupt file
            problems.append(Problem("error", name, "-", f"unreadable ({type(e).__name__}: {e})"))
            return None
    problems.append(Problem("error", str(d), ADAPTER_WEIGHTS, f"missing: vLLM reads {' or '.join(WEIGHT_FILES)}"))
    return None


def _parse(key: str) -> tuple[str, str] | None:
    """(module path, part) as parse_fine_tuned_lora_name reads a PEFT tensor name; None if vLLM rejects it."""
    name = key.removeprefix(PEFT_PREFIX)
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[:-2]), parts[-2]
    if len(parts) >= 2 and parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1]), parts[-1]
    return None


def _check_tensors(raw: list[tuple[str, tuple[int, ...]]], cfg: dict[str, Any], arch: Architecture | None,
                   base_cfg: dict[str, Any] | None, problems: list[Problem]) -> None:
    def bad(key: str, message: str, level: Level = "error") -> None:
        problems.append(Problem(level, ADAPTER_WEIGHTS, key, message))

    tensors: list[Tensor] = []
    for key, shape in raw:
        if key.endswith(BASE_EMBEDDINGS):
            continue
        parsed = _parse(key)
        if parsed is None:
            bad(key, "not a LoRA tensor name vLLM reads (…lora_A.weight, …lora_B.weight, …lora_embedding_A/B)")
            continue
        tensors.append(Tensor(key, shape, *parsed))
    if not tensors and not any(p.file == ADAPTER_WEIGHTS for p in problems):
        bad("-", "holds no LoRA tensors")
        return
    expected = arch.expected_modules() if arch else None
    unknown: set[str] = set()
    for t in tensors:
        suffix = t.module.rsplit(".", 1)[-1]
        if expected is not None and suffix not in expected:
            unknown.add(suffix)
            bad(t.key, f"module {suffix!r} is not one vLLM's {arch.name if arch else 'model'} can adapt "
                       f"(expected one of: {', '.join(sorted(expected))})")
            continue
        if arch is None:
            continue
        layer = _LAYER_MODULE.match(t.module)
        if not layer and t.module != _TOP_MODULE.get(suffix):
            bad(t.key, f"module path {t.module!r} is not in the decoder's layout (model.layers.N.self_attn|mlp.NAME"
                       f"{', model.embed_tokens, lm_head' if arch.embeddings else ''}): vLLM would skip it silently")
        elif layer and (layer.group(2) == "self_attn") != (suffix in _ATTN):
            bad(t.key, f"module {suffix!r} sits under {layer.group(2)!r}, not where the model has it")
    _check_target_names(cfg, expected, arch, {t.module.rsplit(".", 1)[-1] for t in tensors}, unknown, problems)
    _check_shapes(tensors, cfg, arch, base_cfg, bad)


def _check_target_names(cfg: dict[str, Any], expected: set[str] | None, arch: Architecture | None, present: set[str],
                        unknown_with_tensors: set[str], problems: list[Problem]) -> None:
    """target_modules names (a list; "all-linear" or a regex is resolved by peft and judged by the tensors)."""
    targets = cfg.get("target_modules")
    if expected is None or not isinstance(targets, list):
        return
    for name in targets:
        short = str(name).rsplit(".", 1)[-1]
        if short in expected:
            continue
        if short in unknown_with_tensors:
            problems.append(Problem("error", ADAPTER_CONFIG, "target_modules", (
                f"{name!r} is not a module vLLM's {arch.name if arch else ''} can adapt (expected names from: "
                f"{', '.join(sorted(expected))}); the adapter has tensors for it, so vLLM refuses it")))
        elif short not in present:
            problems.append(Problem("warning", ADAPTER_CONFIG, "target_modules", (
                f"{name!r} is not a module vLLM's {arch.name if arch else ''} can adapt, but the adapter has no "
                "tensors for it, so vLLM ignores the name (as peft does)")))


def _dims(suffix: str, arch: Architecture, base_cfg: dict[str, Any]) -> tuple[int, int] | None:
    """(in, out) of a module's weight from the base's config.json (Llama-family layouts)."""
    try:
        hidden = int(base_cfg["hidden_size"])
        heads = int(base_cfg["num_attention_heads"])
        kv = int(base_cfg.get("num_key_value_heads") or heads)
        head_dim = int(base_cfg.get("head_dim") or hidden // heads)
        inter = int(base_cfg["intermediate_size"])
        vocab = int(base_cfg["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    table = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
             "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
             "down_proj": (inter, hidden), "qkv_proj": (hidden, (heads + 2 * kv) * head_dim),
             "gate_up_proj": (hidden, 2 * inter), "lm_head": (hidden, vocab), "embed_tokens": (vocab, hidden)}
    return table.get(suffix)


def _rank_of(module: str, cfg: dict[str, Any]) -> int | None:
    """The rank peft gives `module` (rank_pattern: suffix match at a "." boundary, first wins; PEFTHelper's rule)."""
    for key, rank in (cfg.get("rank_pattern") or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return rank if _positive_int(rank) else None
        except re.error:
            return None
    r = cfg.get("r")
    return r if _positive_int(r) else None


def _check_shapes(tensors: list[Tensor], cfg: dict[str, Any], arch: Architecture | None,
                  base_cfg: dict[str, Any] | None, bad: Any) -> None:
    """A is (r, in) and B (out, r) (embedding: A (r, vocab), B (hidden, r)), r as adapter_config.json says."""
    for t in tensors:
        if len(t.shape) != 2:
            bad(t.key, f"shape {list(t.shape)}, expected a matrix")
            continue
        suffix = t.module.rsplit(".", 1)[-1]
        rank = _rank_of(t.module, cfg)
        emb = t.part.startswith("lora_embedding")
        is_a = t.part.endswith("A")
        # peft stores lora_embedding_A as (r, vocab) and lora_embedding_B as (hidden, r), like A and B of a Linear
        got_rank = t.shape[0] if is_a else t.shape[1]
        if rank is not None and got_rank != rank:
            bad(t.key, f"rank {got_rank}, but adapter_config.json gives this module r={rank}")
        dims = _dims(suffix, arch, base_cfg) if arch is not None and base_cfg is not None else None
        if dims is None:
            continue
        d_in, d_out = dims  # embed_tokens: (vocab, hidden), so its A spans the vocabulary
        want = d_in if is_a else d_out
        got = t.shape[1] if is_a else t.shape[0]
        if got != want:
            what = "vocabulary" if emb and is_a else ("input" if is_a else "output")
            bad(t.key, f"{what} size {got}, but the base's config.json gives {suffix} {want} "
                       "(an adapter for another base?)")
