"""Captions: Karpathy-split JSON (COCO, Flickr30k) and ALBEF/LAVIS-style caption lists.

Bad input raises FormatError naming the file, the entry and what was expected; readers take
a SkippedSamples (``--skip-bad``) to leave a bad sample out instead.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..core.errors import FormatError, SkippedSamples, skip_or_raise
from ..core.fileio import PathLike, load_json


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


KARPATHY_SPLITS = ("train", "val", "test", "restval")


def _karpathy_split(path: PathLike, n: int, split: Any) -> None:
    """An image's split must be one of the Karpathy splits: any other would put it in none."""
    if not isinstance(split, str) or not split.strip():
        raise FormatError(f"{path} (images[{n}]): \"split\" is {split!r}; expected one of "
                          f"{', '.join(KARPATHY_SPLITS)}", "null split")
    if split not in KARPATHY_SPLITS:
        raise FormatError(f"{path} (images[{n}]): unknown split {split!r}; expected one of "
                          f"{', '.join(KARPATHY_SPLITS)}", "unknown split")


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
            _karpathy_split(path, n, img["split"])
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
        if not captions:
            skip_or_raise(skip, FormatError(f"{path} (entry {n}): an empty caption list", "empty caption"))
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
    sent_id is the file's sentid. An image listed twice, or whose split is missing, null or none of
    train, val, test and restval, is an error. ALBEF/LAVIS list
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
