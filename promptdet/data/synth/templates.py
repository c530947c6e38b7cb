"""FLAN-style wordings: every fact about a scene is put into words in many phrasings.

Two layers:
- a lexicon (synonyms, plurals, colour, defect and position phrases), shared by both splits,
  so every concept is seen in training;
- sentence frames (imperatives, questions, bare noun phrases, polite requests), split into
  disjoint ``train`` and ``test`` sets, so the test split measures unseen wordings.

Orientation words are limited to the ones ``promptdet.data.transforms.flip_text`` can rewrite
(left/right, top/bottom, upper/lower, above/below, highest/lowest ...), and never appear in any
other sense ("right away"), so a flip keeps every instruction true.
"""

from __future__ import annotations

import re

import numpy as np

from promptdet.data.lexicon import Lexicon
from promptdet.data.vocab import (
    CATEGORIES,
    COLORS,
    COLORS_BY_CATEGORY,
    DEFECTS,
    DEFECTS_BY_CATEGORY,
)

SPLITS = ("train", "test")

CATEGORY_WORDS = {
    "bottle": ("bottle", "plastic bottle", "PET bottle"),
    "can": ("can", "tin can", "tin", "soda can"),
    "box": ("box", "carton", "cardboard box", "package"),
    "screw": ("screw", "machine screw", "wood screw"),
    "nut": ("nut", "hex nut", "hexagon nut"),
    "washer": ("washer", "flat washer", "ring washer"),
    "gear": ("gear", "cog", "gear wheel", "cogwheel"),
    "bolt": ("bolt", "hex bolt", "machine bolt"),
}
GENERIC_WORDS = ("part", "item", "object", "piece", "component")

COLOR_WORDS = {
    "red": ("red", "red-coloured", "red-colored"),
    "green": ("green", "green-coloured"),
    "blue": ("blue", "blue-colored"),
    "yellow": ("yellow", "yellow-coloured"),
    "orange": ("orange", "orange-colored"),
    "white": ("white", "white-coloured"),
    "black": ("black", "black-colored"),
    "silver": ("silver", "metallic", "chrome", "silver-coloured"),
}

# Defect phrases: prenominal adjectives, and postnominal (singular, plural) phrases.
DEFECT_ADJ = {
    "scratch": ("scratched",),
    "crack": ("cracked",),
    "dent": ("dented",),
    "stain": ("stained", "dirty", "smudged"),
    "missing_cap": ("uncapped", "capless"),
    "any": ("defective", "damaged", "faulty", "flawed"),
}
DEFECT_POST = {
    "scratch": (("with a scratch", "with scratches"), ("that is scratched", "that are scratched"),
                ("with scratch marks", "with scratch marks")),
    "crack": (("with a crack", "with cracks"), ("that has a crack", "that have cracks"),
              ("showing a crack", "showing cracks")),
    "dent": (("with a dent", "with dents"), ("that has a dent", "that have dents"),
             ("with a dented surface", "with dented surfaces")),
    "stain": (("with a stain", "with stains"), ("that has a stain on it", "that have stains on them"),
              ("with dirt marks", "with dirt marks")),
    "missing_cap": (("with a missing cap", "with missing caps"), ("without a cap", "without caps"),
                    ("missing its cap", "missing their caps"), ("that has no cap", "that have no cap"),
                    ("with no cap on", "with no caps on")),
    "any": (("with a defect", "with defects"), ("that is damaged", "that are damaged"),
            ("with visible damage", "with visible damage"), ("that fails inspection", "that fail inspection")),
}

# "not <defect>": adjectives, and postnominal phrases.
NOT_DEFECT_ADJ = {
    "scratch": ("unscratched", "scratch-free"),
    "crack": ("uncracked", "crack-free"),
    "dent": ("undented", "dent-free"),
    "stain": ("clean", "stain-free", "unstained"),
    "missing_cap": ("capped", "closed"),
}
NOT_DEFECT_POST = {
    "scratch": (("without a scratch", "without scratches"), ("with no scratch", "with no scratches"),
                ("that is not scratched", "that are not scratched")),
    "crack": (("without a crack", "without cracks"), ("with no crack", "with no cracks"),
              ("that is not cracked", "that are not cracked")),
    "dent": (("without a dent", "without dents"), ("with no dent", "with no dents"),
             ("that is not dented", "that are not dented")),
    "stain": (("without a stain", "without stains"), ("with no stain", "with no stains"),
              ("that is not dirty", "that are not dirty")),
    "missing_cap": (("that still has its cap", "that still have their caps"), ("with the cap on", "with caps on"),
                    ("with its cap", "with their caps"), ("that is not missing its cap", "that are not missing caps")),
}

