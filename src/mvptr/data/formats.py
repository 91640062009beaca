"""Readers and writers for every on-disk dataset format used by mvptr.

Each format has exactly one reader and one writer here, so the on-disk layout is
defined in one place:

* captions: Karpathy-split JSON (COCO, Flickr30k) and ALBEF-style caption lists;
* VinVL TSV files: region features and detector predictions, each with a
  ``.lineidx`` file of row byte offsets for random access;
* Flickr30k Entities: bracket-annotated sentence files and Pascal-VOC-like box XML;
* the phrase cache: JSON lines of scene-graph tuples parsed from captions.

Bad input raises :class:`FormatError`, whose message names the file, the line
number or image id, and what was expected. Readers of many samples also take a
:class:`SkippedSamples` (``--skip-bad``): a bad sample is then left out and recorded
there, with its reason and message, instead of raising.
"""

from __future__ import annotations

import base64
import binascii
import glob
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "FormatError",
    "SkippedSamples",
    "CaptionRecord",
    "karpathy_tokens",
    "write_karpathy_json",
    "read_captions",
    "ImageIds",
    "split_names",
    "build_lineidx",
    "concat_tsv",
    "shard_part",
    "TSVFile",
    "write_vinvl_features",
    "write_vinvl_predictions",
    "VinVLFeatures",
    "VinVLPredictions",
    "VinVLImageSizes",
    "companion_sizes",
    "EntityPhrase",
    "EntitySentence",
    "read_flickr30k_sentences",
    "read_flickr30k_annotation",
    "write_flickr30k_entities",
    "write_phrase_cache",
    "phrase_key",
    "append_json_lines",
    "read_json_lines",
    "read_phrase_cache",
]

PathLike = str | os.PathLike


class FormatError(ValueError):
    """Input that does not follow the expected dataset format.

    ``reason`` names the kind of problem ("bad base64", "empty caption", ...); skipped
    samples are counted by it.
    """

    def __init__(self, message: str, reason: str = "malformed input"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return type(self), (str(self), self.reason)


class OutputDirError(OSError):
    """An output directory that cannot take what a command will write (the user's to fix)."""


class SkippedSamples:
    """Bad samples left out under ``--skip-bad``, counted by reason.

    Each entry keeps the error message, which names the file, line or image id.
    """

    def __init__(self):
        self.entries: list[dict] = []

    def add(self, err: FormatError, samples: int = 1) -> None:
        """Record ``err``; ``samples`` is how many samples it removed (e.g. all captions of an image)."""
        self.entries.append({"reason": getattr(err, "reason", "malformed input"), "samples": samples,
                             "message": str(err)})

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self, examples: int = 5) -> dict:
        """Totals, and per reason: problems, samples left out and the first messages."""
        by_reason: dict[str, dict] = {}
        for e in self.entries:
            r = by_reason.setdefault(e["reason"], {"problems": 0, "samples": 0, "first": []})
            r["problems"] += 1
            r["samples"] += e["samples"]
            if len(r["first"]) < examples:
                r["first"].append(e["message"])
        return {"skipped_samples": sum(e["samples"] for e in self.entries), "problems": len(self.entries),
                "by_reason": by_reason}

    def report(self) -> str:
        """Human-readable summary, one line per reason plus its first message."""
        s = self.summary(examples=1)
        if not self.entries:
            return "skipped: nothing"
        lines = [f"skipped {s['skipped_samples']} samples ({s['problems']} problems):"]
        for reason, r in sorted(s["by_reason"].items(), key=lambda kv: -kv[1]["samples"]):
            lines.append(f"  {reason}: {r['samples']} samples, {r['problems']} problems; first: {r['first'][0]}")
        return "\n".join(lines)

    def save(self, path: PathLike) -> None:
        """The summary plus every entry, as JSON."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**self.summary(), "entries": self.entries}, f, indent=1)


def skip_or_raise(skip: SkippedSamples | None, err: FormatError, samples: int = 1) -> None:
    """Record a bad input of ``samples`` samples when skipping bad ones; raise it otherwise."""
    if skip is None:
        raise err
    skip.add(err, samples)


def shard_part(items: Sequence, part: tuple[int, int] | None) -> Sequence:
    """Share ``index`` of ``count`` of ``items``, contiguous (the first shares take one more
    when uneven), so the shares in order are ``items``; all of them when ``part`` is None."""
    if part is None:
        return items
    index, count = part
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: expected 0 <= I < N")
    per, extra = divmod(len(items), count)
    start = index * per + min(index, extra)
    return items[start:start + per + (index < extra)]


def load_json(path: PathLike) -> Any:
    """A JSON document; a missing or unparsable file is a FormatError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: expected a JSON document: {e}") from None


def _check_field(path: PathLike, where: str, value: str, what: str) -> None:
    # Tabs and newlines would break the TSV/JSONL row structure on disk.
    if not isinstance(value, str) or not value or re.search(r"[\t\r\n]", value):
        raise FormatError(f"{path} ({where}): expected {what} as a non-empty string "
                          f"without tabs or newlines, got {value!r}")


# --------------------------------------------------------------------------- captions

@dataclass
class CaptionRecord:
    image_id: str
    caption: str
    split: str
    sent_id: int


def karpathy_tokens(sentence: str) -> list[str]:
    """Lower-cased words of ``sentence`` without punctuation ("Man's hat." -> ["mans", "hat"])."""
    return re.findall(r"[a-z0-9]+", sentence.lower().replace("'", ""))


def write_karpathy_json(path: PathLike, images: Sequence[Mapping[str, Any]],
                        dataset: str = "demo") -> None:
    """Write captions in the Karpathy-split JSON layout used for COCO and Flickr30k.

    ``images`` holds dicts with "filename", "imgid", "split", "sentences" (raw
    strings) and optionally "cocoid". Sentence ids are numbered globally from 0.
    """
    out_images = []
    sentid = 0
    for img in images:
        sentences, sentids = [], []
        for raw in img["sentences"]:
            sentences.append({"tokens": karpathy_tokens(raw), "raw": raw,
                              "imgid": img["imgid"], "sentid": sentid})
            sentids.append(sentid)
            sentid += 1
        entry = {"filename": img["filename"], "imgid": img["imgid"], "split": img["split"],
                 "sentids": sentids, "sentences": sentences}
        # COCO entries carry the image folder and id; Flickr30k entries do not.
        for key in ("filepath", "cocoid"):
            if key in img:
                entry[key] = img[key]
        out_images.append(entry)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": out_images, "dataset": dataset}, f)


