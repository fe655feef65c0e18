"""Answer checkers for the built-in suite: each scores a generated answer 0..1 against a record's meta."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fedit.data.builtin.text import (
    VOCABS,
    clean,
    mentions,
    singular_in,
    split_items,
    strip_article,
    strip_lead_in,
    to_number,
    words,
)
from fedit.registry import Registry

Checker = Callable[[str, dict[str, Any]], float]
CHECKERS: Registry[Checker] = Registry("answer checker")


def _vocab(meta: dict[str, Any]) -> set[str]:
    names = meta.get("vocab", [])
    names = [names] if isinstance(names, str) else names
    return {w for n in names for w in VOCABS[n]}


@CHECKERS.register("choice")
def choice(answer: str, meta: dict[str, Any]) -> float:
    """One right answer among alternatives (meta: accept, optional reject and vocab).

    1.0 when the cleaned answer is an accepted form, or it mentions an accepted form and none of the rejected ones
    (so "Paris is the capital." passes but "Paris or Rome" does not); 0.0 otherwise.
    """
    accept = [a.lower() for a in meta["accept"]]
    reject = ({r.lower() for r in meta.get("reject", [])} | _vocab(meta)) - set(accept)
    s = strip_article(strip_lead_in(clean(answer)))
    if s in accept or re.sub(r"^in\s+(?:a|an|the)\s+", "", s) in accept:
        return 1.0
    if any(mentions(s, a) for a in accept) and not any(mentions(s, r) for r in reject):
        return 1.0
    return 0.0


@CHECKERS.register("number")
def number(answer: str, meta: dict[str, Any]) -> float:
    """A numeric result (meta: target). The last number in the first line counts: "7 plus 5 is 12" -> 12."""
    values = [v for v in (to_number(t) for t in words(clean(answer))) if v is not None]
    return 1.0 if values and values[-1] == int(meta["target"]) else 0.0


@CHECKERS.register("letter")
def letter(answer: str, meta: dict[str, Any]) -> float:
    """A single letter (meta: target): "b", "B.", "It starts with b", "The first letter is 'b'" all pass."""
    target = str(meta["target"]).lower()
    s = clean(answer)
    if s == target:
        return 1.0
    tokens = re.findall(r"[a-z0-9]+", s)
    return 1.0 if tokens and tokens[-1] == target else 0.0


def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    if tp == 0:
        return 0.0
    p, r = tp / n_pred, tp / n_gold
    return 2 * p * r / (p + r)


@CHECKERS.register("list_exact")
def list_exact(answer: str, meta: dict[str, Any]) -> float:
    """A known set of items (meta: items), order-free; F1 where duplicates and wrong items count against precision."""
    gold = [str(g).lower() for g in meta["items"]]
    pred = []
    for item in split_items(clean(answer)):
        n = to_number(item)
        pred.append(str(n) if n is not None else item)
    return _f1(len(set(pred) & set(gold)), len(pred), len(gold))


@CHECKERS.register("list_any")
def list_any(answer: str, meta: dict[str, Any]) -> float:
    """Any ``n`` distinct members of ``valid`` (meta: valid, n): plurals accepted, duplicates and invalid items and
    extra items lower the score: min(distinct valid, n) / max(n, items given)."""
    valid = {v.lower() for v in meta["valid"]}
    n = int(meta["n"])
    items = split_items(clean(answer))
    good = {m for m in (singular_in(i, valid) for i in items) if m is not None}
    return min(len(good), n) / max(n, len(items))


@CHECKERS.register("summary")
def summary(answer: str, meta: dict[str, Any]) -> float:
    """A short restatement (meta: required, vocab, max_words): F1 of the required words mentioned against other
    vocabulary words mentioned (actions that did not happen, other people), halved when not shorter than max_words."""
    s = clean(answer)
    required = [r.lower() for r in meta["required"]]
    found = sum(mentions(s, r) for r in required)
    extra = sum(mentions(s, w) for w in _vocab(meta) - set(required))
    score = _f1(found, found + extra, len(required))
    return score if len(words(s)) <= int(meta["max_words"]) else score / 2


@CHECKERS.register("sentence")
def sentence(answer: str, meta: dict[str, Any]) -> float:
    """A sentence that must contain one form of each required group (meta: required = [[forms...], ...],
    max_words). 0.0 when a group is missing; 0.5 when all are there but it is not a short sentence."""
    s = clean(answer)
    if not all(any(mentions(s, f) for f in group) for group in meta["required"]):
        return 0.0
    n = len(words(s))
    return 1.0 if 3 <= n <= int(meta["max_words"]) else 0.5
