"""Ground-truth object tags (paper 3.1.2: "for datasets with ground truth object tags like
MSCOCO and OpenImages, we directly utilize those labels").

A tag file is a JSON object ``{image id: [label, ...]}``, the labels in the annotation's
order (duplicates kept; ``data.dedupe_tags`` removes them when the tags are read). ``mvptr
prepare tags`` builds one from the official COCO instances JSON (``instances_*.json``:
``images``, ``annotations`` with ``image_id`` and ``category_id``, ``categories`` with
``id`` and ``name``); every image of the file gets an entry, an empty list when it has no
annotation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import ConfigError, FormatError
from ..core.fileio import PathLike, load_json, write_text_atomic

KEYS = ("id", "stem")  # a COCO image by its id ("391895"), or its file name's stem


def read_tag_file(path: PathLike) -> dict[str, list[str]]:
    """The labels of each image; an entry that is not a list of non-empty strings is a
    FormatError naming the file and the image."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object {{image id: [label, ...]}}", "bad tag file")
    for image_id, labels in data.items():
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise FormatError(f"{path}: image {image_id}: expected a list of non-empty labels, got {labels!r}",
                              "bad tag file")
    return {str(k): [x.strip() for x in v] for k, v in data.items()}


def _field(path: PathLike, where: str, entry, key: str):
    if not isinstance(entry, dict) or key not in entry:
        raise FormatError(f"{path}: {where}: no {key!r}", "bad COCO instances file")
    return entry[key]


def tags_from_coco_instances(paths: Iterable[PathLike], key: str = "id") -> dict[str, list[str]]:
    """{image id: category names of its instance annotations, in annotation order} over one
    or more COCO instances files (train and val, say); ``key`` "stem" names images by their
    file name without extension instead of their id."""
    if key not in KEYS:
        raise ConfigError(f"unknown image key {key!r} (expected one of {', '.join(KEYS)})")
    tags: dict[str, list[str]] = {}
    for path in paths:
        data = load_json(path)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise FormatError(f"{path}: expected a COCO instances JSON with images, annotations and categories",
                              "bad COCO instances file")
        names = {_field(path, f"category {i}", c, "id"): str(_field(path, f"category {i}", c, "name"))
                 for i, c in enumerate(data["categories"])}
        by_id = {}
        for i, image in enumerate(data["images"]):
            image_id = _field(path, f"image {i}", image, "id")
            name = str(image_id) if key == "id" else Path(str(_field(path, f"image {i}", image, "file_name"))).stem
            by_id[image_id] = name
            tags.setdefault(name, [])
        for i, ann in enumerate(data["annotations"]):
            image_id = _field(path, f"annotation {i}", ann, "image_id")
            category = _field(path, f"annotation {i}", ann, "category_id")
            if image_id not in by_id or category not in names:
                raise FormatError(f"{path}: annotation {i}: unknown image {image_id} or category {category}",
                                  "bad COCO instances file")
            tags[by_id[image_id]].append(names[category])
    return tags


def write_tag_file(path: PathLike, tags: dict[str, list[str]]) -> None:
    write_text_atomic(path, json.dumps(tags, indent=0))
