"""Offline, deterministic pretraining corpus for the shipped tiny base model (plain prose only, no instructions).

Three parts, all shippable: (a) docstrings parsed with ``ast`` from the Python standard library sources (PSF
licence; modules are never imported), (b) generated text that practises general skills (copying, counting,
comparing, arithmetic, spelling, lists) and (c) plain statements of the facts in :mod:`fedit.data.lexicon` plus
short narratives. Nothing is formatted as an instruction/response pair: that skill comes from federated tuning.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from fedit.data import lexicon as lx
from fedit.data.lexicon import plural

# Text that would teach the instruction format the suite later tunes for; any document holding one is dropped.
FORBIDDEN_MARKERS = ("### instruction", "### response", "### input", "input:", "instruction:", "response:",
                     "question:", "answer:", "<|user|>", "<|assistant|>", "<|system|>", "q:", "a:")

# Stdlib folders that are tests, vendored code or GUI demos: noisy text, little prose.
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "turtledemo", "lib2to3", "__pycache__", "ensurepip",
              "pydoc_data", "tkinter", "dist-packages", "config-3.11-x86_64-linux-gnu"}

WORDS = sorted({w for ws in lx.KINDS.values() for w in ws} | set(lx.COLOR_OF) | set(lx.SOUND_OF) | set(lx.HOME_OF)
               | set(lx.OPPOSITE_OF) | set(lx.OPPOSITE_OF.values()) | set(lx.JOBS) | set(lx.PAST_OF))


def has_forbidden_marker(text: str) -> bool:
    """True when ``text`` contains instruction/chat formatting that must stay out of pretraining."""
    low = text.lower()
    if any(m in low for m in FORBIDDEN_MARKERS if len(m) > 2):
        return True
    return bool(re.search(r"(^|\n)\s*[qa]:", low))


# ----------------------------------------------------------------------------------------------- (a) docstrings
def stdlib_dir() -> Path:
    """The running interpreter's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _docstrings_of(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 40:
                yield doc


def stdlib_docstrings(root: Path | None = None, max_files: int | None = None) -> list[str]:
    """Docstrings (>= 40 chars, deduplicated, marker-free) of stdlib .py files, in sorted path order."""
    root = root or stdlib_dir()
    files = sorted(p for p in root.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(root).parts[:-1])))
    if max_files is not None:
        files = files[:max_files]
    seen: set[str] = set()
    docs: list[str] = []
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for doc in _docstrings_of(source):
            if doc in seen or has_forbidden_marker(doc) or not doc.isascii():
                continue
            seen.add(doc)
            docs.append(doc)
    return docs


# ------------------------------------------------------------------------------------------ (b) general skills
def _num(rng: random.Random, n: int) -> str:
    """A number as a word (<= 20) or digits, so both spellings are seen."""
    return lx.NUMBER_WORDS[n] if n < len(lx.NUMBER_WORDS) and rng.random() < 0.5 else str(n)


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word




def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def s_copy(rng: random.Random) -> str:
    pool = [str(d) for d in range(10)] if rng.random() < 0.5 else rng.sample(WORDS, 12)
    seq = " ".join(rng.choice(pool) for _ in range(rng.randint(2, 7)))
    return rng.choice([f"{seq}. Once more: {seq}.", f"The sequence {seq}, repeated, is {seq}.",
                       f"Say it twice: {seq}, {seq}.", f"{seq} ... and again {seq}."])


def s_count(rng: random.Random) -> str:
    start, n = rng.randint(0, 12), rng.randint(3, 8)
    words = rng.random() < 0.5 and start + n < len(lx.NUMBER_WORDS)
    nums = [lx.NUMBER_WORDS[i] if words else str(i) for i in range(start, start + n)]
    if rng.random() < 0.3:
        nums = nums[::-1]
        return f"Counting down: {', '.join(nums)}."
    if rng.random() < 0.5:
        thing = rng.choice(lx.KINDS["fruit"] + lx.KINDS["animal"])
        k = rng.randint(1, 9)
        return f"Here {'is' if k == 1 else 'are'} {lx.NUMBER_WORDS[k]} {thing if k == 1 else plural(thing)}: " \
               f"{', '.join([thing] * k)}. That makes {lx.NUMBER_WORDS[k]}."
    return f"Counting up: {', '.join(nums)}."


