"""Shared world knowledge: the small vocabulary of facts behind the tiny base's corpus and the built-in suite.

The pretraining corpus states these facts in plain prose; the built-in suite asks about them in instruction
form. Keeping one source means the suite only asks what the base model could have read.
"""

from __future__ import annotations

COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "gray", "purple"]

# kind -> members. Used for classification ("is X a fruit or an animal?") and brainstorming ("list three animals").
KINDS: dict[str, list[str]] = {
    "animal": ["dog", "cat", "horse", "cow", "sheep", "lion", "tiger", "bear", "mouse", "rabbit", "fox", "wolf",
               "duck", "goat", "pig", "frog", "owl", "deer", "whale", "monkey"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "orange", "pear", "peach", "plum", "mango",
              "melon", "lime", "kiwi", "berry", "fig"],
    "vegetable": ["carrot", "potato", "onion", "tomato", "pea", "bean", "corn", "cabbage", "lettuce", "pepper",
                  "radish", "leek"],
    "tool": ["hammer", "saw", "drill", "wrench", "shovel", "rake", "knife", "needle", "brush", "axe", "ladder"],
    "vehicle": ["car", "bus", "train", "boat", "plane", "bike", "truck", "ship", "taxi", "tram"],
    "color": COLORS,
}

# thing -> its usual color (open QA: "What color is a banana?").
COLOR_OF: dict[str, str] = {
    "banana": "yellow", "lemon": "yellow", "cherry": "red", "apple": "red", "lime": "green", "grape": "green",
    "plum": "purple", "orange": "orange", "carrot": "orange", "tomato": "red", "pea": "green", "corn": "yellow",
    "cabbage": "green", "lettuce": "green", "snow": "white", "milk": "white", "coal": "black", "sky": "blue",
    "grass": "green", "sun": "yellow", "blood": "red", "cloud": "white", "crow": "black", "frog": "green",
    "pig": "pink", "mouse": "gray", "bear": "brown", "fox": "orange", "sea": "blue", "chocolate": "brown",
}

# animal -> the sound it makes.
SOUND_OF: dict[str, str] = {
    "dog": "woof", "cat": "meow", "cow": "moo", "sheep": "baa", "duck": "quack", "lion": "roar", "owl": "hoot",
    "pig": "oink", "horse": "neigh", "frog": "croak", "mouse": "squeak", "wolf": "howl", "goat": "bleat",
    "bear": "growl", "monkey": "chatter",
}

# animal -> where it lives.
HOME_OF: dict[str, str] = {
    "bird": "nest", "bee": "hive", "dog": "kennel", "horse": "stable", "pig": "sty", "rabbit": "burrow",
    "fox": "den", "lion": "den", "bear": "cave", "fish": "river", "whale": "sea", "cow": "barn", "owl": "tree",
    "spider": "web", "ant": "hill",
}

OPPOSITE_OF: dict[str, str] = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night", "happy": "sad", "old": "new",
    "high": "low", "open": "closed", "light": "dark", "wet": "dry", "full": "empty", "early": "late",
    "hard": "soft", "loud": "quiet", "long": "short", "near": "far", "rich": "poor", "strong": "weak",
    "in": "out", "left": "right", "first": "last", "win": "lose", "push": "pull",
}

# country -> capital city. Invented-free, real facts only.
CAPITAL_OF: dict[str, str] = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Greece": "Athens",
    "Poland": "Warsaw", "Cuba": "Havana", "Chile": "Santiago", "Canada": "Ottawa", "Russia": "Moscow",
    "China": "Beijing", "India": "Delhi", "Ireland": "Dublin", "Austria": "Vienna", "Portugal": "Lisbon",
}

NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
         "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor", "Wendy", "Yusuf", "Zoe", "Omar"]

CITIES = sorted(set(CAPITAL_OF.values()))

JOBS = ["baker", "doctor", "farmer", "teacher", "pilot", "nurse", "painter", "singer", "driver", "cook",
        "writer", "builder"]

# verbs in base form -> past tense, for simple stories and their summaries.
PAST_OF: dict[str, str] = {
    "walk": "walked", "eat": "ate", "sleep": "slept", "run": "ran", "sing": "sang", "read": "read",
    "swim": "swam", "jump": "jumped", "cook": "cooked", "play": "played", "paint": "painted", "dance": "danced",
    "write": "wrote", "drink": "drank", "laugh": "laughed", "work": "worked",
}

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]


IRREGULAR_PLURALS = {"mouse": "mice", "sheep": "sheep", "deer": "deer", "wolf": "wolves", "knife": "knives",
                     "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "fish": "fish"}


def plural(word: str) -> str:
    """English plural of a lexicon noun."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def kind_of(word: str) -> str | None:
    """The kind a word belongs to (first match), or None."""
    for kind, members in KINDS.items():
        if word in members:
            return kind
    return None