# Position phrases: (adjective forms, postnominal forms) per extreme.
EXTREME_WORDS = {
    "leftmost": (("leftmost", "left-most"),
                 ("furthest to the left", "farthest left", "closest to the left edge", "on the far left")),
    "rightmost": (("rightmost", "right-most"),
                  ("furthest to the right", "farthest right", "closest to the right edge", "on the far right")),
    "topmost": (("topmost", "top-most", "uppermost", "highest"),
                ("closest to the top edge", "nearest the top", "at the very top")),
    "bottommost": (("bottommost", "bottom-most", "lowermost", "lowest"),
                   ("closest to the bottom edge", "nearest the bottom", "at the very bottom")),
    "largest": (("largest", "biggest"),
                ("that is the largest", "that is bigger than the others", "of the largest size")),
    "smallest": (("smallest", "tiniest", "littlest"),
                 ("that is the smallest", "that is smaller than the others", "of the smallest size")),
}

RELATION_WORDS = {
    "left_of": ("left of", "to the left of", "on the left side of", "positioned left of"),
    "right_of": ("right of", "to the right of", "on the right side of", "positioned right of"),
    "above": ("above", "located above", "positioned above", "sitting above"),
    "below": ("below", "located below", "positioned below", "sitting below"),
    "next_to": ("next to", "beside", "near", "closest to", "nearest to", "adjacent to"),
}

