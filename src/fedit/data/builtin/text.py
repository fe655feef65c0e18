"""Text helpers shared by the built-in suite's generators and answer checkers (articles, plurals, parsing)."""

from __future__ import annotations

import re

from fedit.data import lexicon as lx
from fedit.data.lexicon import IRREGULAR_PLURALS, plural  # noqa: F401  (plural is re-exported to the tasks)

# Nouns said without an article ("Snow is white") or with "the" ("The sky is blue"), as in the pretraining corpus.
MASS_NOUNS = {"snow", "milk", "coal", "grass", "blood", "chocolate"}
THE_NOUNS = {"sky", "sun", "sea"}

_SINGULAR = {v: k for k, v in IRREGULAR_PLURALS.items()}

# Phrases a model may put before its answer; stripped so "The answer is Paris." scores like "Paris".
_LEAD_INS = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)|(?:it|that|this)\s+is|it's|answer\s*:|"
    r"(?:the|they|these)\b[^,:]*?\b(?:are|is)\b)\s*:?\s*"
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+(?=\S)")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "`": "'"})


def article(word: str) -> str:
    """ "a tiger" / "an apple"."""
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def noun_phrase(thing: str) -> str:
    """How the corpus refers to a thing: "snow", "the sky", "a banana"."""
    if thing in MASS_NOUNS:
        return thing
    if thing in THE_NOUNS:
        return f"the {thing}"
    return article(thing)


def singular_in(word: str, valid: set[str]) -> str | None:
    """The member of ``valid`` that ``word`` is (itself or a plural of it), else None."""
    candidates = [word, _SINGULAR.get(word, "")]
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    return next((c for c in candidates if c in valid), None)


def join_and(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def first_line(answer: str) -> str:
    """The first non-empty line: a model without an EOS token keeps generating on the next lines."""
    for line in answer.splitlines():
        if line.strip():
            return line.strip()
    return ""


def first_sentence(line: str) -> str:
    """Text up to the first sentence end: every answer in the suite is one sentence or shorter, and a model that
    has learned the answer but not yet when to stop goes on with more corpus-like sentences ("... is Paris. The
    capital of Russia is Moscow.")."""
    return re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0]


def clean(answer: str) -> str:
    """First sentence of the first line, lower case, straight quotes, no surrounding quotes or trailing
    punctuation, single spaces."""
    s = first_sentence(first_line(answer).translate(_QUOTES)).lower()
    s = re.sub(r"\s+", " ", s).strip()
    return s.strip(" \"'").rstrip(" .!?,;:").strip(" \"'")


def strip_lead_in(s: str) -> str:
    """Drop "the answer is", "it is", "the names are", ... from the front of a cleaned answer."""
    if ":" in s:
        s = s.rsplit(":", 1)[1].strip()
    return _LEAD_INS.sub("", s, count=1).strip()


def strip_article(s: str) -> str:
    return _ARTICLE.sub("", s, count=1)


def words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", s.lower())


def mentions(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive containment."""
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase.lower())}(?![a-z0-9])", text.lower()) is not None


def split_items(s: str) -> list[str]:
    """Items of a list answer: "apple, pear and plum" -> ["apple", "pear", "plum"], articles removed."""
    parts = re.split(r"\s*(?:,|;|/|&|\band\b|\bor\b)\s*", strip_lead_in(s))
    return [strip_article(p.strip(" .\"'-*")) for p in parts if p.strip(" .\"'-*")]


def to_number(token: str) -> int | None:
    """ "12" -> 12, "twelve" -> 12, else None."""
    if token.isdigit():
        return int(token)
    return lx.NUMBER_WORDS.index(token) if token in lx.NUMBER_WORDS else None


def number_forms(n: int) -> list[str]:
    """Accepted spellings of a small number: digits, and the word when the lexicon has one."""
    return [str(n)] + ([lx.NUMBER_WORDS[n]] if 0 <= n < len(lx.NUMBER_WORDS) else [])


def _lower(items: object) -> list[str]:
    return sorted({str(i).lower() for i in items})  # type: ignore[attr-defined]


# Named vocabularies a checker may treat as "the other possible answers" (kept out of meta so exports stay small).
VOCABS: dict[str, list[str]] = {
    "colors": _lower(lx.COLORS),
    "sounds": _lower(lx.SOUND_OF.values()),
    "homes": _lower(lx.HOME_OF.values()),
    "cities": _lower(lx.CITIES),
    "jobs": _lower(lx.JOBS),
    "names": _lower(lx.NAMES),
    "opposites": _lower(list(lx.OPPOSITE_OF) + list(lx.OPPOSITE_OF.values())),
    "past_verbs": _lower(lx.PAST_OF.values()),
    "animals": _lower(lx.KINDS["animal"] + list(lx.SOUND_OF) + list(lx.HOME_OF) + ["crow"]),
    "kinds": _lower(lx.KINDS),
}
