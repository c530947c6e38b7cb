"""What instructions may name, and the words for it: the synthetic line's vocabulary, or a user's.

The instruction builders (``promptdet.data.synth.instruct`` and ``logic``) ask a ``Lexicon`` which
categories, looks and defects exist; the templates ask it for words. One set of builders and
templates thus serves the synthetic conveyor and a user's imported data alike.

A *look* is a property said before the noun: a colour ("red cans") or a type ("mono cells").
Scene objects carry ``category``, ``color`` (a colour or None), ``types`` (a list; only imported
data has them) and ``defects`` (a list). In a query a colour is a ``color`` leaf and a type a
``type`` leaf (``promptdet.data.query``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Frames that speak of the conveyor ("select every bottle on the belt") are false of a user's images.
_LINE_WORDS = re.compile(r"\b(belt|conveyor)\b")


@dataclass(frozen=True)
class Lexicon:
    """Names (the scene facts' strings) and words (what instructions say for them).

    looks_by_category / defects_by_category: the looks and defects a category can have, for the
    absent and negated questions. defect_adj / defect_post hold an ``"any"`` entry ("defective",
    "with a defect"). *_post entries are (singular, plural) phrases said after the noun.
    line_words: whether sentence frames may mention the belt or the conveyor.
    describe_by_defect: whether a spatial or size question may pick among the parts with a defect
    ("the leftmost cracked cell"); off for the synthetic line, whose stored val/test files were
    drawn without such questions.
    """

    categories: tuple[str, ...]
    colors: tuple[str, ...]
    types: tuple[str, ...]
    defects: tuple[str, ...]
    looks_by_category: Mapping[str, tuple[str, ...]]
    defects_by_category: Mapping[str, tuple[str, ...]]
    category_words: Mapping[str, tuple[str, ...]]
    generic_words: tuple[str, ...]
    look_words: Mapping[str, tuple[str, ...]]
    defect_adj: Mapping[str, tuple[str, ...]]
    defect_post: Mapping[str, tuple[tuple[str, str], ...]]
    not_defect_adj: Mapping[str, tuple[str, ...]]
    not_defect_post: Mapping[str, tuple[tuple[str, str], ...]]
    line_words: bool = True
    describe_by_defect: bool = False

    @property
    def looks(self) -> tuple[str, ...]:
        return self.colors + self.types

    def is_color(self, look: str) -> bool:
        return look in self.colors

    def look_leaf(self, look: str) -> dict:
        """The query leaf that selects ``look``: ``{"color": "red"}`` or ``{"type": "mono"}``."""
        return {"color": look} if look in self.colors else {"type": look}

    def same_kind(self, look: str, options) -> list[str]:
        """The looks of ``options`` of the same kind as ``look`` ("red or blue", never "red or mono")."""
        return [o for o in options if self.is_color(o) == self.is_color(look)]

    @property
    def color_tokens(self) -> frozenset[str]:
        """The words of colour phrases, lower-cased: a typo must not hide a colour from the hue rule
        of the augmentation (``transforms.names_colour``), or a hue shift could falsify the text."""
        return frozenset(t.lower() for c in self.colors for w in self.look_words[c] for t in w.split())

    def frames(self, frames: tuple[str, ...]) -> tuple[str, ...]:
        return frames if self.line_words else tuple(f for f in frames if not _LINE_WORDS.search(f))


def looks_of(obj: dict) -> list[str]:
    """A scene object's looks: its colour (if it has one), then its types."""
    color = obj.get("color")
    return ([color] if color else []) + list(obj.get("types", ()))


def look_of(select: dict) -> str | None:
    """The look a leaf names (its colour or its type), or None."""
    return select.get("color") or select.get("type")