COUNT_WORDS = {
    "more_than": ("more than {n}", "over {n}", "greater than {n}"),
    "at_least": ("at least {n}", "{n} or more", "no fewer than {n}"),
    "fewer_than": ("fewer than {n}", "less than {n}", "under {n}"),
    "exactly": ("exactly {n}", "precisely {n}", "just {n}"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Frames for a set of targets. {np}: plural noun phrase, {np_sg}: singular noun phrase.
_SET_FRAMES = (
    "find all {np}", "find the {np}", "detect {np}", "where are the {np}?",
    "show me all {np}", "locate every {np_sg}", "{np}", "please find all {np}",
    "could you highlight the {np}?", "mark each {np_sg}", "I need the {np} marked", "are there any {np}?",
    "pick out all the {np}", "select every {np_sg} on the belt", "can you spot the {np}?", "box all {np}",
    "point out any {np}", "Kindly locate the {np}.", "get me the {np}", "identify the {np}",
    "search for {np}", "look for any {np} on the conveyor", "all {np}", "draw boxes around the {np}",
    "flag every {np_sg}", "show the {np} please", "I want to see all {np}", "detect any {np} in this image",
    "which of these are {np}?", "every {np_sg}", "help me find the {np}", "list the {np} you can see",
)
# Frames for one target. {the}: a definite singular noun phrase ("the leftmost bolt").
_SINGLE_FRAMES = (
    "find {the}", "{the}", "where is {the}?", "show me {the}",
    "locate {the}", "please point to {the}", "can you find {the}?", "mark {the}",
    "highlight {the}", "which one is {the}?", "I'm looking for {the}", "box {the}",
    "detect {the}", "select {the}", "pick {the}", "get {the}",
    "Kindly indicate {the}.", "identify {the}", "draw a box around {the}", "could you show {the}?",
    "I need {the}", "point out {the} please", "give me {the}", "tell me where {the} is",
)
# Frames for a conditional count. {np}: plural noun phrase, {cmp}: "more than two".
_COUNT_FRAMES = (
    "find the {np} if there are {cmp}", "if there are {cmp} {np}, find them", "show all {np} when there are {cmp}",
    "{np}, but only if there are {cmp}", "mark the {np} in case there are {cmp} of them",
    "are there {cmp} {np}? if so, show them", "detect {np} only if the count is {cmp}",
    "find every {np_sg} provided there are {cmp}", "if the belt holds {cmp} {np}, box them",
    "locate the {np} when their number is {cmp}", "highlight the {np} if you see {cmp}",
    "only when {cmp} {np} are present, point them out",
)


def _split_frames(frames: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    # Every fourth frame is held out, so both splits mix imperatives, questions and noun phrases.
    return {
        "train": tuple(f for i, f in enumerate(frames) if i % 4 != 3),
        "test": tuple(f for i, f in enumerate(frames) if i % 4 == 3),
    }


# The synthetic line's vocabulary and words. A user's data brings its own (``promptdet.data.user_vocab``).
SYNTH = Lexicon(
    categories=CATEGORIES, colors=COLORS, types=(), defects=DEFECTS,
    looks_by_category=COLORS_BY_CATEGORY, defects_by_category=DEFECTS_BY_CATEGORY,
    category_words=CATEGORY_WORDS, generic_words=GENERIC_WORDS, look_words=COLOR_WORDS,
    defect_adj=DEFECT_ADJ, defect_post=DEFECT_POST, not_defect_adj=NOT_DEFECT_ADJ, not_defect_post=NOT_DEFECT_POST,
)

SET_FRAMES = _split_frames(_SET_FRAMES)
SINGLE_FRAMES = _split_frames(_SINGLE_FRAMES)
COUNT_FRAMES = _split_frames(_COUNT_FRAMES)

_IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
                      "foot": "feet", "tooth": "teeth", "knife": "knives", "leaf": "leaves", "sheep": "sheep",
                      "fish": "fish", "deer": "deer", "skis": "skis", "glasses": "glasses", "scissors": "scissors",
                      # names that are plural already (general_vocab's foreign names)
                      "sunglasses": "sunglasses", "jeans": "jeans", "trousers": "trousers", "pliers": "pliers",
                      "headphones": "headphones", "noodles": "noodles", "stairs": "stairs", "chopsticks": "chopsticks"}

# Words a typo must never touch: a flip or a hue rule reads them, and a misspelt one would
# make the instruction silently false after augmentation.
_PROTECTED = re.compile(
    r"left|right|top|bottom|upper|lower|above|below|high|low|most|"
    # the words that carry a boolean instruction's meaning ("except" -> "exept" would lose the "not")
    r"^(?:not|no|non|without|except|excluding|other|apart|besides|but|leaving|still|free|intact|undamaged|"
    r"uncracked|unscratched|undented|unstained|unblemished|capped|clean|good|sound|either|or|and|plus|pass|"
    r"passes|passing|reject|rejects|rejected|conforming|nonconforming|accepted|acceptable|isn't|fail|fails|failed|"
    r"spec|scrap|scrapped|broken|worn|faulty|damaged|defective|conform|meet|meets|findings|condition)$|"
    r"-free|^non-|"
    + "|".join(w for ws in COLOR_WORDS.values() for w in ws),
    re.IGNORECASE,
)


def pluralize(noun_phrase: str) -> str:
    """Plural of a noun phrase, inflecting its last word: "traffic light" -> "traffic lights"."""
    words = noun_phrase.split(" ")
    last = words[-1]
    lower = last.lower()
    if lower in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[lower]
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        plural = last + "es"
    elif re.search(r"[^aeiou]y$", lower):
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return " ".join(words[:-1] + [plural])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def noun_phrase(rng: np.random.Generator, category: str | None, color: str | None = None,
                defect: str | None = None, plural: bool = True, noun: str | None = None, lex: Lexicon = SYNTH) -> str:
    """A noun phrase for the parts a selector picks: "red bottles", "cans with a dent", "faulty parts".

    ``category`` is a category of ``lex`` (or None for any part); ``color`` is any look (a colour
    or a type); ``noun`` overrides the head noun with a free-form name (used by importers).
    """
    head = noun if noun is not None else _choice(rng, lex.category_words[category] if category else lex.generic_words)
    if plural:
        head = pluralize(head)
    pre: list[str] = []
    post = ""
    if defect is not None:
        if rng.random() < 0.5:
            pre.append(_choice(rng, lex.defect_adj[defect]))
        else:
            post = _choice(rng, lex.defect_post[defect])[1 if plural else 0]
    if color is not None:
        pre.append(_choice(rng, lex.look_words[color]))
    return " ".join(pre + [head] + ([post] if post else []))


def set_instruction(rng: np.random.Generator, split: str, category: str | None, color: str | None = None,
                    defect: str | None = None, noun: str | None = None, lex: Lexicon = SYNTH) -> str:
    """An instruction asking for every part that matches: "where are the scratched cans?"."""
    _check_split(split)
    frame = _choice(rng, lex.frames(SET_FRAMES[split]))
    text = frame.format(np=noun_phrase(rng, category, color, defect, True, noun, lex),
                        np_sg=noun_phrase(rng, category, color, defect, False, noun, lex))
    return _finish(rng, text, lex=lex)


def category_instruction(name: str, rng: np.random.Generator, split: str = "train") -> str:
    """Phrase a free-form category name ("traffic light") with the split's set frames."""
    name = " ".join(name.replace("_", " ").split())
    if not name:
        raise ValueError("category name is empty")
    return set_instruction(rng, split, None, noun=name)


def extreme_instruction(rng: np.random.Generator, split: str, extreme: str, category: str | None,
                        color: str | None = None, lex: Lexicon = SYNTH, defect: str | None = None) -> str:
    """One part picked by position or size: "the leftmost bolt", "the gear that is the largest"."""
    _check_split(split)
    adjs, posts = EXTREME_WORDS[extreme]
    sg = noun_phrase(rng, category, color, defect, plural=False, lex=lex)
    if extreme in ("largest", "smallest") and rng.random() < 0.25:
        the = f"the {_choice(rng, adjs)} of the {noun_phrase(rng, category, color, defect, plural=True, lex=lex)}"
    elif rng.random() < 0.55:
        the = f"the {_choice(rng, adjs)} {sg}"
    else:
        the = f"the {sg} {_choice(rng, posts)}"
    return _finish(rng, _choice(rng, lex.frames(SINGLE_FRAMES[split])).format(the=the), lex=lex)


def relation_instruction(rng: np.random.Generator, split: str, relation: str, category: str | None,
                         ref_category: str, ref_color: str | None, lex: Lexicon = SYNTH) -> str:
    """One part picked relative to a unique reference: "the nut left of the gear"."""
    _check_split(split)
    target = noun_phrase(rng, category, None, None, plural=False, lex=lex)
    ref = noun_phrase(rng, ref_category, ref_color, None, plural=False, lex=lex)
    link = _choice(rng, ("", "that is ", "which is ")) if rng.random() < 0.3 else ""
    the = f"the {target} {link}{_choice(rng, RELATION_WORDS[relation])} the {ref}"
    return _finish(rng, _choice(rng, lex.frames(SINGLE_FRAMES[split])).format(the=the), lex=lex)


def count_instruction(rng: np.random.Generator, split: str, op: str, n: int, category: str | None,
                      color: str | None = None, lex: Lexicon = SYNTH) -> str:
    """A conditional request: "find the washers if there are more than two"."""
    _check_split(split)
    number = NUMBER_WORDS[n] if (n < len(NUMBER_WORDS) and rng.random() < 0.7) else str(n)
    cmp = _choice(rng, COUNT_WORDS[op]).format(n=number)
    text = _choice(rng, lex.frames(COUNT_FRAMES[split])).format(
        np=noun_phrase(rng, category, color, None, True, lex=lex),
        np_sg=noun_phrase(rng, category, color, None, False, lex=lex), cmp=cmp)
    return _finish(rng, text, lex=lex)


def _finish(rng: np.random.Generator, text: str, typo_rate: float = 0.05, lex: Lexicon = SYNTH) -> str:
    """Surface variation: capitalisation, a trailing full stop, and now and then one typo."""
    if rng.random() < typo_rate:
        text = _typo(rng, text, lex.color_tokens)
    if rng.random() < 0.3 and text[0].islower():
        text = text[0].upper() + text[1:]
    if rng.random() < 0.1 and text[-1] not in ".?":
        text += "."
    return text


def _typo(rng: np.random.Generator, text: str, protected: frozenset[str] = frozenset()) -> str:
    """One typo in a word that no rule reads; ``protected``: more such words (a user's colours)."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words)
                  if len(w) >= 4 and w.isalpha() and not _PROTECTED.search(w) and w.lower() not in protected]
    if not candidates:
        return text
    i = _choice(rng, candidates)
    w = words[i]
    j = int(rng.integers(1, len(w) - 1))
    kind = int(rng.integers(3))
    if kind == 0:  # swapped neighbours
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == 1:  # dropped letter
        w = w[:j] + w[j + 1:]
    else:  # doubled letter
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)