def _caption_text(path: PathLike, where: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise FormatError(f"{path} ({where}): expected a non-empty caption string, got {raw!r}",
                          "empty caption")
    return raw.strip()


class ImageIds:
    """Maps the image ids of a caption file to the ids of the region features.

    ``pattern``, a regular expression, is searched in each id, and its first group (the
    whole match when it has none) becomes the id: ``0*(\\d+)$`` turns "coco_522418" and
    "COCO_val2014_000000391895" into "522418" and "391895". ``mapping``, a JSON object (or
    its file), then translates the ids. An id that the pattern does not match or the mapping
    lacks is an error: a caption never silently loses its image.
    """

    def __init__(self, pattern: str = "", mapping: PathLike | Mapping | None = None):
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except re.error as e:
            raise FormatError(f"image id pattern {pattern!r}: not a regular expression: {e}",
                              "bad image id pattern") from None
        self.source, self.mapping = mapping, None
        if mapping:
            data = mapping if isinstance(mapping, Mapping) else load_json(mapping)
            if not isinstance(data, Mapping) or not all(
                    isinstance(v, (str, int)) and not isinstance(v, bool) for v in data.values()):
                raise FormatError(f"{mapping}: expected a JSON object mapping the caption file's image ids to "
                                  "the features' image ids", "bad image id map")
            self.mapping = {str(k): str(v) for k, v in data.items()}

    def __call__(self, image_id: str, where: str) -> str:
        if self.pattern is not None:
            m = self.pattern.search(image_id)
            if m is None:
                raise FormatError(f"{where}: image id {image_id!r} does not match the image id pattern "
                                  f"{self.pattern.pattern} (data.image_id_pattern)", "unmapped image id")
            image_id = m.group(1) if self.pattern.groups else m.group(0)
        if self.mapping is not None:
            if image_id not in self.mapping:
                raise FormatError(f"{where}: image id {image_id!r} is not in the image id map {self.source} "
                                  "(data.image_id_map)", "unmapped image id")
            image_id = self.mapping[image_id]
        return image_id


def _same(image_id: str, where: str) -> str:
    return image_id


def _karpathy_sentence(path: PathLike, where: str, sent: Any, k: int) -> tuple[str, int]:
    """Caption and sentence id of a Karpathy sentence; some files carry only its "tokens"."""
    if not isinstance(sent, dict):
        raise FormatError(f"{path} ({where}): expected a sentence object with \"raw\" or \"tokens\"",
                          "bad caption entry")
    raw = sent.get("raw")
    tokens = sent.get("tokens")
    if raw is None and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        raw = " ".join(tokens)
    caption = _caption_text(path, where, raw)
    sentid = sent.get("sentid", k)
    if isinstance(sentid, str) and sentid.strip().isdigit():
        sentid = int(sentid)
    if isinstance(sentid, bool) or not isinstance(sentid, int) or sentid < 0:
        raise FormatError(f"{path} ({where}): expected a non-negative integer \"sentid\", got {sentid!r}",
                          "bad sentence id")
    return caption, sentid


def _read_karpathy(path: PathLike, data: dict, skip: SkippedSamples | None, ids) -> list[CaptionRecord]:
    images = data["images"]
    if not isinstance(images, list):
        raise FormatError(f"{path}: expected \"images\" to be a list")
    records = []
    seen: dict[str, int] = {}
    for n, img in enumerate(images):
        try:
            if not isinstance(img, dict) or "split" not in img or not isinstance(img.get("sentences"), list) \
                    or ("cocoid" not in img and "filename" not in img):
                raise FormatError(f"{path} (images[{n}]): expected an object with \"split\", "
                                  f"\"sentences\" and \"filename\" or \"cocoid\"", "bad caption entry")
            image_id = ids(str(img["cocoid"]) if "cocoid" in img else Path(img["filename"]).stem,
                           f"{path} (images[{n}])")
            if image_id in seen:  # merging the two would give one image the other's captions
                raise FormatError(f"{path} (images[{n}]): image {image_id} already appears as images[{seen[image_id]}]",
                                  "duplicate image")
        except FormatError as err:
            skip_or_raise(skip, err, samples=len(img["sentences"]) if isinstance(img, dict)
                          and isinstance(img.get("sentences"), list) else 1)
            continue
        seen[image_id] = n
        for k, sent in enumerate(img["sentences"]):
            try:
                caption, sent_id = _karpathy_sentence(path, f"image {image_id}, sentence {k}", sent, k)
            except FormatError as err:
                skip_or_raise(skip, err)
                continue
            records.append(CaptionRecord(image_id, caption, str(img["split"]), sent_id))
    return records


def _read_caption_list(path: PathLike, data: list, skip: SkippedSamples | None, ids,
                       split: str | None) -> list[CaptionRecord]:
    records = []
    per_image: dict[str, int] = {}  # several entries may share an image; keep sent ids unique
    for n, entry in enumerate(data):
        if isinstance(entry, dict) and split is None and "split" not in entry:
            raise FormatError(f"{path} (entry {n}): caption lists such as ALBEF's and LAVIS's carry no split; "
                              "name the split in the file's path, e.g. data.captions=ann/coco_karpathy_{split}.json "
                              "reads ann/coco_karpathy_train.json as the train split", "no split")
        if isinstance(entry, dict) and split is not None and str(entry.get("split", split)) != split:
            raise FormatError(f"{path} (entry {n}): split {entry['split']!r}, but the file is read as the "
                              f"{split!r} split", "no split")
        try:
            if not isinstance(entry, dict) or "caption" not in entry \
                    or ("image_id" not in entry and not isinstance(entry.get("image"), str)):
                raise FormatError(f"{path} (entry {n}): expected an object with \"caption\" and \"image\" or "
                                  "\"image_id\"", "bad caption entry")
            # the file name, not "image_id": ALBEF's Flickr30k lists number their images 0, 1, ...
            image_id = ids(Path(entry["image"]).stem if isinstance(entry.get("image"), str)
                           else str(entry["image_id"]), f"{path} (entry {n})")
        except FormatError as err:
            skip_or_raise(skip, err)
            continue
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        for k, raw in enumerate(captions):
            try:
                caption = _caption_text(path, f"entry {n}, image {image_id}, caption {k}", raw)
            except FormatError as err:
                skip_or_raise(skip, err)
                continue
            sent_id = per_image.get(image_id, 0)
            per_image[image_id] = sent_id + 1
            records.append(CaptionRecord(image_id, caption, split or str(entry["split"]), sent_id))
    return records


def split_names(splits: Iterable[str]) -> list[str]:
    """Split names, each of "a+b" counted as a and b: COCO models train on "train+restval"."""
    return [part for s in splits for part in str(s).split("+") if part]


def _caption_files(template: str, splits: list[str] | None) -> list[tuple[str, str]]:
    """(split, file) of a path with ``{split}``: the named splits, or every file that matches."""
    if splits is not None:
        return [(s, template.replace("{split}", s)) for s in splits]
    before, after = template.split("{split}", 1)
    found = []
    for f in sorted(glob.glob(glob.escape(before) + "*" + glob.escape(after))):
        m = re.fullmatch(re.escape(before) + r"(.+?)" + re.escape(after), f)
        if m and "/" not in m.group(1):
            found.append((m.group(1), f))
    if not found:
        raise FormatError(f"{template}: no caption file matches ({{split}} stands for a split name, e.g. train)",
                          "file not found")
    return found


def _read_caption_file(path: PathLike, split: str | None, skip: SkippedSamples | None, ids) -> list[CaptionRecord]:
    data = load_json(path)
    if isinstance(data, dict) and "images" in data:
        records = _read_karpathy(path, data, skip, ids)
        return records if split is None else [r for r in records if r.split == split]
    if isinstance(data, list):
        return _read_caption_list(path, data, skip, ids, split)
    raise FormatError(f"{path}: expected a Karpathy JSON object with \"images\" or a list of caption entries")


def read_captions(path: PathLike, splits: Iterable[str] | None = None, skip: SkippedSamples | None = None,
                  image_ids: ImageIds | None = None) -> list[CaptionRecord]:
    """Read captions from a Karpathy JSON or an ALBEF/LAVIS-style caption list.

    Karpathy: image_id is str(cocoid) when present, else the filename stem; split names are
    kept as they are (e.g. "restval"); a sentence without "raw" is its "tokens" joined;
    sent_id is the file's sentid. An image listed twice is an error. ALBEF/LAVIS list
    (``[{"image", "caption": str | [str], "image_id"?, "split"?}]``): image_id is the stem
    of "image" when present, else str(image_id); sent_id counts the captions of each image
    from 0. Such lists carry no split: a ``{split}`` in ``path`` names it ("ann/coco_{split}.json"
    reads ann/coco_train.json as split "train"; without ``splits``, every matching file).
    ``splits`` keeps only records of the listed splits ("train+restval" counts as both);
    ``image_ids`` maps the ids to those of the features. With ``skip``, a bad caption or
    entry is recorded there and left out instead of raising.
    """
    ids = image_ids or _same
    wanted = None if splits is None else split_names(splits)
    if "{split}" not in str(path):
        records = _read_caption_file(path, None, skip, ids)
        return records if wanted is None else [r for r in records if r.split in set(wanted)]
    return [r for split, f in _caption_files(str(path), wanted) for r in _read_caption_file(f, split, skip, ids)]


# --------------------------------------------------------------------------- TSV files

def _lineidx_path(tsv_path: PathLike) -> Path:
    p = Path(tsv_path)
    return p.with_suffix(".lineidx")


def _write_tsv(tsv_path: PathLike, rows: Iterable[Sequence[str]]) -> None:
    """Write tab-separated rows and the matching ``.lineidx`` of row byte offsets."""
    offsets = []
    with open(tsv_path, "wb") as f:
        for fields in rows:
            offsets.append(f.tell())
            f.write("\t".join(fields).encode("utf-8") + b"\n")
    with open(_lineidx_path(tsv_path), "w", encoding="ascii") as f:
        f.writelines(f"{o}\n" for o in offsets)


def concat_tsv(parts: Sequence[PathLike], out_path: PathLike) -> int:
    """Write the rows of the TSV files ``parts``, in order, to ``out_path`` with its ``.lineidx``
    (each part's offsets shifted by the bytes before it); returns the number of rows. Both
    files appear complete or not at all (written under temporary names, then renamed)."""
    out_path = Path(out_path)
    tmp_tsv, tmp_idx = out_path.with_name(out_path.name + ".tmp"), out_path.with_name(out_path.name + ".lineidx.tmp")
    rows, base = 0, 0
    with open(tmp_tsv, "wb") as f, open(tmp_idx, "w", encoding="ascii") as idx:
        for part in parts:
            tsv = TSVFile(part)  # checks the part and its index
            idx.writelines(f"{base + int(o)}\n" for o in tsv._offsets)
            rows += len(tsv)
            with open(part, "rb") as src:
                last = b"\n"
                while data := src.read(1 << 22):
                    f.write(data)
                    last = data[-1:]
            if last != b"\n":  # a last row without its newline would run into the next part's first
                f.write(b"\n")
            base = f.tell()
    os.replace(tmp_idx, _lineidx_path(out_path))
    os.replace(tmp_tsv, out_path)
    return rows


def build_lineidx(tsv_path: PathLike) -> Path:
    """Create ``<stem>.lineidx`` for an existing TSV file; returns its path."""
    out = _lineidx_path(tsv_path)
    try:
        with open(tsv_path, "rb") as f, open(out, "w", encoding="ascii") as idx:
            offset = 0
            for line in f:
                idx.write(f"{offset}\n")
                offset += len(line)
    except FileNotFoundError:
        raise FormatError(f"{tsv_path}: file not found") from None
    return out


class TSVFile:
    """Random access to the rows of a TSV file through its ``.lineidx`` offsets.

    The file handle is opened on first use and reopened in a new process (e.g. a
    DataLoader worker), since a handle shared across a fork would share its
    position; the object pickles without it.
    """

    def __init__(self, path: PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FormatError(f"{self.path}: file not found")
        idx_path = _lineidx_path(self.path)
        if not idx_path.is_file():
            raise FormatError(
                f"{self.path}: index {idx_path} not found; create it with "
                f"mvptr.data.formats.build_lineidx({self.path!r})")
        offsets = []
        with open(idx_path, encoding="ascii", errors="replace") as f:
            for n, line in enumerate(f, 1):
                try:
                    offsets.append(int(line))
                except ValueError:
                    raise FormatError(f"{idx_path} line {n}: expected a decimal byte offset, "
                                      f"got {line.strip()!r}") from None
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._check_index(idx_path)
        self._fh = None
        self._pid = None

    def _check_index(self, idx_path: Path) -> None:
        """Rows start at 0, rise, each just after a newline, and the last ends the file: an index
        left from an earlier version of the TSV (rows appended, rewritten) is refused here, not
        met later as images that seem to have no features."""
        o, size = self._offsets, os.path.getsize(self.path)
        problem = None
        if len(o) == 0:
            problem = f"it lists no rows but the file has {size} bytes" if size else None
        elif o[0] != 0 or (np.diff(o) <= 0).any() or o[-1] >= size:
            problem = f"its offsets do not rise from 0 within the file's {size} bytes"
        else:
            with open(self.path, "rb") as f:
                f.seek(max(int(o[-1]) - 1, 0))
                before = f.read(1) if o[-1] else b"\n"
                f.seek(int(o[-1]))
                last = f.readline()
            if before != b"\n":
                problem = f"row {len(o)} does not start a line"
            elif o[-1] + len(last) != size:
                problem = f"it indexes {len(o)} rows, but the file goes on after them"
        if problem:
            raise FormatError(f"{idx_path} does not match {self.path}: {problem}; rebuild it with "
                              f"mvptr.data.formats.build_lineidx({self.path!r})", "stale index")

    def __len__(self) -> int:
        return len(self._offsets)

    def _handle(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        return self._fh

    def seek(self, i: int):
        """Position the file handle at the start of row ``i`` and return it."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: row {i} out of range (file has {len(self)} rows)")
        fh = self._handle()
        fh.seek(int(self._offsets[i]))
        return fh

    def row(self, i: int) -> list[str]:
        """Fields of row ``i`` (line ``i + 1``)."""
        line = self.seek(i).readline()
        if not line:
            raise FormatError(f"{self.path} line {i + 1}: offset past the end of the file; "
                              f"the .lineidx is stale, rebuild it with build_lineidx", "stale index")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{self.path} line {i + 1}: expected UTF-8 text: {e}", "not UTF-8") from None
        return text.rstrip("\r\n").split("\t")

    def key(self, i: int) -> str:
        """First field of row ``i``, read without loading the rest of a long row."""
        fh = self.seek(i)
        buf = b""
        while True:
            chunk = fh.read(256)
            buf += chunk
            end = min((p for p in (buf.find(b"\t"), buf.find(b"\n")) if p >= 0), default=-1)
            if end >= 0 or not chunk:
                return buf[:end if end >= 0 else len(buf)].decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = None
        return state


class _ImageTSV:
    """A TSV keyed by image id in its first column."""

    def __init__(self, tsv_path: PathLike, imageid2idx: PathLike | Mapping[str, int] | None = None,
                 skip: SkippedSamples | None = None):
        self.tsv = TSVFile(tsv_path)
        self.path = self.tsv.path
        if imageid2idx is None:
            default = Path(self.path).with_name("imageid2idx.json")
            imageid2idx = default if default.is_file() else None
        if imageid2idx is None:
            self._index = self._scan(skip)
        else:
            source = "imageid2idx" if isinstance(imageid2idx, Mapping) else imageid2idx
            data = imageid2idx if isinstance(imageid2idx, Mapping) else load_json(imageid2idx)
            if not isinstance(data, Mapping) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
                raise FormatError(f"{source}: expected an object mapping image ids to row indices")
            self._index = {str(k): v for k, v in data.items()}

    def _scan(self, skip: SkippedSamples | None) -> dict[str, int]:
        index: dict[str, int] = {}
        for i in range(len(self.tsv)):
            key = self.tsv.key(i)
            if key in index:  # skipped: the first row of the image is kept
                skip_or_raise(skip, FormatError(f"{self.path} line {i + 1}: image {key} already appears on "
                                                 f"line {index[key] + 1}", "duplicate image"), samples=0)
                continue
            index[key] = i
        return index

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._index

    def ids(self) -> list[str]:
        return list(self._index)

    def _fields(self, image_id, count: int | tuple[int, ...]) -> tuple[str, list[str]]:
        """(location for error messages, fields) of an image's row, of ``count`` fields (or one of them)."""
        image_id = str(image_id)
        if image_id not in self._index:
            raise FormatError(f"{self.path}: image {image_id} not found", "image not found")
        i = self._index[image_id]
        where = f"{self.path} line {i + 1} (image {image_id})"
        try:
            fields = self.tsv.row(i)
        except IndexError:
            raise FormatError(f"{where}: row index {i} beyond the {len(self.tsv)} rows "
                              f"of the file", "stale index") from None
        counts = count if isinstance(count, tuple) else (count,)
        if len(fields) not in counts:
            raise FormatError(f"{where}: expected {' or '.join(map(str, counts))} tab-separated fields, "
                              f"got {len(fields)}", "truncated row")
        if fields[0] != image_id:
            raise FormatError(f"{where}: row holds image {fields[0]}; the image index is stale", "stale index")
        return where, fields


def _box_count(where: str, value: Any) -> int:
    """A box count: an integer, or its decimal string (as TSV columns and some JSON files hold it)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise FormatError(f"{where}: expected a non-negative integer box count, got {value!r}", "bad box count")


def _base64(where: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{where}: expected base64 feature data: {e}", "bad base64") from None


def _check_finite(where: str, x: np.ndarray) -> None:
    """NaN or inf features would make a whole training step's loss NaN (the step is skipped)."""
    bad = ~np.isfinite(x)
    if bad.any():
        box, col = (int(v[0]) for v in np.nonzero(bad))
        raise FormatError(f"{where}: {int(bad.sum())} feature values are NaN or inf (first: box {box}, value {col})",
                          "non-finite features")


def write_vinvl_features(tsv_path: PathLike, rows: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write region features as ``image_id \\t num_boxes \\t base64(float32 bytes)`` rows."""
    def lines():
        for image_id, feats in rows:
            _check_field(tsv_path, "features row", image_id, "an image id")
            feats = np.asarray(feats)
            if feats.ndim != 2:
                raise FormatError(f"{tsv_path} (image {image_id}): expected a (num_boxes, dim) "
                                  f"feature array, got shape {feats.shape}")
            _check_finite(f"{tsv_path} (image {image_id})", feats)
            data = np.ascontiguousarray(feats, dtype="<f4").tobytes()
            yield image_id, str(feats.shape[0]), base64.b64encode(data).decode("ascii")
    _write_tsv(tsv_path, lines())


class VinVLFeatures(_ImageTSV):
    """Region features of a VinVL features TSV, looked up by image id.

    The row of each image comes from ``imageid2idx`` (a dict or JSON path), else
    from ``imageid2idx.json`` beside the TSV, else from one scan of the first column.
    """

    def __init__(self, tsv_path: PathLike, feat_dim: int | None = None,
                 imageid2idx: PathLike | Mapping[str, int] | None = None, skip: SkippedSamples | None = None):
        super().__init__(tsv_path, imageid2idx, skip)
        self.feat_dim = feat_dim

    def __getitem__(self, image_id) -> np.ndarray:
        where, fields = self._fields(image_id, (3, 2))
        if len(fields) == 3:
            n, raw = _box_count(where, fields[1]), _base64(where, fields[2])
        elif fields[1].lstrip().startswith(("{", "[")):
            n, raw = self._json_row(where, fields[1])
        else:  # "id \t num_boxes" cut short, not a JSON row
            raise FormatError(f"{where}: expected 3 tab-separated fields, got 2", "truncated row")
        return self._decode(where, raw, n)

    @staticmethod
    def _json_row(where: str, text: str) -> tuple[int, bytes]:
        """Box count and feature bytes of a two-column row: VinVL captioning's
        ``{"num_boxes": N, "features": base64}``, or Oscar's ``[{"feature": base64}, ...]``, one per box."""
        try:
            info = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: expected a JSON object with \"num_boxes\" and \"features\": {e}",
                              "bad features JSON") from None
        if isinstance(info, list) and all(isinstance(b, dict) and isinstance(b.get("feature"), str) for b in info):
            return len(info), b"".join(_base64(where, b["feature"]) for b in info)
        if not isinstance(info, dict) or "num_boxes" not in info or not isinstance(info.get("features"), str):
            raise FormatError(f"{where}: expected a JSON object with \"num_boxes\" and base64 \"features\"",
                              "bad features JSON")
        return _box_count(where, info["num_boxes"]), _base64(where, info["features"])

    def _decode(self, where: str, raw: bytes, n: int) -> np.ndarray:
        dim, size = self.feat_dim, len(raw)
        if n == 0:
            if size:
                raise FormatError(f"{where}: num_boxes is 0 but the row holds {size} bytes", "box count mismatch")
            return np.zeros((0, dim or 0), dtype=np.float32)
        # With feat_dim known, read the box count from the data; else the width.
        if dim is not None:
            if size % (4 * dim) == 0:
                if size // (4 * dim) != n:
                    raise FormatError(f"{where}: num_boxes is {n} but the data holds "
                                      f"{size // (4 * dim)} boxes of width {dim}", "box count mismatch")
            elif size % (4 * n) == 0:
                raise FormatError(f"{where}: expected feature width {dim}, got {size // (4 * n)} "
                                  f"({size} bytes for {n} boxes)", "wrong feature width")
            else:
                raise FormatError(f"{where}: byte length {size} is not a multiple of 4*{dim}", "bad byte length")
        elif size % (4 * n):
            raise FormatError(f"{where}: byte length {size} is not a multiple of "
                              f"4*num_boxes ({4 * n})", "bad byte length")
        # astype copies: frombuffer's view is read-only, which torch.from_numpy warns about.
        x = np.frombuffer(raw, dtype="<f4").reshape(n, -1).astype(np.float32)
        _check_finite(where, x)
        return x


def write_vinvl_predictions(tsv_path: PathLike, rows: Iterable[tuple[str, Mapping]]) -> None:
    """Write detector outputs as ``image_id \\t json`` rows.

    The JSON holds "image_h", "image_w", "num_boxes" and "objects", a list of
    ``{"rect": [x1, y1, x2, y2], "class": str, "conf": float}``.
    """
    def lines():
        for image_id, pred in rows:
            _check_field(tsv_path, "predictions row", image_id, "an image id")
            yield image_id, json.dumps(pred)
    _write_tsv(tsv_path, lines())


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class VinVLImageSizes(_ImageTSV):
    """Image sizes of a VinVL ``hw.tsv`` (``image_id \\t [{"height": h, "width": w}]``), by image id."""

    def __getitem__(self, image_id) -> tuple[float, float]:
        where, (_, text) = self._fields(image_id, 2)
        try:
            hw = json.loads(text)
        except json.JSONDecodeError:
            hw = None
        if isinstance(hw, list) and len(hw) == 1:
            hw = hw[0]
        if not (isinstance(hw, dict) and all(_is_number(hw.get(k)) and hw[k] > 0 for k in ("height", "width"))):
            raise FormatError(f"{where}: expected [{{\"height\": h, \"width\": w}}] with positive numbers, "
                              f"got {text[:80]!r}", "bad image size")
        return hw["width"], hw["height"]


def companion_sizes(predictions_path: PathLike) -> Path | None:
    """The hw.tsv holding the image sizes that a predictions file may lack: ``<name>.hw.tsv``
    beside ``<name>.tsv``, ``<name>.label.tsv`` or ``<name>.predictions.tsv``, else ``hw.tsv``."""
    p = Path(predictions_path)
    base = p.name[:-4] if p.name.endswith(".tsv") else p.name
    for suffix in (".label", ".predictions"):
        base = base[:-len(suffix)] if base.endswith(suffix) else base
    return next((c for c in (p.with_name(f"{base}.hw.tsv"), p.with_name("hw.tsv")) if c.is_file()), None)


class VinVLPredictions(_ImageTSV):
    """Detector predictions (boxes, object tags) of a VinVL predictions TSV, by image id.

    A row is ``{"objects": [...], "image_h", "image_w", "num_boxes"}``, or the objects
    alone as a JSON list (the rows of VinVL's ``label.tsv``). Sizes a row lacks (VinVL's
    detector writes none) come from ``sizes``, a ``hw.tsv``, by default the one
    :func:`companion_sizes` finds beside the file.
    """

    def __init__(self, tsv_path: PathLike, imageid2idx: PathLike | Mapping[str, int] | None = None,
                 skip: SkippedSamples | None = None, sizes: PathLike | None = None):
        super().__init__(tsv_path, imageid2idx, skip)
        self.sizes_path = sizes
        self._sizes: VinVLImageSizes | None = None

    def _size(self, where: str, image_id: str) -> tuple[float, float]:
        if self._sizes is None:
            path = self.sizes_path or companion_sizes(self.path)
            if path is None:
                raise FormatError(f"{where}: no \"image_w\" and \"image_h\", and no hw.tsv beside the file to "
                                  f"take them from (VinVL's detector writes sizes to a separate <name>.hw.tsv; put "
                                  f"it beside {Path(self.path).name})", "bad image size")
            self._sizes = VinVLImageSizes(path)
        if image_id not in self._sizes:
            raise FormatError(f"{where}: its size is not in {self._sizes.path}", "bad image size")
        return self._sizes[image_id]

    def __getitem__(self, image_id) -> dict:
        where, (_, text) = self._fields(image_id, 2)
        try:
            pred = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: expected a JSON object: {e}", "bad predictions JSON") from None
        if isinstance(pred, list):  # a label.tsv row: the objects alone
            pred = {"objects": pred}
        if not isinstance(pred, dict) or not isinstance(pred.get("objects"), list):
            raise FormatError(f"{where}: expected a JSON object with an \"objects\" list, or a list of "
                              "objects", "bad predictions JSON")
        if "image_w" not in pred or "image_h" not in pred:
            w, h = self._size(where, str(image_id))
            pred = {**pred, "image_w": w, "image_h": h}
        w, h = pred.get("image_w"), pred.get("image_h")
        for k, obj in enumerate(pred["objects"]):
            _check_object(where, k, obj, w, h)
        if "num_boxes" in pred:
            n = _box_count(where, pred["num_boxes"])
            if n != len(pred["objects"]):
                raise FormatError(f"{where}: num_boxes is {n} but there are {len(pred['objects'])} objects",
                                  "box count mismatch")
            pred["num_boxes"] = n
        return pred


def _check_object(where: str, k: int, obj: Any, w: Any, h: Any) -> None:
    rect = obj.get("rect") if isinstance(obj, dict) else None
    if not (isinstance(rect, list) and len(rect) == 4 and all(map(_is_number, rect))):
        raise FormatError(f"{where}: object {k}: expected \"rect\" of 4 numbers, got {rect!r}", "bad box")
    if not isinstance(obj.get("class"), str):
        raise FormatError(f"{where}: object {k}: expected a string \"class\", got {obj.get('class')!r}", "bad class")
    x1, y1, x2, y2 = rect
    if not all(map(math.isfinite, rect)) or x2 < x1 or y2 < y1:
        raise FormatError(f"{where}: object {k}: box {rect} is not finite corners [x1, y1, x2, y2] with "
                          "x1 <= x2 and y1 <= y2", "bad box")
    # One pixel of slack: detectors clip to [0, w] or [0, w - 1] inconsistently.
    if _is_number(w) and _is_number(h) and (min(x1, y1) < -1 or x2 > w + 1 or y2 > h + 1):
        raise FormatError(f"{where}: object {k}: box {rect} lies outside the {w}x{h} image", "box outside image")


# --------------------------------------------------------------------------- Flickr30k Entities

@dataclass
class EntityPhrase:
    text: str
    entity_id: str
    first_word: int
    types: list[str] = field(default_factory=list)


@dataclass
class EntitySentence:
    text: str
    phrases: list[EntityPhrase]


# "[/EN#<id>/<type>[/<type>...] <words>]"
_ENTITY_RE = re.compile(r"\[/EN#(\w+)((?:/[^\s/\]]+)+)\s+([^\[\]]*?)\s*\]")


def _parse_entity_line(path: PathLike, lineno: int, line: str) -> EntitySentence:
    words: list[str] = []
    phrases = []

    def plain(segment: str) -> None:
        if "[" in segment or "]" in segment:
            raise FormatError(f"{path} line {lineno}: expected phrases as "
                              f"\"[/EN#<id>/<type> words]\", got unmatched bracket in "
                              f"{segment.strip()!r}", "bad entity sentence")
        words.extend(segment.split())

    pos = 0
    for m in _ENTITY_RE.finditer(line):
        plain(line[pos:m.start()])
        phrase_words = m.group(3).split()
        if not phrase_words:
            raise FormatError(f"{path} line {lineno}: expected words in phrase {m.group(0)!r}",
                              "bad entity sentence")
        phrases.append(EntityPhrase(" ".join(phrase_words), m.group(1), len(words),
                                    m.group(2).strip("/").split("/")))
        words.extend(phrase_words)
        pos = m.end()
    plain(line[pos:])
    return EntitySentence(" ".join(words), phrases)


def read_flickr30k_sentences(path: PathLike, skip: SkippedSamples | None = None) -> list[EntitySentence]:
    """Parse a Flickr30k Entities ``Sentences/<image>.txt`` file, one sentence a line.

    ``[/EN#18/people A man] in [/EN#19/clothing an orange hat] starring at something .``
    gives text "A man in an orange hat starring at something ." with phrases
    ("A man", "18", 0, ["people"]) and ("an orange hat", "19", 3, ["clothing"]).
    With ``skip``, a malformed line is recorded there and left out.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(_parse_entity_line(path, n, line))
            except FormatError as err:
                skip_or_raise(skip, err)
    return out


def _xml_int(path: PathLike, elem: ET.Element, tag: str, where: str) -> int:
    child = elem.find(tag)
    try:
        return int(child.text.strip())
    except (AttributeError, ValueError):
        got = None if child is None else child.text
        raise FormatError(f"{path} ({where}): expected an integer <{tag}>, got {got!r}",
                          "bad annotation") from None


def read_flickr30k_annotation(path: PathLike) -> dict:
    """Parse a Flickr30k Entities ``Annotations/<image>.xml`` file.

    Returns ``{"width", "height", "depth", "boxes": {entity_id: [[x1, y1, x2, y2], ...]},
    "nobox": set, "scene": set}``; an object with several <name> children gives
    its box to each of those entities.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except ET.ParseError as e:
        raise FormatError(f"{path}: malformed XML: {e}", "malformed XML") from None
    size = root.find("size")
    if root.tag != "annotation" or size is None:
        raise FormatError(f"{path}: expected an <annotation> root with a <size> element", "bad annotation")
    out = {key: _xml_int(path, size, key, "size") for key in ("width", "height", "depth")}
    boxes: dict[str, list[list[int]]] = {}
    nobox: set[str] = set()
    scene: set[str] = set()
    for k, obj in enumerate(root.iter("object")):
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(names):
            raise FormatError(f"{path} (object {k}): expected one or more non-empty <name> ids",
                              "bad annotation")
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            where = f"object {k}, entity {names[0]}"
            box = [_xml_int(path, bndbox, t, where) for t in ("xmin", "ymin", "xmax", "ymax")]
            if min(box) < 0 or box[2] < box[0] or box[3] < box[1]:
                raise FormatError(f"{path} ({where}): box {box} is not corners with 0 <= xmin <= xmax and "
                                  "0 <= ymin <= ymax", "bad box")
            for name in names:
                boxes.setdefault(name, []).append(box)
        if (obj.findtext("nobndbox") or "").strip() == "1":
            nobox.update(names)
        if (obj.findtext("scene") or "").strip() == "1":
            scene.update(names)
    out.update(boxes=boxes, nobox=nobox, scene=scene)
    return out


def write_flickr30k_entities(root: PathLike, image_id: str,
                             sentences: Sequence[tuple[Sequence[str], Sequence[tuple]]],
                             boxes: Mapping[str, Sequence[Sequence[int]]],
                             width: int, height: int) -> None:
    """Write ``root/Sentences/<image_id>.txt`` and ``root/Annotations/<image_id>.xml``.

    ``sentences`` holds ``(words, mentions)`` with mentions ``(start, end, entity_id)``
    or ``(start, end, entity_id, type_or_types)`` over word positions, end
    exclusive; the type is "other" when not given. Mentioned entities without
    boxes are written as <nobndbox> objects.
    """
    root = Path(root)
    lines = []
    mentioned: list[str] = []
    for n, (words, mentions) in enumerate(sentences):
        out, pos = [], 0
        for mention in sorted(mentions, key=lambda m: m[0]):
            start, end, entity_id = mention[:3]
            types = mention[3] if len(mention) > 3 else "other"
            types = [types] if isinstance(types, str) else list(types)
            if not pos <= start < end <= len(words):
                raise FormatError(f"{image_id} sentence {n}: mention ({start}, {end}) overlaps "
                                  f"another or lies outside the {len(words)} words")
            out += words[pos:start]
            out.append(f"[/EN#{entity_id}/{'/'.join(types)} {' '.join(words[start:end])}]")
            pos = end
            if str(entity_id) not in mentioned:
                mentioned.append(str(entity_id))
        out += words[pos:]
        lines.append(" ".join(out))
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    for entity_id, entity_boxes in boxes.items():
        for box in entity_boxes:
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = str(entity_id)
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bndbox, tag).text = str(int(value))
    boxed = {str(k) for k in boxes}
    # Entity 0 marks non-visual phrases, which have no object in the annotation.
    for entity_id in mentioned:
        if entity_id not in boxed and entity_id != "0":
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = entity_id
            ET.SubElement(obj, "nobndbox").text = "1"
            ET.SubElement(obj, "scene").text = "0"
    ET.indent(ann)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(root / "Annotations" / f"{image_id}.xml", encoding="utf-8")


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


def _cut_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (an append interrupted by a crash or a full disk), reading
    backwards from the end, so the next append starts a line of its own."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return
    with f:
        end = pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            if pos == end and block.endswith(b"\n"):
                return
            k = block.rfind(b"\n")
            if k >= 0:
                f.truncate(pos - step + k + 1)
                return
            pos -= step
        f.truncate(0)


def append_json_lines(path: PathLike, records: Iterable[Any]) -> None:
    """Append JSON lines in one write after cutting a torn tail: a crash at any point leaves
    whole lines and at most one torn last line, which :func:`read_json_lines` passes over."""
    path = Path(path)
    _cut_torn_tail(path)
    text = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def read_json_lines(path: PathLike, skip: SkippedSamples | None = None):
    """Yield (line number, decoded value) of a JSON-lines file, skipping blank lines.

    An unterminated last line that is not valid JSON (an interrupted append) is ignored;
    any other undecodable line is a FormatError naming the file and line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # torn tail: the only line without a trailing newline
                return
            skip_or_raise(skip, FormatError(f"{path} line {n}: expected a JSON object: {e}", "bad JSON line"))
            continue
        yield n, value


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
                isinstance(t, list) and t and all(isinstance(w, str) for w in t) for t in phrases):
            skip_or_raise(skip, FormatError(f"{path} line {n}: expected {{\"caption\": ..., \"phrases\": "
                                             f"[[word, ...], ...]}}", "bad phrase record"))
            continue
        cache[rec["caption"]] = [tuple(t) for t in phrases]
    return cache



# --------------------------------------------------------------------------- VQA v2

@dataclass
class VQAQuestion:
    """One VQA v2 question; ``answers`` etc. are empty without an annotation file."""

    question_id: int
    image_id: str
    question: str
    answers: list[str] = field(default_factory=list)
    multiple_choice_answer: str = ""
    answer_type: str = ""
    question_type: str = ""


def write_vqa_questions(path: PathLike, questions: Sequence[Mapping[str, Any]], data_subtype: str,
                        data_type: str = "mscoco") -> None:
    """The official questions file: ``{"questions": [{"image_id", "question", "question_id"}]}``."""
    rows = [{"image_id": q["image_id"], "question": q["question"], "question_id": q["question_id"]}
            for q in questions]
    _dump_json(path, {"info": {}, "task_type": "Open-Ended", "data_type": data_type,
                      "license": {}, "data_subtype": data_subtype, "questions": rows})


def write_vqa_annotations(path: PathLike, annotations: Sequence[Mapping[str, Any]], data_subtype: str,
                          data_type: str = "mscoco") -> None:
    """The official annotations file. Each record: ``question_id``, ``image_id``, ``answers``
    (a list of answer strings, written as ``{"answer", "answer_confidence", "answer_id"}``),
    ``multiple_choice_answer``, ``answer_type``, ``question_type``."""
    rows = []
    for a in annotations:
        answers = [{"answer": ans, "answer_confidence": "yes", "answer_id": k + 1}
                   for k, ans in enumerate(a["answers"])]
        rows.append({"question_id": a["question_id"], "image_id": a["image_id"], "answers": answers,
                     "multiple_choice_answer": a["multiple_choice_answer"], "answer_type": a["answer_type"],
                     "question_type": a["question_type"]})
    _dump_json(path, {"info": {}, "license": {}, "data_type": data_type, "data_subtype": data_subtype,
                      "annotations": rows})


def read_vqa(questions_path: PathLike, annotations_path: PathLike | None = None) -> list[VQAQuestion]:
    """Questions (and their annotations, when given) of the official VQA v2 JSON files."""
    data = load_json(questions_path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise FormatError(f"{questions_path}: expected a JSON object with a 'questions' list", "bad VQA file")
    out = []
    for k, q in enumerate(data["questions"]):
        if not isinstance(q, dict) or not all(key in q for key in ("image_id", "question", "question_id")):
            raise FormatError(f"{questions_path} (question {k}): expected image_id, question and question_id",
                              "bad VQA file")
        out.append(VQAQuestion(int(q["question_id"]), str(q["image_id"]), str(q["question"])))
    if annotations_path is None:
        return out
    ann = load_json(annotations_path)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise FormatError(f"{annotations_path}: expected a JSON object with an 'annotations' list", "bad VQA file")
    by_id = {}
    for k, a in enumerate(ann["annotations"]):
        try:
            by_id[int(a["question_id"])] = (a, [str(x["answer"]) for x in a["answers"]])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{annotations_path} (annotation {k}): expected question_id and answers "
                              "[{answer, ...}]", "bad VQA file") from None
    for q in out:
        if q.question_id not in by_id:
            raise FormatError(f"{annotations_path}: no annotation for question {q.question_id}", "bad VQA file")
        a, answers = by_id[q.question_id]
        q.answers = answers
        q.multiple_choice_answer = str(a.get("multiple_choice_answer", ""))
        q.answer_type = str(a.get("answer_type", ""))
        q.question_type = str(a.get("question_type", ""))
    return out


def write_vqa_results(path: PathLike, answers: Mapping[int, str]) -> None:
    """The evaluation server's results file: ``[{"question_id", "answer"}]``."""
    _dump_json(path, [{"question_id": int(q), "answer": a} for q, a in answers.items()])


# --------------------------------------------------------------------------- SNLI-VE

VE_LABELS = ("entailment", "neutral", "contradiction")


@dataclass
class VEPair:
    image_id: str  # Flickr30K_ID
    hypothesis: str  # sentence2
    label: str  # gold_label
    premise: str = ""  # sentence1, the caption the hypothesis was written for
    pair_id: str = ""


class VEPairs(list):
    """The pairs of an SNLI-VE file, and ``unlabelled``: how many rows had no gold label."""

    unlabelled: int = 0


def _ve_image_id(row: dict) -> str:
    """``Flickr30K_ID`` ("2248275918"), else ``Flikr30kID``, as the original generator spelt it
    ("2248275918.jpg") and IGLUE's XVNLI writes it ("2248275918")."""
    if "Flickr30K_ID" in row:
        return str(row["Flickr30K_ID"])
    image = str(row["Flikr30kID"])
    return image[:-4] if image.lower().endswith(".jpg") else image


def read_snli_ve(path: PathLike, skip: SkippedSamples | None = None) -> VEPairs:
    """An SNLI-VE-format jsonl file (``snli_ve_{train,dev,test}.jsonl``, IGLUE's XVNLI):
    the image (``Flickr30K_ID`` or ``Flikr30kID``), ``sentence2`` and ``gold_label``.

    A row whose gold label is "-" (annotators did not agree) is left out and counted in
    ``unlabelled``, and recorded in ``skip`` when given; any other bad row is an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found", "file not found") from None
    out = VEPairs()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = VEPair(_ve_image_id(row), str(row["sentence2"]), str(row["gold_label"]),
                          str(row.get("sentence1", "")), str(row.get("pairID", "")))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise FormatError(f"{path}:{lineno}: expected a JSON object with Flickr30K_ID (or Flikr30kID), "
                              "sentence2 and gold_label", "bad SNLI-VE line") from None
        if pair.label == "-":
            out.unlabelled += 1
            if skip is not None:
                skip.add(FormatError(f"{path}:{lineno}: gold_label \"-\" (no annotator majority)", "no gold label"))
            continue
        if pair.label not in VE_LABELS:
            raise FormatError(f"{path}:{lineno}: gold_label {pair.label!r} is not one of {', '.join(VE_LABELS)}",
                              "bad SNLI-VE line")
        out.append(pair)
    return out


def write_snli_ve(path: PathLike, pairs: Iterable[VEPair]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"Flickr30K_ID": p.image_id, "sentence1": p.premise, "sentence2": p.hypothesis,
                                 "gold_label": p.label, "annotator_labels": [p.label], "pairID": p.pair_id}) + "\n"
                     for p in pairs)


def _dump_json(path: PathLike, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj), encoding="utf-8")


__all__ += ["VE_LABELS", "VEPair", "VEPairs", "VQAQuestion", "read_snli_ve", "read_vqa", "write_snli_ve",
            "write_vqa_annotations", "write_vqa_questions", "write_vqa_results"]
