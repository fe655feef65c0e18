"""Tests for the built-in instruction suite: determinism, split hygiene, coverage and the answer checkers."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from fedit.data import lexicon as lx
from fedit.data.builtin import (
    CATEGORIES,
    DEFAULT_PER_CATEGORY,
    builtin_records,
    checker_names,
    export_builtin,
    score_answer,
    split_of,
    tasks_of,
)
from fedit.data.records import Record
from fedit.errors import ConfigError, DataError
from fedit.tools.tiny_corpus import s_fact, s_word


@pytest.fixture(scope="module")
def train() -> list[Record]:
    return builtin_records("train")


@pytest.fixture(scope="module")
def test() -> list[Record]:
    return builtin_records("test")


def _prompt(r: Record) -> tuple[str, str]:
    return r.instruction, r.context


def _first(records: list[Record], task: str, pred=lambda r: True) -> Record:
    return next(r for r in records if r.meta["task"] == task and pred(r))


def test_default_sizes_and_categories(train, test):
    assert len(CATEGORIES) >= 8 and len(set(CATEGORIES)) == len(CATEGORIES)
    for records, split in ((train, "train"), (test, "test")):
        counts = Counter(r.category for r in records)
        assert counts == {c: DEFAULT_PER_CATEGORY[split] for c in CATEGORIES}
        assert all(r.meta["split"] == split and r.meta["suite"] == "builtin" for r in records)
        # records are grouped by category in CATEGORIES order
        order = [r.category for r in records]
        assert sorted(order, key=CATEGORIES.index) == order


def test_deterministic_and_seed_dependent():
    a = builtin_records("train", per_category=15, seed=3)
    b = builtin_records("train", per_category=15, seed=3)
    c = builtin_records("train", per_category=15, seed=4)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [_prompt(r) for r in a] != [_prompt(r) for r in c]
    for cat in CATEGORIES:  # every category's generator depends on the seed, not just some
        assert [_prompt(r) for r in a if r.category == cat] != [_prompt(r) for r in c if r.category == cat]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_train_and_test_prompts_disjoint(seed):
    tr = {_prompt(r) for r in builtin_records("train", per_category=120, seed=seed)}
    te = {_prompt(r) for r in builtin_records("test", per_category=40, seed=seed)}
    assert tr and te and not tr & te
    assert all(split_of(*p) == "train" for p in tr) and all(split_of(*p) == "test" for p in te)


def test_every_task_of_every_category_in_both_splits(train, test):
    for records in (train, test):
        covered = {(r.category, r.meta["task"]) for r in records}
        assert covered == {(c, t) for c in CATEGORIES for t in tasks_of(c)}


def test_test_prompts_distinct_and_train_mostly_distinct(train, test):
    for cat in CATEGORIES:
        te = [_prompt(r) for r in test if r.category == cat]
        tr = [_prompt(r) for r in train if r.category == cat]
        assert len(set(te)) == len(te)
        assert len(set(tr)) >= 60  # the smallest prompt space (brainstorming) repeats its train prompts


def _template(text: str) -> str:
    """A prompt with its lexicon words, numbers and articles masked: what is left is the category's format."""
    vocab = {w.lower() for ws in lx.KINDS.values() for w in ws} | {w.lower() for w in lx.NAMES + lx.CITIES + lx.JOBS}
    vocab |= set(lx.COLOR_OF) | set(lx.SOUND_OF.values()) | set(lx.SOUND_OF) | set(lx.HOME_OF)
    vocab |= set(lx.OPPOSITE_OF) | set(lx.OPPOSITE_OF.values()) | set(lx.PAST_OF.values()) | set(lx.NUMBER_WORDS)
    vocab |= {c.lower() for c in lx.CAPITAL_OF} | set(lx.KINDS) | {"a", "an", "the"}
    vocab |= {v + s for v in list(vocab) for s in ("s", "es")} | {v[:-1] + "ies" for v in vocab}
    vocab |= {"mice", "wolves", "knives", "cherries", "berries", "cities", "jobs"}
    return re.sub(r"[A-Za-z0-9]+", lambda m: "X" if m[0].lower() in vocab or m[0].isdigit() else m[0], text)


def test_categories_differ_in_format(train):
    # a client holding some categories never sees another category's prompt formats
    templates = {c: {_template(r.instruction) + ("|ctx" if r.context else "") for r in train if r.category == c}
                 for c in CATEGORIES}
    for i, c in enumerate(CATEGORIES):
        for o in CATEGORIES[i + 1:]:
            assert not templates[c] & templates[o], (c, o, templates[c] & templates[o])


