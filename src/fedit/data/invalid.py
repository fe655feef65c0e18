"""Bad rows: `RowError` (one row that cannot become a Record) and `InvalidRows` (what `on_invalid="skip"` dropped).

A row error is local to one row (a missing or mistyped field, a malformed JSON Lines line, an over-long CSV row);
with ``data.on_invalid = "skip"`` such rows are dropped and counted per reason. Errors about a whole file (not
UTF-8, a truncated JSON list, not Parquet, no rows, a bad CSV header) are plain `DataError`s and always stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedit.errors import DataError

__all__ = ["ON_INVALID", "InvalidRows", "RowError", "check_on_invalid"]

ON_INVALID = ("error", "skip")


class RowError(DataError):
    """One row is invalid. `where` is its location ("data.jsonl line 7"), `reason` the kind of problem shared by
    every row with the same fault (what skipped rows are counted by); the message is `where: text`."""

    def __init__(self, where: str, text: str, reason: str | None = None) -> None:
        super().__init__(f"{where}: {text}")
        self.where = where
        self.reason = reason or text


def check_on_invalid(value: str) -> str:
    if value not in ON_INVALID:
        raise DataError(f"on_invalid: got {value!r}, expected 'error' or 'skip'")
    return value


@dataclass
class InvalidRows:
    """Rows dropped by ``on_invalid="skip"``: a count per reason and the first `keep` locations of each."""

    keep: int = 3
    counts: dict[str, int] = field(default_factory=dict)
    locations: dict[str, list[str]] = field(default_factory=dict)

    def add(self, error: RowError) -> None:
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        first = self.locations.setdefault(error.reason, [])
        if len(first) < self.keep:
            first.append(error.where)

    def merge(self, other: InvalidRows) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            first = self.locations.setdefault(reason, [])
            first.extend(other.locations[reason][: max(0, self.keep - len(first))])

    def first(self) -> str:
        """The location of the first dropped row of the most frequent reason ("" when nothing was dropped)."""
        by_count = self._by_count()
        return self.locations[by_count[0][0]][0] if by_count else ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """{"skipped": N, "reasons": {reason: {"count": n, "first": [locations]}}}, most frequent reason first."""
        reasons = {r: {"count": n, "first": list(self.locations[r])} for r, n in self._by_count()}
        return {"skipped": self.total, "reasons": reasons}

    def lines(self) -> list[str]:
        """A summary line, then one line per reason with its count and first locations."""
        if not self.total:
            return ["skipped no invalid rows"]
        out = [f"skipped {self.total} invalid row{'s' if self.total != 1 else ''} (data.on_invalid = 'skip'):"]
        for reason, n in self._by_count():
            more = ", ..." if n > len(self.locations[reason]) else ""
            out.append(f"  {n} x {reason}: {', '.join(self.locations[reason])}{more}")
        return out

    def summary(self) -> str:
        """One line: the count per reason."""
        return "; ".join(f"{n} x {reason}" for reason, n in self._by_count())

    def _by_count(self) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
