"""Wordings of the boolean instructions: negation, exclusion, disjunction, conjunction, jargon.

Same two layers as ``templates``: the lexicon (how "not damaged", "or", "NG" are said) is shared by
both splits, so every concept is seen in training; the sentence frames are split, so the test
split measures wordings the model never saw. No orientation word appears here, so a flip keeps
every instruction true.
"""

from __future__ import annotations

import numpy as np

from promptdet.data.lexicon import Lexicon
from promptdet.data.synth import templates as T
from promptdet.data.synth.templates import SYNTH

# "not defective": prenominal adjectives and postnominal (singular, plural) phrases.
GOOD_ADJ = ("undamaged", "intact", "defect-free", "flawless", "non-defective", "good", "sound", "unblemished")
GOOD_POST = (("without a defect", "without defects"), ("with no damage", "with no damage"),
             ("that is not damaged", "that are not damaged"), ("in good condition", "in good condition"),
             ("free of defects", "free of defects"), ("that has no defect", "that have no defects"))

# "not <defect>" is part of the lexicon (``templates.SYNTH``); these names stay for readers.
NOT_DEFECT_ADJ = T.NOT_DEFECT_ADJ
NOT_DEFECT_POST = T.NOT_DEFECT_POST

# The inspector's words. Fail: the part is rejected for any defect. Pass: it has none.
FAIL_ADJ = ("NG", "rejected", "non-conforming", "out-of-spec", "broken", "worn", "bad", "failed", "defective",
            "damaged", "faulty", "nonconforming", "scrap")
FAIL_POST = (("that should be rejected", "that should be rejected"), ("that is out of spec", "that are out of spec"),
             ("that fails QC", "that fail QC"), ("to reject", "to reject"), ("marked NG", "marked NG"),
             ("that is not up to spec", "that are not up to spec"), ("that does not conform", "that do not conform"),
             ("that needs to be scrapped", "that need to be scrapped"), ("that fails the check", "that fail the check"))
PASS_ADJ = ("OK", "good", "conforming", "in-spec", "passing", "acceptable", "accepted", "pass")
PASS_POST = (("that passes inspection", "that pass inspection"), ("that is within spec", "that are within spec"),
             ("that is OK", "that are OK"), ("with no findings", "with no findings"),
             ("that meets the spec", "that meet the spec"), ("that passes QC", "that pass QC"))
# Nouns an inspector uses for a part that failed: "the rejects", "every NG".
FAIL_NOUNS = (("reject", "rejects"), ("NG", "NGs"), ("defect", "defects"), ("failure", "failures"), ("bad part", "bad parts"))

# "but": everything except a kind.
_EXCLUDE_FRAMES = (
    "find everything but the {np}", "all {all} except the {np}", "every {all_sg} apart from the {np}",
    "everything except {np}", "all the {all} that are not {np}", "find all {all} other than {np}",
    "mark every {all_sg} except the {np}", "show me all {all} but not the {np}",
    "detect all {all} excluding the {np}", "anything other than {np}", "everything that is not one of the {np}",
    "all {all}, leaving out the {np}", "box everything except the {np}", "highlight all {all} besides the {np}",
    "select every {all_sg} that isn't a {np_sg}", "find all {all} except for {np}",
)
# Negated colour on a kind: "cans other than the red ones".
_OTHER_COLOUR_FRAMES = (
    "{np} other than the {col} ones", "{np} that are not {col}", "all {np} except the {col} ones",
    "every {np_sg} that isn't {col}", "find the {np} that are not {col}", "non-{col} {np}",
    "{np}, but not the {col} ones", "show me the {np} which are not {col}", "the {np} excluding {col} ones",
    "locate {np} in any colour but {col}", "detect {np} that are any colour except {col}",
    "mark all {np} apart from the {col} ones",
)
EXCLUDE_FRAMES = T._split_frames(_EXCLUDE_FRAMES)
OTHER_COLOUR_FRAMES = T._split_frames(_OTHER_COLOUR_FRAMES)
ALL_WORDS = (("part", "parts"), ("item", "items"), ("object", "objects"), ("thing", "things"), ("piece", "pieces"))
_OR_WORDS = ("or", "or", "and/or")
_AND_WORDS = ("and", "as well as", "plus")


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _head(rng, category: str | None, plural: bool, lex: Lexicon = SYNTH) -> str:
    head = _choice(rng, lex.category_words[category] if category else lex.generic_words)
    return T.pluralize(head) if plural else head


def _with(rng, head: str, pre: list[str], post: str) -> str:
    return " ".join(pre + [head] + ([post] if post else []))


def good_np(rng, category: str | None, defect: str, plural: bool, lex: Lexicon = SYNTH) -> str:
    """"undamaged nuts", "bottles that still have their caps", "OK parts" (defect "any" or one kind)."""
    head = _head(rng, category, plural, lex)
    if defect == "any":
        if rng.random() < 0.5:
            return _with(rng, head, [_choice(rng, GOOD_ADJ)], "")
        return _with(rng, head, [], _choice(rng, GOOD_POST)[int(plural)])
    if rng.random() < 0.4:
        return _with(rng, head, [_choice(rng, lex.not_defect_adj[defect])], "")
    return _with(rng, head, [], _choice(rng, lex.not_defect_post[defect])[int(plural)])