def test_references_score_one_and_are_short(train, test):
    for r in train + test:
        assert score_answer(r, r.response) == 1.0, r
        assert 1 <= len(r.response.split()) <= 8, r.response
        json.dumps(r.meta)  # JSON-serialisable
        assert r.meta["checker"] in checker_names()


def test_formatting_noise_is_tolerated(test):
    for r in test:
        for noisy in (f"  {r.response.upper()}  ", f"{r.response.rstrip('.')}.", f"{r.response}\nBlah blah 99 zz"):
            assert score_answer(r, noisy) == 1.0, (r.instruction, noisy)


def _rec(instruction: str, response: str, meta: dict, category: str) -> Record:
    return Record(instruction=instruction, response=response, category=category, meta=meta)


def test_open_qa_checker(train):
    cap = _rec("What is the capital of France?", "The capital of France is Paris.",
               {"task": "capital", "checker": "choice", "accept": ["Paris"], "vocab": "cities"}, "open_qa")
    for good in ("Paris.", "paris", "The answer is Paris.", "Paris is the capital of France.", "Paris\nRome",
                 "The capital of France is Paris. The capital of Italy is Rome."):
        assert score_answer(cap, good) == 1.0, good
    for bad in ("Rome", "Paris or Rome", "", "France", "The capital of Italy is Rome. Paris"):
        assert score_answer(cap, bad) == 0.0, bad
    color = _first(train, "color")
    c = color.meta["accept"][0]
    assert score_answer(color, f"It is {c}.") == 1.0
    assert score_answer(color, next(x for x in lx.COLORS if x != c)) == 0.0
    sound = _first(train, "sound")
    s = sound.meta["accept"][0]
    assert score_answer(sound, s) == 1.0 and score_answer(sound, f"It goes {s}.") == 1.0
    assert score_answer(sound, next(x for x in lx.SOUND_OF.values() if x != s)) == 0.0


def test_fact_answers_are_sentences_of_the_pretraining_corpus(test):
    # the design: a fact answer is the very sentence the tiny base read in pretraining, so tuning only has to teach
    # the question -> corpus-sentence mapping, and the fact comes from the base
    rng = random.Random(0)
    corpus = {s_fact(rng) for _ in range(30_000)} | {s_word(rng) for _ in range(30_000)}
    for r in test:
        if r.meta["task"] in ("capital", "color", "sound", "first_letter", "length"):
            assert r.response in corpus, r.response


def test_classification_checker(train):
    r = _first(train, "kind")
    kind, other = r.meta["accept"][0], r.meta["reject"][0]
    assert kind in r.instruction and other in r.instruction
    assert score_answer(r, f"It is {'an' if kind[0] in 'aeiou' else 'a'} {kind}.") == 1.0
    assert score_answer(r, other) == 0.0
    assert score_answer(r, f"{kind} or {other}") == 0.0
    # words of two kinds ("orange": fruit and color) have no single answer and are never asked
    ambiguous = [w for w in lx.KINDS["fruit"] if w in lx.KINDS["color"]]
    assert ambiguous
    kinds = [x for x in train if x.meta["task"] == "kind"]
    assert not any(re.search(rf"\b{w}\b", x.instruction.lower()) for x in kinds for w in ambiguous)


def test_closed_qa_checker(train):
    r = _first(train, "where")
    city = r.meta["accept"][0]
    assert r.context.count(" lives in ") == 1 and city in r.context  # one person, answer copied from the context
    other = next(c for c in lx.CITIES if c != city)
    assert score_answer(r, f"She lives in {city}.") == 1.0
    assert score_answer(r, other) == 0.0
    job = _first(train, "job")
    j = job.meta["accept"][0]
    assert score_answer(job, f"a {j}") == 1.0
    assert score_answer(job, "pilot" if j != "pilot" else "nurse") == 0.0
    pet = _first(train, "pet")
    assert score_answer(pet, f"It has a {pet.meta['accept'][0]}.") == 1.0
    assert score_answer(pet, "owl") == 0.0


def test_information_extraction_checker(train):
    r = _first(train, "names")
    a, b = r.meta["items"]
    assert a in r.context and b in r.context
    assert score_answer(r, f"{b} and {a}") == 1.0
    assert score_answer(r, f"The names are {a} and {b}.") == 1.0
    assert score_answer(r, a) == pytest.approx(2 / 3)  # recall 1/2
    assert score_answer(r, f"{a}, {b}, {a}") == pytest.approx(0.8)  # duplicate lowers precision
    assert score_answer(r, "Nobody") == 0.0


