"""The phrase cache: JSON lines ``{"caption", "phrases": [[word, ...], ...]}`` keyed by
:func:`phrase_key`, the one place the key is built."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..core.fileio import PathLike, append_json_lines, read_json_lines
from .captions import CaptionRecord

# --------------------------------------------------------------------------- phrase cache

def phrase_key(record: CaptionRecord) -> str:
    """A caption's key in the phrase cache: its text. Its phrases depend on nothing else, so an
    edited caption is parsed anew, and captions of two images with one id, or ids that an
    image id map changes, never take each other's phrases."""
    return record.caption


def write_phrase_cache(path: PathLike,
                       records: Iterable[tuple[str, Sequence[Sequence[str]]]]) -> None:
    """Append ``(caption, tuples)`` records as JSON lines ``{"caption": ..., "phrases": [[...], ...]}``
    (the caption is the :func:`phrase_key`).

    A torn last line left by an interrupted write is cut off first, so appending
    always continues after the last complete record.
    """
    append_json_lines(path, ({"caption": str(key), "phrases": [list(t) for t in tuples]} for key, tuples in records))


def read_phrase_cache(path: PathLike, skip: SkippedSamples | None = None) -> dict[str, list[tuple[str, ...]]]:
    """Read a phrase cache: caption -> tuples; a later record of a caption replaces an earlier one.

    An unterminated last line that is not valid JSON (an interrupted write) is ignored.
    With ``skip``, a malformed line is recorded there and left out.
    """
    cache: dict[str, list[tuple[str, ...]]] = {}
    for n, rec in read_json_lines(path, skip):
        if isinstance(rec, dict) and "id" in rec and "caption" not in rec:
            raise FormatError(f"{path} line {n}: a record keyed by image and sentence id, the phrase cache of an "
                              f"earlier version; delete the file and run `mvptr prepare phrases` again",
                              "old phrase cache")
        phrases = rec.get("phrases") if isinstance(rec, dict) else None
        if phrases is None or not isinstance(rec.get("caption"), str) or not isinstance(phrases, list) or not all(
                isinstance(t, list) and len(t) in (2, 3) and all(isinstance(w, str) for w in t) for t in phrases):
            skip_or_raise(skip, FormatError(f"{path} line {n}: expected {{\"caption\": ..., \"phrases\": "
                                             f"[[object, attribute] or [subject, relation, object], ...]}}",
                                             "bad phrase record"))
            continue
        cache[rec["caption"]] = [tuple(t) for t in phrases]
    return cache
