"""What every generating command shares: the settings, the EOS ids and the cut at them.

Evaluation (in-loop and `fedit eval`), `fedit generate` (and so `fedit judge`), `fedit chat` and `fedit serve` all
build their `generate()` calls from here, so they stop at the same tokens. The EOS ids are the tokenizer's *and*
the model's `generation_config`'s: chat models whose end-of-turn token is not `eos_token` (Gemma-style
`generation_config.eos_token_id = [1, 107]`) end a turn on either, and passing only `tokenizer.eos_token_id` to
`generate()` would override that list and score or serve run-on text.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class GenerationSettings:
    """Sampling settings of one generation; `kwargs()` turns them into `model.generate` arguments."""

    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


def _ids(value: Any) -> set[int]:
    """An `eos_token_id` attribute (None, an int, or a list of ints) as a set."""
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, (list, tuple)):
        return {int(x) for x in value if isinstance(x, int) and not isinstance(x, bool)}
    return set()


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Every token id that ends a generation: the tokenizer's EOS plus all of the model's generation_config's."""
    gen_cfg = getattr(model, "generation_config", None)
    return _ids(getattr(tokenizer, "eos_token_id", None)) | _ids(getattr(gen_cfg, "eos_token_id", None))


def eos_kwargs(tokenizer: Any, model: Any) -> dict[str, Any]:
    """The `generate()` arguments that make it stop on any EOS id and pad finished rows (batched generation)."""
    eos = eos_ids(tokenizer, model)
    return {"eos_token_id": sorted(eos) or None, "pad_token_id": tokenizer.pad_token_id}


def cut_at_eos(ids: Sequence[int], eos: Collection[int]) -> list[int]:
    """`ids` up to (not including) the first EOS id of any kind; everything after it is padding or run-on."""
    for i, t in enumerate(ids):
        if t in eos:
            return list(ids[:i])
    return list(ids)
