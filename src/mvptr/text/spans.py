"""Where a phrase tuple's words sit in its caption: the tokens of a parsed caption that an
object head, an attribute or a relation came from, as character spans.

A word that cannot be located exactly falls back to every token whose lower-cased text or
lemma equals it: covering too many words only hides a phrase more often, covering too few
would let masked language modelling read a masked word through its phrase."""

from __future__ import annotations

from typing import Sequence

Span = tuple[int, int]


def token_span(token, offset: int = 0) -> Span:
    """The character span ``[start, end)`` of a spaCy token, shifted by ``offset``."""
    return offset + token.idx, offset + token.idx + len(token.text)


def head_tokens(root) -> list:
    """An entity's head: its root token and the compounds sng_parser joins to it."""
    return [root] + [c for c in root.children if c.dep_ == "compound"]


def word_tokens(doc, words: Sequence[str]) -> list:
    """The fallback: every token whose lower-cased text or lemma is one of ``words``."""
    wanted = set(words)
    return [t for t in doc if t.lower_ in wanted or t.lemma_.lower() in wanted]


def relation_tokens(doc, relation: str, subject: tuple[int, int], obj: tuple[int, int]) -> list:
    """The tokens of ``relation`` (lower-cased words) between the subject's and the object's
    token bounds, the occurrence nearest the object; the fallback when there is none."""
    words = relation.split()
    k = len(words)
    lo, hi = min(subject[1], obj[1]), max(subject[0], obj[0])
    runs = [i for i in range(lo, hi - k + 1) if [t.lower_ for t in doc[i:i + k]] == words]
    if not runs:
        return word_tokens(doc, words)
    best = min(runs, key=lambda i: obj[0] - (i + k) if i + k <= obj[0] else i - obj[1])
    return list(doc[best:best + k])