def test_brainstorming_checker():
    r = next(r for r in builtin_records("train", per_category=200)
             if r.meta["task"] == "members" and r.meta["n"] == 3 and "fruits" in r.instruction)
    assert score_answer(r, "apple, pear, plum") == 1.0
    assert score_answer(r, "Apples, pears and plums.") == 1.0
    assert score_answer(r, "grape, lemon, fig") == 1.0  # any valid members, not just the reference
    assert score_answer(r, "apple, apple, pear") == pytest.approx(2 / 3)
    assert score_answer(r, "apple, pear, hammer") == pytest.approx(2 / 3)
    assert score_answer(r, "apple, pear") == pytest.approx(2 / 3)
    assert score_answer(r, "apple, pear, plum, fig") == pytest.approx(3 / 4)
    assert score_answer(r, "apple, pear, plum. Hammer, saw") == 1.0  # only the first sentence counts
    assert score_answer(r, "hammer, saw, drill") == 0.0


def test_summarization_checker(train):
    r = _first(train, "actions")
    name, *past = r.meta["required"]
    assert len(past) == 2
    assert score_answer(r, f"{name} {past[0]} and {past[1]}") == 1.0
    partial = score_answer(r, f"{name} {past[0]}.")
    assert 0.0 < partial < 1.0
    wrong_verb = next(v for v in lx.PAST_OF.values() if v not in past)
    assert score_answer(r, f"{name} {past[0]}, {past[1]} and {wrong_verb}.") < 1.0
    assert score_answer(r, r.context.replace(". ", " and ")) == 0.5  # all there, but not shorter than the text
    assert score_answer(r, "Someone did things.") == 0.0
    p = _first(train, "profile")
    name, job, city = p.meta["required"]
    assert score_answer(p, f"{name} works as {'an' if job[0] in 'aeiou' else 'a'} {job} in {city}.") == 1.0


def test_creative_writing_checker(train):
    r = _first(train, "colored_sentence")
    (subject, plural), (color,) = r.meta["required"]
    assert score_answer(r, f"A {color} {subject} sat on the mat.") == 1.0
    assert score_answer(r, f"Two {plural} are {color}.") == 1.0
    assert score_answer(r, f"The {subject} sat on the mat.") == 0.0  # missing the colour
    assert score_answer(r, f"The {color} sky.") == 0.0  # missing the subject
    long = f"Once upon a time the {subject} was very {color} and it walked a very long way home."
    assert score_answer(r, long) == 0.5


def test_general_qa_checker(train):
    letter = _first(train, "first_letter")
    word = letter.instruction.rstrip("?").split()[-1]
    t = letter.meta["target"]
    assert word[0] == t
    assert score_answer(letter, f"The first letter is {t.upper()}.") == 1.0
    assert score_answer(letter, "q" if t != "q" else "z") == 0.0
    length = _first(train, "length")
    n = length.meta["target"]
    word = length.instruction.split()[-1 if "have" not in length.instruction else -2].rstrip("?")
    assert len(word) == n
    for good in (str(n), lx.NUMBER_WORDS[n], f"It has {lx.NUMBER_WORDS[n]} letters.", f"The word {word} has {n}"):
        assert score_answer(length, good) == 1.0, good
    assert score_answer(length, str(n + 1)) == 0.0
    assert score_answer(length, f"{n + 1}. {n}") == 0.0  # only the first sentence counts


def test_score_answer_rejects_foreign_records():
    with pytest.raises(DataError, match="checker"):
        score_answer(Record(instruction="Hi", response="Hello"), "Hello")
    with pytest.raises(DataError, match="accept"):
        score_answer(Record(instruction="Hi", response="x", meta={"checker": "choice"}), "x")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        builtin_records("validation")
    with pytest.raises(ConfigError, match="per_category"):
        builtin_records("train", per_category=-1)
    assert builtin_records("test", per_category=0) == []


def test_export_roundtrip(tmp_path):
    out = tmp_path / "sub" / "builtin.jsonl"
    n = export_builtin(out, split="both", per_category=5)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) == 2 * 5 * len(CATEGORIES)
    records = [Record.from_dict(json.loads(line)) for line in lines]
    assert Counter(r.meta["split"] for r in records) == {"train": 5 * len(CATEGORIES), "test": 5 * len(CATEGORIES)}
    assert all(score_answer(r, r.response) == 1.0 for r in records)
    assert export_builtin(out, split="test", per_category=2) == 2 * len(CATEGORIES)
    with pytest.raises(ConfigError):
        export_builtin(out, split="dev")
