"""The phrase cache: JSON lines ``{"caption", "phrases": [[word, ...], ...], "spans": [[[start, end], ...], ...]}``
keyed by :func:`phrase_key`, the one place the key is built.

``spans`` holds, for each tuple of ``phrases``, the character spans ``[start, end)`` of the
caption's words it was parsed from (its object's head, its attribute; a relation's subject
head, relation words and object head). Masked language modelling uses them to hide every
phrase that holds a masked word, whatever form the word takes in the phrase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..core.fileio import PathLike, append_json_lines, read_json_lines
from .captions import CaptionRecord

Span = tuple[int, int]
REBUILD = "delete the file and run `mvptr prepare phrases` again"


@dataclass(frozen=True)
class ParsedCaption:
    """A caption's tuples and, aligned with them, the character spans each was parsed from."""

    tuples: list[tuple[str, ...]]
    spans: list[tuple[Span, ...]]

    def __post_init__(self):
        if len(self.tuples) != len(self.spans):
            raise ValueError(f"{len(self.tuples)} tuples but {len(self.spans)} span lists")


# --------------------------------------------------------------------------- phrase cache

def phrase_key(record: CaptionRecord) -> str:
    """A caption's key in the phrase cache: its text. Its phrases depend on nothing else, so an
    edited caption is parsed anew, and captions of two images with one id, or ids that an
    image id map changes, never take each other's phrases."""
    return record.caption


def write_phrase_cache(path: PathLike, records: Iterable[tuple[str, ParsedCaption]]) -> None:
    """Append ``(caption, parsed)`` records as JSON lines ``{"caption": ..., "phrases": [[...], ...],
    "spans": [[[start, end], ...], ...]}`` (the caption is the :func:`phrase_key`).

    A torn last line left by an interrupted write is cut off first, so appending
    always continues after the last complete record.
    """
    append_json_lines(path, ({"caption": str(key), "phrases": [list(t) for t in parsed.tuples],
                              "spans": [[list(s) for s in spans] for spans in parsed.spans]}
                             for key, parsed in records))


def _good_tuples(phrases) -> bool:
    return isinstance(phrases, list) and all(
        isinstance(t, list) and len(t) in (2, 3) and all(isinstance(w, str) for w in t) for t in phrases)


def _good_spans(spans, n_tuples: int, caption: str) -> bool:
    def span_ok(s) -> bool:
        return (isinstance(s, list) and len(s) == 2 and all(type(x) is int for x in s)
                and 0 <= s[0] < s[1] <= len(caption))

    return isinstance(spans, list) and len(spans) == n_tuples and all(
        isinstance(ss, list) and ss and all(span_ok(s) for s in ss) for ss in spans)


def read_phrase_cache(path: PathLike, skip: SkippedSamples | None = None) -> dict[str, ParsedCaption]:
    """Read a phrase cache: caption -> :class:`ParsedCaption`; a later record of a caption replaces
    an earlier one.

    An unterminated last line that is not valid JSON (an interrupted write) is ignored.
    With ``skip``, a malformed line is recorded there and left out. A cache of an earlier
    version (keyed by ids, or without spans) is refused: it must be parsed again.
    """
    cache: dict[str, ParsedCaption] = {}
    for n, rec in read_json_lines(path, skip):
        if isinstance(rec, dict) and "id" in rec and "caption" not in rec:
            raise FormatError(f"{path} line {n}: a record keyed by image and sentence id, the phrase cache of an "
                              f"earlier version; {REBUILD}", "old phrase cache")
        phrases = rec.get("phrases") if isinstance(rec, dict) else None
        caption = rec.get("caption") if isinstance(rec, dict) else None
        if not isinstance(caption, str) or not _good_tuples(phrases):
            skip_or_raise(skip, FormatError(f"{path} line {n}: expected {{\"caption\": ..., \"phrases\": "
                                             f"[[object, attribute] or [subject, relation, object], ...], "
                                             f"\"spans\": [...]}}", "bad phrase record"))
            continue
        if "spans" not in rec:  # every record of such a file lacks them: it is not skipped, it is made again
            raise FormatError(f"{path} line {n}: a record without \"spans\", the phrase cache of an earlier "
                              f"version; {REBUILD}", "old phrase cache")
        if not _good_spans(rec["spans"], len(phrases), caption):
            skip_or_raise(skip, FormatError(f"{path} line {n}: expected \"spans\" to hold, for each of the "
                                             f"{len(phrases)} phrases, a list of [start, end] character offsets "
                                             f"within the caption ({len(caption)} characters); {REBUILD}",
                                             "bad phrase record"))
            continue
        cache[caption] = ParsedCaption([tuple(t) for t in phrases],
                                       [tuple((s[0], s[1]) for s in ss) for ss in rec["spans"]])
    return cache
