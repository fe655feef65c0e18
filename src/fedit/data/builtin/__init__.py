"""The built-in multi-category instruction suite: seeded generators, a disjoint train/test split, answer checkers.

Every question is answerable from its own prompt (copying from a short context) or from a fact in
:mod:`fedit.data.lexicon`, which the shipped tiny base model read during pretraining. The suite is built to be
learnable in a few CPU minutes of federated LoRA: one to three tasks per category, two phrasings per task (more only
where the test split needs the prompts), one-sentence answers, and fact answers that are the pretraining corpus's
own sentence ("The capital of France is Paris.", "The dog says woof."), so tuning teaches the format and the base
supplies the fact. Checkers read only the first sentence of the first line.

Split rule: a prompt (instruction + context) belongs to the test split iff a stable hash of its text says so, so no
prompt can ever appear in both splits, whatever the seed or size.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from fedit.data.builtin.checkers import CHECKERS
from fedit.data.builtin.tasks_context import CONTEXT_TASKS
from fedit.data.builtin.tasks_facts import FACT_TASKS, Sample, Task
from fedit.data.records import Record
from fedit.errors import ConfigError, DataError

__all__ = ["CATEGORIES", "DEFAULT_PER_CATEGORY", "builtin_records", "checker_names", "export_builtin", "score_answer",
           "split_of", "tasks_of"]

CATEGORIES: tuple[str, ...] = ("classification", "closed_qa", "information_extraction", "open_qa", "brainstorming",
                               "summarization", "creative_writing", "general_qa")
_TASKS: dict[str, list[Task]] = {**FACT_TASKS, **CONTEXT_TASKS}
assert set(_TASKS) == set(CATEGORIES)

DEFAULT_PER_CATEGORY = {"train": 300, "test": 20}
_TEST_BUCKETS = 5  # one prompt in five is held out
_PATIENCE = 50  # split-matching draws without a new prompt before a task counts as exhausted and repeats are allowed


def split_of(instruction: str, context: str = "") -> str:
    """ "test" or "train" for a prompt, from a stable hash of its text (independent of seed and category)."""
    digest = hashlib.sha256(f"{instruction}\n{context}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % _TEST_BUCKETS == 0 else "train"


def tasks_of(category: str) -> list[str]:
    """Task names within a category (each record's meta["task"] is one of them)."""
    return [t.name for t in _TASKS[category]]


def _draw(task: Task, rng: random.Random, split: str) -> Sample:
    """The task's next sample whose prompt falls in ``split``."""
    for _ in range(1000):
        sample = task.make(rng)
        if split_of(sample[0], sample[1]) == split:
            return sample
    raise RuntimeError(f"builtin task {task.name!r} produced no {split} prompt in 1000 draws")  # a generator bug


def _category_records(category: str, split: str, n: int, seed: int) -> list[Record]:
    """``n`` records cycling through the category's tasks; new prompts while a task still has them, then repeats."""
    rng = random.Random(f"fedit-builtin/{category}/{split}/{seed}")
    tasks = _TASKS[category]
    seen: set[tuple[str, str]] = set()
    exhausted: set[str] = set()
    out: list[Record] = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        sample, misses = _draw(task, rng, split), 0
        while (sample[0], sample[1]) in seen and task.name not in exhausted:
            misses += 1
            if misses >= _PATIENCE:  # the task's prompts for this split are (nearly) all used: allow repeats
                exhausted.add(task.name)
                break
            sample = _draw(task, rng, split)
        inst, ctx, resp, meta = sample
        seen.add((inst, ctx))
        out.append(Record(instruction=inst, response=resp, context=ctx, category=category,
                          meta={**meta, "suite": "builtin", "split": split}))
    return out


def builtin_records(split: str = "train", per_category: int | None = None, seed: int = 0) -> list[Record]:
    """The suite's records for ``split`` ("train" or "test"), ``per_category`` per category (default: train 300,
    test 20), grouped by category in CATEGORIES order; deterministic in (split, per_category, seed)."""
    if split not in DEFAULT_PER_CATEGORY:
        raise ConfigError(f"builtin split {split!r} is not known; expected 'train' or 'test'")
    n = DEFAULT_PER_CATEGORY[split] if per_category is None else per_category
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"builtin per_category must be a non-negative integer, got {per_category!r}")
    return [r for c in CATEGORIES for r in _category_records(c, split, n, seed)]


def checker_names() -> list[str]:
    """Names of the answer checkers (a record's meta["checker"] is one of them)."""
    return CHECKERS.names()


def score_answer(record: Record, answer: str) -> float:
    """Score a generated ``answer`` to a built-in record in [0, 1] with the checker its meta names.

    Robust to case, surrounding whitespace and quotes, trailing punctuation, lead-ins such as "The answer is", and
    text after the first line (a model without an EOS token keeps going).
    """
    name = record.meta.get("checker")
    if name is None:
        raise DataError(f"record has no meta['checker'] (category {record.category!r}, task "
                        f"{record.meta.get('task')!r}); expected a record from the builtin suite")
    try:
        return float(CHECKERS.get(name)(answer, record.meta))
    except KeyError as e:
        raise DataError(f"builtin record (task {record.meta.get('task')!r}) lacks meta field {e}; "
                        f"was it edited after export?") from None


def export_builtin(path: str | Path, split: str = "both", per_category: int | None = None, seed: int = 0) -> int:
    """Write the suite as JSONL (one Record.to_dict() per line, meta["split"] and meta["suite"] set); returns the
    number of records written."""
    if split not in ("both", *DEFAULT_PER_CATEGORY):
        raise ConfigError(f"builtin export split {split!r} is not known; expected 'train', 'test' or 'both'")
    splits = list(DEFAULT_PER_CATEGORY) if split == "both" else [split]
    records = [r for s in splits for r in builtin_records(s, per_category, seed)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(records)
