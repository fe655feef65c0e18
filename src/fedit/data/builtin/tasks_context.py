"""Built-in tasks answered by copying from a given text or writing to constraints: closed QA, information
extraction, summarization, creative writing. Contexts are two or three short sentences."""

from __future__ import annotations

import random

from fedit.data import lexicon as lx
from fedit.data.builtin.tasks_facts import Sample, Task, _pick
from fedit.data.builtin.text import article, join_and, plural, words

_PETS = ["dog", "cat", "horse", "rabbit", "goat", "duck", "pig", "mouse"]


def _person(rng: random.Random) -> dict[str, str]:
    return {"name": rng.choice(lx.NAMES), "job": rng.choice(lx.JOBS), "city": rng.choice(lx.CITIES),
            "pet": rng.choice(_PETS)}


# ---------------------------------------------------------------------------------------------------- closed_qa
def _profile(rng: random.Random, p: dict[str, str]) -> str:
    """One person in the corpus's story phrasing: "Anna is a baker who lives in Rome. Anna has a duck." """
    first = rng.choice(["{name} is {aj} who lives in {city}.", "{name} lives in {city} and works as {aj}."])
    return first.format(aj=article(p["job"]), **p) + f" {p['name']} has {article(p['pet'])}."


_QUESTIONS: dict[str, tuple[list[str], str, str, str]] = {
    # question kind -> (phrasings, reference answer, answer field, vocabulary of the other possible answers)
    "where": (["Where does {name} live?", "In which city does {name} live?"], "{name} lives in {city}.", "city",
              "cities"),
    "job": (["What is {name}'s job?", "What does {name} do for a living?"], "{name} is {aj}.", "job", "jobs"),
    "pet": (["What pet does {name} have?", "What animal does {name} have?"], "{name} has {ap}.", "pet", "animals"),
}


def make_story_question(rng: random.Random, kind: str) -> Sample:
    p = _person(rng)
    phrasings, ref, field, vocab = _QUESTIONS[kind]
    inst = _pick(rng, phrasings, **p)
    resp = ref.format(aj=article(p["job"]), ap=article(p["pet"]), **p)
    return inst, _profile(rng, p), resp, {"task": kind, "checker": "choice", "accept": [p[field]], "vocab": vocab}


# ---------------------------------------------------------------------------------------- information_extraction
_MOVES = ["lives in", "walked to", "works in", "was born in"]


def _event(rng: random.Random, name: str, city: str) -> str:
    return f"{name} {rng.choice(_MOVES)} {city}."


_EXTRACT: dict[str, list[str]] = {
    "names": ["List the names in the text.", "Which people are mentioned in the text?"],
    "cities": ["List the cities in the text.", "Which cities are mentioned in the text?"],
}


def make_extract(rng: random.Random, kind: str) -> Sample:
    names, cities = rng.sample(lx.NAMES, 2), rng.sample(lx.CITIES, 2)
    context = " ".join(_event(rng, n, c) for n, c in zip(names, cities, strict=True))
    items = names if kind == "names" else cities
    inst = rng.choice(_EXTRACT[kind])
    return inst, context, ", ".join(items), {"task": kind, "checker": "list_exact", "items": items}


# ------------------------------------------------------------------------------------------------- summarization
_DONE = {"walk": "walked to the park", "eat": "ate an apple", "sleep": "slept for a long time", "run": "ran home",
         "sing": "sang a song", "read": "read a book", "swim": "swam in the sea", "jump": "jumped over a wall",
         "cook": "cooked dinner", "play": "played with a ball", "paint": "painted a picture",
         "dance": "danced with a friend", "write": "wrote a letter", "drink": "drank some milk",
         "laugh": "laughed at a joke", "work": "worked all day"}
_SUMMARIZE = ["Summarize the text in one sentence.", "Give a short summary of the text."]


def make_actions(rng: random.Random) -> Sample:
    name = rng.choice(lx.NAMES)
    verbs = rng.sample(sorted(lx.PAST_OF), 2)
    context = f"{name} {_DONE[verbs[0]]}. Then {name} {_DONE[verbs[1]]}."
    past = [lx.PAST_OF[v] for v in verbs]
    return rng.choice(_SUMMARIZE), context, f"{name} {join_and(past)}.", {
        "task": "actions", "checker": "summary", "required": [name, *past], "vocab": ["names", "past_verbs"],
        "max_words": len(words(context)) - 1}


def make_profile(rng: random.Random) -> Sample:
    p = _person(rng)
    name = p["name"]
    extra = rng.choice([f"{name} has {article(p['pet'])}.", f"{name} is happy.", f"{name} works every day."])
    context = f"{name} is {article(p['job'])}. {name} lives in {p['city']}. {extra}"
    return rng.choice(_SUMMARIZE), context, f"{name} is {article(p['job'])} in {p['city']}.", {
        "task": "profile", "checker": "summary", "required": [name, p["job"], p["city"]],
        "vocab": ["names", "jobs", "cities"], "max_words": len(words(context)) - 1}


# ---------------------------------------------------------------------------------------------- creative_writing
_MAX_WORDS = 12
_SUBJECTS = lx.KINDS["animal"] + lx.KINDS["vehicle"] + lx.KINDS["tool"]


def _forms(noun: str) -> list[str]:
    return [noun, plural(noun)]


def make_colored_sentence(rng: random.Random) -> Sample:
    x, color = rng.choice(_SUBJECTS), rng.choice(lx.COLORS)
    inst = _pick(rng, ["Write a short sentence about {ax} that mentions the color {c}.",
                       "Write one sentence about {ax} using the word {c}."], ax=article(x), c=color)
    return inst, "", f"The {x} is {color}.", {"task": "colored_sentence", "checker": "sentence",
                                              "required": [_forms(x), [color]], "max_words": _MAX_WORDS}


def make_person_place(rng: random.Random) -> Sample:
    name, city = rng.choice(lx.NAMES), rng.choice(lx.CITIES)
    inst = _pick(rng, ["Write a sentence about {n} that mentions {c}.", "Write one short sentence about {n} and {c}."],
                 n=name, c=city)
    return inst, "", f"{name} lives in {city}.", {"task": "person_place", "checker": "sentence",
                                                  "required": [[name], [city]], "max_words": _MAX_WORDS}


def make_job_pet(rng: random.Random) -> Sample:
    job, pet = rng.choice(lx.JOBS), rng.choice(_PETS)
    inst = _pick(rng, ["Write a short sentence about {aj} and {ap}.",
                       "Write one sentence that mentions {aj} and {ap}."], aj=article(job), ap=article(pet))
    return inst, "", f"The {job} has {article(pet)}.", {"task": "job_pet", "checker": "sentence",
                                                        "required": [_forms(job), _forms(pet)], "max_words": _MAX_WORDS}


CONTEXT_TASKS: dict[str, list[Task]] = {
    "closed_qa": [Task(k, lambda rng, k=k: make_story_question(rng, k)) for k in _QUESTIONS],
    "information_extraction": [Task("names", lambda rng: make_extract(rng, "names"))],
    "summarization": [Task("actions", make_actions), Task("profile", make_profile)],
    "creative_writing": [Task("colored_sentence", make_colored_sentence), Task("person_place", make_person_place),
                         Task("job_pet", make_job_pet)],
}