def s_compare(rng: random.Random) -> str:
    a, b = rng.sample(range(0, 21 if rng.random() < 0.6 else 100), 2)
    big, small = max(a, b), min(a, b)
    x, y = _num(rng, a), _num(rng, b)
    return rng.choice([f"{_num(rng, big).capitalize()} is more than {_num(rng, small)}.",
                       f"{small} is less than {big}.", f"{a} {'>' if a > b else '<'} {b}.",
                       f"Of {x} and {y}, the larger is {_num(rng, big)} and the smaller is {_num(rng, small)}.",
                       f"{_num(rng, small).capitalize()} is smaller than {_num(rng, big)}.",
                       f"{a} and {a} are equal."])


def s_arith(rng: random.Random) -> str:
    op = rng.choice("+-*")
    hi = 20 if op != "*" else 10
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    if op == "-" and b > a:
        a, b = b, a
    r = a + b if op == "+" else a - b if op == "-" else a * b
    name = {"+": "plus", "-": "minus", "*": "times"}[op]
    if rng.random() < 0.5 or r >= len(lx.NUMBER_WORDS):
        return f"{a} {op} {b} = {r}."
    return f"{lx.NUMBER_WORDS[a].capitalize()} {name} {lx.NUMBER_WORDS[b]} is {lx.NUMBER_WORDS[r]}."


def s_word(rng: random.Random) -> str:
    w = rng.choice(WORDS)
    return rng.choice([f"The word {w} is spelled {'-'.join(w)}.", f"The first letter of {w} is {w[0]}.",
                       f"The last letter of {w} is {w[-1]}.", f"The word {w} has {lx.NUMBER_WORDS[len(w)]} letters.",
                       f"{w.capitalize()} spelled backwards is {w[::-1]}.", f"{w} in capital letters is {w.upper()}.",
                       f"{' '.join(w)} spells {w}."])


def s_list(rng: random.Random) -> str:
    kind = rng.choice(sorted(lx.KINDS))
    items = rng.sample(lx.KINDS[kind], rng.randint(2, 5))
    nums = rng.sample(range(50), rng.randint(3, 6))
    return rng.choice([f"Some {plural(kind)} are {_join(items)}.",
                       f"{_join(items).capitalize()} are all {plural(kind)}.",
                       f"In alphabetical order: {', '.join(sorted(items))}.",
                       f"The numbers {' '.join(map(str, nums))} in order are {' '.join(map(str, sorted(nums)))}.",
                       f"The list {', '.join(items)} has {lx.NUMBER_WORDS[len(items)]} items.",
                       f"The first item of {', '.join(items)} is {items[0]} and the last is {items[-1]}.",
                       f"A list of {plural(kind)}:\n" + "\n".join(f"- {i}" for i in items)])


SKILLS: list[Callable[[random.Random], str]] = [s_copy, s_count, s_compare, s_arith, s_word, s_list]


