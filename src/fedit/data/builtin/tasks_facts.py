"""Built-in tasks answered from a lexicon fact: classification, open QA, brainstorming and general QA.

Each reference answer restates the question in the words the tiny base's pretraining prose uses ("The capital of
France is Paris.", "A needle is a tool.", "The first letter of apple is a."), so tuning only has to teach the mapping
from a question to the corpus sentence that answers it; the fact itself is already in the base model.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedit.data import lexicon as lx
from fedit.data.builtin.text import article, noun_phrase, plural

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
_CLASS_KINDS = ["animal", "fruit", "vegetable", "tool", "vehicle"]
# Words in two kinds ("orange" is a fruit and a color) have no single right answer, so they are never asked.
_UNAMBIGUOUS = {k: [w for w in lx.KINDS[k] if sum(w in lx.KINDS[j] for j in lx.KINDS) == 1] for k in _CLASS_KINDS}


def make_kind(rng: random.Random) -> Sample:
    kind = rng.choice(_CLASS_KINDS)
    word = rng.choice(_UNAMBIGUOUS[kind])
    other = rng.choice([k for k in _CLASS_KINDS if k != kind])
    k0, k1 = rng.sample([kind, other], 2)
    inst = _pick(rng, ["Is {aw} {a0} or {a1}?", "Classify {aw}: {k0} or {k1}?"],
                 aw=article(word), a0=article(k0), a1=article(k1), k0=k0, k1=k1)
    # The corpus says "A needle is a tool." and "Needle is a kind of tool."; the base completes "A needle is a kind
    # of" correctly for every word, while "A needle is" often goes on with a color.
    return inst, "", f"{_cap(article(word))} is a kind of {kind}.", {
        "task": "kind", "checker": "choice", "accept": [kind], "reject": [other]}


# ------------------------------------------------------------------------------------------------------ open_qa
def make_capital(rng: random.Random) -> Sample:
    country, city = rng.choice(sorted(lx.CAPITAL_OF.items()))
    inst = _pick(rng, ["What is the capital of {c}?", "Which city is the capital of {c}?",
                       "Name the capital of {c}."], c=country)
    # Measured: with "Paris is the capital of France." (also a corpus form) the tuned model named a fixed wrong pair
    # every time; this form at least copies the asked country some of the time (the weakest task in the suite).
    return inst, "", f"The capital of {country} is {city}.", {
        "task": "capital", "checker": "choice", "accept": [city], "vocab": "cities"}


def make_color(rng: random.Random) -> Sample:
    thing, color = rng.choice(sorted(lx.COLOR_OF.items()))
    np_ = noun_phrase(thing)
    inst = _pick(rng, ["What color is {np}?", "What is the color of {np}?"], np=np_)
    # "The color of a banana is" is always completed right by the base; "A banana is" only a third of the time.
    return inst, "", f"The color of {np_} is {color}.", {"task": "color", "checker": "choice", "accept": [color],
                                                  "vocab": "colors"}


def make_sound(rng: random.Random) -> Sample:
    animal, sound = rng.choice(sorted(lx.SOUND_OF.items()))
    np_ = rng.choice([article(animal), f"the {animal}"])  # the corpus uses both: "The dog says woof."
    inst = _pick(rng, ["What does {np} say?", "What sound does {np} make?"], np=np_)
    return inst, "", f"{_cap(np_)} says {sound}.", {"task": "sound", "checker": "choice", "accept": [sound],
                                                    "vocab": "sounds"}


# ------------------------------------------------------------------------------------------------- brainstorming
_GROUPS: dict[str, list[str]] = {k: lx.KINDS[k] for k in ("animal", "fruit", "vegetable", "tool", "vehicle", "color")}
_GROUPS |= {"city": lx.CITIES, "country": sorted(lx.CAPITAL_OF), "job": lx.JOBS}


def make_members(rng: random.Random) -> Sample:
    group = rng.choice(sorted(_GROUPS))
    n = rng.randint(2, 4)  # counting to five or six, and stopping there, took the tiny base far longer to learn
    # Four phrasings (not two): the prompt space is small, and the test split needs 20 distinct prompts.
    inst = _pick(rng, ["Name {n} {g}.", "List {n} {g}.", "Give me {n} {g}.", "Write down {n} {g}."],
                 n=lx.NUMBER_WORDS[n], g=plural(group))
    # A fixed reference (the first n in lexicon order) keeps the target deterministic given the prompt; the checker
    # accepts any n members.
    return inst, "", ", ".join(_GROUPS[group][:n]), {
        "task": "members", "checker": "list_any", "valid": [v.lower() for v in _GROUPS[group]], "n": n}


# ---------------------------------------------------------------------------------------------------- general_qa
_SPELL_WORDS = sorted({w for k in _CLASS_KINDS for w in lx.KINDS[k]} | set(lx.COLORS) | set(lx.JOBS))


def make_first_letter(rng: random.Random) -> Sample:
    w = rng.choice(_SPELL_WORDS)
    inst = _pick(rng, ["What is the first letter of {w}?", "What is the first letter of the word {w}?"], w=w)
    return inst, "", f"The first letter of {w} is {w[0]}.", {"task": "first_letter", "checker": "letter",
                                                             "target": w[0]}


def make_length(rng: random.Random) -> Sample:
    w = rng.choice(_SPELL_WORDS)
    inst = _pick(rng, ["How many letters are in the word {w}?", "How many letters does the word {w} have?"], w=w)
    n = len(w)
    return inst, "", f"The word {w} has {lx.NUMBER_WORDS[n]} letters.", {"task": "length", "checker": "number",
                                                                         "target": n}


FACT_TASKS: dict[str, list[Task]] = {
    "classification": [Task("kind", make_kind)],
    "open_qa": [Task("capital", make_capital), Task("color", make_color), Task("sound", make_sound)],
    "brainstorming": [Task("members", make_members)],
    "general_qa": [Task("first_letter", make_first_letter), Task("length", make_length)],
}
