"""A dataset vocabulary: what a user's class names and box attributes mean, and how to say them.

The file (YAML)::

    classes:                      # optional: synonyms per class; a class not listed is said by its name
      cell: {synonyms: [solar cell, PV cell]}
    attributes:                   # every attribute a box may carry, with its kind
      defective: {kind: defect, synonyms: [cracked, faulty]}
      mono: {kind: type, synonyms: [monocrystalline]}
      red: {kind: color}

Kinds: ``defect`` (a flaw: "defective cells", "cells that are not defective", "NG cells"),
``color`` (at most one per box: "red cells") and ``type`` (any other property said before the
noun: "mono cells"). A name is said as itself (underscores read as spaces) and as each synonym;
the words of an attribute are adjectives. Errors name the key: ``attributes.mono.kind``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptdet.config import ConfigError, read_yaml
from promptdet.data.lexicon import Lexicon
from promptdet.data.synth import templates as T

KINDS = ("defect", "color", "type")
_TOP_KEYS = ("classes", "attributes")
# "any" is the query language's "has some defect"; an attribute of that name would be ambiguous.
_RESERVED = ("any",)


@dataclass(frozen=True)
class UserVocab:
    """classes: name -> synonyms; attributes: name -> (kind, synonyms); both in file order."""

    classes: dict[str, tuple[str, ...]]
    attributes: dict[str, tuple[str, tuple[str, ...]]]
    path: str = "<vocabulary>"

    def kind(self, attribute: str) -> str | None:
        entry = self.attributes.get(attribute)
        return entry[0] if entry else None

    def of_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(name for name, (k, _) in self.attributes.items() if k == kind)

    def lexicon(self, categories: Iterable[str] = ()) -> Lexicon:
        """The Lexicon for this vocabulary's classes and ``categories`` (the data's own classes).

        Every category may carry every attribute: a user's labels do not say which go together.
        """
        cats = tuple(dict.fromkeys([*self.classes, *categories]))
        colors, types, defects = self.of_kind("color"), self.of_kind("type"), self.of_kind("defect")
        words = {name: _words(name, syn) for name, (_, syn) in self.attributes.items()}
        return Lexicon(
            categories=cats, colors=colors, types=types, defects=defects,
            looks_by_category={c: colors + types for c in cats},
            defects_by_category={c: defects for c in cats},
            category_words={c: _words(c, self.classes.get(c, ())) for c in cats},
            generic_words=T.GENERIC_WORDS,
            look_words={a: words[a] for a in colors + types},
            defect_adj={**{d: words[d] for d in defects}, "any": T.DEFECT_ADJ["any"]},
            defect_post={**{d: tuple((f"that is {w}", f"that are {w}") for w in words[d]) for d in defects},
                         "any": T.DEFECT_POST["any"]},
            not_defect_adj={d: tuple("non-" + w.replace(" ", "-") for w in words[d]) for d in defects},
            not_defect_post={d: tuple(p for w in words[d] for p in ((f"that is not {w}", f"that are not {w}"),
                                                                     (f"which is not {w}", f"which are not {w}")))
                             for d in defects},
            line_words=False, describe_by_defect=True,
        )


def _words(name: str, synonyms: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([" ".join(name.replace("_", " ").split()), *synonyms]))


def _fail(path: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}")


def _name(value: Any, path: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, f"a name must be a non-empty string, got {value!r}")
    return value.strip()


def _synonyms(entry: dict, path: str, key: str) -> tuple[str, ...]:
    value = entry.get("synonyms", [])
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(path, f"{key}.synonyms", f"expected a list of words, got {value!r}")
    out = []
    for i, word in enumerate(value):
        if not isinstance(word, str) or not word.strip() or "\n" in word:
            raise _fail(path, f"{key}.synonyms[{i}]", f"expected a non-empty word or phrase, got {word!r}")
        out.append(" ".join(word.split()))
    return tuple(out)


def _entry(value: Any, path: str, key: str, allowed: tuple[str, ...]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, key, f"expected a mapping such as {{synonyms: [...]}}, got {value!r}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise _fail(path, f"{key}.{unknown[0]}", f"unknown key (valid: {', '.join(allowed)})")
    return value


def parse_vocab(data: Any, path: str = "<vocabulary>") -> UserVocab:
    """A UserVocab from parsed YAML; ConfigError names the offending key (``attributes.mono.kind``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(path, "(top level)", f"expected a mapping with {' and '.join(_TOP_KEYS)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise _fail(path, str(unknown[0]), f"unknown key (valid: {', '.join(_TOP_KEYS)})")
    classes: dict[str, tuple[str, ...]] = {}
    for section in _TOP_KEYS:
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise _fail(path, section, f"expected a mapping of names, got {data[section]!r}")
    for raw, value in (data.get("classes") or {}).items():
        name = _name(raw, path, f"classes.{raw}")
        key = f"classes.{name}"
        classes[name] = _synonyms(_entry(value, path, key, ("synonyms",)), path, key)
    attributes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for raw, value in (data.get("attributes") or {}).items():
        name = _name(raw, path, f"attributes.{raw}")
        key = f"attributes.{name}"
        if name in _RESERVED:
            raise _fail(path, key, f"{name!r} is reserved (it means 'any defect' in queries); rename the attribute")
        if "," in name:
            raise _fail(path, key, "an attribute name cannot hold a comma (YOLO side files separate names by commas)")
        entry = _entry(value, path, key, ("kind", "synonyms"))
        if "kind" not in entry:
            raise _fail(path, f"{key}.kind", f"missing; one of {', '.join(KINDS)}")
        if entry["kind"] not in KINDS:
            raise _fail(path, f"{key}.kind", f"{entry['kind']!r} is not one of {', '.join(KINDS)}")
        attributes[name] = (entry["kind"], _synonyms(entry, path, key))
    return UserVocab(classes, attributes, path)


def load_vocab(path: str | Path) -> UserVocab:
    """Read and check a vocabulary file; ConfigError names the file and the key."""
    return parse_vocab(read_yaml(path, "vocabulary file"), str(path))


EMPTY = UserVocab({}, {}, "(none given: pass --vocab FILE)")  # class names only, no attributes
