"""Built-in tasks answered from a lexicon fact or the prompt alone: classification, open/general QA, brainstorming."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedit.data import lexicon as lx
from fedit.data.builtin.text import VOCABS, article, noun_phrase, number_forms, plural

# (instruction, context, reference response, meta)
Sample = tuple[str, str, str, dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """One kind of question within a category; ``make`` draws a sample from a seeded RNG."""

    name: str
    make: Callable[[random.Random], Sample]


def _pick(rng: random.Random, templates: list[str], **slots: str) -> str:
    return rng.choice(templates).format(**slots)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ------------------------------------------------------------------------------------------------ classification
_CLASS_KINDS = ["animal", "fruit", "vegetable", "tool", "vehicle", "color"]
# Words in two kinds ("orange" is a fruit and a color) have no single right answer, so they are never asked.
_UNAMBIGUOUS = {k: [w for w in lx.KINDS[k] if sum(w in lx.KINDS[j] for j in _CLASS_KINDS) == 1]
                for k in _CLASS_KINDS}


def _kind_np(kind: str, word: str) -> str:
    return word if kind == "color" else article(word)


def make_kind(rng: random.Random) -> Sample:
    kind = rng.choice(_CLASS_KINDS)
    word = rng.choice(_UNAMBIGUOUS[kind])
    others = rng.sample([k for k in _CLASS_KINDS if k != kind], 2)
    opts = [kind, *others]
    rng.shuffle(opts)
    a0, a1, a2 = (article(o) for o in opts)
    k0, k1, k2 = opts
    inst = _pick(rng, ["Is {np} {a0}, {a1} or {a2}?", "Classify the word {w} as {k0}, {k1} or {k2}.",
                       "Which group does the word {w} belong to: {k0}, {k1} or {k2}?",
                       "{W}: is it {a0}, {a1} or {a2}?"],
                 np=_kind_np(kind, word), w=word, W=_cap(word), a0=a0, a1=a1, a2=a2, k0=k0, k1=k1, k2=k2)
    return inst, "", kind, {"task": "kind", "checker": "choice", "accept": [kind], "reject": others}


def make_parity(rng: random.Random) -> Sample:
    n = rng.randint(0, 99)
    ans = "even" if n % 2 == 0 else "odd"
    inst = _pick(rng, ["Is {n} even or odd?", "Is the number {n} odd or even?", "Tell me whether {n} is even or odd.",
                       "{n}: even or odd?"], n=str(n))
    return inst, "", ans, {"task": "parity", "checker": "choice", "accept": [ans],
                           "reject": ["odd" if ans == "even" else "even"]}


# ------------------------------------------------------------------------------------------------------ open_qa
def make_color(rng: random.Random) -> Sample:
    thing, color = rng.choice(sorted(lx.COLOR_OF.items()))
    inst = _pick(rng, ["What color is {np}?", "What is the color of {np}?", "Which color is {np}?",
                       "Tell me the color of {np}."], np=noun_phrase(thing))
    return inst, "", color, {"task": "color", "checker": "choice", "accept": [color], "vocab": "colors"}


def make_sound(rng: random.Random) -> Sample:
    animal, sound = rng.choice(sorted(lx.SOUND_OF.items()))
    inst = _pick(rng, ["What sound does {np} make?", "What does {np} say?", "Which sound does {np} make?",
                       "What noise does {np} make?"], np=article(animal))
    return inst, "", sound, {"task": "sound", "checker": "choice", "accept": [sound], "vocab": "sounds"}


def make_capital(rng: random.Random) -> Sample:
    country, city = rng.choice(sorted(lx.CAPITAL_OF.items()))
    inst = _pick(rng, ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}.",
                       "What is the capital city of {c}?"], c=country)
    return inst, "", city, {"task": "capital", "checker": "choice", "accept": [city], "vocab": "cities"}


_OPPOSITES = sorted([*lx.OPPOSITE_OF.items(), *((v, k) for k, v in lx.OPPOSITE_OF.items())])


def make_opposite(rng: random.Random) -> Sample:
    word, opp = rng.choice(_OPPOSITES)
    inst = _pick(rng, ["What is the opposite of {w}?", "What is the opposite of the word {w}?",
                       "Give the opposite of {w}.", "Name a word that means the opposite of {w}."], w=word)
    return inst, "", opp, {"task": "opposite", "checker": "choice", "accept": [opp], "vocab": "opposites"}


def make_home(rng: random.Random) -> Sample:
    animal, home = rng.choice(sorted(lx.HOME_OF.items()))
    inst = _pick(rng, ["Where does {np} live?", "What is the home of {np}?", "Where does {np} make its home?",
                       "In what place does {np} live?"], np=article(animal))
    return inst, "", home, {"task": "home", "checker": "choice", "accept": [home], "vocab": "homes"}


# ------------------------------------------------------------------------------------------------- brainstorming
_GROUPS: dict[str, list[str]] = {
    "animal": VOCABS["animals"], **{k: lx.KINDS[k] for k in ("fruit", "vegetable", "tool", "vehicle", "color")},
    "city": lx.CITIES, "job": lx.JOBS,
}
_BY_COLOR: dict[str, list[str]] = {}
for _thing, _c in lx.COLOR_OF.items():
    _BY_COLOR.setdefault(_c, []).append(_thing)
_BY_COLOR = {c: things for c, things in sorted(_BY_COLOR.items()) if len(things) >= 2}


def make_members(rng: random.Random) -> Sample:
    group = rng.choice(sorted(_GROUPS))
    n = rng.randint(2, 4)
    inst = _pick(rng, ["Name {n} {g}.", "List {n} {g}.", "Give me {n} examples of {g}.", "Can you name {n} {g}?",
                       "Write down {n} {g}."], n=lx.NUMBER_WORDS[n], g=plural(group))
    # A fixed reference (the first n in lexicon order) keeps the target deterministic given the prompt.
    order = lx.KINDS["animal"] if group == "animal" else _GROUPS[group]
    valid = [v.lower() for v in _GROUPS[group]]
    return inst, "", ", ".join(order[:n]), {"task": "members", "checker": "list_any", "valid": valid, "n": n}


def make_colored(rng: random.Random) -> Sample:
    color = rng.choice(sorted(_BY_COLOR))
    things = _BY_COLOR[color]
    n = rng.randint(2, min(3, len(things)))
    inst = _pick(rng, ["Name {n} things that are {c}.", "List {n} things that are {c}.",
                       "What are {n} things that are {c}?", "Give me {n} examples of things that are {c}."],
                 n=lx.NUMBER_WORDS[n], c=color)
    return inst, "", ", ".join(things[:n]), {"task": "colored", "checker": "list_any", "valid": things, "n": n}


# ---------------------------------------------------------------------------------------------------- general_qa
def _num(rng: random.Random, n: int) -> str:
    """Digits or (<= 20) a number word, as the corpus spells both."""
    return lx.NUMBER_WORDS[n] if n < len(lx.NUMBER_WORDS) and rng.random() < 0.4 else str(n)


def make_add(rng: random.Random) -> Sample:
    a, b = rng.randint(0, 10), rng.randint(0, 10)
    inst = _pick(rng, ["What is {a} plus {b}?", "How much is {a} plus {b}?", "Add {a} and {b}.",
                       "What do you get when you add {a} and {b}?"], a=_num(rng, a), b=_num(rng, b))
    return inst, "", str(a + b), {"task": "add", "checker": "number", "target": a + b}


def make_sub(rng: random.Random) -> Sample:
    a = rng.randint(1, 20)
    b = rng.randint(0, a)
    inst = _pick(rng, ["What is {a} minus {b}?", "Subtract {b} from {a}.", "How much is {a} minus {b}?",
                       "What is {a} take away {b}?"], a=_num(rng, a), b=_num(rng, b))
    return inst, "", str(a - b), {"task": "sub", "checker": "number", "target": a - b}


def make_compare(rng: random.Random) -> Sample:
    a, b = rng.sample(range(100), 2)
    larger = rng.random() < 0.5
    ans, other = (max(a, b), min(a, b)) if larger else (min(a, b), max(a, b))
    word = rng.choice(["larger", "bigger"]) if larger else rng.choice(["smaller", "less"])
    tpl = ["Which is {w}, {a} or {b}?", "Which number is {w}: {a} or {b}?", "Of {a} and {b}, which is {w}?"]
    inst = _pick(rng, tpl, a=str(a), b=str(b), w=word)
    return inst, "", str(ans), {"task": "compare", "checker": "choice", "accept": number_forms(ans),
                                "reject": number_forms(other)}


_SPELL_WORDS = sorted({w for k in ("animal", "fruit", "vegetable", "tool", "vehicle", "color") for w in lx.KINDS[k]}
                      | set(lx.JOBS))


def make_first_letter(rng: random.Random) -> Sample:
    w = rng.choice(_SPELL_WORDS)
    inst = _pick(rng, ["What is the first letter of the word {w}?", "Which letter does {w} start with?",
                       "What letter does the word {w} begin with?", "Give the first letter of {w}."], w=w)
    return inst, "", w[0], {"task": "first_letter", "checker": "letter", "target": w[0]}


def make_length(rng: random.Random) -> Sample:
    w = rng.choice(_SPELL_WORDS)
    inst = _pick(rng, ["How many letters are in the word {w}?", "How many letters does {w} have?",
                       "Count the letters in the word {w}.", "How long is the word {w}, in letters?"], w=w)
    return inst, "", str(len(w)), {"task": "length", "checker": "number", "target": len(w)}


FACT_TASKS: dict[str, list[Task]] = {
    "classification": [Task("kind", make_kind), Task("parity", make_parity)],
    "open_qa": [Task("color", make_color), Task("sound", make_sound), Task("capital", make_capital),
                Task("opposite", make_opposite), Task("home", make_home)],
    "brainstorming": [Task("members", make_members), Task("colored", make_colored)],
    "general_qa": [Task("add", make_add), Task("sub", make_sub), Task("compare", make_compare),
                   Task("first_letter", make_first_letter), Task("length", make_length)],
}
