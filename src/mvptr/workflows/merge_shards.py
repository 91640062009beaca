"""Corpus-scale preparation split across machines: ``--shard I/N`` and ``mvptr merge-shards``.

``mvptr prepare phrases``, ``mvptr features extract`` and ``mvptr features convert`` with
``--shard I/N`` do share I of N of their input (a contiguous share, so the shares in order
are the whole input) and write what they would write for it to ``<out>/shard-I-of-N/``,
finished by a ``shard.json`` that names the kind, the inputs and the settings. Any launcher
can run the N commands, on any machines that see the same files. ``mvptr merge-shards
<out>`` then checks that all N shares are there, finished, and of the same inputs, and
writes into ``<out>`` exactly what the unsharded command would have written:

* phrases: ``phrase_cache.jsonl`` (the shares' caches, in order) and ``phrase_vocab.json``
  (built from the merged cache; nothing is parsed again);
* features: ``features.tsv``, ``predictions.tsv`` (with their ``.lineidx``) and
  ``imageid2idx.json``;
* store: the feature store files (``meta.json`` last).

Skipped samples (``--skip-bad``) of the shares are merged into ``<out>/skipped.json``.
The shard directories are left in place; remove them once the merged output is checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import FormatError, OutputExistsError, SkippedSamples
from ..core.fileio import load_json, tmp_file
from ..core.shards import MARKER, SHARD_DIR_RE, shard_dir
from ..formats.phrase_cache import read_phrase_cache, write_phrase_cache
from ..formats.tsv import concat_tsv
from ..text.phrases import prepare_phrases
from ..vision.store_convert import merge_stores

__all__ = ["merge_shards"]


def _shares(out: Path) -> tuple[list[Path], dict]:
    """The shard directories of ``out`` in order, checked complete and alike, and their marker."""
    found: dict[int, set[int]] = {}
    for p in out.iterdir() if out.is_dir() else ():
        m = SHARD_DIR_RE.match(p.name)
        if m and p.is_dir():
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not found:
        raise FormatError(f"{out}: no shard-I-of-N directories to merge (a command with --shard I/N and "
                          f"--out {out} writes them)", "no shards")
    if len(found) > 1:
        raise FormatError(f"{out}: shards of several splits ({', '.join(f'of {n}' for n in sorted(found))}); "
                          "keep the directories of one --shard I/N count", "mixed shards")
    (count, indices), = found.items()
    missing = sorted(set(range(count)) - indices)
    if missing:
        raise FormatError(f"{out}: shard {', '.join(f'{i}/{count}' for i in missing)} missing; run the command "
                          f"with --shard I/{count} for each", "missing shard")
    dirs = [shard_dir(out, (i, count)) for i in range(count)]
    markers = []
    for d in dirs:
        if not (d / MARKER).is_file():
            raise FormatError(f"{d}: shard not finished (no {MARKER}); it failed or is still running: "
                              "run its command again", "unfinished shard")
        markers.append(load_json(d / MARKER))
    first = markers[0]
    for d, m in zip(dirs, markers):
        if not isinstance(m, dict) or (m.get("kind"), m.get("inputs")) != (first.get("kind"), first.get("inputs")):
            raise FormatError(f"{d / MARKER}: made by another command or from other inputs or settings than "
                              f"{dirs[0] / MARKER}; run every shard with the same command", "mixed shards")
    return dirs, first


def _merge_phrases(out: Path, dirs: list[Path], marker: dict) -> dict:
    if (out / "phrase_vocab.json").exists():
        raise OutputExistsError(f"{out / 'phrase_vocab.json'} already exists; remove it (and phrase_cache.jsonl) "
                                "to merge again")
    cache: dict = {}
    for d in dirs:
        cache.update(read_phrase_cache(d / "phrase_cache.jsonl"))
    tmp = tmp_file(out / "phrase_cache.jsonl")
    write_phrase_cache(tmp, cache.items())
    os.replace(tmp, out / "phrase_cache.jsonl")
    inputs = marker["inputs"]
    # every caption is in the merged cache, so this only builds the vocabulary
    skip = SkippedSamples() if inputs["skip_bad"] else None  # what it finds, the shards found too
    stats = prepare_phrases(inputs["captions"], out, min_count=inputs["min_count"], splits=inputs["splits"],
                            extractor=_NoParsing(out), skip=skip)
    return {"captions": len(cache), **stats}


class _NoParsing:
    """Stands in for the phrase extractor when every caption should already be parsed."""

    def __init__(self, out: Path):
        self.out = out

    def extract(self, captions, **_):
        raise FormatError(f"{self.out}: the shards lack {len(captions)} captions of the captions file, e.g. "
                          f"{captions[0]!r}; was it changed after they ran? Run the shards again", "missing shard")


def _merge_features(out: Path, dirs: list[Path]) -> dict:
    if (out / "features.tsv").exists():
        raise OutputExistsError(f"{out / 'features.tsv'} already exists; remove it to merge again")
    index: dict[str, int] = {}
    for d in dirs:
        for image_id in load_json(d / "imageid2idx.json"):
            if image_id in index:
                raise FormatError(f"{d / 'imageid2idx.json'}: image {image_id} is also in an earlier shard",
                                  "duplicate image")
            index[image_id] = len(index)
    concat_tsv([d / "predictions.tsv" for d in dirs], out / "predictions.tsv")
    (out / "imageid2idx.json").write_text(json.dumps(index), encoding="utf-8")
    rows = concat_tsv([d / "features.tsv" for d in dirs], out / "features.tsv")  # last: marks the output complete
    if rows != len(index):
        raise FormatError(f"{out / 'features.tsv'}: {rows} rows but the shards' imageid2idx.json list {len(index)} "
                          "images", "stale index")
    return {"out_dir": str(out), "num_images": rows}


def _merge_skipped(out: Path, dirs: list[Path]) -> int | None:
    """Skipped samples of the shares in one skipped.json; a problem every share met (one found by
    reading the whole input, such as a bad caption) counts once."""
    files = [d / "skipped.json" for d in dirs if (d / "skipped.json").is_file()]
    if not files:
        return None
    merged, seen = SkippedSamples(), set()
    for f in files:
        for e in load_json(f)["entries"]:
            key = (e["reason"], e["message"])
            if key not in seen:
                seen.add(key)
                merged.entries.append(e)
    merged.save(out / "skipped.json")
    return len(merged)


def merge_shards(out: str | os.PathLike) -> dict:
    """Merge the shares in ``out/shard-I-of-N`` into ``out`` (see the module docstring)."""
    out = Path(out)
    dirs, marker = _shares(out)
    kind = marker.get("kind")
    if kind == "phrases":
        summary = _merge_phrases(out, dirs, marker)
    elif kind == "features":
        summary = _merge_features(out, dirs)
    elif kind == "store":
        summary = merge_stores(dirs, out)
    else:
        raise FormatError(f"{dirs[0] / MARKER}: unknown kind {kind!r} (expected phrases, features or store)",
                          "mixed shards")
    problems = _merge_skipped(out, dirs)
    return {"kind": kind, "shards": len(dirs), **summary, **({"skipped_problems": problems} if problems else {})}
