"""Compositional probes of the demo world: does a model understand relations and which
attribute belongs to which shape, or does it read a caption as a bag of words?

From each test image with two shapes in a clear relation (``relation`` clarity at least 1.5,
what the world's captions and questions call clear), one true caption in the world's wording,
"A big red circle above a small blue square.", against three false ones (ARO's probes):

* ``relation_swap``: subject and object swapped, "A small blue square above a big red circle.";
* ``attribute_swap``: the two shapes' colours exchanged ("A big blue circle above a small red
  square."), or their sizes when they have one colour; kept only when no pair of shapes in
  the image fits the false caption's two descriptions at all;
* ``word_shuffle``: the true caption's words in a shuffled order (ARO's order perturbation).

And Winoground-style groups (``probe_images``): two newly rendered images and two captions of
the same words, each caption true of one image. ``probe_set.build_probe_set`` gathers them all;
scoring: ``mvptr.eval.probes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .scenes import RELATIONS, SIZE_WORDS, WorldObject, relation

__all__ = ["CLEAR", "PAIR_KINDS", "CaptionIndex", "Mention", "Statement", "caption_text", "exists_pair", "holds",
           "image_probes"]

CLEAR = 1.5  # relation clarity the world's captions and questions call clear
PAIR_KINDS = ("relation_swap", "attribute_swap", "word_shuffle")


@dataclass(frozen=True)
class Mention:
    size_word: str  # "small", "big" or "large"
    color: str
    shape: str

    @classmethod
    def of(cls, obj: WorldObject, rng: np.random.Generator) -> Mention:
        return cls(str(rng.choice(SIZE_WORDS[obj.size])), obj.color, obj.shape)

    def fits(self, obj: WorldObject) -> bool:
        return obj.shape == self.shape and obj.color == self.color and self.size_word in SIZE_WORDS[obj.size]

    @property
    def words(self) -> list[str]:
        return ["a", self.size_word, self.color, self.shape]


@dataclass(frozen=True)
class Statement:
    """"<subject> <relation> <object>": the subject is ``rel`` of the object (a ``RELATIONS`` key)."""

    subject: Mention
    rel: str
    wording: str  # one of RELATIONS[rel]
    obj: Mention

    @property
    def words(self) -> list[str]:
        return [*self.subject.words, *self.wording.split(), *self.obj.words]

    def swapped(self) -> Statement:
        return Statement(self.obj, self.rel, self.wording, self.subject)


def caption_text(words: Sequence[str]) -> str:
    """The world's way of writing a caption: first word capitalised, a full stop at the end."""
    words = [w.lower() for w in words]
    return " ".join([words[0].capitalize(), *words[1:]]) + "."


def holds(objects: Sequence[WorldObject], st: Statement) -> bool:
    """Whether two shapes of the scene fit the subject and object, the subject ``st.rel`` of the other."""
    return any(a is not b and st.subject.fits(a) and st.obj.fits(b) and relation(a, b)[0] == st.rel
               for a in objects for b in objects)


def exists_pair(objects: Sequence[WorldObject], st: Statement) -> bool:
    """Whether two shapes of the scene fit the subject and object, wherever they are."""
    return any(a is not b and st.subject.fits(a) and st.obj.fits(b) for a in objects for b in objects)


def _attribute_swap(st: Statement) -> Statement | None:
    """The colours exchanged, or the size words when the colours are one; None when both are."""
    s, o = st.subject, st.obj
    if s.color != o.color:
        return replace(st, subject=replace(s, color=o.color), obj=replace(o, color=s.color))
    if s.size_word != o.size_word:
        return replace(st, subject=replace(s, size_word=o.size_word), obj=replace(o, size_word=s.size_word))
    return None


def _shuffled(words: list[str], rng: np.random.Generator) -> list[str]:
    """The words in a random order that is not theirs (one distinct word only: an error)."""
    if len(set(words)) < 2:
        raise ValueError(f"cannot shuffle {words}: one word only")
    while True:
        order = [words[int(k)] for k in rng.permutation(len(words))]
        if order != words:
            return order


def image_probes(objects: Sequence[WorldObject], rng: np.random.Generator) -> tuple[list[str], dict] | None:
    """(true caption's words, {kind: false caption's words}) of one scene, or None when no two
    of its shapes are in a clear relation. The attribute swap is left out when it could be true."""
    clear = [(i, j) for i in range(len(objects)) for j in range(len(objects))
             if i != j and relation(objects[i], objects[j])[1] >= CLEAR]
    if not clear:
        return None
    i, j = clear[int(rng.integers(len(clear)))]
    rel = relation(objects[i], objects[j])[0]
    wording = str(rng.choice(RELATIONS[rel]))
    true = Statement(Mention.of(objects[i], rng), rel, wording, Mention.of(objects[j], rng))
    if not holds(objects, true):
        raise AssertionError(f"the probe caption {true.words} is not true of its scene")
    false = {}
    swapped = true.swapped()
    if not holds(objects, swapped):  # the reverse of a relation along its axis
        false["relation_swap"] = swapped.words
    attribute = _attribute_swap(true)
    if attribute is not None and not exists_pair(objects, attribute):
        false["attribute_swap"] = attribute.words
    false["word_shuffle"] = _shuffled(true.words, rng)
    return true.words, false


class CaptionIndex:
    """Caption strings, each stored once: their index by text."""

    def __init__(self):
        self.texts: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, words: Sequence[str]) -> int:
        text = caption_text(words)
        if text not in self._index:
            self._index[text] = len(self.texts)
            self.texts.append(text)
        return self._index[text]