# ------------------------------------------------------------------------------------------------ (c) lexicon
def s_fact(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        thing, color = rng.choice(sorted(lx.COLOR_OF.items()))
        t = thing if thing in {"snow", "milk", "coal", "sky", "grass", "sun", "blood", "sea", "chocolate"} else None
        subj = f"the {thing}" if t in {"sky", "sun", "sea"} else (thing if t else _a(thing))
        return rng.choice([f"{subj.capitalize()} is {color}.", f"The color of {subj} is {color}.",
                           f"{subj.capitalize()} is usually {color}.", f"Most people know that {subj} is {color}."])
    if kind == 1:
        k = rng.choice(sorted(lx.KINDS))
        w = rng.choice(lx.KINDS[k])
        if k == "color":
            return rng.choice([f"{w.capitalize()} is a color.", f"{w.capitalize()} is one of the colors."])
        return rng.choice([f"{_a(w).capitalize()} is {_a(k)}.", f"{w.capitalize()} is a kind of {k}.",
                           f"The {w} is {_a(k)}."])
    if kind == 2:
        an, snd = rng.choice(sorted(lx.SOUND_OF.items()))
        return rng.choice([f"The {an} says {snd}.", f"{_a(an).capitalize()} says {snd}.",
                           f"The sound a {an} makes is {snd}.", f"When a {an} speaks, it goes {snd}."])
    if kind == 3:
        an, home = rng.choice(sorted(lx.HOME_OF.items()))
        return rng.choice([f"{_a(an).capitalize()} lives in {_a(home)}.", f"The home of a {an} is {_a(home)}.",
                           f"The {an} sleeps in its {home}."])
    if kind == 4:
        w, o = rng.choice(sorted(lx.OPPOSITE_OF.items()))
        if rng.random() < 0.5:
            w, o = o, w
        return rng.choice([f"The opposite of {w} is {o}.", f"{w.capitalize()} is the opposite of {o}.",
                           f"{w.capitalize()} and {o} are opposites."])
    country, city = rng.choice(sorted(lx.CAPITAL_OF.items()))
    return rng.choice([f"The capital of {country} is {city}.", f"{city} is the capital of {country}.",
                       f"{city} is a city in {country}, and it is the capital."])


_PRONOUN = {n: ("She" if n in {"Anna", "Clara", "Emma", "Grace", "Iris", "Kate", "Mia", "Olga", "Rosa", "Tina",
                                "Wendy", "Zoe"} else "He") for n in lx.NAMES}


def s_story(rng: random.Random) -> str:
    name, city, job = rng.choice(lx.NAMES), rng.choice(lx.CITIES), rng.choice(lx.JOBS)
    he = _PRONOUN[name]
    verbs = rng.sample(sorted(lx.PAST_OF), 3)
    friend = rng.choice([n for n in lx.NAMES if n != name])
    food = rng.choice(lx.KINDS["fruit"])
    parts = [rng.choice([f"{name} is {_a(job)} who lives in {city}.", f"{name} lives in {city} and works as {_a(job)}.",
                         f"In {city} there is {_a(job)} called {name}."]),
             f"{he} {lx.PAST_OF[verbs[0]]} in the morning.",
             rng.choice([f"Then {he.lower()} met {friend}.", f"Later {friend} came to visit.",
                         f"{he} {lx.PAST_OF[verbs[1]]} with {friend}."]),
             f"{he} ate {_a(food)}, which was {lx.COLOR_OF.get(food, 'sweet')}.",
             rng.choice([f"In the evening {he.lower()} {lx.PAST_OF[verbs[2]]}.", f"At night {he.lower()} slept well.",
                         f"{name} was happy in {city}."])]
    return " ".join(parts[: rng.randint(3, 5)])


def _document(rng: random.Random, gens: list[Callable[[random.Random], str]], lo: int, hi: int) -> str:
    """A paragraph of lo..hi sentences; one generator per paragraph half the time so patterns repeat."""
    if rng.random() < 0.5:
        g = rng.choice(gens)
        return " ".join(g(rng) for _ in range(rng.randint(lo, hi)))
    return " ".join(rng.choice(gens)(rng) for _ in range(rng.randint(lo, hi)))


def generated_documents(seed: int, n_skill: int, n_fact: int) -> list[str]:
    """Parts (b) and (c): ``n_skill`` skill paragraphs and ``n_fact`` fact/story paragraphs, seeded."""
    rng = random.Random(f"tiny-corpus-{seed}")
    docs = [_document(rng, SKILLS, 2, 8) for _ in range(n_skill)]
    docs += [_document(rng, [s_fact, s_fact, s_story], 2, 8) for _ in range(n_fact)]
    return docs


def build_corpus(seed: int = 0, scale: float = 1.0, root: Path | None = None,
                 max_files: int | None = None) -> list[str]:
    """All documents in a fixed, seed-shuffled order. ``scale`` multiplies the generated parts."""
    docs = stdlib_docstrings(root, max_files=max_files)
    docs += generated_documents(seed, int(15_000 * scale), int(15_000 * scale))
    docs = [d for d in docs if not has_forbidden_marker(d)]
    random.Random(seed).shuffle(docs)
    return docs
