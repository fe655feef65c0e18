"""Built-in tasks answered by copying from a given text or writing to constraints: closed QA, information
extraction, summarization, creative writing."""

from __future__ import annotations

import random

from fedit.data import lexicon as lx
from fedit.data.builtin.tasks_facts import Sample, Task, _pick
from fedit.data.builtin.text import article, join_and, plural, words

_PETS = ["dog", "cat", "horse", "rabbit", "goat", "duck", "pig", "mouse"]


# ---------------------------------------------------------------------------------------------------- closed_qa
def _people(rng: random.Random, k: int) -> list[dict[str, str]]:
    names, jobs, cities = rng.sample(lx.NAMES, k), rng.sample(lx.JOBS, k), rng.sample(lx.CITIES, k)
    pets = rng.sample(_PETS, k)
    return [{"name": n, "job": j, "city": c, "pet": p} for n, j, c, p in zip(names, jobs, cities, pets, strict=True)]


def _profile(rng: random.Random, p: dict[str, str]) -> str:
    first = rng.choice(["{name} is {aj} who lives in {city}.", "{name} lives in {city} and works as {aj}."])
    return first.format(aj=article(p["job"]), **p) + f" {p['name']} has {article(p['pet'])}."


_QUESTIONS: dict[str, tuple[list[str], str, str]] = {
    # question kind -> (phrasings, answer field, vocabulary of the other possible answers)
    "where": (["Where does {name} live?", "In which city does {name} live?", "Which city does {name} live in?"],
              "city", "cities"),
    "job": (["What is {name}'s job?", "What does {name} do for a living?", "What work does {name} do?"], "job", "jobs"),
    "who": (["Who lives in {city}?", "Which person lives in {city}?", "Who is the {job}?"], "name", "names"),
    "pet": (["What animal does {name} have?", "Which pet does {name} have?", "What pet does {name} own?"],
            "pet", "animals"),
}


def make_story_question(rng: random.Random, kind: str) -> Sample:
    people = _people(rng, rng.randint(1, 2))
    context = " ".join(_profile(rng, p) for p in people)
    target = rng.choice(people)
    phrasings, field, vocab = _QUESTIONS[kind]
    inst = _pick(rng, phrasings, **target)
    ans = target[field]
    return inst, context, ans, {"task": kind, "checker": "choice", "accept": [ans], "vocab": vocab}


# ---------------------------------------------------------------------------------------- information_extraction
_TOGETHER = ["walked", "ran", "sang", "danced", "played", "cooked", "swam", "worked", "laughed", "read"]


def _event(rng: random.Random, found: dict[str, list[str]]) -> str:
    """One sentence with names, cities and numbers; records each in ``found`` in order of appearance."""
    n1, n2 = rng.sample(lx.NAMES, 2)
    city, k = rng.choice(lx.CITIES), rng.randint(2, 20)
    fruit, pet = rng.choice(lx.KINDS["fruit"]), rng.choice(_PETS)
    verb = rng.choice(_TOGETHER)
    choice = rng.randrange(6)
    parts: list[tuple[str, str]]  # (type, value) in sentence order
    if choice == 0:
        text, parts = f"{n1} met {n2} in {city}.", [("names", n1), ("names", n2), ("cities", city)]
    elif choice == 1:
        text, parts = f"{n1} bought {k} {plural(fruit)}.", [("names", n1), ("numbers", str(k))]
    elif choice == 2:
        text, parts = f"{n1} walked {k} miles to {city}.", [("names", n1), ("numbers", str(k)), ("cities", city)]
    elif choice == 3:
        age = rng.randint(21, 90)
        text, parts = f"{n1} is {age} years old.", [("names", n1), ("numbers", str(age))]
    elif choice == 4:
        text = f"{n1} lives in {city} with {k} {plural(pet)}."
        parts = [("names", n1), ("cities", city), ("numbers", str(k))]
    else:
        text, parts = f"{n1} and {n2} {verb} together.", [("names", n1), ("names", n2)]
    for typ, value in parts:
        if value not in found[typ]:
            found[typ].append(value)
    return text


_EXTRACT: dict[str, list[str]] = {
    "names": ["List the names in the text.", "Which people are mentioned in the text?",
              "Extract all names from the passage.", "Who is mentioned in the text?"],
    "numbers": ["Which numbers appear in the text?", "List the numbers in the text.",
                "Extract every number from the passage.", "What numbers does the text mention?"],
    "cities": ["Which cities are mentioned in the text?", "List the cities in the text.",
               "Extract the city names from the passage.", "What places does the text mention?"],
}


def make_extract(rng: random.Random, kind: str) -> Sample:
    while True:  # resample until the asked-for type occurs (a few tries at most)
        found: dict[str, list[str]] = {"names": [], "numbers": [], "cities": []}
        context = " ".join(_event(rng, found) for _ in range(rng.randint(2, 3)))
        if found[kind]:
            break
    inst = rng.choice(_EXTRACT[kind])
    return inst, context, ", ".join(found[kind]), {"task": kind, "checker": "list_exact", "items": found[kind]}