def jargon_np(rng, category: str | None, passing: bool, plural: bool, lex: Lexicon = SYNTH) -> str:
    """"NG bottles", "parts to reject", "the rejects", "OK cans", "items that pass QC"."""
    if not passing and category is None and rng.random() < 0.25:
        return _choice(rng, FAIL_NOUNS)[int(plural)]
    head = _head(rng, category, plural, lex)
    adjs, posts = (PASS_ADJ, PASS_POST) if passing else (FAIL_ADJ, FAIL_POST)
    if rng.random() < 0.55:
        return _with(rng, head, [_choice(rng, adjs)], "")
    return _with(rng, head, [], _choice(rng, posts)[int(plural)])


def _set_frame(rng, split: str, np_pl: str, np_sg: str, lex: Lexicon = SYNTH) -> str:
    return T._finish(rng, _choice(rng, lex.frames(T.SET_FRAMES[split])).format(np=np_pl, np_sg=np_sg), lex=lex)


def negation_instruction(rng, split: str, category: str | None, defect: str | None = None,
                         color: str | None = None, lex: Lexicon = SYNTH) -> str:
    """Parts of a kind without a defect ("undamaged nuts") or without a look ("cans other than the red
    ones", "cells that are not mono"); ``color`` is any look."""
    T._check_split(split)
    if color is not None:
        frames = OTHER_COLOUR_FRAMES[split]
        if not lex.is_color(color):  # "in any colour but mono" would be nonsense
            frames = tuple(f for f in frames if "colour" not in f)
        frame = _choice(rng, frames)
        col = _choice(rng, lex.look_words[color])
        return T._finish(rng, frame.format(np=_head(rng, category, True, lex), np_sg=_head(rng, category, False, lex),
                                           col=col), lex=lex)
    return _set_frame(rng, split, good_np(rng, category, defect, True, lex), good_np(rng, category, defect, False, lex),
                      lex)


def exclusion_instruction(rng, split: str, category: str, color: str | None = None, lex: Lexicon = SYNTH) -> str:
    """Every part but one kind: "everything but the gears", "all parts except the red cans"."""
    T._check_split(split)
    frame = _choice(rng, EXCLUDE_FRAMES[split])
    word_sg, word_pl = _choice(rng, ALL_WORDS)
    return T._finish(rng, frame.format(np=T.noun_phrase(rng, category, color, None, True, lex=lex),
                                       np_sg=T.noun_phrase(rng, category, color, None, False, lex=lex),
                                       all=word_pl, all_sg=word_sg), lex=lex)


def _either(rng, words: list[str], joiner: str) -> str:
    return f" {joiner} ".join(words) if len(words) == 2 else ", ".join(words[:-1]) + f" {joiner} " + words[-1]


def disjunction_instruction(rng, split: str, category: str | None, defects: tuple[str, ...] = (),
                            colors: tuple[str, ...] = (), categories: tuple[str, ...] = (),
                            lex: Lexicon = SYNTH) -> str:
    """Either of two defects, looks or kinds: "cans with a dent or a scratch", "blue or red boxes",
    "the nuts and the washers" (a union, however it is joined). ``colors`` are looks of one kind."""
    T._check_split(split)
    if categories:
        joiner = _choice(rng, _OR_WORDS + _AND_WORDS)
        nps = [T.noun_phrase(rng, c, None, None, True, lex=lex) for c in categories]
        return _set_frame(rng, split, _either(rng, nps, joiner),
                          _either(rng, [T.noun_phrase(rng, c, None, None, False, lex=lex) for c in categories], "or"),
                          lex)
    joiner = _choice(rng, _OR_WORDS)
    if colors:
        cols = _either(rng, [_choice(rng, lex.look_words[c]) for c in colors], joiner)
        # "cells in mono or poly" is said of colours only; a type always goes before the noun.
        if rng.random() < 0.5 or not lex.is_color(colors[0]):
            return _set_frame(rng, split, f"{cols} {_head(rng, category, True, lex)}",
                              f"{cols} {_head(rng, category, False, lex)}", lex)
        pl, sg = _head(rng, category, True, lex), _head(rng, category, False, lex)
        return _set_frame(rng, split, f"{pl} in {cols}", f"{sg} in {cols}", lex)
    if rng.random() < 0.5:
        adjs = _either(rng, [_choice(rng, lex.defect_adj[d]) for d in defects], joiner)
        return _set_frame(rng, split, f"{adjs} {_head(rng, category, True, lex)}",
                          f"{adjs} {_head(rng, category, False, lex)}", lex)
    posts = [_choice(rng, lex.defect_post[d]) for d in defects]  # "cans with a dent or that are scratched"
    pl = f"{_head(rng, category, True, lex)} {_either(rng, [p[1] for p in posts], joiner)}"
    sg = f"{_head(rng, category, False, lex)} {_either(rng, [p[0] for p in posts], joiner)}"
    return _set_frame(rng, split, pl, sg, lex)


def conjunction_instruction(rng, split: str, category: str | None, color: str, defect: str,
                            lex: Lexicon = SYNTH) -> str:
    """A look and a defect on one kind: "scratched red cans", "blue bottles with a missing cap"."""
    T._check_split(split)
    return _set_frame(rng, split, T.noun_phrase(rng, category, color, defect, True, lex=lex),
                      T.noun_phrase(rng, category, color, defect, False, lex=lex), lex)


def jargon_instruction(rng, split: str, category: str | None, passing: bool, lex: Lexicon = SYNTH) -> str:
    """An inspector's request: "NG bottles", "show the rejects", "OK parts", "cans that pass QC"."""
    T._check_split(split)
    return _set_frame(rng, split, jargon_np(rng, category, passing, True, lex),
                      jargon_np(rng, category, passing, False, lex), lex)
