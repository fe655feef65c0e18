"""What the length limit (`data.cutoff_len`) does to the data: per group (a client, a category) how many examples were
kept whole, truncated (kept, but cut at the cutoff) or dropped (no trainable token left after the cutoff), and the
tokens that remain. `tokenize_records` fills a `LengthCounts` as it tokenizes, so training, the run summary, the
planner and `fedit data inspect` all count with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

WARN_SHARE = 0.05  # warn when more than this share of a client's (or of all) examples is truncated or dropped


@dataclass
class LengthCounts:
    """Counts for one group of records under one cutoff. `truncated` and `dropped` are disjoint: an example is
    kept whole, kept truncated, or dropped; `examples = kept + dropped`."""

    examples: int = 0  # records given
    kept: int = 0  # examples that train (whole or truncated)
    truncated: int = 0  # kept, but their full tokenization was longer than the cutoff
    dropped: int = 0  # left with no trainable token after the cutoff (or none at all): not trained on
    tokens: int = 0  # tokens of the kept examples, after the cutoff
    label_tokens: int = 0  # of which carry a label (loss is taken on them)
    longest: int = 0  # longest kept example, after the cutoff (tokens)
    longest_full: int = 0  # longest example before the cutoff (tokens)

    def add(self, full_len: int, kept_len: int, kept_labels: int, cutoff_len: int) -> None:
        """Count one example: its full token length, and (after the cutoff) its length and label tokens."""
        self.examples += 1
        self.longest_full = max(self.longest_full, full_len)
        if kept_labels == 0:
            self.dropped += 1
            return
        self.kept += 1
        self.truncated += full_len > cutoff_len
        self.tokens += kept_len
        self.label_tokens += kept_labels
        self.longest = max(self.longest, kept_len)

    def __iadd__(self, other: LengthCounts) -> LengthCounts:
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, max(a, b) if f.name.startswith("longest") else a + b)
        return self

    @property
    def affected(self) -> int:
        """Examples the cutoff changed: truncated or dropped."""
        return self.truncated + self.dropped

    @property
    def affected_share(self) -> float:
        return self.affected / self.examples if self.examples else 0.0

    @property
    def mean_tokens(self) -> float:
        """Mean tokens of a kept example (after the cutoff)."""
        return self.tokens / self.kept if self.kept else 0.0

    @property
    def mean_label_tokens(self) -> float:
        return self.label_tokens / self.kept if self.kept else 0.0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LengthCounts:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in known})


@dataclass
class LengthReport:
    """Counts per group (client ids as strings, or category names) under one cutoff, with their total."""

    cutoff_len: int
    groups: dict[str, LengthCounts]
    kind: str = "client"  # what a group is: "client" or "category"

    @property
    def total(self) -> LengthCounts:
        out = LengthCounts()
        for c in self.groups.values():
            out += c
        return out

    def flagged(self, share: float = WARN_SHARE) -> list[str]:
        """Groups with more than `share` of their examples truncated or dropped."""
        return [name for name, c in self.groups.items() if c.affected_share > share]

    def warning(self, share: float = WARN_SHARE) -> str | None:
        """One `WARNING: ...` line when more than `share` of a group's or of all examples were truncated or dropped,
        naming the groups and suggesting --cutoff-len; None otherwise."""
        t = self.total
        flagged = self.flagged(share)
        if not flagged and t.affected_share <= share:
            return None
        shown = ", ".join(flagged[:12]) + (f" and {len(flagged) - 12} more" if len(flagged) > 12 else "")
        where = f"; over {share:.0%} in {self.kind} {shown}" if flagged else ""
        return (f"WARNING: data.cutoff_len={self.cutoff_len} truncates {t.truncated} and drops {t.dropped} of "
                f"{t.examples} examples ({t.affected_share:.1%}){where}. The longest example has {t.longest_full} "
                f"tokens: raise the limit with --cutoff-len (e.g. --cutoff-len {suggest_cutoff(t.longest_full)}) "
                "or shorten the data")

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff_len": self.cutoff_len, "kind": self.kind, "total": self.total.to_dict(),
                "warn_share": WARN_SHARE, "flagged": self.flagged(),
                "groups": {k: v.to_dict() for k, v in self.groups.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LengthReport:
        return cls(int(d["cutoff_len"]), {str(k): LengthCounts.from_dict(v) for k, v in d["groups"].items()},
                   str(d.get("kind", "client")))


def suggest_cutoff(longest: int) -> int:
    """A cutoff that keeps an example of `longest` tokens whole: rounded up to a multiple of 64."""
    return max(64, -(-longest // 64) * 64)