# ------------------------------------------------------------------------------------------------- summarization
_DONE = {"walk": "walked to the park", "eat": "ate an apple", "sleep": "slept for a long time", "run": "ran home",
         "sing": "sang a song", "read": "read a book", "swim": "swam in the sea", "jump": "jumped over a wall",
         "cook": "cooked dinner", "play": "played with a ball", "paint": "painted a picture",
         "dance": "danced with a friend", "write": "wrote a letter", "drink": "drank some milk",
         "laugh": "laughed at a joke", "work": "worked all day"}
_SUMMARIZE = ["Summarize the text in one sentence.", "Give a short summary of the text.", "Summarize this text.",
              "Write a one-sentence summary of the passage."]


def make_actions(rng: random.Random) -> Sample:
    name = rng.choice(lx.NAMES)
    verbs = rng.sample(sorted(lx.PAST_OF), rng.randint(3, 4))
    sentences = [f"{name} {_DONE[verbs[0]]}."]
    sentences += [f"{rng.choice(['', 'Then ', 'Later '])}{name} {_DONE[v]}." for v in verbs[1:]]
    context = " ".join(sentences)
    past = [lx.PAST_OF[v] for v in verbs]
    ref = f"{name} {join_and(past)}."
    return rng.choice(_SUMMARIZE), context, ref, {
        "task": "actions", "checker": "summary", "required": [name, *past], "vocab": ["names", "past_verbs"],
        "max_words": len(words(context)) - 1}


def make_profile(rng: random.Random) -> Sample:
    p = _people(rng, 1)[0]
    name = p["name"]
    extra = rng.sample([f"{name} works every day.", f"{name} likes the color {rng.choice(lx.COLORS)}.",
                        f"{name} has {article(p['pet'])}.", f"{name} is happy."], 2)
    context = " ".join([f"{name} is {article(p['job'])}.", f"{name} lives in {p['city']}.", *extra])
    ref = f"{name} is {article(p['job'])} in {p['city']}."
    return rng.choice(_SUMMARIZE), context, ref, {
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
                       "Write one sentence about {ax} using the word {c}.",
                       "Make up a short sentence about {ax}. Use the word {c}.",
                       "Compose a short line about {ax} that includes the color {c}."], ax=article(x), c=color)
    return inst, "", f"The {x} is {color}.", {"task": "colored_sentence", "checker": "sentence",
                                              "required": [_forms(x), [color]], "max_words": _MAX_WORDS}


def make_person_place(rng: random.Random) -> Sample:
    name, city = rng.choice(lx.NAMES), rng.choice(lx.CITIES)
    inst = _pick(rng, ["Write a sentence about {n} that mentions {c}.", "Write one short sentence about {n} and {c}.",
                       "Make up a sentence in which {n} is in {c}.", "Write a short line about {n} that names {c}."],
                 n=name, c=city)
    return inst, "", f"{name} lives in {city}.", {"task": "person_place", "checker": "sentence",
                                                  "required": [[name], [city]], "max_words": _MAX_WORDS}


def make_action_sentence(rng: random.Random) -> Sample:
    animal, verb = rng.choice(lx.KINDS["animal"]), rng.choice(sorted(lx.PAST_OF.values()))
    inst = _pick(rng, ["Write a short sentence about {aa} that uses the word {v}.",
                       "Write one sentence in which {aa} {v}.",
                       "Make up a short sentence about {aa} with the word {v}.",
                       "Compose a short line using the words {a} and {v}."], aa=article(animal), a=animal, v=verb)
    return inst, "", f"The {animal} {verb}.", {"task": "action_sentence", "checker": "sentence",
                                               "required": [_forms(animal), [verb]], "max_words": _MAX_WORDS}


def make_job_pet(rng: random.Random) -> Sample:
    job, pet = rng.choice(lx.JOBS), rng.choice(_PETS)
    inst = _pick(rng, ["Write a short sentence about {aj} and {ap}.", "Write one sentence that mentions {aj} and {ap}.",
                       "Make up a short sentence with the words {j} and {p}."], aj=article(job), ap=article(pet),
                 j=job, p=pet)
    return inst, "", f"The {job} has {article(pet)}.", {"task": "job_pet", "checker": "sentence",
                                                        "required": [_forms(job), _forms(pet)], "max_words": _MAX_WORDS}


CONTEXT_TASKS: dict[str, list[Task]] = {
    "closed_qa": [Task(k, lambda rng, k=k: make_story_question(rng, k)) for k in _QUESTIONS],
    "information_extraction": [Task(k, lambda rng, k=k: make_extract(rng, k)) for k in _EXTRACT],
    "summarization": [Task("actions", make_actions), Task("profile", make_profile)],
    "creative_writing": [Task("colored_sentence", make_colored_sentence), Task("person_place", make_person_place),
                         Task("action_sentence", make_action_sentence), Task("job_pet", make_job_pet)],
}
