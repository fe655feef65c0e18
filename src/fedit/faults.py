"""Fault injection, a documented testing feature: make chosen clients misbehave in chosen rounds.

A fault is written `KIND@ROUND:CLIENT[=VALUE]` (`run.faults` in the config, `--fault` on the command line, repeatable);
ROUND (1-based) and CLIENT may be `*` for every round or every client. Kinds:

    nan       the update carries a NaN (one element of its first tensor)
    inf       the update carries +Inf (one element of its first tensor)
    crash     the client raises an exception before training (not a fedit error: the catch-all path)
    hang      the client never replies (Flower: the node holds the message past its deadline)
    slow=S    the client replies after an extra S seconds
    lie[=N]   the update claims N examples (default 10**9)
    shape     the update's first tensor has one row too many
    keys      the update lacks one adapter tensor

Faults act on the client side, after (nan, inf, lie, shape, keys) or before (crash, hang, slow) local training, so
they exercise exactly the checks a real misbehaving participant meets: the server's per-update validation, the
engines' per-client failure handling, and the Flower deadlines. The simulator is in-process and sequential: a
`hang` there is recorded at once as a client that did not reply, and `slow` sleeps before training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedit.errors import ConfigError

if TYPE_CHECKING:
    from fedit.types import ClientUpdate

KINDS = ("nan", "inf", "crash", "hang", "slow", "lie", "shape", "keys")
_WITH_VALUE = {"slow": "seconds", "lie": "examples"}
_SPEC = re.compile(r"^(?P<kind>[a-z]+)@(?P<round>\*|\d+):(?P<client>\*|\d+)(?:=(?P<value>[^=\s]+))?$")
GRAMMAR = "KIND@ROUND:CLIENT[=VALUE], e.g. nan@2:1, crash@1:0, hang@1:*, slow@1:3=5, lie@2:1"
DEFAULT_LIE = 10**9


class InjectedFault(RuntimeError):
    """Raised by a `crash` fault (deliberately not a FeditError: it takes the path an unexpected crash takes)."""


@dataclass(frozen=True)
class Fault:
    kind: str
    round: int | None  # None = every round
    client: int | None  # None = every client
    value: float | None = None
    spec: str = ""

    def matches(self, round_idx: int, client_id: int) -> bool:
        return (self.round is None or self.round == round_idx) and (self.client is None or self.client == client_id)


def parse_fault(spec: str, where: str = "run.faults") -> Fault:
    """One fault from its text form; ConfigError naming the spec and the grammar otherwise."""
    text = spec.strip() if isinstance(spec, str) else spec
    m = _SPEC.match(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"{where}: got {spec!r}, expected {GRAMMAR}")
    kind = m["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown fault kind {kind!r} in {spec!r}; expected one of: {', '.join(KINDS)}")
    rnd = None if m["round"] == "*" else int(m["round"])
    if rnd is not None and rnd < 1:
        raise ConfigError(f"{where}: {spec!r}: rounds count from 1")
    value: float | None = None
    if m["value"] is not None:
        if kind not in _WITH_VALUE:
            raise ConfigError(f"{where}: {spec!r}: fault {kind!r} takes no value")
        try:
            value = float(m["value"])
        except ValueError:
            raise ConfigError(f"{where}: {spec!r}: expected a number of {_WITH_VALUE[kind]} after '='") from None
        if not (value >= 0 and value < float("inf")):
            raise ConfigError(f"{where}: {spec!r}: expected a finite number >= 0 of {_WITH_VALUE[kind]}")
        if kind == "lie" and value != int(value):
            raise ConfigError(f"{where}: {spec!r}: expected a whole number of examples")
    elif kind == "slow":
        raise ConfigError(f"{where}: {spec!r}: slow needs the seconds to wait, e.g. slow@1:3=5")
    return Fault(kind, rnd, None if m["client"] == "*" else int(m["client"]), value, text)


def parse_faults(specs: Iterable[str], where: str = "run.faults") -> list[Fault]:
    return [parse_fault(s, where) for s in specs]


class FaultPlan:
    """The faults of one run, asked per (round, client) by whoever trains the client."""

    def __init__(self, specs: Sequence[str] | Sequence[Fault] = ()) -> None:
        self.faults = [f if isinstance(f, Fault) else parse_fault(f) for f in specs]

    def __bool__(self) -> bool:
        return bool(self.faults)

    def kinds(self, round_idx: int, client_id: int) -> dict[str, Fault]:
        return {f.kind: f for f in self.faults if f.matches(round_idx, client_id)}

    def hangs(self, round_idx: int, client_id: int) -> bool:
        return "hang" in self.kinds(round_idx, client_id)

    def before_training(self, round_idx: int, client_id: int) -> None:
        """`slow` waits, `crash` raises; called right before the client trains."""
        found = self.kinds(round_idx, client_id)
        if "slow" in found:
            time.sleep(float(found["slow"].value or 0.0))
        if "crash" in found:
            raise InjectedFault(f"injected fault {found['crash'].spec}: client {client_id} crashed")

    def after_training(self, update: ClientUpdate, round_idx: int) -> ClientUpdate:
        """The update as a faulty client would send it (a new object; the input is not modified)."""
        import torch

        from fedit.types import ClientUpdate

        found = self.kinds(round_idx, update.client_id)
        if not found.keys() & {"nan", "inf", "lie", "shape", "keys"}:
            return update
        params = dict(update.params)
        first = next(iter(params))
        if "nan" in found or "inf" in found:
            t = params[first].clone()
            t.view(-1)[0] = float("nan") if "nan" in found else float("inf")
            params[first] = t
        if "shape" in found:
            t = params[first]
            params[first] = torch.cat([t, t[:1]], dim=0)
        if "keys" in found:
            del params[next(reversed(params))]
        n = update.num_examples
        if "lie" in found:
            n = int(found["lie"].value) if found["lie"].value is not None else DEFAULT_LIE
        return ClientUpdate(update.client_id, params, n, dict(update.metrics), dict(update.extras))
